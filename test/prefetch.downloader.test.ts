import { createHash } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { createReadStream } from 'node:fs';
import { mkdtemp, open, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { crc32 } from 'node:zlib';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { channels } from '../src/diagnostics.js';
import { RoboflowError } from '../src/errors.js';
import { ConcurrencyLimiter } from '../src/prefetch/concurrency.js';
import { ParallelDownloader, type ParallelDownloaderOptions } from '../src/prefetch/downloader.js';
import {
  pageCacheBootId,
  partialPaths,
  readResumeState,
  removePartial,
  STATE_VERSION,
  writeResumeState,
} from '../src/prefetch/resume-state.js';
import { ChunkSet } from '../src/prefetch/ranges.js';
import { ObjectServer } from './support/object-server.js';
import type { DownloadOptions, DownloadProgress } from '../src/types.js';
import { itFull } from './tier.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const CHUNK = 64 * KiB;
const BUCKET = 'data';
const S3_ENV = { AWS_ACCESS_KEY_ID: 'test', AWS_SECRET_ACCESS_KEY: 'test', AWS_REGION: 'us-east-1' };

let server: ObjectServer;
let dir: string;
const downloaders: ParallelDownloader[] = [];

beforeAll(async () => {
  server = await ObjectServer.start();
});
afterAll(async () => {
  await server.close();
});
beforeEach(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'roboflow-'));
  server.clearFaults();
  server.clearRequests();
  server.setRateLimit(undefined);
  server.setFirstByteLatency(0);
});
afterEach(async () => {
  await Promise.all(downloaders.splice(0).map((d) => d.destroy()));
  await rm(dir, { recursive: true, force: true });
});

function downloader(extra: ParallelDownloaderOptions = {}): ParallelDownloader {
  const d = new ParallelDownloader({
    connections: 4,
    chunkSize: CHUNK,
    stallTimeoutMs: 5_000,
    retry: { baseDelayMs: 5, maxDelayMs: 50 },
    storage: { endpoint: server.endpoint, env: S3_ENV },
    ...extra,
  });
  downloaders.push(d);
  return d;
}

async function sha256File(file: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(file)) h.update(chunk as Buffer);
  return h.digest('hex');
}

function put(key: string, size: number, seed = size + 1): void {
  server.putObject(BUCKET, key, { generated: { size, seed } });
}

/** A generated object with the FULL_OBJECT CRC32 current SDKs upload; its bytes and the CRC32. */
function putWithCrc32(key: string, size: number, seed: number): { bytes: Buffer; sum: Buffer } {
  put(`${key}.src`, size, seed);
  const bytes = server.objectBytes(BUCKET, `${key}.src`);
  const sum = Buffer.alloc(4);
  sum.writeUInt32BE(crc32(bytes));
  server.putObject(BUCKET, key, bytes, { fullObjectChecksums: { crc32: sum.toString('base64') } });
  return { bytes, sum };
}

/**
 * Downloads `url` at 1 MiB/s per connection and aborts once 3 chunks are recorded as durable;
 * expects ERR_ABORTED, lifts the rate cap, and returns the resume state left behind.
 */
async function interruptedDownload(url: string, dest: string, opts: DownloadOptions = {}) {
  server.setRateLimit(1 * MiB);
  const ac = new AbortController();
  const running = downloader().download(url, dest, { ...opts, signal: ac.signal });
  for (;;) {
    const st = await readResumeState(partialPaths(dest).state);
    if (st && st.completed.size >= 3) break;
    await new Promise((r) => setTimeout(r, 20));
  }
  ac.abort();
  expect((await caught(running)).code).toBe('ERR_ABORTED');
  server.setRateLimit(undefined);
  const state = await readResumeState(partialPaths(dest).state);
  expect(state).toBeTruthy();
  return state!;
}

function gets(key?: string) {
  return server.requests.filter((r) => r.method === 'GET' && (key === undefined || r.key === key));
}

async function caught(p: Promise<unknown>): Promise<RoboflowError> {
  try {
    await p;
  } catch (err) {
    expect(err).toBeInstanceOf(RoboflowError);
    return err as RoboflowError;
  }
  throw new Error('expected the promise to reject');
}

async function exists(file: string): Promise<boolean> {
  return stat(file).then(
    () => true,
    () => false,
  );
}

/**
 * An object of `size` bytes on the server and the temp file of a crashed download of it over
 * HTTP: the object's bytes in `spans`, garbage elsewhere. The caller writes the state file.
 */
async function crashedDownload(key: string, size: number, spans: readonly (readonly [number, number])[]) {
  put(key, size);
  const dest = path.join(dir, key);
  const { temp, state } = partialPaths(dest);
  const bytes = server.objectBytes(BUCKET, key);
  const file = Buffer.alloc(size, 0xee);
  for (const [start, end] of spans) bytes.copy(file, start, start, end);
  await writeFile(temp, file);
  return { url: server.httpUrl(BUCKET, key), dest, state, etag: await server.objectEtag(BUCKET, key) };
}

type Scheme = 'http' | 's3' | 'file';
function urlFor(scheme: Scheme, key: string): string {
  switch (scheme) {
    case 'http':
      return server.httpUrl(BUCKET, key);
    case 's3':
      return server.s3Url(BUCKET, key);
    case 'file':
      return `file://${path.join(dir, 'src', key)}`;
  }
}

