/**
 * Prefetch slots that never slow the job needed next: the shared limiter serves lanes by claim
 * order, the pools hold every slot's lanes, claims fill every free slot at once, and a host-wide
 * limit hands all of its transfers to the job handed out next. Real worker, real queue, a slow
 * object server on 127.0.0.1; orders and counts from its request log, no timed assertions.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { loadConfig, storageOptionsFrom } from '../src/config/load.js';
import { openQueue } from '../src/jobs/index.js';
import { Metrics } from '../src/metrics.js';
import { ConcurrencyLimiter, hostLanes, type Release } from '../src/prefetch/concurrency.js';
import { ParallelDownloader } from '../src/prefetch/downloader.js';
import { PrefetchQueue } from '../src/prefetch/queue.js';
import { StorageClients } from '../src/storage/index.js';
import { ObjectServer } from './support/object-server.js';
import type { JobQueue, JobRecord } from '../src/types.js';
import { Worker } from '../src/worker.js';
import { RETRY_TABLE } from '../src/errors.js';

const KiB = 1024;
const MiB = 1024 * KiB;

/** Settles pending promise callbacks. */
async function ticks(n = 5): Promise<void> {
  for (let i = 0; i < n; i++) await Promise.resolve();
}

describe('ConcurrencyLimiter with priorities', () => {
  it('serves waiters by priority, first come first served within one', async () => {
    const limiter = new ConcurrencyLimiter({ max: 1 });
    const held = await limiter.withPriority(5).acquire();
    const order: string[] = [];
    const wait = (name: string, priority: number) =>
      limiter
        .withPriority(priority)
        .acquire()
        .then((release) => {
          order.push(name);
          return release;
        });
    const late = wait('late job', 9);
    const nextA = wait('next job, lane a', 2);
    const nextB = wait('next job, lane b', 2);
    const middle = wait('middle job', 4);
    expect(limiter.waiting).toBe(4);
    held();
    (await nextA)();
    (await nextB)();
    (await middle)();
    (await late)();
    expect(order).toEqual(['next job, lane a', 'next job, lane b', 'middle job', 'late job']);
  });

  it('a holder yields only to a waiter of its own priority or a more urgent one', async () => {
    const limiter = new ConcurrencyLimiter({ max: 2 });
    const head = limiter.withPriority(1);
    const later = limiter.withPriority(2);
    const releases: Release[] = [await head.acquire(), await later.acquire()];
    const third = limiter.withPriority(3).acquire();
    // A less urgent waiter does not make either holder give its lane back...
    expect(head.shouldYield).toBe(false);
    expect(later.shouldYield).toBe(false);
    // ...a more urgent one makes the later job yield, not the head.
    const urgent = limiter.withPriority(1).acquire();
    expect(head.shouldYield).toBe(true); // same priority: fair turns within the job
    expect(later.shouldYield).toBe(true);
    releases[1]!();
    (await urgent)();
    releases[0]!();
    (await third)();
    expect(limiter.active).toBe(0);
  });

  it('a reservation keeps lanes for the job about to ask for them, and frees them when dropped', async () => {
    const limiter = new ConcurrencyLimiter({ max: 3 });
    const reservation = limiter.reserve(1, 2);
    expect(reservation.firstGrantAt).toBeNull();
    // The later job gets only what the reservation leaves.
    const later = limiter.withPriority(2);
    const first = await later.acquire();
    let second: Release | undefined;
    const pending = later.acquire().then((r) => (second = r));
    await ticks();
    expect(second).toBeUndefined();
    // The reserved job takes its lanes at once, redeeming the reservation as it goes.
    const head = limiter.withPriority(1);
    const a = await head.acquire();
    await ticks();
    expect(second).toBeUndefined();
    const b = await head.acquire();
    expect(limiter.active).toBe(3);
    a();
    await pending;
    expect(second).toBeDefined();
    expect(reservation.firstGrantAt).not.toBeNull();
    // Nothing left to drop; a second call does nothing.
    reservation.release();
    reservation.release();
    b();
    first();
    second!();
    expect(limiter.active).toBe(0);
  });

  it('a dropped reservation that was never redeemed lets the waiters in', async () => {
    const limiter = new ConcurrencyLimiter({ max: 1 });
    const reservation = limiter.reserve(1, 1);
    let got: Release | undefined;
    const pending = limiter.withPriority(2).acquire().then((r) => (got = r));
    await ticks();
    expect(got).toBeUndefined();
    reservation.release();
    await pending;
    expect(got).toBeDefined();
    got!();
  });

  it('sizes a worker for every slot at full speed, or for the host-wide limit', () => {
    expect(hostLanes({ slots: 2, downloadConnections: 4, maxHostConnections: null })).toEqual({ transfers: 8, sockets: 16 });
    expect(hostLanes({ slots: 0, downloadConnections: 4, maxHostConnections: null })).toEqual({ transfers: 4, sockets: 8 });
    expect(hostLanes({ slots: 3, downloadConnections: 4, maxHostConnections: 4 })).toEqual({ transfers: 4, sockets: 8 });
  });
});

