// The security policy wired into the worker: hostile jobs against a real worker, a real SQLite
// queue and real servers on 127.0.0.1. A refused job must go dead at once with a clear reason and
// cost no request at all; the servers' request logs show it. Non-loopback hostile addresses are
// only ever judged by the policy functions, through an injected resolver.
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { mkdir, mkdtemp, readdir, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { pathToFileURL } from 'node:url';
import Database from 'better-sqlite3';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { loadConfig, policyFromConfig } from '../src/config/load.js';
import { RoboflowError } from '../src/errors.js';
import { openQueue } from '../src/jobs/index.js';
import { createLogger } from '../src/log.js';
import { jobDirectory } from '../src/paths.js';
import type { Resolver } from '../src/security/address.js';
import { ObjectServer } from './support/object-server.js';
import type { JobQueue, JobRecord, JobSpec, Processor } from '../src/types.js';
import { Worker, type WorkerOptions, type WorkerSettings } from '../src/worker.js';
import { queueWith } from './helpers.js';

const KiB = 1024;

let dir: string;
let dbPath: string;
let queue: JobQueue;
let server: ObjectServer;
let buffer: string;

beforeEach(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'roboflow-'));
  dbPath = path.join(dir, 'queue.db');
  buffer = path.join(dir, 'buffer');
  queue = await openQueue(`sqlite://${dbPath}`);
  server = await ObjectServer.start();
});

afterEach(async () => {
  await server.close();
  await queue.close();
  await rm(dir, { recursive: true, force: true });
});

function settings(overrides: Partial<WorkerSettings> = {}): Partial<WorkerSettings> {
  return {
    slots: 1,
    downloadConnections: 1,
    chunkSize: 256 * KiB,
    bufferDir: buffer,
    bufferBudgetBytes: 64 * 1024 * KiB,
    leaseMs: 5_000,
    heartbeatMs: 1_000,
    pollIntervalMs: 20,
    jobRetryBaseDelayMs: 1,
    jobRetryMaxDelayMs: 5,
    rangeMaxAttempts: 2,
    retryBaseDelayMs: 1,
    retryMaxDelayMs: 5,
    ...overrides,
  };
}

interface Captured {
  readonly lines: string[];
  readonly entries: () => { level: string; msg: string; [k: string]: unknown }[];
}

function captureLog(): Captured & { log: ReturnType<typeof createLogger> } {
  const lines: string[] = [];
  const log = createLogger({ level: 'debug', pretty: false, env: {}, destination: { write: (l: string) => void lines.push(l) } });
  return { lines, log, entries: () => lines.map((l) => JSON.parse(l) as { level: string; msg: string }) };
}

function worker(config: Partial<WorkerSettings>, opts: Partial<WorkerOptions> = {}): Worker {
  return new Worker({ queue, drain: true, owner: 'worker-a', ...opts, config: settings(config) });
}

function put(key: string, size = 64 * KiB, seed = 1): string {
  server.putObject('bucket', key, { generated: { size, seed } });
  return server.httpUrl('bucket', key);
}

async function submit(spec: Partial<JobSpec> & { inputs: JobSpec['inputs'] }): Promise<JobRecord> {
  return queue.submit({ processor: 'checksum', ...spec });
}

async function job(id: string): Promise<JobRecord> {
  const j = await queue.get(id);
  if (j === null) throw new Error(`no job ${id}`);
  return j;
}

function requestsFor(key: string): number {
  return server.requests.filter((r) => r.key === key).length;
}

/** A refused job: dead after its first attempt, refused with ERR_POLICY_DENIED's reason, nothing on disk. */
async function expectRefused(id: string, ...words: string[]): Promise<JobRecord> {
  const j = await job(id);
  expect(j.status).toBe('dead');
  expect(j.attempts).toBe(1);
  expect(j.lastError).toMatch(/^refused by this worker: /);
  for (const w of words) expect(j.lastError).toContain(w);
  expect(await readdir(buffer).catch(() => [])).not.toContain(path.basename(jobDirectory(buffer, id)));
  return j;
}