describe.each(['http', 's3', 'file'] as const)('download over %s', (scheme) => {
  it.each([
    ['empty', 0],
    ['1 byte', 1],
    ['chunk - 1', CHUNK - 1],
    ['chunk', CHUNK],
    ['chunk + 1', CHUNK + 1],
    ['many chunks', 37 * CHUNK + 123],
  ])('%s object (%d bytes) arrives byte-identical', async (_name, size) => {
    const key = `obj-${size}.bin`;
    put(key, size);
    if (scheme === 'file') {
      await rm(path.join(dir, 'src'), { recursive: true, force: true }).catch(() => undefined);
      await import('node:fs/promises').then((fs) => fs.mkdir(path.join(dir, 'src'), { recursive: true }));
      await writeFile(path.join(dir, 'src', key), server.objectBytes(BUCKET, key));
    }
    const dest = path.join(dir, 'out.bin');
    const progress: DownloadProgress[] = [];
    const result = await downloader().download(urlFor(scheme, key), dest, { onProgress: (p) => progress.push(p) });
    expect(await sha256File(dest)).toBe(await server.objectSha256(BUCKET, key));
    expect(result).toMatchObject({ bytes: size, resumedBytes: 0, retries: 0, restarts: 0, dest });
    expect(result.verified).toContain('size');
    // S3 vouches for the MD5 of a single-part object through its ETag.
    if (scheme === 's3') expect(result.verified).toContain('md5');
    expect(progress.at(-1)).toMatchObject({ bytesDone: size, total: size });
    // Nothing but the result is left beside it.
    expect((await readdir(dir)).filter((f) => f !== 'src')).toEqual(['out.bin']);
    if (scheme !== 'file') {
      const ranges = gets(key);
      expect(ranges.length).toBe(Math.ceil(size / CHUNK));
      // Every range request was guarded by the ETag of the version we stat'ed.
      for (const r of ranges) expect(r.ifMatch).toBe(await server.objectEtag(BUCKET, key));
    }
  });
});

