import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath, pathToFileURL } from 'node:url';
import Database from 'better-sqlite3';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { serverProcessStore } from '../bench/src/scenario-prefetch.js';
import { formatComparison, runPrefetchComparison, startInProcessStore } from '../src/cli/demo/comparison.js';
import { channels, type JobFinishedEvent } from '../src/diagnostics.js';
import { abortError, RoboflowError } from '../src/errors.js';
import { openQueue } from '../src/jobs/index.js';
import { pageCacheBootId, readResumeState } from '../src/prefetch/resume-state.js';
import { CHECKSUM_FILE } from '../src/processors/index.js';
import { ObjectServer } from './support/object-server.js';
import type { JobQueue, JobRecord, Processor } from '../src/types.js';
import { Worker, type JobReport, type WorkerOptions, type WorkerSettings } from '../src/worker.js';
import { itFull } from './tier.js';
import { queueWith } from './helpers.js';

const KiB = 1024;
const MiB = 1024 * KiB;

let dir: string;
let dbPath: string;
let queue: JobQueue;
let server: ObjectServer;
const extraQueues: JobQueue[] = [];

beforeEach(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'roboflow-'));
  dbPath = path.join(dir, 'queue.db');
  queue = await openQueue(`sqlite://${dbPath}`);
  server = await ObjectServer.start();
});

afterEach(async () => {
  await server.close();
  for (const q of extraQueues.splice(0)) await q.close();
  await queue.close();
  await rm(dir, { recursive: true, force: true });
});

async function restartServer(opts: { rateLimitBytesPerSec?: number; firstByteLatencyMs?: number }): Promise<void> {
  await server.close();
  server = await ObjectServer.start(opts);
}