interface Env {
  dir: string;
  queue: JobQueue;
  server: ObjectServer;
}

let env: Env;

beforeEach(async () => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'roboflow-slots-'));
  const queue = await openQueue(`sqlite://${path.join(dir, 'queue.db')}`);
  // Slow per connection: a download is bound by its lanes, as against S3, not by this machine.
  const server = await ObjectServer.start({ rateLimitBytesPerSec: 1 * MiB, firstByteLatencyMs: 5 });
  env = { dir, queue, server };
});

afterEach(async () => {
  await env.server.close();
  await env.queue.close();
  await rm(env.dir, { recursive: true, force: true });
});

async function submitJobs(n: number, size: number): Promise<string[]> {
  const keys: string[] = [];
  for (let i = 0; i < n; i++) {
    const key = `ep${i}.bin`;
    env.server.putObject('bucket', key, { generated: { size, seed: i + 1 } });
    await env.queue.submit({ inputs: [{ url: env.server.httpUrl('bucket', key), size }], processor: 'checksum' });
    keys.push(key);
  }
  return keys;
}

/** Ranged GETs of `key`, by their place in the server's request log. */
function rangedGets(key: string): number[] {
  return env.server.requests.flatMap((r, i) => (r.method === 'GET' && r.key === key && r.range !== undefined ? [i] : []));
}

/** Ranged GET bodies streaming now. */
function streaming(): number {
  return env.server.requests.filter((r) => r.method === 'GET' && r.range !== undefined && r.status >= 200 && r.status < 300 && r.bytesSent < r.range.end - r.range.start).length;
}