describe('faults', () => {
  const size = 16 * CHUNK + 77;

  it('honours 503 Retry-After and retries only the failed ranges', async () => {
    put('slow.bin', size);
    server.addFault({ fault: { kind: 'status', status: 503, retryAfterSeconds: 1 }, times: 2 });
    const retried: number[] = [];
    const off = channels.rangeRetry.subscribe((e) => retried.push(e.delayMs));
    try {
      const dest = path.join(dir, 'slow.bin');
      // The longest wait allowed covers the server's second (a longer one is not waited for).
      const result = await downloader({ retry: { baseDelayMs: 5, maxDelayMs: 1_500 } }).download(server.httpUrl(BUCKET, 'slow.bin'), dest);
      expect(await sha256File(dest)).toBe(await server.objectSha256(BUCKET, 'slow.bin'));
      expect(result.retries).toBe(2);
      expect(gets('slow.bin').length).toBe(17 + 2);
      // The server asked for a second; every retry waited at least that long.
      expect(retried.length).toBe(2);
      for (const d of retried) expect(d).toBeGreaterThanOrEqual(1000);
      // Seen from the server: two ranges were asked for again only after the second had passed.
      const log = gets('slow.bin');
      const failedAt = Math.max(...log.filter((r) => r.status === 503).map((r) => r.startedAt));
      expect(log.filter((r) => r.status === 206 && r.startedAt - failedAt >= 990).length).toBeGreaterThanOrEqual(2);
      expect(log.filter((r) => r.status === 206).length).toBe(17);
    } finally {
      off();
    }
  });

  it('after a reset, re-requests only the rest of the range', async () => {
    put('reset.bin', size);
    server.addFault({ fault: { kind: 'reset', afterBytes: 20_000 }, skip: 3, times: 1 });
    const dest = path.join(dir, 'reset.bin');
    const result = await downloader().download(server.httpUrl(BUCKET, 'reset.bin'), dest);
    expect(await sha256File(dest)).toBe(await server.objectSha256(BUCKET, 'reset.bin'));
    expect(result.retries).toBe(1);
    const log = gets('reset.bin');
    const broken = log.find((r) => r.fault === 'reset')!;
    const retry = log.find((r) => r !== broken && r.range?.end === broken.range!.end && r.range.start !== broken.range!.start);
    expect(retry).toBeDefined();
    // Resumed past the start of the range, and not past what the server had sent.
    expect(retry!.range!.start).toBeGreaterThan(broken.range!.start);
    expect(retry!.range!.start).toBeLessThanOrEqual(broken.range!.start + 20_000);
    expect(retry!.ifMatch).toBe(broken.ifMatch);
  });

  it('retries a truncated body from where it ended', async () => {
    put('trunc.bin', size);
    server.addFault({ fault: { kind: 'truncate', afterBytes: 10_000 }, skip: 5, times: 2 });
    const dest = path.join(dir, 'trunc.bin');
    const result = await downloader().download(server.httpUrl(BUCKET, 'trunc.bin'), dest);
    expect(await sha256File(dest)).toBe(await server.objectSha256(BUCKET, 'trunc.bin'));
    expect(result.retries).toBe(2);
    const log = gets('trunc.bin');
    for (const cut of log.filter((r) => r.fault === 'truncate')) {
      expect(log.some((r) => r.range?.end === cut.range!.end && r.range.start > cut.range!.start)).toBe(true);
    }
  });

  it('detects a stalled body and retries it', async () => {
    put('stall.bin', size);
    server.addFault({ fault: { kind: 'stall', afterBytes: 5_000 }, skip: 2, times: 1 });
    const codes: string[] = [];
    const off = channels.rangeRetry.subscribe((e) => codes.push(e.code));
    try {
      const dest = path.join(dir, 'stall.bin');
      const result = await downloader({ stallTimeoutMs: 300 }).download(server.httpUrl(BUCKET, 'stall.bin'), dest);
      expect(await sha256File(dest)).toBe(await server.objectSha256(BUCKET, 'stall.bin'));
      expect(result.retries).toBe(1);
      expect(codes).toEqual(['ERR_STALLED']);
    } finally {
      off();
    }
  });

  it('starts over once when the object is replaced mid-download', async () => {
    put('moving.bin', size, 1);
    server.addFault({ fault: { kind: 'replace', body: { generated: { size: size + 5, seed: 2 } } }, skip: 3, times: 1 });
    const dest = path.join(dir, 'moving.bin');
    const result = await downloader({ connections: 2 }).download(server.httpUrl(BUCKET, 'moving.bin'), dest);
    expect(result.restarts).toBe(1);
    expect(result.bytes).toBe(size + 5);
    expect(await sha256File(dest)).toBe(await server.objectSha256(BUCKET, 'moving.bin'));
    expect(result.etag).toBe(await server.objectEtag(BUCKET, 'moving.bin'));
  });

  it('fails with ERR_SOURCE_CHANGED when the object changes twice, leaving nothing', async () => {
    const big = 32 * CHUNK;
    put('flux.bin', big, 1);
    await writeFile(path.join(dir, 'flux.bin'), 'previous version');
    server.addFault({ fault: { kind: 'replace', body: { generated: { size: big, seed: 2 } } }, skip: 2, times: 1 });
    // Sees every GET the first rule does not take; its 13th falls in the second pass.
    server.addFault({ fault: { kind: 'replace', body: { generated: { size: big, seed: 3 } } }, skip: 12, times: 1 });
    const dest = path.join(dir, 'flux.bin');
    const url = server.httpUrl(BUCKET, 'flux.bin');
    const err = await caught(downloader({ connections: 2 }).download(url, dest));
    expect(err.code).toBe('ERR_SOURCE_CHANGED');
    expect(err.message).toContain(`source changed during download of ${url}`);
    // dest is as it was; no partial files of a version that no longer exists.
    expect(await readFile(dest, 'utf8')).toBe('previous version');
    expect(await exists(partialPaths(dest).temp)).toBe(false);
    expect(await exists(partialPaths(dest).state)).toBe(false);
  });

  it.each([
    [403, 'ERR_ACCESS_DENIED'],
    [404, 'ERR_NOT_FOUND'],
  ])('fails at once on a %d for a range, without retries', async (status, code) => {
    put('denied.bin', size);
    server.addFault({ fault: { kind: 'status', status }, times: 1_000 });
    const dest = path.join(dir, 'denied.bin');
    const url = server.httpUrl(BUCKET, 'denied.bin');
    let retries = 0;
    const off = channels.rangeRetry.subscribe(() => retries++);
    try {
      const err = await caught(downloader().download(url, dest));
      expect(err.code).toBe(code);
      expect(err.message).toContain(url);
      expect(err.message).toContain(String(status));
    } finally {
      off();
    }
    expect(retries).toBe(0);
    const log = gets('denied.bin');
    // At most the first request of each of the 4 lanes; none was repeated.
    expect(log.length).toBeGreaterThanOrEqual(1);
    expect(log.length).toBeLessThanOrEqual(4);
    expect(await exists(dest)).toBe(false);
  });

  it('fails at once when the object does not exist (one HEAD, no range request)', async () => {
    const dest = path.join(dir, 'missing.bin');
    const err = await caught(downloader().download(server.httpUrl(BUCKET, 'missing.bin'), dest));
    expect(err.code).toBe('ERR_NOT_FOUND');
    expect(server.requests.filter((r) => r.key === 'missing.bin').length).toBe(1);
    expect(await exists(dest)).toBe(false);
    expect(await exists(partialPaths(dest).temp)).toBe(false);
  });

  it('gives up after maxAttempts on a range that keeps failing', async () => {
    put('flaky.bin', size);
    server.addFault({ fault: { kind: 'status', status: 500 }, match: { key: 'flaky.bin' }, times: 1_000 });
    const dest = path.join(dir, 'flaky.bin');
    const err = await caught(downloader({ retry: { maxAttempts: 3, baseDelayMs: 1, maxDelayMs: 5 } }).download(server.httpUrl(BUCKET, 'flaky.bin'), dest));
    expect(err.code).toBe('ERR_RETRIES_EXHAUSTED');
    expect(err.status).toBe(500);
    expect(err.message).toMatch(/failed 3 times/);
    expect(await exists(dest)).toBe(false);
    // The partial download is kept for a later resume.
    expect(await exists(partialPaths(dest).state)).toBe(true);
  });
});