describe('a refused job goes dead at once and makes no request', () => {
  it('an input outside --allow-source; an allowed job beside it runs (the check is not vacuous)', async () => {
    const origin = server.endpoint;
    const refused = await submit({ inputs: [{ url: put('secret/db-dump.mcap') }] });
    const allowed = await submit({ inputs: [{ url: put('raw/ok.mcap') }] });
    const cap = captureLog();
    const summary = await worker({ allowSources: [`${origin}/bucket/raw/*`] }, { log: cap.log }).run();
    expect(summary).toMatchObject({ done: 1, downloadFailures: 1 });
    await expectRefused(refused.id, 'input 1 of 1', 'is not an allowed source', '--allow-source', 'ROBOFLOW_ALLOW_SOURCES');
    expect((await job(allowed.id)).status).toBe('done');
    expect(requestsFor('secret/db-dump.mcap')).toBe(0);
    expect(requestsFor('raw/ok.mcap')).toBeGreaterThan(0);
    const warn = cap.entries().find((e) => e.msg.includes('refused by this worker; job is dead'));
    expect(warn).toMatchObject({ level: 'warn' });
  });

  it('an output outside --allow-output', async () => {
    const j = await submit({ inputs: [{ url: put('raw/a.mcap') }], output: 's3://elsewhere/steal/' });
    await worker({ allowOutputs: [`${pathToFileURL(dir).href}/results/*`] }).run();
    await expectRefused(j.id, 'output prefix', 's3://elsewhere/steal/', '--allow-output');
    expect(server.requests).toHaveLength(0);
  });

  it('a processor this worker does not run', async () => {
    const j = await submit({ inputs: [{ url: put('raw/a.mcap') }], processor: 'mcap-summary' });
    await worker({ processors: ['checksum'] }).run();
    await expectRefused(j.id, 'processor "mcap-summary" is not run by this worker', '--processor');
    expect(server.requests).toHaveLength(0);
  });

  it('a literal private address once private addresses are refused (here by --allow-private-range alone)', async () => {
    // 127.0.0.1 is the object server; the worker refuses it before connecting.
    const j = await submit({ inputs: [{ url: put('raw/a.mcap') }] });
    await worker({ allowPrivateRanges: ['10.0.0.0/8'] }).run();
    await expectRefused(j.id, '127.0.0.1', 'loopback', '--allow-private-range 127.0.0.1/32');
    expect(server.requests).toHaveLength(0);
  });

  it('a host name that resolves to loopback is refused at connect time, and allowed with its range', async () => {
    const url = put('raw/a.mcap').replace('127.0.0.1', 'localhost');
    const pattern = `${server.endpoint.replace('127.0.0.1', 'localhost')}/bucket/raw/*`;
    const first = await submit({ inputs: [{ url }] });
    await worker({ allowSources: [pattern] }).run();
    const refused = await job(first.id);
    expect(refused).toMatchObject({ status: 'dead', attempts: 1 });
    expect(refused.lastError).toContain('refusing to connect to localhost');
    expect(server.requests).toHaveLength(0);

    // The same input again, under another key (the first job, dead, keeps its derived one).
    const second = await submit({ inputs: [{ url }], key: 'second-try' });
    await worker({ allowSources: [pattern], allowPrivateRanges: ['127.0.0.0/8', '::1/128'] }).run();
    expect((await job(second.id)).status).toBe('done');
    expect(server.requests.length).toBeGreaterThan(0);
  });

  it('an S3 endpoint named by host goes through the same lookup (the SDK agents carry it)', async () => {
    server.putObject('bucket', 'raw/s3.mcap', { generated: { size: 64 * KiB, seed: 2 } });
    const storage = {
      endpoint: server.endpoint.replace('127.0.0.1', 'localhost'),
      region: 'us-east-1',
      forcePathStyle: true,
      env: { AWS_ACCESS_KEY_ID: 'test', AWS_SECRET_ACCESS_KEY: 'testsecret' },
    };
    const first = await submit({ inputs: [{ url: 's3://bucket/raw/s3.mcap' }] });
    await worker({ allowSources: ['s3://bucket/raw/*'] }, { storage }).run();
    expect((await job(first.id)).lastError).toContain('refusing to connect to localhost');
    expect(server.requests).toHaveLength(0);

    const second = await submit({ inputs: [{ url: 's3://bucket/raw/s3.mcap' }], key: 'second-try' });
    await worker({ allowSources: ['s3://bucket/raw/*'], allowPrivateRanges: ['127.0.0.0/8', '::1/128'] }, { storage }).run();
    expect((await job(second.id)).status).toBe('done');
    expect(requestsFor('raw/s3.mcap')).toBeGreaterThan(0);
  });

  it('exec jobs that bring a command, on a worker with a source allowlist (job commands off by default)', async () => {
    const url = put('raw/a.mcap');
    const j = await submit({ inputs: [{ url }], processor: 'exec', args: { command: ['sh', '-c', 'cat ~/.aws/credentials > {output}/x'] } });
    const cap = captureLog();
    await worker({ allowSources: [`${server.endpoint}/bucket/raw/*`] }, { log: cap.log }).run();
    await expectRefused(j.id, 'does not run commands that jobs bring', '--exec-command', '--allow-job-commands');
    expect(server.requests).toHaveLength(0);
    const policyLine = cap.entries().find((e) => e.msg === 'security policy');
    expect(policyLine).toMatchObject({ exec: 'refused' });
    expect(cap.entries().some((e) => e.msg.startsWith('exec jobs that bring their own command are refused'))).toBe(true);
  });
});