describe('worker prefetch slots', () => {
  it('with the host-wide limit at one download\'s connections, the job needed next gets every transfer first', async () => {
    const [first, second, third] = await submitJobs(3, 2 * MiB);
    const worker = new Worker({
      queue: env.queue,
      drain: true,
      config: {
        slots: 2,
        downloadConnections: 2,
        maxHostConnections: 2,
        chunkSize: 256 * KiB,
        bufferDir: path.join(env.dir, 'buffer'),
        pollIntervalMs: 20,
      },
    });
    const summary = await worker.run();
    expect(summary.done).toBe(3);
    const a = rangedGets(first!);
    const b = rangedGets(second!);
    const c = rangedGets(third!);
    expect(a.length).toBeGreaterThanOrEqual(8);
    // Every range of job 1 was asked for before the first of job 2, although job 2 was claimed
    // at once and its download started beside job 1's; and job 2's before job 3's.
    expect(Math.max(...a)).toBeLessThan(Math.min(...b));
    expect(Math.max(...b)).toBeLessThan(Math.min(...c));
  });

  it('without a host-wide limit every slot downloads with all its connections (pools sized by the configuration)', async () => {
    await submitJobs(2, 2 * MiB);
    const { config } = await loadConfig({
      env: { PREFETCH_SLOTS: '2', DOWNLOAD_CONNECTIONS: '2', CHUNK_SIZE: '256KiB', BUFFER_DIR: path.join(env.dir, 'buffer') },
      cwd: env.dir,
    });
    // The CLI's way: storage options from the configuration.
    const worker = new Worker({ queue: env.queue, drain: true, config: { ...config, pollIntervalMs: 20 }, storage: storageOptionsFrom(config, {}) });
    let peak = 0;
    const sampler = setInterval(() => {
      peak = Math.max(peak, streaming());
    }, 5);
    try {
      const summary = await worker.run();
      expect(summary.done).toBe(2);
    } finally {
      clearInterval(sampler);
    }
    // Two downloads of two lanes each at once: one pool of `downloadConnections` sockets held
    // the bodies to two, the slots taking turns.
    expect(peak).toBeGreaterThanOrEqual(4);
  });

  it('without a host-wide limit a later job starts its download only once the job needed next has its first lane', async () => {
    const keys = await submitJobs(3, 1 * MiB);
    const worker = new Worker({
      queue: env.queue,
      drain: true,
      config: { slots: 3, downloadConnections: 2, chunkSize: 256 * KiB, bufferDir: path.join(env.dir, 'buffer'), pollIntervalMs: 20 },
    });
    const summary = await worker.run();
    expect(summary.done).toBe(3);
    // All three claimed at once; each job's first request (its stat) reached the store only after
    // the job before it had asked for its first range.
    const firstRequest = (key: string) => env.server.requests.findIndex((r) => r.key === key);
    for (let i = 1; i < keys.length; i++) {
      const before = rangedGets(keys[i - 1]!);
      expect(before.length).toBeGreaterThan(0);
      expect(firstRequest(keys[i]!)).toBeGreaterThan(Math.min(...before));
    }
    // And then downloaded beside it: the later job's ranges began before the earlier job's ended.
    expect(Math.min(...rangedGets(keys[1]!))).toBeLessThan(Math.max(...rangedGets(keys[0]!)));
  });

  it('a reservation says when its priority started, or when it was dropped unused', async () => {
    const limiter = new ConcurrencyLimiter({ max: 2 });
    const used = limiter.reserve(1, 2);
    const unused = limiter.reserve(2, 2);
    let usedStarted = false;
    let unusedStarted = false;
    void used.started.then(() => (usedStarted = true));
    void unused.started.then(() => (unusedStarted = true));
    await ticks();
    expect([usedStarted, unusedStarted]).toEqual([false, false]);
    const release = await limiter.withPriority(1).acquire();
    await ticks();
    expect([usedStarted, unusedStarted]).toEqual([true, false]);
    unused.release();
    await ticks();
    expect(unusedStarted).toBe(true);
    release();
    used.release();
  });

  it('claims a job for every free slot at once', async () => {
    await submitJobs(3, 64 * KiB);
    const real = env.queue;
    let inFlight = 0;
    let most = 0;
    let open!: () => void;
    const gate = new Promise<void>((resolve) => (open = resolve));
    // The job queue as it is, each claim held until three are in flight (or 5 s passed, when
    // claims would come one after another).
    const claim = async (owner: string, leaseMs: number): Promise<JobRecord | null> => {
      inFlight++;
      most = Math.max(most, inFlight);
      if (inFlight >= 3) open();
      await Promise.race([gate, new Promise((r) => setTimeout(r, 5_000).unref())]);
      inFlight--;
      return real.claim(owner, leaseMs);
    };
    const slowClaims = new Proxy(real, {
      get(target, prop) {
        if (prop === 'claim') return claim;
        const v: unknown = Reflect.get(target, prop, target);
        return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
      },
    });
    const clients = new StorageClients();
    const downloader = new ParallelDownloader({ connections: 1, clients });
    const prefetch = new PrefetchQueue({
      queue: slowClaims,
      downloader,
      owner: 'slots-test',
      drain: true,
      pollIntervalMs: 20,
      config: { slots: 3, downloadConnections: 1, chunkSize: 256 * KiB, bufferDir: path.join(env.dir, 'buffer'), bufferBudgetBytes: null },
    });
    try {
      prefetch.start();
      for (let i = 0; i < 3; i++) {
        const job = await prefetch.nextReady();
        expect(job).not.toBeNull();
        await prefetch.notifyComplete(job!.job.id);
      }
      expect(most).toBe(3);
    } finally {
      await prefetch.destroy();
      await downloader.destroy();
      await clients.close();
    }
  });

  it('/metrics of a worker that saw no error shows every error and retry series at 0', async () => {
    await submitJobs(1, 64 * KiB);
    const metrics = new Metrics({ processMetrics: false });
    metrics.subscribe();
    const server = await metrics.serve('127.0.0.1:0');
    try {
      const worker = new Worker({ queue: env.queue, drain: true, config: { slots: 1, bufferDir: path.join(env.dir, 'buffer'), pollIntervalMs: 20 } });
      expect((await worker.run()).done).toBe(1);
      const text = await (await fetch(`http://${server.address}/metrics`)).text();
      const codes = Object.keys(RETRY_TABLE);
      for (const reason of [...codes, 'other']) {
        for (const stage of ['download', 'prefetch']) {
          expect(text).toContain(`roboflow_prefetch_errors_total{reason="${reason}",stage="${stage}"} 0\n`);
        }
      }
      for (const reason of codes.filter((c) => RETRY_TABLE[c as keyof typeof RETRY_TABLE].retryable)) {
        expect(text).toContain(`roboflow_download_range_retries_total{reason="${reason}"} 0\n`);
      }
      expect(text).toContain('roboflow_worker_job_duration_seconds_count{outcome="dead"} 0\n');
      expect(text).toContain('roboflow_worker_jobs_total{outcome="done"} 1\n');
    } finally {
      await server.close();
      await metrics.close();
    }
  });
});