describe('integrity', () => {
  it('rejects a wrong expected checksum and never promotes the file', async () => {
    put('sum.bin', 5 * CHUNK);
    const dest = path.join(dir, 'sum.bin');
    const err = await caught(
      downloader().download(server.httpUrl(BUCKET, 'sum.bin'), dest, {
        expectedChecksum: { algorithm: 'sha256', hex: '00'.repeat(32) },
      }),
    );
    expect(err.code).toBe('ERR_CHECKSUM_MISMATCH');
    expect(err.message).toContain('sha256');
    expect(await exists(dest)).toBe(false);
    expect(await exists(partialPaths(dest).temp)).toBe(false);
    expect(await exists(partialPaths(dest).state)).toBe(false);
  });

  it('verifies every algorithm it is given', async () => {
    put('ok.bin', 5 * CHUNK + 3);
    const bytes = server.objectBytes(BUCKET, 'ok.bin');
    const { crc32c } = await import('../src/prefetch/crc.js');
    for (const [algorithm, hex] of [
      ['sha256', createHash('sha256').update(bytes).digest('hex')],
      ['sha1', createHash('sha1').update(bytes).digest('hex')],
      ['md5', createHash('md5').update(bytes).digest('hex')],
      ['crc32', crc32(bytes).toString(16).padStart(8, '0')],
      ['crc32c', crc32c(bytes).toString(16).padStart(8, '0')],
    ] as const) {
      const dest = path.join(dir, `ok-${algorithm}.bin`);
      const result = await downloader().download(server.httpUrl(BUCKET, 'ok.bin'), dest, { expectedChecksum: { algorithm, hex } });
      expect(result.verified).toEqual(['size', algorithm]);
    }
  });

  it('verifies the cheapest checksum the store offers: a FULL_OBJECT CRC32 instead of the MD5 ETag', async () => {
    const bytes = Buffer.from(Array.from({ length: 3 * CHUNK + 5 }, (_, i) => (i * 7) & 0xff));
    const sum = Buffer.alloc(4);
    sum.writeUInt32BE(crc32(bytes));
    server.putObject(BUCKET, 'crc.bin', bytes, { fullObjectChecksums: { crc32: sum.toString('base64') } });
    const ok = await downloader().download(server.s3Url(BUCKET, 'crc.bin'), path.join(dir, 'crc.bin'));
    expect(ok.verified).toEqual(['size', 'crc32']);
    expect((await readFile(path.join(dir, 'crc.bin'))).equals(bytes)).toBe(true);
    // The MD5 ETag is right and the CRC32 wrong: the CRC32 is what was checked, so it fails.
    server.putObject(BUCKET, 'bad-crc.bin', bytes, { fullObjectChecksums: { crc32: 'AAAAAA==' } });
    const dest = path.join(dir, 'bad-crc.bin');
    const err = await caught(downloader().download(server.s3Url(BUCKET, 'bad-crc.bin'), dest));
    expect(err.code).toBe('ERR_CHECKSUM_MISMATCH');
    expect(err.message).toMatch(/crc32 expected 00000000/);
    expect(await exists(dest)).toBe(false);
  });

  itFull('verifies a CRC32 alone from the writer thread\'s batch CRCs on a large object, and catches a wrong one', async () => {
    const { bytes, sum } = putWithCrc32('big-crc.bin', 64 * MiB + 12_345, 31);
    const dest = path.join(dir, 'big-crc.bin');
    const ok = await downloader().download(server.s3Url(BUCKET, 'big-crc.bin'), dest);
    expect(ok.verified).toEqual(['size', 'crc32']);
    expect(createHash('sha256').update(await readFile(dest)).digest('hex')).toBe(createHash('sha256').update(bytes).digest('hex'));
    server.putObject(BUCKET, 'big-bad-crc.bin', bytes, { fullObjectChecksums: { crc32: 'AAAAAA==' } });
    const bad = path.join(dir, 'big-bad-crc.bin');
    const err = await caught(downloader().download(server.s3Url(BUCKET, 'big-bad-crc.bin'), bad));
    expect(err.code).toBe('ERR_CHECKSUM_MISMATCH');
    expect(err.message).toContain(`crc32 expected 00000000, got ${sum.toString('hex')}`);
    expect(await exists(bad)).toBe(false);
    expect(await exists(partialPaths(bad).temp)).toBe(false);
  });

  itFull('verifies a resumed large CRC32 download from this run\'s batch CRCs plus the bytes it had, and catches damage to those', async () => {
    const { bytes } = putWithCrc32('resume-crc.bin', 64 * MiB + 777, 37);
    const url = server.s3Url(BUCKET, 'resume-crc.bin');
    const dest = path.join(dir, 'resume-crc.bin');
    await interruptedDownload(url, dest);
    const ok = await downloader().resume(url, dest);
    expect(ok.resumedBytes).toBeGreaterThan(0);
    expect(ok.verified).toEqual(['size', 'crc32']);
    expect(createHash('sha256').update(await readFile(dest)).digest('hex')).toBe(createHash('sha256').update(bytes).digest('hex'));

    // A byte of what the first run made durable changes before the resume: no batch of the second
    // run covers it, so it is read back, and the CRC32 catches it.
    const damaged = path.join(dir, 'resume-crc-damaged.bin');
    const state = await interruptedDownload(url, damaged);
    const first = Math.min(...state.completed);
    const fh = await open(partialPaths(damaged).temp, 'r+');
    try {
      const at = first * CHUNK + 100;
      const b = Buffer.alloc(1);
      await fh.read(b, 0, 1, at);
      b[0] = b[0]! ^ 0xff;
      await fh.write(b, 0, 1, at);
    } finally {
      await fh.close();
    }
    const err = await caught(downloader().resume(url, damaged));
    expect(err.code).toBe('ERR_CHECKSUM_MISMATCH');
    expect(await exists(damaged)).toBe(false);
  });

  it('skips the store\'s MD5 when told to, but still checks a checksum the caller gives', async () => {
    put('etag.bin', 3 * CHUNK + 1);
    const url = server.s3Url(BUCKET, 'etag.bin');
    const plain = await downloader().download(url, path.join(dir, 'plain.bin'), { verifySourceChecksums: false });
    expect(plain.verified).toEqual(['size']);
    const wrong = await caught(
      downloader().download(url, path.join(dir, 'wrong.bin'), {
        verifySourceChecksums: false,
        expectedChecksum: { algorithm: 'sha256', hex: '11'.repeat(32) },
      }),
    );
    expect(wrong.code).toBe('ERR_CHECKSUM_MISMATCH');
    expect(await exists(path.join(dir, 'wrong.bin'))).toBe(false);
  });

  it('fails with ERR_SIZE_MISMATCH when the caller expects another size', async () => {
    put('sized.bin', 3 * CHUNK);
    const dest = path.join(dir, 'sized.bin');
    const err = await caught(downloader().download(server.httpUrl(BUCKET, 'sized.bin'), dest, { expectedSize: 3 * CHUNK + 1 }));
    expect(err.code).toBe('ERR_SIZE_MISMATCH');
    expect(gets('sized.bin').length).toBe(0);
    expect(await exists(dest)).toBe(false);
  });

  it('downloads from a server without range support in one request', async () => {
    const body = Buffer.alloc(3 * CHUNK + 10, 7);
    body.write('hello', 1000);
    const requests: string[] = [];
    const plain = http.createServer((req, res) => {
      requests.push(`${req.method} ${req.headers.range ?? ''}`);
      res.writeHead(200, { 'content-length': body.length, 'last-modified': new Date(0).toUTCString() });
      res.end(req.method === 'HEAD' ? undefined : body);
    });
    await new Promise<void>((resolve) => plain.listen(0, '127.0.0.1', resolve));
    try {
      const { port } = plain.address() as AddressInfo;
      const dest = path.join(dir, 'plain.bin');
      const result = await downloader().download(`http://127.0.0.1:${port}/plain.bin`, dest);
      expect(await readFile(dest)).toEqual(body);
      expect(result.bytes).toBe(body.length);
      expect(result.retries).toBe(0);
      // Besides the stats (HEAD, and a one-byte probe that learns ranges are not served), the
      // data came in exactly one request; a second stat guards an object without ETag.
      const data = requests.filter((r) => r.startsWith('GET') && r !== 'GET bytes=0-0');
      expect(data).toHaveLength(1);
      expect(requests.filter((r) => r.startsWith('HEAD'))).toHaveLength(2);
    } finally {
      plain.closeAllConnections();
      await new Promise<void>((resolve) => plain.close(() => resolve()));
    }
  });
});