describe('the policy in the start-up log', () => {
  it('logs the policy once at start, and warns once while any source is accepted', async () => {
    for (let i = 0; i < 3; i++) await submit({ inputs: [{ url: put(`raw/${i}.mcap`, 16 * KiB, i + 1) }] });
    const open = captureLog();
    await worker({}, { log: open.log }).run();
    const policy = open.entries().filter((e) => e.msg === 'security policy');
    expect(policy).toHaveLength(1);
    expect(policy[0]).toMatchObject({ level: 'info', policy: { sources: 'any', outputs: 'any', privateAddresses: 'allowed' }, exec: 'job commands', processors: 'all' });
    const warnings = open.entries().filter((e) => e.msg.startsWith('any source URL is accepted'));
    expect(warnings).toHaveLength(1);
    expect(warnings[0]?.level).toBe('warn');

    const fenced = captureLog();
    const pattern = `${server.endpoint}/bucket/raw/*`;
    await worker({ allowSources: [pattern], allowOutputs: ['s3://results/*'], allowPrivateRanges: ['10.0.0.0/8'], processors: ['checksum'] }, { log: fenced.log }).run();
    expect(fenced.entries().find((e) => e.msg === 'security policy')).toMatchObject({
      policy: { sources: [pattern], outputs: ['s3://results/*'], privateAddresses: 'refused', allowPrivateRanges: ['10.0.0.0/8'] },
      processors: ['checksum'],
      exec: 'refused',
    });
    expect(fenced.entries().some((e) => e.msg.startsWith('any source URL is accepted'))).toBe(false);
  });
});

describe('redirects are checked hop by hop through the worker', () => {
  let web: http.Server;
  let port: number;
  let seen: string[];

  beforeEach(async () => {
    seen = [];
    web = http.createServer((req, res) => {
      seen.push(`${req.method} ${req.url}`);
      const here = `http://127.0.0.1:${port}`;
      if (req.url === '/allowed/escape') res.writeHead(302, { location: '/forbidden/x.bin' }).end();
      else if (req.url === '/allowed/meta') res.writeHead(302, { location: 'http://169.254.169.254/latest/meta-data/' }).end();
      else if (req.url === '/allowed/hop') res.writeHead(302, { location: `${here}/allowed/x.bin` }).end();
      else res.writeHead(200, { 'content-length': '4', 'accept-ranges': 'bytes' }).end(req.method === 'HEAD' ? undefined : 'data');
    });
    await new Promise<void>((resolve) => web.listen(0, '127.0.0.1', resolve));
    port = (web.address() as AddressInfo).port;
  });

  afterEach(async () => {
    web.closeAllConnections();
    await new Promise<void>((resolve) => web.close(() => resolve()));
  });

  it('refuses a redirect out of the allowlist and one to the metadata address before requesting it; follows an allowed hop', async () => {
    const base = `http://127.0.0.1:${port}`;
    const escape = await submit({ inputs: [{ url: `${base}/allowed/escape` }] });
    const meta = await submit({ inputs: [{ url: `${base}/allowed/meta` }] });
    const hop = await submit({ inputs: [{ url: `${base}/allowed/hop` }] });
    const summary = await worker({ allowSources: [`${base}/allowed/*`], slots: 0 }).run();
    expect(summary.done).toBe(1);
    expect((await job(escape.id)).lastError).toContain('redirect target');
    expect((await job(escape.id)).lastError).toContain('/forbidden/x.bin');
    expect((await job(meta.id)).lastError).toContain('169.254.169.254');
    for (const j of [escape, meta]) expect((await job(j.id)).status).toBe('dead');
    expect((await job(hop.id)).status).toBe('done');
    // Only the first hop of each refused job reached the server; the allowed hop was followed.
    expect(seen.filter((s) => s.includes('/forbidden/'))).toEqual([]);
    expect(seen.filter((s) => s.includes('/allowed/escape'))).toEqual(['HEAD /allowed/escape']);
    expect(seen.filter((s) => s.includes('/allowed/meta'))).toEqual(['HEAD /allowed/meta']);
    expect(seen.some((s) => s.includes('/allowed/x.bin'))).toBe(true);
  });
});

