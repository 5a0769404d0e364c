import { existsSync } from 'node:fs';
import { mkdtemp, readdir, rm, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import Database from 'better-sqlite3';
import pino from 'pino';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { channels, type SlotTransitionEvent } from '../src/diagnostics.js';
import { RoboflowError } from '../src/errors.js';
import { openQueue } from '../src/jobs/index.js';
import { safeLocalName } from '../src/paths.js';
import { ByteBudget } from '../src/prefetch/budget.js';
import { ParallelDownloader } from '../src/prefetch/downloader.js';
import { PrefetchQueue, type PrefetchQueueOptions } from '../src/prefetch/queue.js';
import { StorageClients } from '../src/storage/index.js';
import { ObjectServer } from './support/object-server.js';
import type { JobQueue, JobRecord } from '../src/types.js';

const KiB = 1024;
const MiB = 1024 * KiB;

interface Env {
  dir: string;
  dbPath: string;
  queue: JobQueue;
  server: ObjectServer;
  clients: StorageClients;
  downloader: ParallelDownloader;
  prefetches: PrefetchQueue[];
  others: JobQueue[];
}

let env: Env;

async function setup(serverOpts: { rateLimitBytesPerSec?: number; firstByteLatencyMs?: number } = {}): Promise<Env> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'roboflow-'));
  const dbPath = path.join(dir, 'queue.db');
  const queue = await openQueue(`sqlite://${dbPath}`);
  const server = await ObjectServer.start(serverOpts);
  const clients = new StorageClients();
  const downloader = new ParallelDownloader({
    connections: 1,
    chunkSize: 256 * KiB,
    clients,
    stallTimeoutMs: 10_000,
    retry: { maxAttempts: 2, baseDelayMs: 1, maxDelayMs: 5 },
  });
  return { dir, dbPath, queue, server, clients, downloader, prefetches: [], others: [] };
}

beforeEach(async () => {
  env = await setup();
});

afterEach(async () => {
  for (const p of env.prefetches) await p.destroy();
  await env.downloader.destroy();
  await env.clients.close();
  await env.server.close();
  for (const q of env.others) await q.close();
  await env.queue.close();
  await rm(env.dir, { recursive: true, force: true });
});

/** Restarts the object server with other settings (the queue and directory stay). */
async function restartServer(opts: { rateLimitBytesPerSec?: number; firstByteLatencyMs?: number }): Promise<void> {
  await env.server.close();
  env.server = await ObjectServer.start(opts);
}

function prefetch(overrides: Partial<PrefetchQueueOptions> & { slots?: number; budgetBytes?: number } = {}): PrefetchQueue {
  const { slots = 2, budgetBytes, ...rest } = overrides;
  const bufferDir = path.join(env.dir, 'buffer');
  const pq = new PrefetchQueue({
    queue: env.queue,
    downloader: env.downloader,
    config: { slots, downloadConnections: 1, chunkSize: 256 * KiB, bufferDir, bufferBudgetBytes: budgetBytes ?? null },
    owner: 'worker-a',
    leaseMs: 5_000,
    heartbeatMs: 1_000,
    pollIntervalMs: 20,
    clients: env.clients,
    jobRetry: { baseDelayMs: 1, maxDelayMs: 5 },
    ...(budgetBytes !== undefined
      ? { budget: new ByteBudget({ limitBytes: budgetBytes, dir: bufferDir, reserveBytes: 0 }) }
      : {}),
    ...rest,
  });
  env.prefetches.push(pq);
  return pq;
}

/** Puts `count` generated objects on the server and submits one job per object. */
async function submitJobs(count: number, size: number, opts: { maxAttempts?: number; keyPrefix?: string } = {}): Promise<JobRecord[]> {
  const jobs: JobRecord[] = [];
  for (let i = 0; i < count; i++) {
    const key = `${opts.keyPrefix ?? 'ep'}${i}.mcap`;
    env.server.putObject('bucket', key, { generated: { size, seed: i + 1 } });
    jobs.push(
      await env.queue.submit({
        inputs: [{ url: env.server.httpUrl('bucket', key) }],
        processor: 'sleep',
        ...(opts.maxAttempts !== undefined ? { maxAttempts: opts.maxAttempts } : {}),
      }),
    );
  }
  return jobs;
}