describe('resume', () => {
  it('aborts on the signal, keeps the partial, and resume() finishes it', async () => {
    const size = 48 * CHUNK;
    put('abort.bin', size);
    const dest = path.join(dir, 'abort.bin');
    const url = server.httpUrl(BUCKET, 'abort.bin');
    const state = await interruptedDownload(url, dest);
    expect(await exists(dest)).toBe(false);
    expect(state.completed.size).toBeGreaterThanOrEqual(3);

    server.clearRequests();
    const result = await downloader().resume(url, dest);
    expect(await sha256File(dest)).toBe(await server.objectSha256(BUCKET, 'abort.bin'));
    expect(result.resumedBytes).toBeGreaterThanOrEqual(state.completed.size * CHUNK);
    // The second run fetched exactly the chunks the first had not recorded.
    expect(server.bytesServed(BUCKET, 'abort.bin')).toBe(size - result.resumedBytes);
    expect(await exists(partialPaths(dest).state)).toBe(false);
    expect(await exists(partialPaths(dest).temp)).toBe(false);
    // The bytes were fdatasynced: the state holds in any boot.
    expect(state.bootId).toBeUndefined();
  });

  it("with durability 'process' the state names this boot, and a resume in this boot uses it", async () => {
    const size = 48 * CHUNK;
    put('process.bin', size);
    const dest = path.join(dir, 'process.bin');
    const url = server.httpUrl(BUCKET, 'process.bin');
    const state = await interruptedDownload(url, dest, { durability: 'process' });
    expect(state.bootId).toBe(pageCacheBootId());
    server.clearRequests();
    const result = await downloader().resume(url, dest, { durability: 'process' });
    expect(await sha256File(dest)).toBe(await server.objectSha256(BUCKET, 'process.bin'));
    expect(result.resumedBytes).toBeGreaterThanOrEqual(state.completed.size * CHUNK);
    expect(server.bytesServed(BUCKET, 'process.bin')).toBe(size - result.resumedBytes);
    expect(await exists(partialPaths(dest).state)).toBe(false);
  });

  it('discards the page-cache state of another boot and fetches everything again', async () => {
    const size = 6 * CHUNK;
    // The temp file holds the right bytes: only the boot id says they may not be on disk.
    const { url, dest, state, etag } = await crashedDownload('reboot.bin', size, [[0, size]]);
    const all = new ChunkSet(6);
    for (let i = 0; i < 6; i++) all.add(i);
    await writeResumeState(state, { version: STATE_VERSION, url, size, chunkSize: CHUNK, etag, completed: all, bootId: 'a-boot-before-this-one' });
    const result = await downloader().download(url, dest);
    expect(result.resumedBytes).toBe(0);
    expect(server.bytesServed(BUCKET, 'reboot.bin')).toBe(size);
    expect(await sha256File(dest)).toBe(await server.objectSha256(BUCKET, 'reboot.bin'));
  });

  it('rejects with the RoboflowError the signal was aborted with', async () => {
    put('reason.bin', 16 * CHUNK);
    server.setRateLimit(256 * KiB);
    const ac = new AbortController();
    const running = downloader().download(server.httpUrl(BUCKET, 'reason.bin'), path.join(dir, 'reason.bin'), { signal: ac.signal });
    setTimeout(() => ac.abort(new RoboflowError('ERR_ABORTED', 'shutting down for maintenance')), 100);
    const err = await caught(running);
    expect(err.message).toBe('shutting down for maintenance');
  });

  it('resume() without a partial downloads everything and reports resumedBytes 0', async () => {
    put('fresh.bin', 3 * CHUNK);
    const dest = path.join(dir, 'fresh.bin');
    const result = await downloader().resume(server.httpUrl(BUCKET, 'fresh.bin'), dest);
    expect(result.resumedBytes).toBe(0);
    expect(await sha256File(dest)).toBe(await server.objectSha256(BUCKET, 'fresh.bin'));
  });

  it('discards a corrupt state file and a state of another version', async () => {
    const size = 6 * CHUNK;
    put('stale.bin', size);
    const url = server.httpUrl(BUCKET, 'stale.bin');
    const dest = path.join(dir, 'stale.bin');
    const { temp, state } = partialPaths(dest);
    // Garbage in the temp file that a trusting resume would keep.
    await writeFile(temp, Buffer.alloc(size, 0xee));
    await writeFile(state, '{"version":1,"url":');
    let result = await downloader().download(url, dest);
    expect(result.resumedBytes).toBe(0);
    expect(await sha256File(dest)).toBe(await server.objectSha256(BUCKET, 'stale.bin'));

    await rm(dest);
    const all = new ChunkSet(6);
    for (let i = 0; i < 6; i++) all.add(i);
    await writeFile(temp, Buffer.alloc(size, 0xee));
    await writeResumeState(state, { version: STATE_VERSION, url, size, chunkSize: CHUNK, etag: '"another-version"', completed: all });
    result = await downloader().download(url, dest);
    expect(result.resumedBytes).toBe(0);
    expect(await sha256File(dest)).toBe(await server.objectSha256(BUCKET, 'stale.bin'));
  });

  it('trusts a matching state file (and only the chunks it lists)', async () => {
    const size = 6 * CHUNK;
    put('trust.bin', size);
    const url = server.httpUrl(BUCKET, 'trust.bin');
    const dest = path.join(dir, 'trust.bin');
    const { temp, state } = partialPaths(dest);
    const bytes = server.objectBytes(BUCKET, 'trust.bin');
    const partial = Buffer.alloc(size);
    bytes.copy(partial, 0, 0, 2 * CHUNK);
    await writeFile(temp, partial);
    const done = new ChunkSet(6);
    done.add(0);
    done.add(1);
    const etag = await server.objectEtag(BUCKET, 'trust.bin');
    await writeResumeState(state, { version: STATE_VERSION, url, size, chunkSize: CHUNK, etag, completed: done });
    const result = await downloader().download(url, dest);
    expect(result.resumedBytes).toBe(2 * CHUNK);
    expect(await sha256File(dest)).toBe(await server.objectSha256(BUCKET, 'trust.bin'));
    expect(gets('trust.bin').map((r) => r.range!.start).sort((a, b) => a - b)).toEqual([2, 3, 4, 5].map((i) => i * CHUNK));
  });

  it('continues a chunk after its durable prefix, and only after it', async () => {
    const size = 6 * CHUNK;
    // Chunk 0 whole, 1000 bytes of chunk 2, 1 byte of chunk 5; garbage after each prefix.
    const { url, dest, state, etag } = await crashedDownload('prefix.bin', size, [
      [0, CHUNK],
      [2 * CHUNK, 2 * CHUNK + 1000],
      [5 * CHUNK, 5 * CHUNK + 1],
    ]);
    const done = new ChunkSet(6);
    done.add(0);
    await writeResumeState(state, {
      version: STATE_VERSION,
      url,
      size,
      chunkSize: CHUNK,
      etag,
      completed: done,
      partial: new Map([
        [2, 1000],
        [5, 1],
      ]),
    });
    const result = await downloader().download(url, dest);
    expect(result.resumedBytes).toBe(CHUNK + 1001);
    expect(await sha256File(dest)).toBe(await server.objectSha256(BUCKET, 'prefix.bin'));
    expect(gets('prefix.bin').map((r) => r.range!.start).sort((a, b) => a - b)).toEqual([
      CHUNK,
      2 * CHUNK + 1000,
      3 * CHUNK,
      4 * CHUNK,
      5 * CHUNK + 1,
    ]);
    expect(server.bytesServed(BUCKET, 'prefix.bin')).toBe(size - CHUNK - 1001);
  });

  it('cuts the last round into smaller chunks and records that plan in the state', async () => {
    // 2 connections × 4 MiB over 13 MiB: chunks at 0 and 4 MiB, then 1 MiB chunks from 8 MiB on.
    const size = 13 * MiB;
    put('tail.bin', size);
    const url = server.httpUrl(BUCKET, 'tail.bin');
    const dest = path.join(dir, 'tail.bin');
    server.setRateLimit(16 * MiB);
    const ac = new AbortController();
    const running = downloader({ connections: 2, chunkSize: 4 * MiB }).download(url, dest, { signal: ac.signal });
    let state: Awaited<ReturnType<typeof readResumeState>>;
    for (;;) {
      state = await readResumeState(partialPaths(dest).state);
      if (state && state.completed.size >= 1) break;
      await new Promise((r) => setTimeout(r, 20));
    }
    ac.abort();
    expect((await caught(running)).code).toBe('ERR_ABORTED');
    expect(state.tail).toEqual({ start: 8 * MiB, chunkSize: MiB });
    expect(state.completed.count).toBe(7);

    server.setRateLimit(undefined);
    server.clearRequests();
    const result = await downloader({ connections: 2, chunkSize: 4 * MiB }).download(url, dest);
    expect(await sha256File(dest)).toBe(await server.objectSha256(BUCKET, 'tail.bin'));
    expect(server.bytesServed(BUCKET, 'tail.bin')).toBe(size - result.resumedBytes);
    // Every request of the second run lies within one chunk of the plan, none crosses 8 MiB as
    // a 4 MiB chunk would, and the tail is fetched in 1 MiB chunks.
    for (const r of gets('tail.bin')) {
      const { start, end } = r.range!;
      if (start < 8 * MiB) expect(Math.floor(start / (4 * MiB))).toBe(Math.floor((end - 1) / (4 * MiB)));
      else expect(Math.floor(start / MiB)).toBe(Math.floor((end - 1) / MiB));
    }
    expect(gets('tail.bin').filter((r) => r.range!.start >= 8 * MiB).length).toBeGreaterThanOrEqual(1);
  });

  it("fetches a fresh download's last round in smaller chunks", async () => {
    const size = 13 * MiB;
    put('tail-fresh.bin', size);
    const dest = path.join(dir, 'tail-fresh.bin');
    await downloader({ connections: 2, chunkSize: 4 * MiB }).download(server.httpUrl(BUCKET, 'tail-fresh.bin'), dest);
    expect(await sha256File(dest)).toBe(await server.objectSha256(BUCKET, 'tail-fresh.bin'));
    const ranges = gets('tail-fresh.bin').map((r) => [r.range!.start / MiB, r.range!.end / MiB]).sort((a, b) => a[0]! - b[0]!);
    expect(ranges).toEqual([[0, 4], [4, 8], [8, 9], [9, 10], [10, 11], [11, 12], [12, 13]]);
  });

  it('resumes with the plan the state records, whatever the connections now', async () => {
    const size = 13 * MiB;
    // Written by a run over 2 connections: chunk 0 (4 MiB) and tail chunk 3 ([9, 10) MiB) done,
    // 100 bytes of tail chunk 5 ([11, 12) MiB) durable.
    const { url, dest, state, etag } = await crashedDownload('tail-resume.bin', size, [
      [0, 4 * MiB],
      [9 * MiB, 10 * MiB],
      [11 * MiB, 11 * MiB + 100],
    ]);
    const done = new ChunkSet(7);
    done.add(0);
    done.add(3);
    await writeResumeState(state, {
      version: STATE_VERSION,
      url,
      size,
      chunkSize: 4 * MiB,
      tail: { start: 8 * MiB, chunkSize: MiB },
      etag,
      completed: done,
      partial: new Map([[5, 100]]),
    });
    // A fresh plan over 8 connections would have no tail at all (4 chunks, one round).
    const result = await downloader({ connections: 8, chunkSize: 4 * MiB }).download(url, dest);
    expect(result.resumedBytes).toBe(5 * MiB + 100);
    expect(await sha256File(dest)).toBe(await server.objectSha256(BUCKET, 'tail-resume.bin'));
    const starts = gets('tail-resume.bin').map((r) => r.range!.start).sort((a, b) => a - b);
    expect(starts).toEqual([4 * MiB, 8 * MiB, 10 * MiB, 11 * MiB + 100, 12 * MiB]);
    expect(server.bytesServed(BUCKET, 'tail-resume.bin')).toBe(size - 5 * MiB - 100);
  });

  it('removePartial deletes both files', async () => {
    const dest = path.join(dir, 'x.bin');
    await writeFile(partialPaths(dest).temp, 'a');
    await writeFile(partialPaths(dest).state, 'b');
    await removePartial(dest);
    expect(await readdir(dir)).toEqual([]);
  });
});