describe('hostile non-loopback addresses, judged by the policy the config compiles (injected resolver)', () => {
  /** A resolver that answers from a table and records what it was asked; nothing is connected to. */
  function table(answers: Record<string, string[]>): { resolve: Resolver; asked: string[] } {
    const asked: string[] = [];
    const resolve: Resolver = (hostname, _options, callback) => {
      asked.push(hostname);
      const list = answers[hostname];
      if (list === undefined) callback(Object.assign(new Error(`ENOTFOUND ${hostname}`), { code: 'ENOTFOUND' }), []);
      else callback(null, list.map((address) => ({ address, family: address.includes(':') ? 6 : 4 })));
    };
    return { resolve, asked };
  }

  function lookup(policy: ReturnType<typeof policyFromConfig>, host: string): Promise<string> {
    return new Promise((resolve, reject) => {
      policy.lookup(host, {}, (err, address) => (err ? reject(err) : resolve(address as string)));
    });
  }

  it('refuses names resolving to the metadata service, private and mapped addresses, and literal hosts of every spelling', async () => {
    const { config } = await loadConfig({
      env: { ROBOFLOW_ALLOW_SOURCES: 'https://data.example.com/recordings/*', ROBOFLOW_ALLOW_PRIVATE_RANGES: '10.20.0.0/16' },
      cwd: os.tmpdir(),
    });
    const { resolve, asked } = table({
      'data.example.com': ['93.184.216.34'],
      'meta.evil.example': ['169.254.169.254'],
      'internal.evil.example': ['10.0.0.5'],
      'mixed.evil.example': ['93.184.216.34', '192.168.1.10'],
      'mapped.evil.example': ['::ffff:169.254.169.254'],
      'ula.evil.example': ['fd00::1'],
      'allowed-range.example': ['10.20.3.4'],
    });
    const policy = policyFromConfig(config, { resolve });
    expect(await lookup(policy, 'data.example.com')).toBe('93.184.216.34');
    expect(await lookup(policy, 'allowed-range.example')).toBe('10.20.3.4');
    for (const host of ['meta.evil.example', 'internal.evil.example', 'mixed.evil.example', 'mapped.evil.example', 'ula.evil.example']) {
      const err = await lookup(policy, host).then(
        () => null,
        (e: unknown) => e as RoboflowError,
      );
      expect(err?.code, host).toBe('ERR_POLICY_DENIED');
    }
    expect(asked).toContain('meta.evil.example');

    const literal = (url: string) => () => policy.checkJob({ id: '1', inputs: [{ url }], output: null });
    for (const url of [
      'https://169.254.169.254/recordings/x',
      'https://[::ffff:a9fe:a9fe]/recordings/x',
      'https://0xa9.0xfe.0xa9.0xfe/recordings/x',
      'https://2852039166/recordings/x',
      'https://[fd00::1]/recordings/x',
    ]) {
      expect(literal(url), url).toThrow(RoboflowError);
    }
    for (const url of ['http://169.254.169.254/latest/meta-data/iam/', 'https://10.0.0.5/recordings/x', 'https://data.example.com/recordings/../admin']) {
      expect(() => policy.checkRedirect(url), url).toThrow(/not an allowed source|refusing to connect/);
    }
  });
});

