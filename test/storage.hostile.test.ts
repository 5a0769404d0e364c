/**
 * Broken and hostile HTTP servers (raw TCP on 127.0.0.1, one scripted misbehaviour per case)
 * against the real `roboflow download` (dist/bin/roboflow.js): a 3 MiB object,
 * `--connections 4 --chunk-size 1MiB --stall-timeout 2s`, every other setting at its default.
 *
 * Whatever the server does, the run must end on its own (the test kills it at 85 s and fails),
 * never exit 2 (that is the user's usage error), never print a raw control byte, and either
 * promote exactly the object's bytes or leave the destination absent. Then the same command
 * against the same server, now correct, must produce exactly the object: whatever the first run
 * kept as resumable was good.
 *
 * The fine points (parsing, escaping, delays) are library calls at the end.
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backoffDelay, MAX_TIMER_MS, retryAfterFromHeaders, RoboflowError } from '../src/errors.js';
import { channels } from '../src/diagnostics.js';
import { ParallelDownloader } from '../src/prefetch/downloader.js';
import { escapeControl } from '../src/redact.js';
import { Http1Pool } from '../src/storage/http1.js';
import { parseUnsatisfiedRange } from '../src/storage/range.js';
import { chunked, type Script, startHostileServer } from './fixtures/hostile-server.js';
import { rejection } from './helpers.js';
import { FULL_TIER } from './tier.js';

const MAIN = fileURLToPath(new URL('../dist/bin/roboflow.js', import.meta.url));
const MiB = 1024 * 1024;
const SIZE = 3 * MiB;
const FLAGS = ['--connections', '4', '--chunk-size', '1MiB', '--stall-timeout', '2s'];
/** A run still going after this is a failure of the case (the bound is 90 s). */
const KILL_AFTER_MS = 85_000;
/** Raw control bytes in output (C0, DEL, C1): anything but printable ASCII, U+00A0 on and the line feed. */
const RAW_CONTROL = /[^\n -~\u00a0-\uffff]/;
/** The memory bound for one `roboflow download`, whatever the server does. */
const MAX_RSS_BYTES = 150 * MiB;
/** The cases that run the compiled CLI need a build: the full tier only (test/tier.ts). */
const cliDescribe = FULL_TIER ? describe.concurrent : describe.skip;

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'roboflow-hostile-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

interface Run {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
  readonly ms: number;
  /** The process's peak resident set (the kernel's high-water mark, VmHWM), as last sampled. */
  readonly peakRssBytes: number;
}

/** VmHWM of a live process from /proc: its peak RSS so far; 0 once it has gone. */
async function peakRss(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8').catch(() => '');
  const kib = /^VmHWM:\s+(\d+) kB$/m.exec(status)?.[1];
  return kib === undefined ? 0 : Number(kib) * 1024;
}

/** The environment without any ROBOFLOW_ setting of the machine running the tests. */
function cleanEnv(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('ROBOFLOW_')) env[k] = v;
  return { ...env, ...extra };
}