describe('life cycle and throughput machinery', () => {
  it('destroy() aborts running downloads, keeps them resumable, and refuses new ones', async () => {
    put('life.bin', 32 * CHUNK);
    server.setRateLimit(512 * KiB);
    const d = downloader();
    const dest = path.join(dir, 'life.bin');
    const running = d.download(server.httpUrl(BUCKET, 'life.bin'), dest);
    await new Promise((r) => setTimeout(r, 150));
    expect(d.activeDownloads).toBe(1);
    await d.destroy();
    const err = await caught(running);
    expect(err.code).toBe('ERR_ABORTED');
    expect(d.activeDownloads).toBe(0);
    expect(await exists(partialPaths(dest).state)).toBe(true);
    expect((await caught(d.download(server.httpUrl(BUCKET, 'life.bin'), dest))).code).toBe('ERR_CLOSED');
    await d.destroy();
    await d.close();
  });

  it('close() waits for running downloads to finish', async () => {
    put('drain.bin', 8 * CHUNK);
    server.setRateLimit(1 * MiB);
    const d = downloader();
    const dest = path.join(dir, 'drain.bin');
    const running = d.download(server.httpUrl(BUCKET, 'drain.bin'), dest);
    await d.close();
    expect(d.activeDownloads).toBe(0);
    await expect(running).resolves.toMatchObject({ bytes: 8 * CHUNK });
    expect(await exists(dest)).toBe(true);
  });

  it('sends the next range request before the current body ends (look-ahead)', async () => {
    put('ahead.bin', 12 * CHUNK);
    server.setRateLimit(1 * MiB);
    server.setFirstByteLatency(30);
    let inFlight = 0;
    let most = 0;
    const off = channels.rangeRequest.subscribe((e) => {
      inFlight += e.delta;
      most = Math.max(most, inFlight);
    });
    try {
      const dest = path.join(dir, 'ahead.bin');
      await downloader({ connections: 1 }).download(server.httpUrl(BUCKET, 'ahead.bin'), dest);
      expect(await sha256File(dest)).toBe(await server.objectSha256(BUCKET, 'ahead.bin'));
    } finally {
      off();
    }
    // One lane, yet two requests overlapped: the next was sent while a body was still streaming.
    expect(most).toBe(2);
    expect(inFlight).toBe(0);
    // And nothing was fetched twice.
    expect(gets('ahead.bin').length).toBe(12);
    expect(server.bytesServed(BUCKET, 'ahead.bin')).toBe(12 * CHUNK);
  });

  it('halves the shared concurrency limit when the store throttles, and still finishes', async () => {
    const throttling = await ObjectServer.start({ maxConcurrentRequests: 2 });
    try {
      // Bodies long enough (256 KiB at 2 MiB/s) that 8 lanes overlap on the server.
      throttling.putObject(BUCKET, 't.bin', { generated: { size: 6 * MiB, seed: 9 } });
      throttling.setRateLimit(2 * MiB);
      const limiter = new ConcurrencyLimiter({ max: 8, decreaseIntervalMs: 50 });
      const limits: number[] = [];
      const off = channels.concurrency.subscribe((e) => limits.push(e.limit));
      const dest = path.join(dir, 't.bin');
      try {
        const d = downloader({ connections: 8, chunkSize: 256 * KiB, limiter, retry: { maxAttempts: 20, baseDelayMs: 5, maxDelayMs: 50 } });
        const result = await d.download(throttling.httpUrl(BUCKET, 't.bin'), dest);
        expect(result.retries).toBeGreaterThan(0);
      } finally {
        off();
      }
      expect(await sha256File(dest)).toBe(await throttling.objectSha256(BUCKET, 't.bin'));
      expect(Math.min(...limits)).toBeLessThan(8);
      expect(throttling.requests.some((r) => r.throttled)).toBe(true);
    } finally {
      await throttling.close();
    }
  });

  it('publishes start, bytes, range and done events', async () => {
    put('events.bin', 5 * CHUNK);
    const seen: string[] = [];
    let bytes = 0;
    const offs = [
      channels.downloadStart.subscribe(() => seen.push('start')),
      channels.downloadBytes.subscribe((e) => (bytes += e.bytes)),
      channels.downloadDone.subscribe(() => seen.push('done')),
      channels.downloadError.subscribe(() => seen.push('error')),
    ];
    try {
      await downloader().download(server.httpUrl(BUCKET, 'events.bin'), path.join(dir, 'events.bin'));
      await caught(downloader().download(server.httpUrl(BUCKET, 'nope.bin'), path.join(dir, 'nope.bin')));
    } finally {
      for (const off of offs) off();
    }
    expect(seen).toEqual(['start', 'done', 'error']);
    expect(bytes).toBe(5 * CHUNK);
  });
});