describe('the job is judged again when it starts, and its output before the upload', () => {
  it('refuses a job whose output was changed in the database between claim and start', async () => {
    const out = `${pathToFileURL(dir).href}/results/`;
    const j = await submit({ inputs: [{ url: put('raw/a.mcap') }], output: `${out}job/` });
    // Someone with UPDATE on the jobs table rewrites the output once the job has been claimed.
    const tampering = queueWith(queue, {
      async claim(owner, leaseMs) {
        const claimed = await queue.claim(owner, leaseMs);
        if (claimed !== null) {
          const db = new Database(dbPath);
          try {
            db.prepare('UPDATE jobs SET output = ? WHERE id = ?').run('s3://attacker-bucket/loot/', Number(claimed.id));
          } finally {
            db.close();
          }
        }
        return claimed;
      },
    });
    const ran: string[] = [];
    const spy: Processor = { name: 'checksum', run: async ({ job: jb }) => void ran.push(jb.id) };
    await new Worker({ queue: tampering, drain: true, owner: 'worker-a', config: settings({ allowOutputs: [`${out}*`] }), processors: { checksum: spy } }).run();
    const after = await job(j.id);
    expect(after.status).toBe('dead');
    expect(after.lastError).toContain('s3://attacker-bucket/loot/');
    expect(ran).toEqual([]);
    expect(await readdir(path.join(dir, 'results')).catch(() => [])).toEqual([]);
  });

  it('checks the output once more right before uploading', async () => {
    const out = `${pathToFileURL(dir).href}/results/`;
    const j = await submit({ inputs: [{ url: put('raw/a.mcap') }], output: `${out}job/` });
    // An in-process processor that rewrites the record it was handed.
    const rogue: Processor = {
      name: 'checksum',
      async run({ job: jb, outputDir }) {
        await writeFile(path.join(outputDir, 'loot.txt'), 'x');
        (jb as { output: string | null }).output = `${pathToFileURL(dir).href}/elsewhere/`;
        return null;
      },
    };
    await worker({ allowOutputs: [`${out}*`] }, { processors: { checksum: rogue } }).run();
    const after = await job(j.id);
    expect(after.status).toBe('dead');
    expect(after.lastError).toContain('is not an allowed output');
    expect(await readdir(dir)).not.toContain('elsewhere');
  });
});

describe('exec on a worker: the operator command, job commands and the time limit', () => {
  const SIZE_CMD = `sh -c 'wc -c < "$1" > "$2"/size.txt' sh {input} {output}`;

  it('runs the operator command for jobs without a command or with exactly it, and refuses a different one', async () => {
    const out = `${pathToFileURL(dir).href}/results/`;
    const url = put('raw/a.mcap', 1000);
    const none = await submit({ inputs: [{ url }], processor: 'exec', output: `${out}none/` });
    const same = await submit({
      inputs: [{ url }],
      processor: 'exec',
      output: `${out}same/`,
      args: { command: ['sh', '-c', 'wc -c < "$1" > "$2"/size.txt', 'sh', '{input}', '{output}'] },
    });
    const other = await submit({ inputs: [{ url: put('raw/b.mcap') }], processor: 'exec', args: { command: ['sh', '-c', 'id > {output}/who'] } });
    const cap = captureLog();
    await worker({ allowSources: [`${server.endpoint}/bucket/raw/*`], execCommand: SIZE_CMD, slots: 0 }, { log: cap.log }).run();
    for (const [j, name] of [
      [none, 'none'],
      [same, 'same'],
    ] as const) {
      expect((await job(j.id)).status).toBe('done');
      expect((await readFile(path.join(dir, 'results', name, 'size.txt'), 'utf8')).trim()).toBe('1000');
    }
    await expectRefused(other.id, 'differs from the command this worker runs', 'program "sh"');
    expect(requestsFor('raw/b.mcap')).toBe(0);
    expect(cap.entries().find((e) => e.msg === 'security policy')).toMatchObject({ exec: 'operator command' });
  });

  it('runs job commands on a fleet worker only when --allow-job-commands says so', async () => {
    const out = `${pathToFileURL(dir).href}/results/`;
    const j = await submit({ inputs: [{ url: put('raw/a.mcap') }], processor: 'exec', output: out, args: { command: ['sh', '-c', 'echo ran > {output}/ran.txt'] } });
    await worker({ allowSources: [`${server.endpoint}/bucket/raw/*`], allowJobCommands: true }).run();
    expect((await job(j.id)).status).toBe('done');
    expect(await readFile(path.join(dir, 'results', 'ran.txt'), 'utf8')).toBe('ran\n');
  });

  it('stops a program at the configured time limit (execTimeoutMs, execKillGraceMs come from the settings)', async () => {
    const j = await queue.submit({ inputs: [{ url: put('raw/a.mcap') }], processor: 'exec', args: { command: ['sh', '-c', 'trap "" TERM; sleep 30'] }, maxAttempts: 1 });
    const summary = await worker({ execTimeoutMs: 300, execKillGraceMs: 100 }).run();
    expect(summary.dead).toBe(1);
    expect((await job(j.id)).lastError).toContain('timed out after 300 ms');
  });
});