async function download(url: string, dest: string, flags: readonly string[] = FLAGS, env: NodeJS.ProcessEnv = {}): Promise<Run> {
  const started = Date.now();
  const child = spawn(process.execPath, [MAIN, 'download', url, dest, ...flags], { env: cleanEnv(env), stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const killer = setTimeout(() => child.kill('SIGKILL'), KILL_AFTER_MS);
  // The high-water mark only grows, so sampling it misses at most what grew after the last sample.
  let peakRssBytes = 0;
  const sample = (): void => {
    if (child.pid !== undefined) void peakRss(child.pid).then((b) => (peakRssBytes = Math.max(peakRssBytes, b)));
  };
  sample();
  const sampler = setInterval(sample, 50);
  const [code] = (await once(child, 'close')) as [number | null];
  clearInterval(sampler);
  clearTimeout(killer);
  return { code, stdout, stderr, ms: Date.now() - started, peakRssBytes };
}

/** What every run must satisfy, whatever the server did. */
async function expectClean(run: Run, dest: string, object: Buffer): Promise<void> {
  const what = `exit ${run.code} after ${run.ms} ms: ${escapeControl(run.stderr)}`;
  expect(run.code, what).not.toBeNull(); // ended on its own
  expect(run.code, what).not.toBe(2);
  expect(RAW_CONTROL.test(run.stdout + run.stderr), what).toBe(false);
  expect(run.stderr, what).not.toContain('TimeoutOverflowWarning');
  expect(run.peakRssBytes, what).toBeGreaterThan(0); // sampled at least once
  expect(run.peakRssBytes, `${what}; peak RSS ${(run.peakRssBytes / MiB).toFixed(0)} MiB`).toBeLessThanOrEqual(MAX_RSS_BYTES);
  if (run.code === 0) expect((await readFile(dest)).equals(object), 'the promoted file is the object').toBe(true);
  else expect(existsSync(dest), 'nothing promoted').toBe(false);
}

interface Case {
  readonly name: string;
  readonly script: Script;
  /** What the first run must end with: 0 (the object), 1 (a clean error), or either. */
  readonly exit: 0 | 1 | 'either';
  /** Words the error must contain. */
  readonly says?: RegExp;
  readonly flags?: readonly string[];
}

/** GETs get `get`; everything else (the HEAD) the correct answer. */
const onGet =
  (get: Script): Script =>
  (req, reply) => {
    if (req.method === 'GET') get(req, reply);
    else reply.correct();
  };

/** A 206 head with chunked framing and no Content-Length. */
const chunkedHead = (reply: Parameters<Script>[1], extra: Record<string, string | null> = {}) =>
  reply.head({ 'content-length': null, 'transfer-encoding': 'chunked', ...extra });

const ESC = '\u001b[31m';

const CASES: readonly Case[] = [
  // 1. A body later found bad must leave nothing counted.
  {
    name: 'gzip Content-Encoding with chunked framing',
    exit: 1,
    says: /Content-Encoding/,
    script: onGet((req, reply) => {
      reply.socket.write(chunkedHead(reply, { 'content-encoding': 'gzip' }));
      reply.socket.write(chunked(Buffer.concat([Buffer.from([0x1f, 0x8b, 8, 0]), reply.body()])));
    }),
  },
  {
    name: '10 junk bytes before the range in a chunked body',
    exit: 1,
    says: /more bytes than asked/,
    script: onGet((req, reply) => {
      reply.socket.write(chunkedHead(reply));
      reply.socket.write(chunked(Buffer.concat([Buffer.alloc(10, 0x41), reply.body()])));
    }),
  },
  {
    name: 'Transfer-Encoding: chunked and Transfer-Encoding: identity',
    exit: 1,
    says: /Transfer-Encoding/,
    script: onGet((req, reply) => {
      const head = reply.head({ 'content-length': null, 'transfer-encoding': 'chunked' }).replace('\r\n\r\n', '\r\ntransfer-encoding: identity\r\n\r\n');
      reply.socket.write(head);
      reply.socket.end(chunked(reply.body()));
    }),
  },
  {
    name: 'Transfer-Encoding: gzip, chunked',
    exit: 1,
    says: /Transfer-Encoding/,
    script: onGet((req, reply) => {
      reply.socket.write(chunkedHead(reply, { 'transfer-encoding': 'gzip, chunked' }));
      reply.socket.write(chunked(reply.body()));
    }),
  },
  {
    name: 'Transfer-Encoding: chunked beside a Content-Length of the range, 10 junk bytes before the range',
    exit: 1,
    says: /more bytes than asked/,
    script: onGet((req, reply) => {
      reply.socket.write(reply.head({ 'transfer-encoding': 'chunked' }));
      reply.socket.write(chunked(Buffer.concat([Buffer.alloc(10, 0x41), reply.body()])));
    }),
  },
  // 2. The size from HEAD against every response's.
  {
    name: 'HEAD answered 206 for the first MiB',
    exit: 1,
    says: /HEAD .*206, expected 200/,
    script: (req, reply) => {
      if (req.method !== 'HEAD') return reply.correct();
      reply.socket.write(reply.head({ 'content-length': MiB, 'content-range': `bytes 0-${MiB - 1}/${SIZE}` }, 'HTTP/1.1 206 Partial Content'));
    },
  },
  {
    name: 'HEAD says 2 MiB, every GET says 3 MiB',
    exit: 1,
    says: /size as 3145728 bytes, the download planned for 2097152/,
    script: (req, reply) => {
      if (req.method !== 'HEAD') return reply.correct();
      reply.socket.write(reply.head({ 'content-length': 2 * MiB }));
    },
  },
  // 3. Slow drip.
  {
    name: 'a valid 206 head, then one byte a second',
    exit: 1,
    says: /low-speed limit/,
    script: onGet((req, reply) => {
      reply.socket.write(reply.head());
      let at = 0;
      const body = reply.body();
      reply.every(1_000, () => reply.socket.write(body.subarray(at, ++at)));
    }),
  },
  // 4. Server delays.
  {
    name: '503 with Retry-After: 3600',
    exit: 1,
    says: /asked to wait 1h/,
    script: onGet((req, reply) => reply.socket.write('HTTP/1.1 503 Slow Down\r\nretry-after: 3600\r\ncontent-length: 0\r\n\r\n')),
  },
  {
    name: '503 with a Retry-After past any timer',
    exit: 1,
    says: /asked to wait/,
    script: onGet((req, reply) => reply.socket.write(`HTTP/1.1 503 Slow Down\r\nretry-after: ${'9'.repeat(400)}\r\ncontent-length: 0\r\n\r\n`)),
  },
  {
    name: '429 with a Retry-After HTTP date in the year 9999',
    exit: 1,
    says: /asked to wait/,
    script: onGet((req, reply) => reply.socket.write('HTTP/1.1 429 Too Many\r\nretry-after: Fri, 31 Dec 9999 23:59:59 GMT\r\ncontent-length: 0\r\n\r\n')),
  },
  {
    name: '503 with x-oss-qos-delay-time of 10^20 ms',
    exit: 1,
    says: /asked to wait/,
    script: onGet((req, reply) => reply.socket.write(`HTTP/1.1 503 Slow Down\r\nx-oss-qos-delay-time: 1${'0'.repeat(20)}\r\ncontent-length: 0\r\n\r\n`)),
  },
  // 5. Heads that never complete, and LF-only heads.
  {
    name: 'a status line, then silence',
    exit: 1,
    says: /no response headers/,
    script: onGet((req, reply) => reply.socket.write('HTTP/1.1 206 Partial Content\r\n')),
  },
  {
    name: 'endless 100 Continue',
    exit: 1,
    says: /no response headers/,
    script: onGet((req, reply) => reply.every(100, () => reply.socket.write('HTTP/1.1 100 Continue\r\n\r\n'))),
  },
  {
    name: 'response heads whose lines end in a bare LF',
    exit: 0,
    script: (req, reply) => {
      reply.socket.write(reply.head().replace(/\r\n/g, '\n'));
      if (req.method === 'GET') reply.socket.write(reply.body());
    },
  },
  // 6. Every byte in, the end marker missing.
  {
    name: 'a chunked body without its last chunk, then the close',
    exit: 0,
    script: onGet((req, reply) => {
      const body = reply.body();
      reply.socket.write(chunkedHead(reply));
      reply.socket.end(Buffer.concat([Buffer.from(`${body.length.toString(16)}\r\n`), body, Buffer.from('\r\n')]));
    }),
  },
  {
    name: 'a chunked body without the CRLF after its data, connection left open',
    exit: 0,
    script: onGet((req, reply) => {
      const body = reply.body();
      reply.socket.write(chunkedHead(reply));
      reply.socket.write(Buffer.concat([Buffer.from(`${body.length.toString(16)}\r\n`), body]));
    }),
  },
  {
    name: 'close-delimited bodies',
    exit: 0,
    script: onGet((req, reply) => {
      reply.socket.write(reply.head({ 'content-length': null, connection: 'close' }));
      reply.socket.end(reply.body());
    }),
  },
  // 7. Control bytes from the server.
  {
    name: 'an escape sequence in an error body',
    exit: 1,
    script: onGet((req, reply) => {
      const body = `${ESC}boom\u0007 \u009b2J`;
      reply.socket.write(`HTTP/1.1 500 Internal\r\ncontent-type: text/plain\r\ncontent-length: ${Buffer.byteLength(body, 'latin1')}\r\n\r\n`);
      reply.socket.write(body, 'latin1');
    }),
  },
  {
    name: 'an escape sequence in an XML error body',
    exit: 1,
    script: onGet((req, reply) => {
      const body = `<Error><Code>Nope${ESC}</Code><Message>${ESC}bad\u0007</Message></Error>`;
      reply.socket.write(`HTTP/1.1 403 Forbidden\r\ncontent-length: ${body.length}\r\n\r\n${body}`);
    }),
  },
  {
    name: 'an escape sequence in a Content-Range',
    exit: 1,
    says: /Content-Range/,
    script: onGet((req, reply) => reply.socket.write(reply.head({ 'content-range': `bytes ${ESC}0-1/2` }))),
  },
  {
    name: 'an escape sequence in a status reason and a Content-Type',
    exit: 1,
    script: onGet((req, reply) => reply.socket.write(reply.head({ 'content-type': `text/html${ESC}` }, `HTTP/1.1 206 ${ESC}Partial`))),
  },
  {
    name: 'an escape sequence in a status line that is not HTTP',
    exit: 1,
    script: onGet((req, reply) => reply.socket.write(`HTTP/1.1 2${ESC}6 OK\r\n\r\n`)),
  },
  {
    name: 'an ETag with a bare CR',
    exit: 1,
    says: /bad header line/,
    script: (req, reply) => reply.socket.write(reply.head({ etag: '"a\rb"' })),
  },
  {
    name: 'an ETag with a NUL',
    exit: 1,
    says: /bad header line/,
    script: (req, reply) => reply.socket.write(reply.head({ etag: '"a\u0000b"' })),
  },
  // 8. Absurd sizes.
  {
    name: 'HEAD Content-Length 9007199254740991',
    exit: 1,
    says: /ERR_NO_SPACE/,
    script: (req, reply) => (req.method === 'HEAD' ? reply.socket.write(reply.head({ 'content-length': Number.MAX_SAFE_INTEGER })) : reply.correct()),
  },
  {
    name: 'HEAD Content-Length 9007199254740991 with --chunk-size 64KiB',
    exit: 1,
    says: /ERR_NO_SPACE/,
    flags: ['--connections', '4', '--chunk-size', '64KiB', '--stall-timeout', '2s'],
    script: (req, reply) => (req.method === 'HEAD' ? reply.socket.write(reply.head({ 'content-length': Number.MAX_SAFE_INTEGER })) : reply.correct()),
  },
  {
    name: 'HEAD without a size, then a 416 for byte 0 naming 10^20 bytes',
    exit: 1,
    says: /416.*\[ERR_BAD_RESPONSE\]/,
    script: (req, reply) => {
      if (req.method === 'HEAD') return reply.socket.write(reply.head({ 'content-length': null }));
      if (req.range?.start === 0 && req.range.end === 1) {
        return reply.socket.write(`HTTP/1.1 416 Range Not Satisfiable\r\ncontent-range: bytes */1${'0'.repeat(20)}\r\ncontent-length: 0\r\n\r\n`);
      }
      reply.correct();
    },
  },
  // Classes that held before; they must keep holding.
  {
    name: 'bodies cut short mid-way on every first request of a range',
    exit: 0,
    script: onGet((req, reply) => {
      const body = reply.body();
      if (req.range && req.range.start % MiB === 0) {
        reply.socket.write(reply.head());
        reply.socket.end(body.subarray(0, body.length >> 1));
      } else reply.correct();
    }),
  },
  {
    name: 'two different Content-Lengths',
    exit: 1,
    says: /Content-Length/,
    script: onGet((req, reply) => reply.socket.write(reply.head().replace('\r\n\r\n', '\r\ncontent-length: 5\r\n\r\n'))),
  },
  {
    name: 'a bad chunk size line',
    exit: 1,
    says: /chunk size/,
    script: onGet((req, reply) => reply.socket.write(`${chunkedHead(reply)}zz${ESC}\r\n`)),
  },
  {
    name: 'garbage for a status line',
    exit: 1,
    says: /status line/,
    script: onGet((req, reply) => reply.socket.write('HTTP/1.1 2OO OK\r\n\r\n')),
  },
  {
    name: '1xx heads before each answer',
    exit: 0,
    script: (req, reply) => {
      reply.socket.write('HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </x>\r\n\r\n');
      reply.correct();
    },
  },
  {
    name: 'a redirect loop',
    exit: 1,
    says: /redirects/,
    script: (req, reply) => reply.socket.write(`HTTP/1.1 302 Found\r\nlocation: ${req.path}\r\ncontent-length: 0\r\n\r\n`),
  },
  {
    name: 'every connection closed right after its response (keep-alive race)',
    exit: 0,
    script: (req, reply) => {
      reply.correct();
      reply.socket.end();
    },
  },
  {
    name: 'bytes past the Content-Length',
    exit: 0,
    script: onGet((req, reply) => {
      reply.correct();
      reply.socket.write('HTTP/1.1 200 OK\r\n\r\nextra');
    }),
  },
  {
    name: 'a 206 naming other bytes than asked',
    exit: 1,
    says: /Content-Range/,
    script: onGet((req, reply) => reply.socket.write(reply.head({ 'content-range': `bytes 1-${MiB}/${SIZE}` }))),
  },
];

cliDescribe('roboflow download against a hostile server', () => {
  for (const c of CASES) {
    it(c.name, async () => {
      const server = await startHostileServer({ size: SIZE, script: c.script });
      const dest = path.join(dir, `${c.name.replace(/[^a-z0-9]+/gi, '-')}.bin`);
      try {
        const first = await download(server.url, dest, c.flags ?? FLAGS);
        await expectClean(first, dest, server.object);
        if (c.exit !== 'either') expect(first.code, escapeControl(first.stderr)).toBe(c.exit);
        if (c.says) expect(first.stderr).toMatch(c.says);
        if (first.code === 0) return;
        // Whatever the first run kept as resumable must be good: with the server correct now,
        // the same command produces exactly the object.
        server.script = undefined;
        const second = await download(server.url, dest);
        await expectClean(second, dest, server.object);
        expect(second.code, escapeControl(second.stderr)).toBe(0);
      } finally {
        await server.close();
      }
    }, 2 * KILL_AFTER_MS);
  }

  it('honours ROBOFLOW_HEADERS_TIMEOUT', async () => {
    const server = await startHostileServer({
      size: SIZE,
      script: onGet((req, reply) => reply.socket.write('HTTP/1.1 206 Partial Content\r\n')),
    });
    try {
      const dest = path.join(dir, 'headers-timeout.bin');
      const run = await download(server.url, dest, ['--connections', '4', '--chunk-size', '1MiB'], { ROBOFLOW_HEADERS_TIMEOUT: '300ms' });
      await expectClean(run, dest, server.object);
      expect(run.stderr).toMatch(/within 300 ms/);
    } finally {
      await server.close();
    }
  }, 2 * KILL_AFTER_MS);
});

cliDescribe('roboflow download from s3:// and oss:// against a hostile store', () => {
  /** How each S3 source reaches the store: the same raw server, path-style (an IP endpoint). */
  const stores = {
    // GetObject through the AWS SDK, whose Body is whatever the reading client's transport made.
    oss: (endpoint: string) => ({ OSS_ENDPOINT: endpoint, OSS_ACCESS_KEY_ID: 'AKIDHOSTILE', OSS_ACCESS_KEY_SECRET: 'secret' }),
    // A HEAD and presigned GETs signed without the SDK.
    s3: (endpoint: string) => ({
      AWS_ENDPOINT_URL: endpoint,
      AWS_ACCESS_KEY_ID: 'AKIDHOSTILE',
      AWS_SECRET_ACCESS_KEY: 'secret',
      AWS_REGION: 'us-east-1',
      AWS_EC2_METADATA_DISABLED: 'true',
      AWS_CONFIG_FILE: path.join(dir, 'no-such-config'),
      AWS_SHARED_CREDENTIALS_FILE: path.join(dir, 'no-such-credentials'),
    }),
  };
  const bodies: Record<string, Script> = {
    'a chunked 206 with 10 junk bytes before the range': onGet((req, reply) => {
      reply.socket.write(chunkedHead(reply));
      reply.socket.write(chunked(Buffer.concat([Buffer.alloc(10, 0x41), reply.body()])));
    }),
    // The SDK reports the Content-Length header; the connection reads the body as chunked.
    'a chunked 206 beside a Content-Length of the range, 10 junk bytes before the range': onGet((req, reply) => {
      reply.socket.write(reply.head({ 'transfer-encoding': 'chunked' }));
      reply.socket.write(chunked(Buffer.concat([Buffer.alloc(10, 0x41), reply.body()])));
    }),
  };
  for (const [kind, env] of Object.entries(stores)) {
    for (const [name, script] of Object.entries(bodies)) {
      it(`${kind}://: ${name} leaves nothing of it resumable`, async () => {
        const server = await startHostileServer({ size: SIZE, path: '/hostile/object.bin', script });
        const endpoint = new URL(server.url).origin;
        const dest = path.join(dir, `${kind}-${name.replace(/[^a-z0-9]+/gi, '-')}.bin`);
        const url = `${kind}://hostile/object.bin`;
        try {
          const first = await download(url, dest, FLAGS, env(endpoint));
          await expectClean(first, dest, server.object);
          expect(first.code, escapeControl(first.stderr)).toBe(1);
          expect(first.stderr).toMatch(/more bytes than asked/);
          // Every GET was answered so: not one byte of any body may be on record.
          const state = JSON.parse(await readFile(`${dest}.roboflow-state.json`, 'utf8')) as { completed: string; partial?: unknown };
          expect(state.partial).toBeUndefined();
          expect(Buffer.from(state.completed, 'base64').every((b) => b === 0)).toBe(true);
          expect(server.requests.some((r) => r.method === 'GET' && r.range?.start === 0)).toBe(true);
          server.script = undefined;
          const second = await download(url, dest, FLAGS, env(endpoint));
          await expectClean(second, dest, server.object);
          expect(second.code, escapeControl(second.stderr)).toBe(0);
        } finally {
          await server.close();
        }
      }, 2 * KILL_AFTER_MS);
    }
  }
});

describe('the fine points', () => {
  it('reads the size of a 416 only when it is a safe integer', () => {
    expect(parseUnsatisfiedRange('bytes */0')).toBe(0);
    expect(parseUnsatisfiedRange(' Bytes */3145728 ')).toBe(3145728);
    expect(parseUnsatisfiedRange(`bytes */${Number.MAX_SAFE_INTEGER}`)).toBe(Number.MAX_SAFE_INTEGER);
    expect(parseUnsatisfiedRange(`bytes */${Number.MAX_SAFE_INTEGER + 1}`)).toBeUndefined();
    expect(parseUnsatisfiedRange(`bytes */1${'0'.repeat(20)}`)).toBeUndefined();
    expect(parseUnsatisfiedRange('bytes 0-1/2')).toBeUndefined();
    expect(parseUnsatisfiedRange(undefined)).toBeUndefined();
  });

  it('escapes C0, DEL and C1 control characters and nothing else', () => {
    expect(escapeControl(`a${ESC}b\u0000\u007f\u009b\n\tü€`)).toBe('a\\x1b[31mb\\x00\\x7f\\x9b\\x0a\\x09ü€');
  });

  it('reads server delays as asked, bounded, and never waits longer than the retry maximum', () => {
    const get = (h: Record<string, string>) => (n: string) => h[n];
    expect(retryAfterFromHeaders(get({ 'retry-after': '9'.repeat(400) }))).toBe(Number.MAX_SAFE_INTEGER);
    expect(retryAfterFromHeaders(get({ 'x-oss-qos-delay-time': `1${'0'.repeat(30)}` }))).toBe(Number.MAX_SAFE_INTEGER);
    expect(retryAfterFromHeaders(get({ 'retry-after': 'Fri, 31 Dec 9999 23:59:59 GMT' }), 0)).toBe(253402300799000);
    expect(retryAfterFromHeaders(get({ 'retry-after': 'Thu, 01 Jan 1970 00:00:00 GMT' }), 5_000)).toBe(0);
    const err = new RoboflowError('ERR_THROTTLED', 'x', { retryAfterMs: 3_600_000 });
    expect(backoffDelay(1, err, { baseDelayMs: 100, maxDelayMs: 20_000 })).toBe(20_000);
    const endless = new RoboflowError('ERR_THROTTLED', 'x', { retryAfterMs: Number.MAX_SAFE_INTEGER });
    expect(backoffDelay(1, endless, { baseDelayMs: 100, maxDelayMs: Number.MAX_SAFE_INTEGER })).toBe(MAX_TIMER_MS);
  });

  /** One raw answer to one GET through an `Http1Pool`. */
  async function answer(bytes: string): Promise<{ status: number; headers: Readonly<Record<string, string>>; body: string }> {
    const { createServer } = await import('node:net');
    const srv = createServer((socket) => {
      socket.on('error', () => undefined);
      socket.once('data', () => socket.end(Buffer.from(bytes, 'latin1')));
    });
    await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
    const port = (srv.address() as { port: number }).port;
    const pool = new Http1Pool(`http://127.0.0.1:${port}`, { maxConnections: 1, headersTimeoutMs: 5_000 });
    try {
      const res = await pool.request({ method: 'GET', path: '/', headers: {} });
      const chunks: Buffer[] = [];
      for await (const c of res.body) chunks.push(c as Buffer);
      return { status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks).toString('latin1') };
    } finally {
      await pool.destroy();
      srv.close();
    }
  }

  it('parses heads whose lines end in LF, CRLF or a mix, the body starting right after the empty line', async () => {
    for (const head of ['HTTP/1.1 200 OK\nx-a: 1\ncontent-length: 3\n\n', 'HTTP/1.1 200 OK\r\nx-a: 1\ncontent-length: 3\r\n\n', 'HTTP/1.1 200 OK\nx-a: 1\ncontent-length: 3\n\r\n']) {
      const res = await answer(`${head}abc`);
      expect(res.status).toBe(200);
      expect(res.headers['x-a']).toBe('1');
      expect(res.body).toBe('abc');
    }
  });

  it('refuses header lines with a bare CR, a NUL, white space before the colon or control bytes in the name; messages escape them', async () => {
    for (const line of ['etag: "a\rb"', 'etag: "a\u0000b"', 'etag : "x"', `x-${ESC}: 1`]) {
      const err = await rejection(answer(`HTTP/1.1 200 OK\r\n${line}\r\ncontent-length: 0\r\n\r\n`));
      expect(err.code, line).toBe('ERR_BAD_RESPONSE');
      expect(RAW_CONTROL.test(err.message), err.message).toBe(false);
    }
  });

  it('the low-speed limit leaves a slow but steady body alone and retries one below it', async () => {
    const KiB = 1024;
    // 2 KiB every 100 ms: 20 KiB/s per connection, slow but steady.
    const steady: Script = onGet((req, reply) => {
      reply.socket.write(reply.head());
      const body = reply.body();
      let at = 0;
      reply.every(100, () => {
        reply.socket.write(body.subarray(at, at + 2 * KiB));
        at += 2 * KiB;
      });
    });
    const server = await startHostileServer({ size: 96 * KiB, script: steady });
    const run = async (lowSpeedLimitBytes: number, name: string) => {
      const d = new ParallelDownloader({
        connections: 3,
        chunkSize: 32 * KiB,
        stallTimeoutMs: 2_000,
        lowSpeedLimitBytes,
        lowSpeedTimeMs: 500,
        retry: { maxAttempts: 2, baseDelayMs: 5, maxDelayMs: 50 },
      });
      try {
        return await d.download(server.url, path.join(dir, name)).then(
          (r) => ({ ok: true as const, retries: r.retries }),
          (err: unknown) => ({ ok: false as const, err: err as RoboflowError }),
        );
      } finally {
        await d.close();
      }
    };
    try {
      const slow = await run(KiB, 'steady.bin');
      expect(slow).toEqual({ ok: true, retries: 0 });
      expect((await readFile(path.join(dir, 'steady.bin'))).equals(server.object)).toBe(true);
      // Below a 64 KiB/s limit every range is given up each window and retried from where it
      // stopped; each attempt moves on by more than an eighth of its chunk, so none runs out of
      // attempts, and the bytes are the object's.
      const retried: string[] = [];
      const off = channels.rangeRetry.subscribe((e) => retried.push(e.code));
      try {
        const strict = await run(64 * KiB, 'too-slow.bin');
        expect(strict.ok).toBe(true);
        expect(strict.ok && strict.retries).toBeGreaterThan(0);
        expect(new Set(retried)).toEqual(new Set(['ERR_STALLED']));
        expect((await readFile(path.join(dir, 'too-slow.bin'))).equals(server.object)).toBe(true);
      } finally {
        off();
      }
    } finally {
      await server.close();
    }
  }, 30_000);
});