function settings(overrides: Partial<WorkerSettings> = {}): Partial<WorkerSettings> {
  return {
    slots: 2,
    downloadConnections: 1,
    chunkSize: 256 * KiB,
    bufferDir: path.join(dir, 'buffer'),
    bufferBudgetBytes: 256 * MiB,
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

function worker(opts: Partial<WorkerOptions> & { config?: Partial<WorkerSettings> } = {}): Worker {
  return new Worker({ queue, drain: true, owner: 'worker-a', ...opts, config: settings(opts.config) });
}

async function submitJobs(
  count: number,
  size: number,
  spec: { processor: string; args?: Record<string, unknown>; output?: (i: number) => string; maxAttempts?: number },
): Promise<JobRecord[]> {
  const jobs: JobRecord[] = [];
  for (let i = 0; i < count; i++) {
    const key = `ep${i}.mcap`;
    server.putObject('bucket', key, { generated: { size, seed: i + 1 } });
    jobs.push(
      await queue.submit({
        inputs: [{ url: server.httpUrl('bucket', key) }],
        processor: spec.processor,
        ...(spec.args ? { args: spec.args } : {}),
        ...(spec.output ? { output: spec.output(i) } : {}),
        ...(spec.maxAttempts !== undefined ? { maxAttempts: spec.maxAttempts } : {}),
      }),
    );
  }
  return jobs;
}

interface Mark {
  readonly jobId: string;
  readonly start: number;
  readonly end: number;
}

/** A processor that waits `ms` (abortably) and records when it ran. */
function markingProcessor(ms: number, marks: Mark[], onStart?: (jobId: string) => void): Processor {
  return {
    name: 'mark',
    async run({ job, signal, outputDir, inputPaths }) {
      const start = Date.now();
      onStart?.(job.id);
      try {
        await sleep(ms, undefined, { signal });
      } catch {
        throw abortError(signal, `job ${job.id}: mark`);
      }
      await writeFile(path.join(outputDir, 'mark.txt'), `${job.id} ${inputPaths.length}\n`);
      marks.push({ jobId: job.id, start, end: Date.now() });
      return { ms };
    },
  };
}

function firstGet(key: string): number {
  const gets = server.requests.filter((r) => r.method === 'GET' && r.key === key);
  if (gets.length === 0) throw new Error(`no GET of ${key}`);
  return Math.min(...gets.map((r) => r.startedAt));
}

describe('Worker', () => {
  it('overlaps the download of job k+1 with the processing of job k', async () => {
    await restartServer({ rateLimitBytesPerSec: 1 * MiB });
    const n = 5;
    await submitJobs(n, 512 * KiB, { processor: 'mark' });
    const marks: Mark[] = [];
    const reports: JobReport[] = [];
    const w = worker({ processors: { mark: markingProcessor(500, marks) }, onJob: (r) => reports.push(r) });
    const summary = await w.run();
    expect(summary).toMatchObject({ jobs: n, done: n, failed: 0, dead: 0 });
    expect(await queue.counts()).toMatchObject({ done: n, pending: 0, claimed: 0, running: 0 });

    // Structural proof: job k+1's range requests started before job k's processing ended.
    marks.sort((a, b) => Number(a.jobId) - Number(b.jobId));
    for (let k = 0; k < n - 1; k++) {
      expect(firstGet(`ep${k + 1}.mcap`)).toBeLessThan(marks[k]!.end);
    }
    // And in total: well under the sum of downloads and processing done one after the other.
    const serial = reports.reduce((t, r) => t + r.downloadSeconds + r.processSeconds, 0);
    expect(summary.wallSeconds).toBeLessThan(0.8 * serial);
    expect(summary.inputWaitSeconds).toBeLessThan(summary.wallSeconds);
  });

  it('with 0 slots, downloads job k+1 only after job k was processed', async () => {
    await restartServer({ rateLimitBytesPerSec: 4 * MiB });
    const n = 3;
    await submitJobs(n, 256 * KiB, { processor: 'mark' });
    const marks: Mark[] = [];
    const summary = await worker({ config: { slots: 0 }, processors: { mark: markingProcessor(150, marks) } }).run();
    expect(summary).toMatchObject({ jobs: n, done: n });
    marks.sort((a, b) => Number(a.jobId) - Number(b.jobId));
    for (let k = 0; k < n - 1; k++) {
      expect(firstGet(`ep${k + 1}.mcap`)).toBeGreaterThanOrEqual(marks[k]!.end);
    }
  });

  it('retries a failing exec job, then marks it dead', async () => {
    const [job] = await submitJobs(1, 64 * KiB, {
      processor: 'exec',
      args: { command: ['sh', '-c', 'echo "cannot parse {input}" >&2; exit 3'] },
      maxAttempts: 2,
    });
    const outcomes: JobFinishedEvent[] = [];
    const unsubscribe = channels.jobFinished.subscribe((e) => outcomes.push(e));
    try {
      const summary = await worker().run();
      expect(summary).toMatchObject({ jobs: 2, done: 0, failed: 1, dead: 1 });
      const after = await queue.get(job!.id);
      expect(after).toMatchObject({ status: 'dead', attempts: 2 });
      expect(after?.lastError).toMatch(/3/);
      expect(outcomes.map((o) => o.outcome)).toEqual(['retried', 'dead']);
      expect(await readdir(path.join(dir, 'buffer'))).toEqual([]);
    } finally {
      unsubscribe();
    }
  });

  it('uploads outputs to a file:// prefix and to s3:// on the object server', async () => {
    const outDir = path.join(dir, 'results');
    server.createBucket('results');
    const jobs = await submitJobs(2, 200 * KiB, {
      processor: 'checksum',
      output: (i) => (i === 0 ? `${pathToFileURL(outDir).href}/job0/` : `s3://results/run/job1/`),
    });
    const w = worker({
      storage: {
        endpoint: server.endpoint,
        region: 'us-east-1',
        forcePathStyle: true,
        env: { AWS_ACCESS_KEY_ID: 'test', AWS_SECRET_ACCESS_KEY: 'testsecret' },
      },
    });
    const summary = await w.run();
    expect(summary).toMatchObject({ jobs: 2, done: 2 });
    const local = await readFile(path.join(outDir, 'job0', CHECKSUM_FILE), 'utf8');
    expect(local).toMatch(/^[0-9a-f]{64} /);
    expect(server.hasObject('results', `run/job1/${CHECKSUM_FILE}`)).toBe(true);
    expect(server.objectBytes('results', `run/job1/${CHECKSUM_FILE}`).toString()).toMatch(/^[0-9a-f]{64} /);
    const done = await queue.get(jobs[1]!.id);
    const result = done?.result as { uploaded: { name: string; url: string }[]; worker: string; attempt: string };
    expect(result.worker).toBe('worker-a');
    expect(result.uploaded.map((u) => u.name)).toContain(CHECKSUM_FILE);
    expect(result.uploaded.map((u) => u.url)).toContain(`s3://results/run/job1/${CHECKSUM_FILE}`);
    // The output commit protocol: staged, authorised, published, the marker last; no staging left.
    expect(done?.commitAttempt).toBe(result.attempt);
    expect(result.attempt).toMatch(/^1-[0-9a-f]{8}$/);
    expect(server.listKeys('results').sort()).toEqual(['run/job1/_SUCCESS', `run/job1/${CHECKSUM_FILE}`].sort());
    const marker = JSON.parse(server.objectBytes('results', 'run/job1/_SUCCESS').toString()) as Record<string, unknown>;
    expect(marker).toMatchObject({ version: 1, job: jobs[1]!.id, attempt: result.attempt, owner: 'worker-a' });
    expect(marker['files']).toEqual([{ name: CHECKSUM_FILE, bytes: server.objectSize('results', `run/job1/${CHECKSUM_FILE}`) }]);
    expect((await readdir(path.join(outDir, 'job0'))).sort()).toEqual([CHECKSUM_FILE, '_SUCCESS'].sort());
    const localMarker = JSON.parse(await readFile(path.join(outDir, 'job0', '_SUCCESS'), 'utf8')) as Record<string, unknown>;
    expect(localMarker['attempt']).toBe((await queue.get(jobs[0]!.id))?.commitAttempt);
  });

  it('stops processing a job whose lease was lost and records nothing for it', async () => {
    const [job] = await submitJobs(1, 64 * KiB, { processor: 'mark' });
    const marks: Mark[] = [];
    let started!: () => void;
    const processing = new Promise<void>((resolve) => (started = resolve));
    const reports: JobReport[] = [];
    const w = worker({
      drain: false,
      config: { leaseMs: 2_000, heartbeatMs: 100 },
      processors: { mark: markingProcessor(30_000, marks, () => started()) },
      onJob: (r) => reports.push(r),
    });
    const stop = new AbortController();
    const running = w.run(stop.signal);
    await processing;
    // This worker stalled past its lease and another one took the job.
    const db = new Database(dbPath);
    try {
      db.prepare('UPDATE jobs SET lease_expires_at = 0 WHERE id = ?').run(Number(job!.id));
    } finally {
      db.close();
    }
    const other = await openQueue(`sqlite://${dbPath}`);
    extraQueues.push(other);
    expect((await other.claim('worker-b', 60_000))?.id).toBe(job!.id);
    const deadline = Date.now() + 20_000;
    while (reports.length === 0 && Date.now() < deadline) await sleep(20);
    stop.abort();
    const summary = await running;
    expect(summary).toMatchObject({ jobs: 1, done: 0, leaseLost: 1 });
    expect(marks).toHaveLength(0); // the processor was stopped, not run to its end
    expect(reports[0]).toMatchObject({ outcome: 'lease_lost' });
    expect(await queue.get(job!.id)).toMatchObject({ status: 'claimed', leaseOwner: 'worker-b', attempts: 1 });
  });

  it('shutdown "finish" completes the job in progress and hands prefetched jobs back untouched', async () => {
    await submitJobs(4, 64 * KiB, { processor: 'mark' });
    const marks: Mark[] = [];
    const stop = new AbortController();
    const w = worker({
      drain: false,
      shutdown: 'finish',
      processors: { mark: markingProcessor(600, marks, () => setTimeout(() => stop.abort(), 100)) },
    });
    const summary = await w.run(stop.signal);
    expect(summary).toMatchObject({ jobs: 1, done: 1, released: 0 });
    expect(await queue.get('1')).toMatchObject({ status: 'done', attempts: 1 });
    for (const id of ['2', '3', '4']) {
      expect(await queue.get(id)).toMatchObject({ status: 'pending', attempts: 0, leaseOwner: null });
    }
    expect(existsSync(path.join(dir, 'buffer')) ? await readdir(path.join(dir, 'buffer')) : []).toEqual([]);
  });

  it('shutdown "cancel" aborts the job in progress and releases it', async () => {
    await submitJobs(3, 64 * KiB, { processor: 'mark' });
    const marks: Mark[] = [];
    const stop = new AbortController();
    const w = worker({
      drain: false,
      shutdown: 'cancel',
      processors: { mark: markingProcessor(30_000, marks, () => setTimeout(() => stop.abort(), 100)) },
    });
    const summary = await w.run(stop.signal);
    expect(summary).toMatchObject({ jobs: 1, done: 0, released: 1 });
    expect(marks).toHaveLength(0);
    // The attempt that was cancelled stays counted; the prefetched jobs spent none.
    expect(await queue.get('1')).toMatchObject({ status: 'pending', attempts: 1, leaseOwner: null });
    for (const id of ['2', '3']) {
      expect(await queue.get(id)).toMatchObject({ status: 'pending', attempts: 0, leaseOwner: null });
    }
  });

  it('refuses a buffer directory another running worker uses, and takes over a stale lock', async () => {
    await submitJobs(1, 64 * KiB, { processor: 'mark' });
    const marks: Mark[] = [];
    let started!: () => void;
    const processing = new Promise<void>((resolve) => (started = resolve));
    const stop = new AbortController();
    const first = worker({ drain: false, processors: { mark: markingProcessor(30_000, marks, () => started()) }, shutdown: 'cancel' });
    const running = first.run(stop.signal);
    await processing;
    await expect(worker({ owner: 'worker-b' }).run()).rejects.toMatchObject({ code: 'ERR_CONFIG', message: expect.stringMatching(/in use by the worker/) });
    stop.abort();
    await running;
    // A lock whose process is gone (a worker killed with SIGKILL) does not block the next one.
    const dead = spawnSync(process.execPath, ['-e', '0']);
    await writeFile(path.join(dir, 'buffer', '.roboflow-worker.lock'), JSON.stringify({ pid: dead.pid, hostname: os.hostname() }));
    const summary = await worker({ processors: { mark: markingProcessor(10, marks) } }).run();
    expect(summary).toMatchObject({ done: 1 });
    expect(await readdir(path.join(dir, 'buffer'))).toEqual([]);
  });

  it('downloads with the durability its settings name: page-cache state names the boot', async () => {
    await restartServer({ rateLimitBytesPerSec: 2 * MiB });
    await submitJobs(1, 4 * MiB, { processor: 'mark' });
    const marks: Mark[] = [];
    const w = worker({ config: { durability: 'process' }, processors: { mark: markingProcessor(0, marks) } });
    const running = w.run();
    const buffer = path.join(dir, 'buffer');
    // The resume state of the input being prefetched, as soon as one is written.
    let bootId: string | undefined;
    for (let i = 0; i < 400 && bootId === undefined; i++) {
      const files = existsSync(buffer) ? ((await readdir(buffer, { recursive: true })) as string[]) : [];
      const state = files.find((f) => f.endsWith('.roboflow-state.json'));
      if (state) bootId = (await readResumeState(path.join(buffer, state)))?.bootId;
      await sleep(10);
    }
    expect(await running).toMatchObject({ jobs: 1, done: 1 });
    expect(bootId).toBe(pageCacheBootId());
  });

  it('publishes an empty output (a processor that writes nothing) to a file:// directory not made yet and to s3://', async () => {
    const outDir = path.join(dir, 'results', 'not', 'yet');
    server.createBucket('results');
    const jobs = await submitJobs(2, 64 * KiB, {
      processor: 'nothing',
      output: (i) => (i === 0 ? `${pathToFileURL(outDir).href}/` : 's3://results/empty/'),
      maxAttempts: 1,
    });
    const nothing: Processor = { name: 'nothing', run: async () => ({ wrote: 0 }) };
    const w = worker({
      processors: { nothing },
      storage: {
        endpoint: server.endpoint,
        region: 'us-east-1',
        forcePathStyle: true,
        env: { AWS_ACCESS_KEY_ID: 'test', AWS_SECRET_ACCESS_KEY: 'testsecret' },
      },
    });
    expect(await w.run()).toMatchObject({ jobs: 2, done: 2, dead: 0 });
    expect(await readdir(outDir)).toEqual(['_SUCCESS']);
    const local = JSON.parse(await readFile(path.join(outDir, '_SUCCESS'), 'utf8')) as Record<string, unknown>;
    expect(local).toMatchObject({ job: jobs[0]!.id, files: [] });
    expect(server.listKeys('results')).toEqual(['empty/_SUCCESS']);
    const remote = JSON.parse(server.objectBytes('results', 'empty/_SUCCESS').toString()) as Record<string, unknown>;
    expect(remote).toMatchObject({ job: jobs[1]!.id, files: [] });
    for (const j of jobs) expect((await queue.get(j.id))?.status).toBe('done');
  });

  it('publishes nothing, and keeps the previous marker, when the lease runs out while the commit is on its way', async () => {
    const out = path.join(dir, 'results', 'job');
    const [job] = await submitJobs(1, 64 * KiB, { processor: 'mark', output: () => `${pathToFileURL(out).href}/` });
    // An earlier attempt was authorised and published, then lost its lease before `complete`.
    const other = await openQueue(`sqlite://${dbPath}`);
    extraQueues.push(other);
    await other.claim('worker-old', 60_000);
    await other.start(job!.id, 'worker-old', 60_000);
    await other.commit(job!.id, 'worker-old', '1-old', 60_000);
    await mkdir(out, { recursive: true });
    await writeFile(path.join(out, 'mark.txt'), 'old');
    await writeFile(path.join(out, '_SUCCESS'), JSON.stringify({ attempt: '1-old' }));
    const db = new Database(dbPath);
    try {
      db.prepare('UPDATE jobs SET lease_expires_at = 0 WHERE id = ?').run(Number(job!.id));
    } finally {
      db.close();
    }
    // From the moment it asks to commit, this worker is cut off from the queue: renewals hang and
    // the commit's answer arrives only after the lease (and so the worker's own deadline) passed.
    const leaseMs = 2_000;
    let partitioned = false;
    const hung: (() => void)[] = [];
    const heal = () => hung.splice(0).forEach((fail) => fail());
    const cutOff = queueWith(queue, {
      claim: async (owner, ms) => (partitioned ? null : queue.claim(owner, ms)),
      heartbeat: (id, owner, ms) =>
        partitioned
          ? new Promise<void>((_, reject) => hung.push(() => reject(new RoboflowError('ERR_QUEUE', 'partitioned'))))
          : queue.heartbeat(id, owner, ms),
      async commit(id, owner, attempt, ms) {
        partitioned = true;
        const record = await queue.commit(id, owner, attempt, ms);
        await sleep(leaseMs * 1.5);
        return record;
      },
    });
    const marks: Mark[] = [];
    const reports: JobReport[] = [];
    const w = worker({
      queue: cutOff,
      drain: false,
      config: { leaseMs, heartbeatMs: 100 },
      processors: { mark: markingProcessor(0, marks) },
      onJob: (r) => reports.push(r),
    });
    const stop = new AbortController();
    const running = w.run(stop.signal);
    const deadline = Date.now() + 30_000;
    while (reports.length === 0 && Date.now() < deadline) await sleep(20);
    heal();
    stop.abort();
    await running;
    expect(marks).toHaveLength(1); // it ran to its end and staged its output
    expect(reports[0]).toMatchObject({ outcome: 'lease_lost' });
    // The earlier attempt's output and marker are untouched; this attempt's stays staged.
    expect(await readFile(path.join(out, '_SUCCESS'), 'utf8')).toBe(JSON.stringify({ attempt: '1-old' }));
    expect(await readFile(path.join(out, 'mark.txt'), 'utf8')).toBe('old');
    const staged = await readdir(path.join(out, '_attempts', job!.id));
    expect(staged).toHaveLength(1);
    expect(await readdir(path.join(out, '_attempts', job!.id, staged[0]!))).toEqual(['mark.txt']);
    expect((await queue.get(job!.id))?.status).toBe('running');
  });

  it('runs once', async () => {
    const w = worker();
    await w.run();
    await expect(w.run()).rejects.toMatchObject({ code: 'ERR_CONFIG' });
  });
});

describe('runPrefetchComparison', () => {
  it('runs the same jobs with and without prefetch and reports both', async () => {
    const progress: string[] = [];
    const c = await runPrefetchComparison({
      jobs: 3,
      sizeBytes: 1 * MiB,
      ratePerConn: 4 * MiB,
      latencyMs: 5,
      connections: 2,
      chunkSize: 256 * KiB,
      tempDir: dir,
      // From sources: the default store's thread program is compiled (dist/); the CLI test runs it.
      startStore: startInProcessStore,
      onProgress: (m) => progress.push(m),
    });
    expect(c.prefetch).toMatchObject({ mode: 'prefetch', slots: 2 });
    expect(c.sequential).toMatchObject({ mode: 'sequential', slots: 0 });
    for (const run of [c.prefetch, c.sequential]) {
      expect(run.summary).toMatchObject({ jobs: 3, done: 3 });
      expect(run.jobs.map((j) => j.jobId)).toEqual(['1', '2', '3']);
      expect(run.inputWaitShare).toBeGreaterThanOrEqual(0);
      expect(run.inputWaitShare).toBeLessThanOrEqual(1);
    }
    expect(c.processor.kind).toBe('mcap-summary');
    expect(c.processorDescription).toMatch(/mcap-summary/);
    expect(c.bound.prefetchSeconds).toBeLessThan(c.bound.sequentialSeconds);
    const text = formatComparison(c);
    expect(text).toMatch(/speed-up/);
    expect(text).toMatch(/prefetch \(2 slots\)/);
    expect(progress[0]).toMatch(/writing 3 sample MCAP episodes/);
    // Everything it made is gone.
    expect((await readdir(dir)).filter((f) => f.startsWith('roboflow-demo-'))).toEqual([]);
  });

  itFull('downloads from a store the caller starts: the bench serves files and generated objects from a process of its own, and stops it', async () => {
    const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
    for (const content of ['mcap', 'generated'] as const) {
      const started: { urls: string[]; closed: boolean }[] = [];
      const start = serverProcessStore(root);
      const c = await runPrefetchComparison({
        jobs: 2,
        sizeBytes: 1 * MiB,
        ratePerConn: 8 * MiB,
        latencyMs: 2,
        connections: 2,
        chunkSize: 256 * KiB,
        tempDir: dir,
        processor: content === 'mcap' ? { kind: 'mcap-summary', processMs: 10, burn: 'wait' } : { kind: 'checksum' },
        content,
        startStore: async (o) => {
          expect(o.ratePerConn).toBe(8 * MiB);
          expect(o.latencyMs).toBe(2);
          expect(o.objects.map((x) => ('file' in x.source ? 'file' : 'generated'))).toEqual(content === 'mcap' ? ['file', 'file'] : ['generated', 'generated']);
          const store = await start(o);
          const record = { urls: o.objects.map((x) => store.httpUrl(x.bucket, x.key)), closed: false };
          started.push(record);
          const res = await fetch(record.urls[0]!, { method: 'HEAD' });
          expect(res.status).toBe(200);
          return {
            httpUrl: (b, k) => store.httpUrl(b, k),
            close: async () => {
              await store.close();
              record.closed = true;
            },
          };
        },
      });
      expect(c.prefetch.summary).toMatchObject({ jobs: 2, done: 2 });
      expect(c.sequential.summary).toMatchObject({ jobs: 2, done: 2 });
      expect(started).toHaveLength(1);
      expect(started[0]!.closed).toBe(true);
      // Stopped means stopped: the endpoint refuses connections.
      await expect(fetch(started[0]!.urls[0]!, { method: 'HEAD' })).rejects.toThrow();
    }
    expect((await readdir(dir)).filter((f) => f.startsWith('roboflow-demo-'))).toEqual([]);
  });
});