describe('symbolic links in the buffer directory', () => {
  let outside: string;

  beforeEach(async () => {
    outside = path.join(dir, 'outside');
    await mkdir(path.join(outside, 'out'), { recursive: true });
    await writeFile(path.join(outside, 'credentials'), 'aws_secret_access_key = EXAMPLEKEY\n');
    await writeFile(path.join(outside, 'out', 'precious'), 'keep me');
  });

  async function outsideIntact(): Promise<void> {
    expect((await readdir(outside)).sort()).toEqual(['credentials', 'out']);
    expect(await readFile(path.join(outside, 'out', 'precious'), 'utf8')).toBe('keep me');
  }

  it('a job directory planted as a link before the claim is refused; nothing is written through it', async () => {
    const j = await submit({ inputs: [{ url: put('raw/a.mcap'), size: 64 * KiB }] });
    await mkdir(buffer, { recursive: true });
    await symlink(outside, jobDirectory(buffer, j.id));
    await worker({}).run();
    const after = await job(j.id);
    expect(after.status).toBe('dead');
    expect(after.lastError).toContain('symbolic link');
    expect(server.requests).toHaveLength(0);
    await outsideIntact();
  });

  it('a job directory swapped for a link after its download is refused before anything is deleted in it', async () => {
    const first = await submit({ inputs: [{ url: put('raw/a.mcap') }], processor: 'first' });
    const second = await submit({ inputs: [{ url: put('raw/b.mcap', 64 * KiB, 2) }], processor: 'checksum' });
    const held: { worker?: Worker } = {};
    // Job 1's processor plays a program that tampers with the buffer directory: it waits until job
    // 2 is downloaded, then puts a link where job 2's directory was.
    const tamper: Processor = {
      name: 'first',
      async run() {
        const deadline = Date.now() + 20_000;
        while (!held.worker?.prefetch?.slotInfo().some((s) => s.jobId === second.id && s.state === 'ready')) {
          if (Date.now() > deadline) throw new Error('job 2 never became ready');
          await sleep(10);
        }
        const victim = jobDirectory(buffer, second.id);
        await rm(victim, { recursive: true });
        await symlink(outside, victim);
        return null;
      },
    };
    held.worker = worker({ slots: 1 }, { processors: { first: tamper } });
    await held.worker.run();
    expect((await job(first.id)).status).toBe('done');
    const after = await job(second.id);
    expect(after.status).toBe('dead');
    expect(after.lastError).toContain('symbolic link');
    await outsideIntact();
  });

  it('an exec program that swaps its output directory for a link uploads nothing', async () => {
    const results = path.join(dir, 'results');
    const j = await submit({
      inputs: [{ url: put('raw/a.mcap') }],
      processor: 'exec',
      output: `${pathToFileURL(results).href}/`,
      args: { command: ['sh', '-c', 'cd / && rmdir "$1" && ln -s "$2" "$1"', 'sh', '{output}', outside] },
    });
    await worker({}).run();
    const after = await job(j.id);
    expect(after.status).toBe('dead');
    expect(after.lastError).toContain('symbolic link');
    expect(await readdir(results).catch(() => [])).toEqual([]);
    await outsideIntact();
  });

  it('links an exec program leaves inside its output directory are skipped; its real files are uploaded', async () => {
    const results = path.join(dir, 'results');
    const j = await submit({
      inputs: [{ url: put('raw/a.mcap') }],
      processor: 'exec',
      output: `${pathToFileURL(results).href}/`,
      args: { command: ['sh', '-c', 'echo ok > "$1"/real.txt && ln -s "$2"/credentials "$1"/creds && ln -s "$2" "$1"/dir', 'sh', '{output}', outside] },
    });
    await worker({}).run();
    expect((await job(j.id)).status).toBe('done');
    // The real file and the completion marker; no link, and no staging left behind.
    expect(await readdir(results)).toEqual(['_SUCCESS', 'real.txt']);
    await outsideIntact();
  });
});