function getsFor(key: string) {
  return env.server.requests.filter((r) => r.method === 'GET' && r.key === key);
}

async function until(cond: () => boolean | Promise<boolean>, what: string, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

async function finish(pq: PrefetchQueue, job: JobRecord): Promise<void> {
  await env.queue.complete(job.id, 'worker-a', { ok: true });
  await pq.notifyComplete(job.id);
}

describe('safeLocalName', () => {
  it('keeps a plain basename and prefixes the index', () => {
    expect(safeLocalName('s3://bucket/a/b/episode_001.mcap', 0)).toBe('0-episode_001.mcap');
    expect(safeLocalName('https://host/x/y.mcap?X-Amz-Signature=abc', 3)).toBe('3-y.mcap');
  });

  it('never yields a name that leaves the job directory', () => {
    const nasty = [
      'http://h/%2e%2e',
      'http://h/..%2f..%2fetc%2fpasswd',
      'file:///..',
      's3://bucket/',
      'http://h/a%00b',
      'oss://b/.hidden',
      `http://h/${'x'.repeat(500)}.mcap`,
      'not a url/../../x',
    ];
    for (const [i, url] of nasty.entries()) {
      const name = safeLocalName(url, i);
      expect(name).not.toContain('/');
      expect(name).not.toContain('\\');
      expect(name).not.toContain('\0');
      expect(name.length).toBeLessThanOrEqual(200);
      expect(name.startsWith(`${i}-`)).toBe(true);
      const joined = path.join('/buffer/job', name);
      expect(path.dirname(joined)).toBe('/buffer/job');
    }
    expect(safeLocalName(`http://h/${'x'.repeat(500)}.mcap`, 1).endsWith('.mcap')).toBe(true);
  });
});

describe('PrefetchQueue', () => {
  it('hands out jobs in claim order with their inputs on disk, and deletes them after notifyComplete', async () => {
    const jobs = await submitJobs(3, 300 * KiB);
    const pq = prefetch({ slots: 2, drain: true });
    const seen: string[] = [];
    for (;;) {
      const ready = await pq.nextReady();
      if (!ready) break;
      seen.push(ready.job.id);
      expect(ready.job.status).toBe('running');
      expect(ready.job.attempts).toBe(1);
      expect(ready.inputPaths).toHaveLength(1);
      expect((await stat(ready.inputPaths[0]!)).size).toBe(300 * KiB);
      expect(path.dirname(ready.inputPaths[0]!)).toBe(ready.dir);
      await finish(pq, ready.job);
      expect(existsSync(ready.dir)).toBe(false);
    }
    expect(seen).toEqual(jobs.map((j) => j.id));
    await pq.close();
    expect(pq.mode).toBe('closed');
    expect(await env.queue.counts()).toMatchObject({ done: 3, pending: 0, claimed: 0, running: 0 });
  });

  it('downloads the next N jobs while one is active, and no more', async () => {
    await restartServer({ rateLimitBytesPerSec: 1 * MiB });
    await submitJobs(6, 1 * MiB);
    const pq = prefetch({ slots: 2 });
    const first = await pq.nextReady();
    expect(first?.job.id).toBe('1');
    await finish(pq, first!.job);
    const second = await pq.nextReady();
    expect(second?.job.id).toBe('2');
    // While job 2 is active, jobs 3 and 4 download at the same time.
    await until(
      () =>
        JSON.stringify(pq.statuses().map((s) => [s.jobId, s.status.kind])) ===
        JSON.stringify([
          ['3', 'downloading'],
          ['4', 'downloading'],
        ]),
      'jobs 3 and 4 downloading together',
    );
    await until(() => getsFor('ep2.mcap').length > 0 && getsFor('ep3.mcap').length > 0, 'requests of jobs 3 and 4');
    expect(pq.slotInfo().find((s) => s.jobId === '2')?.state).toBe('active');
    const streaming = (key: string) => getsFor(key).some((r) => r.status === 206 && r.range !== undefined && r.bytesSent < r.range.end - r.range.start);
    await until(() => streaming('ep2.mcap') && streaming('ep3.mcap'), 'both bodies streaming at once');
    // Two slots are full: job 5 waits.
    expect(getsFor('ep4.mcap')).toHaveLength(0);
    expect(await env.queue.counts()).toMatchObject({ done: 1, running: 1, claimed: 2, pending: 2 });
    await finish(pq, second!.job);
  });

  it('nextReady waits while the next job is still downloading', async () => {
    await restartServer({ rateLimitBytesPerSec: 1 * MiB });
    await submitJobs(1, 768 * KiB);
    const pq = prefetch({ slots: 1 });
    const transitions: SlotTransitionEvent[] = [];
    const unsubscribe = channels.slotTransition.subscribe((e) => transitions.push(e));
    try {
      let resolved = false;
      const next = pq.nextReady().then((r) => {
        resolved = true;
        return r;
      });
      await until(() => pq.statuses().some((s) => s.status.kind === 'downloading' && s.jobId === '1'), 'download to start');
      await sleep(200);
      expect(resolved).toBe(false);
      const ready = await next;
      expect(ready?.job.id).toBe('1');
      expect((await stat(ready!.inputPaths[0]!)).size).toBe(768 * KiB);
      const forJob = transitions.filter((t) => t.jobId === '1').map((t) => `${t.from ?? '-'}>${t.to ?? '-'}`);
      expect(forJob).toEqual(['claiming>downloading', 'downloading>ready', 'ready>active']);
      await finish(pq, ready!.job);
      expect(transitions.some((t) => t.jobId === '1' && t.from === 'active' && t.to === null)).toBe(true);
    } finally {
      unsubscribe();
    }
  });

  it('reports a failed download to the queue (attempt counted, dead after max attempts) and never hands it out', async () => {
    const good = await submitJobs(1, 64 * KiB);
    const missing = await env.queue.submit({
      inputs: [{ url: env.server.httpUrl('bucket', 'missing.mcap') }],
      processor: 'sleep',
      maxAttempts: 3,
    });
    env.server.putObject('bucket', 'broken.mcap', { generated: { size: 64 * KiB, seed: 9 } });
    env.server.addFault({ fault: { kind: 'status', status: 500 }, match: { method: '*', key: 'broken.mcap' }, times: 1_000 });
    const broken = await env.queue.submit({
      inputs: [{ url: env.server.httpUrl('bucket', 'broken.mcap') }],
      processor: 'sleep',
      maxAttempts: 2,
    });
    const errors: string[] = [];
    const unsubscribe = channels.prefetchError.subscribe((e) => errors.push(`${e.jobId}:${e.code}`));
    try {
      const pq = prefetch({ slots: 2, drain: true });
      const handed: string[] = [];
      for (;;) {
        const ready = await pq.nextReady();
        if (!ready) break;
        handed.push(ready.job.id);
        await finish(pq, ready.job);
      }
      await pq.close();
      expect(handed).toEqual([good[0]!.id]);
      // A missing object is permanent: dead after the one attempt it cost.
      const gone = await env.queue.get(missing.id);
      expect(gone).toMatchObject({ status: 'dead', attempts: 1 });
      expect(gone?.lastError).toMatch(/download failed/);
      expect(gone?.lastError).toMatch(/missing\.mcap/);
      // A server error may pass: retried until the job's attempts are spent.
      const dead = await env.queue.get(broken.id);
      expect(dead).toMatchObject({ status: 'dead', attempts: 2 });
      expect(dead?.lastError).toMatch(/500/);
      expect(errors.sort()).toEqual([`${broken.id}:ERR_SERVER`, `${broken.id}:ERR_SERVER`, `${missing.id}:ERR_NOT_FOUND`].sort());
      expect(pq.stats().downloadFailures).toBe(3);
      expect(existsSync(path.join(env.dir, 'buffer', missing.id))).toBe(false);
      expect(existsSync(path.join(env.dir, 'buffer', broken.id))).toBe(false);
    } finally {
      unsubscribe();
    }
  });

  it('keeps the lease of a long download alive with heartbeats', async () => {
    await restartServer({ rateLimitBytesPerSec: 1 * MiB });
    await submitJobs(1, 2 * MiB);
    const other = await openQueue(`sqlite://${env.dbPath}`);
    env.others.push(other);
    const pq = prefetch({ slots: 1, leaseMs: 500, heartbeatMs: 150 });
    const next = pq.nextReady();
    let stolen: JobRecord | null = null;
    let done = false;
    void next.finally(() => {
      done = true;
    });
    let polls = 0;
    while (!done) {
      stolen ??= await other.claim('worker-b', 500);
      polls++;
      await sleep(100);
    }
    const ready = await next;
    expect(stolen).toBeNull();
    expect(polls).toBeGreaterThan(10); // the download outlived the lease several times over
    expect(ready?.downloadSeconds).toBeGreaterThan(1);
    expect(ready?.job.leaseOwner).toBe('worker-a');
    await finish(pq, ready!.job);
  });

  it('drops a job whose lease was lost and never hands it out', async () => {
    await restartServer({ rateLimitBytesPerSec: 1 * MiB });
    await submitJobs(2, 1 * MiB);
    const pq = prefetch({ slots: 2, leaseMs: 1_000, heartbeatMs: 100 });
    pq.start();
    await until(() => getsFor('ep0.mcap').length > 0 && getsFor('ep1.mcap').length > 0, 'both downloads');
    // A long pause of this worker: its lease on job 1 expired and another worker claimed it.
    const db = new Database(env.dbPath);
    try {
      db.prepare('UPDATE jobs SET lease_expires_at = 0 WHERE id = 1').run();
    } finally {
      db.close();
    }
    const other = await openQueue(`sqlite://${env.dbPath}`);
    env.others.push(other);
    const stolen = await other.claim('worker-b', 60_000);
    expect(stolen?.id).toBe('1');
    const ready = await pq.nextReady();
    expect(ready?.job.id).toBe('2');
    expect(pq.stats().leaseLost).toBe(1);
    expect((await env.queue.get('1'))?.leaseOwner).toBe('worker-b');
    expect(existsSync(path.join(env.dir, 'buffer', '1'))).toBe(false);
    await finish(pq, ready!.job);
  });

  it('with a budget that fits one job, downloads one job at a time', async () => {
    await restartServer({ rateLimitBytesPerSec: 2 * MiB });
    await submitJobs(3, 512 * KiB);
    let downloading = 0;
    let maxDownloading = 0;
    const unsubscribe = channels.slotTransition.subscribe((e) => {
      if (e.to === 'downloading') downloading++;
      if (e.from === 'downloading') downloading--;
      maxDownloading = Math.max(maxDownloading, downloading);
    });
    try {
      const pq = prefetch({ slots: 2, budgetBytes: 768 * KiB, drain: true });
      let sawWaiting = false;
      for (;;) {
        const ready = await pq.nextReady();
        if (!ready) break;
        await until(
          () => pq.slotInfo().some((s) => s.state === 'claiming' && s.waitingForBytes > 0) || pq.statuses().length === 0,
          'the next slot to wait for budget',
        );
        sawWaiting ||= pq.slotInfo().some((s) => s.waitingForBytes === 512 * KiB);
        await finish(pq, ready.job);
      }
      await pq.close();
      expect(maxDownloading).toBe(1);
      expect(sawWaiting).toBe(true);
      expect(await env.queue.counts()).toMatchObject({ done: 3 });
    } finally {
      unsubscribe();
    }
  });

  it('fails a job larger than the whole budget with ERR_NO_SPACE', async () => {
    const [job] = await submitJobs(1, 1 * MiB, { maxAttempts: 1 });
    const pq = prefetch({ slots: 1, budgetBytes: 256 * KiB, drain: true });
    expect(await pq.nextReady()).toBeNull();
    await pq.close();
    const after = await env.queue.get(job!.id);
    expect(after?.status).toBe('dead');
    expect(after?.lastError).toMatch(/buffer budget/);
    expect(getsFor('ep0.mcap')).toHaveLength(0);
  });

  it('close() releases unstarted jobs with attempts unchanged and leaves no download running', async () => {
    await restartServer({ rateLimitBytesPerSec: 512 * KiB });
    await submitJobs(4, 2 * MiB);
    const pq = prefetch({ slots: 2 });
    const first = await pq.nextReady();
    expect(first?.job.id).toBe('1');
    await until(() => getsFor('ep1.mcap').length > 0 && getsFor('ep2.mcap').length > 0, 'prefetch of jobs 2 and 3');
    let closed = false;
    const closing = pq.close().then(() => {
      closed = true;
    });
    // Jobs 2 and 3 go back at once, while job 1 is still being processed.
    await until(async () => (await env.queue.counts()).pending === 3, 'jobs 2 and 3 released');
    expect(closed).toBe(false);
    expect(await pq.nextReady()).toBeNull();
    for (const id of ['2', '3', '4']) {
      const j = await env.queue.get(id);
      expect(j).toMatchObject({ status: 'pending', attempts: 0, leaseOwner: null });
    }
    await finish(pq, first!.job);
    await closing;
    expect(pq.mode).toBe('closed');
    const requests = env.server.requests.length;
    const sent = env.server.requests.reduce((n, r) => n + r.bytesSent, 0);
    await sleep(400);
    expect(env.server.requests.length).toBe(requests);
    expect(env.server.requests.reduce((n, r) => n + r.bytesSent, 0)).toBe(sent);
    expect(getsFor('ep3.mcap')).toHaveLength(0);
    expect(await readdir(path.join(env.dir, 'buffer'))).toEqual([]);
    // Idempotent.
    await pq.close();
    await pq.destroy();
  });

  it('close({ keepPartial }) keeps the partial downloads of released jobs for a resume', async () => {
    await restartServer({ rateLimitBytesPerSec: 512 * KiB });
    await submitJobs(1, 2 * MiB);
    const pq = prefetch({ slots: 1, keepPartial: true });
    pq.start();
    await until(() => getsFor('ep0.mcap').some((r) => r.bytesSent > 0), 'the download to start');
    await pq.close();
    expect(await env.queue.get('1')).toMatchObject({ status: 'pending', attempts: 0 });
    const files = await readdir(path.join(env.dir, 'buffer', '1'));
    expect(files.some((f) => f.endsWith('.roboflow-partial'))).toBe(true);
  });

  it('slots = 0 claims a job only when asked, then downloads it (sequential baseline)', async () => {
    await submitJobs(3, 128 * KiB);
    const pq = prefetch({ slots: 0, drain: true });
    await sleep(100);
    expect(env.server.requests).toHaveLength(0);
    const order: string[] = [];
    for (;;) {
      const ready = await pq.nextReady();
      if (!ready) break;
      order.push(ready.job.id);
      await sleep(100);
      // Nothing is claimed or downloaded while the job is being processed.
      expect(await env.queue.counts()).toMatchObject({ claimed: 0, running: 1 });
      const keys = new Set(env.server.requests.map((r) => r.key));
      expect(keys.size).toBe(order.length);
      await finish(pq, ready.job);
    }
    expect(order).toEqual(['1', '2', '3']);
    await pq.close();
  });

  it('backs off while the job queue is unreachable, logs it once, and recovers', async () => {
    await submitJobs(1, 64 * KiB);
    let claims = 0;
    const claimTimes: number[] = [];
    const outage = 3;
    const flaky = new Proxy(env.queue, {
      get(target, prop, receiver) {
        if (prop === 'claim') {
          return async (owner: string, leaseMs: number) => {
            claims++;
            claimTimes.push(performance.now());
            // An injected outage of the database, as a dropped connection would look.
            if (claims <= outage) throw new RoboflowError('ERR_QUEUE', 'job queue unreachable (injected outage)');
            return target.claim(owner, leaseMs);
          };
        }
        const value: unknown = Reflect.get(target, prop, receiver);
        return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value;
      },
    });
    const lines: { level: number; msg: string }[] = [];
    const log = pino({ level: 'debug' }, { write: (line: string) => lines.push(JSON.parse(line) as { level: number; msg: string }) });
    const pq = prefetch({ slots: 1, queue: flaky, log, pollIntervalMs: 10 });
    const ready = await pq.nextReady();
    expect(ready?.job.id).toBe('1');
    // Each failed claim is followed by a backoff (at least 250 ms for ERR_QUEUE): no spinning.
    expect(claims).toBeGreaterThanOrEqual(outage + 1);
    for (let i = 1; i <= outage; i++) expect(claimTimes[i]! - claimTimes[i - 1]!).toBeGreaterThanOrEqual(240);
    expect(lines.filter((l) => l.level === 40 && /cannot claim/.test(l.msg))).toHaveLength(1);
    expect(lines.filter((l) => /reachable again/.test(l.msg))).toHaveLength(1);
    await finish(pq, ready!.job);
  });

  it('destroy() aborts downloads without handing the jobs back', async () => {
    await restartServer({ rateLimitBytesPerSec: 512 * KiB });
    await submitJobs(2, 2 * MiB);
    const pq = prefetch({ slots: 2 });
    pq.start();
    await until(() => getsFor('ep0.mcap').length > 0 && getsFor('ep1.mcap').length > 0, 'both downloads');
    await pq.destroy();
    expect(pq.mode).toBe('destroyed');
    expect(await pq.nextReady()).toBeNull();
    const sent = env.server.requests.reduce((n, r) => n + r.bytesSent, 0);
    await sleep(300);
    expect(env.server.requests.reduce((n, r) => n + r.bytesSent, 0)).toBe(sent);
    expect(await env.queue.counts()).toMatchObject({ claimed: 2 });
    await pq.close();
  });
});

describe('PrefetchQueue when the job queue cannot start a job for a while', () => {
  /**
   * The real SQLite queue, except that `start()` fails the first `failures` times the way an
   * unreachable database does (retryable `ERR_QUEUE`); after that it starts the job for real.
   */
  function failingStarts(failures: number, opts: { hold?: Promise<void> } = {}): { queue: JobQueue; startTimes: number[] } {
    const startTimes: number[] = [];
    const queue = new Proxy(env.queue, {
      get(target, prop, receiver) {
        if (prop === 'start') {
          return async (id: string, owner: string, leaseMs: number) => {
            startTimes.push(performance.now());
            // A call that hangs on a dead connection until the test lets it fail.
            if (opts.hold) await opts.hold;
            if (startTimes.length <= failures) {
              throw new RoboflowError('ERR_QUEUE', 'job queue unreachable (injected: database restarting)');
            }
            return target.start(id, owner, leaseMs);
          };
        }
        const value: unknown = Reflect.get(target, prop, receiver);
        return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value;
      },
    });
    return { queue, startTimes };
  }

  function captureLog() {
    const lines: { level: number; msg: string }[] = [];
    const log = pino({ level: 'debug' }, { write: (line: string) => lines.push(JSON.parse(line) as { level: number; msg: string }) });
    return { lines, log };
  }

  it('keeps the downloaded files and the lease, retries start() with backoff, then hands the job out', async () => {
    const size = 300 * KiB;
    const [job] = await submitJobs(1, size);
    const { queue, startTimes } = failingStarts(2);
    const { lines, log } = captureLog();
    // A short lease: the retries outlast it, so only the heartbeats keep the job ours.
    const pq = prefetch({ slots: 1, queue, log, leaseMs: 400, heartbeatMs: 80 });
    const other = await openQueue(`sqlite://${env.dbPath}`);
    env.others.push(other);
    let settled = false;
    const next = pq.nextReady().finally(() => {
      settled = true;
    });
    let stolen: JobRecord | null = null;
    const deadline = Date.now() + 10_000;
    while (!settled && Date.now() < deadline) {
      stolen ??= await other.claim('worker-b', 60_000);
      await sleep(40);
    }
    expect(stolen).toBeNull();
    expect(settled).toBe(true);
    const ready = await next;
    expect(ready?.job).toMatchObject({ id: job!.id, status: 'running', attempts: 1, leaseOwner: 'worker-a' });
    expect(startTimes).toHaveLength(3);
    // Backoff between the tries (at least 250 ms for ERR_QUEUE), not a tight loop.
    for (let i = 1; i < startTimes.length; i++) expect(startTimes[i]! - startTimes[i - 1]!).toBeGreaterThanOrEqual(240);
    // The files downloaded before the first failed start are the ones handed out: fetched once.
    expect((await stat(ready!.inputPaths[0]!)).size).toBe(size);
    expect(getsFor('ep0.mcap').reduce((n, r) => n + r.bytesSent, 0)).toBe(size);
    expect(pq.stats()).toMatchObject({ claimed: 1, downloaded: 1, bytes: size, leaseLost: 0, released: 0 });
    // Logged like failed claims: the first failure at warn, the next ones at debug.
    const failures = lines.filter((l) => /start/i.test(l.msg) && l.level >= 20 && l.level <= 40);
    expect(failures.filter((l) => l.level === 40)).toHaveLength(1);
    expect(failures.filter((l) => l.level === 20).length).toBeGreaterThanOrEqual(1);
    await finish(pq, ready!.job);
    expect(existsSync(ready!.dir)).toBe(false);
    await pq.close();
    expect(await env.queue.get(job!.id)).toMatchObject({ status: 'done', attempts: 1 });
  });

  it('close() while start() keeps failing resolves at once and hands the job back, attempts unchanged', async () => {
    const [job] = await submitJobs(1, 64 * KiB);
    const { queue, startTimes } = failingStarts(Number.POSITIVE_INFINITY);
    // A long backoff ceiling: close() must not wait for the pending retry.
    const pq = prefetch({ slots: 1, queue, pollIntervalMs: 1_000 });
    const next = pq.nextReady();
    await until(() => startTimes.length >= 2, 'start() to fail twice', 10_000);
    await sleep(20);
    const closeStarted = performance.now();
    await pq.close();
    expect(await next).toBeNull();
    expect(performance.now() - closeStarted).toBeLessThan(1_000);
    expect(pq.mode).toBe('closed');
    expect(pq.stats()).toMatchObject({ released: 1, leaseLost: 0 });
    expect(await env.queue.get(job!.id)).toMatchObject({ status: 'pending', attempts: 0, leaseOwner: null });
    expect(existsSync(path.join(env.dir, 'buffer', job!.id))).toBe(false);
    // Claimable again right away, not only after the lease expires.
    const other = await openQueue(`sqlite://${env.dbPath}`);
    env.others.push(other);
    expect(await other.claim('worker-b', 60_000)).toMatchObject({ id: job!.id, attempts: 0 });
    // Nothing keeps trying after close().
    const tries = startTimes.length;
    await sleep(300);
    expect(startTimes).toHaveLength(tries);
  });

  it('close() while a start() is in flight hands the job back once that start fails', async () => {
    const [job] = await submitJobs(1, 64 * KiB);
    let failNow!: () => void;
    const hold = new Promise<void>((resolve) => {
      failNow = resolve;
    });
    const { queue, startTimes } = failingStarts(Number.POSITIVE_INFINITY, { hold });
    const pq = prefetch({ slots: 1, queue });
    const next = pq.nextReady();
    await until(() => startTimes.length === 1, 'the first start() call');
    let closed = false;
    const closing = pq.close().then(() => {
      closed = true;
    });
    await sleep(100);
    // The job is active while its start is in flight: close() waits for the outcome.
    expect(closed).toBe(false);
    failNow();
    await closing;
    expect(await next).toBeNull();
    expect(startTimes).toHaveLength(1);
    expect(pq.stats()).toMatchObject({ released: 1 });
    expect(await env.queue.get(job!.id)).toMatchObject({ status: 'pending', attempts: 0, leaseOwner: null });
    expect(await readdir(path.join(env.dir, 'buffer'))).toEqual([]);
  });

  it('drops a job whose lease is lost while its start is retried', async () => {
    const [job] = await submitJobs(1, 64 * KiB);
    const { queue, startTimes } = failingStarts(Number.POSITIVE_INFINITY);
    const pq = prefetch({ slots: 1, queue, leaseMs: 1_000, heartbeatMs: 100 });
    const next = pq.nextReady();
    await until(() => startTimes.length >= 1, 'the first failed start()');
    // A long pause of this worker: its lease expired and another worker claimed the job.
    const db = new Database(env.dbPath);
    try {
      db.prepare('UPDATE jobs SET lease_expires_at = 0 WHERE id = ?').run(Number(job!.id));
    } finally {
      db.close();
    }
    const other = await openQueue(`sqlite://${env.dbPath}`);
    env.others.push(other);
    expect((await other.claim('worker-b', 60_000))?.id).toBe(job!.id);
    await until(() => pq.stats().leaseLost === 1, 'the heartbeat to notice the lost lease');
    // The slot goes once its directory is deleted; the deletion can be seen a moment before that.
    await until(() => pq.slotInfo().length === 0, 'the slot to be freed');
    expect(existsSync(path.join(env.dir, 'buffer', job!.id))).toBe(false);
    const tries = startTimes.length;
    await sleep(300);
    expect(startTimes).toHaveLength(tries);
    await pq.close();
    expect(await next).toBeNull();
    expect(await env.queue.get(job!.id)).toMatchObject({ status: 'claimed', leaseOwner: 'worker-b', attempts: 0 });
  });
});

describe('ByteBudget', () => {
  it('grants in arrival order and makes a waiter wait until bytes come back', async () => {
    const budget = new ByteBudget({ limitBytes: 100, dir: env.dir, reserveBytes: 0 });
    const releaseA = await budget.acquire(60);
    const order: string[] = [];
    const b = budget.acquire(50).then((r) => (order.push('b'), r));
    const c = budget.acquire(10).then((r) => (order.push('c'), r));
    await sleep(20);
    // c would fit, but b came first and is not overtaken.
    expect(order).toEqual([]);
    expect(budget.waiting).toEqual({ count: 2, bytes: 60 });
    releaseA();
    releaseA(); // idempotent
    const [releaseB, releaseC] = await Promise.all([b, c]);
    expect(order).toEqual(['b', 'c']);
    expect(budget.heldBytes).toBe(60);
    releaseB();
    releaseC();
    expect(budget.heldBytes).toBe(0);
  });

  it('rejects a reservation larger than the budget, and one whose signal aborts', async () => {
    const budget = new ByteBudget({ limitBytes: 100, dir: env.dir, reserveBytes: 0 });
    await expect(budget.acquire(101)).rejects.toMatchObject({ code: 'ERR_NO_SPACE', retryable: true });
    const hold = await budget.acquire(100);
    const ac = new AbortController();
    const waiting = budget.acquire(1, ac.signal);
    ac.abort();
    await expect(waiting).rejects.toMatchObject({ code: 'ERR_ABORTED' });
    expect(budget.waiting.count).toBe(0);
    hold();
  });

  it('without a limit, uses the free space of the buffer file system minus the reserve', async () => {
    const fs = await import('node:fs/promises');
    const s = await fs.statfs(env.dir);
    const free = s.bavail * s.bsize;
    // A reserve above the free space leaves no room at all.
    const none = new ByteBudget({ limitBytes: null, dir: path.join(env.dir, 'not-yet-created'), reserveBytes: free + 1024 * MiB });
    await expect(none.acquire(1)).rejects.toMatchObject({ code: 'ERR_NO_SPACE' });
    const some = new ByteBudget({ limitBytes: null, dir: env.dir, reserveBytes: 0 });
    const release = await some.acquire(1024);
    expect(some.heldBytes).toBe(1024);
    release();
  });
});