describe('signals', () => {
  it('leaves no listener on the caller’s signal, whether the download succeeds, fails or aborts', async () => {
    const listeners = (signal: AbortSignal) => EventEmitter.getEventListeners(signal, 'abort');
    put('quiet.bin', 6 * CHUNK);
    const d = downloader();
    const ac = new AbortController();
    await d.download(server.httpUrl(BUCKET, 'quiet.bin'), path.join(dir, 'a.bin'), { signal: ac.signal });
    expect(listeners(ac.signal)).toHaveLength(0);
    await caught(d.download(server.httpUrl(BUCKET, 'absent.bin'), path.join(dir, 'b.bin'), { signal: ac.signal }));
    expect(listeners(ac.signal)).toHaveLength(0);
    server.setRateLimit(256 * KiB);
    const running = d.download(server.httpUrl(BUCKET, 'quiet.bin'), path.join(dir, 'c.bin'), { signal: ac.signal });
    await new Promise((r) => setTimeout(r, 50));
    expect(listeners(ac.signal).length).toBeGreaterThan(0);
    ac.abort();
    expect((await caught(running)).code).toBe('ERR_ABORTED');
    expect(listeners(ac.signal)).toHaveLength(0);
  });
});

describe('options', () => {
  it('rejects (never throws) on invalid options, naming the option', async () => {
    const d = downloader();
    const p = d.download(server.httpUrl(BUCKET, 'x.bin'), path.join(dir, 'x.bin'), { connections: 0 });
    const err = await caught(p);
    expect(err.code).toBe('ERR_CONFIG');
    expect(err.message).toContain('connections');
    const durability = await caught(d.download(server.httpUrl(BUCKET, 'x.bin'), path.join(dir, 'x.bin'), { durability: 'none' as never }));
    expect(durability.code).toBe('ERR_CONFIG');
    expect(durability.message).toBe('durability must be "disk" or "process", got "none"');
    const bad = await caught(d.download('ftp://example.com/x', path.join(dir, 'y.bin')));
    expect(bad.code).toMatch(/^ERR_(BAD_URL|UNSUPPORTED_SCHEME)$/);
    expect(server.requests).toHaveLength(0);
  });
});
