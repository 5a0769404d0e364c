/**
 * Buffer bytes are granted in claim order, the order jobs are handed out in. Granted in the order
 * sizes came in, a later job whose size was declared took the bytes an earlier one (sizing with a
 * slow HEAD) needed: the later job was ready but never handed out, the earlier one waited for its
 * bytes for good. The byte budget's line alone, then the prefetch queue and the worker against a
 * store on 127.0.0.1 that holds the HEAD of one object until the test lets it go. Orders from
 * promises and the store's request log; no timed assertions.
 */
import { createServer, type Server, type ServerResponse } from 'node:http';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { openQueue } from '../src/jobs/index.js';
import { ByteBudget, type ReleaseBytes } from '../src/prefetch/budget.js';
import { ConcurrencyLimiter } from '../src/prefetch/concurrency.js';
import { ParallelDownloader } from '../src/prefetch/downloader.js';
import { PrefetchQueue } from '../src/prefetch/queue.js';
import { StorageClients } from '../src/storage/index.js';
import type { JobQueue, JobRecord } from '../src/types.js';
import { Worker } from '../src/worker.js';

const KiB = 1024;

/** Settles pending promise callbacks. */
async function ticks(n = 10): Promise<void> {
  for (let i = 0; i < n; i++) await Promise.resolve();
}

/** A grant to watch: `got` is set once the bytes are granted, `err` once it was refused. */
function watch(p: Promise<ReleaseBytes>): { got: ReleaseBytes | null; err: unknown; done: Promise<void> } {
  const w: { got: ReleaseBytes | null; err: unknown; done: Promise<void> } = { got: null, err: null, done: Promise.resolve() };
  w.done = p.then(
    (r) => void (w.got = r),
    (e: unknown) => void (w.err = e),
  );
  return w;
}

describe('ByteBudget line order', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'roboflow-budget-'));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('serves nobody behind a place whose holder still sizes, even bytes that would fit', async () => {
    const budget = new ByteBudget({ limitBytes: 10_000, dir, reserveBytes: 0 });
    const first = budget.turn(1);
    const second = budget.turn(2);
    const later = watch(second.acquire(5_000));
    await ticks();
    expect(later.got).toBeNull();
    expect(budget.sizing).toBe(1);
    expect(budget.waiting).toEqual({ count: 1, bytes: 5_000 });
    // The first job learns its size: served first, and the second no longer fits beside it.
    const releaseFirst = await first.acquire(6_000);
    await ticks();
    expect(budget.heldBytes).toBe(6_000);
    expect(later.got).toBeNull();
    releaseFirst();
    await later.done;
    expect(later.got).not.toBeNull();
    expect(budget.heldBytes).toBe(5_000);
    later.got!();
    expect(budget.heldBytes).toBe(0);
  });

  it('orders by the order given, not by when the place was taken', async () => {
    // Room for one at a time, so each grant waits for the release before it.
    const budget = new ByteBudget({ limitBytes: 10, dir, reserveBytes: 0 });
    const third = budget.turn(3);
    const second = budget.turn(2);
    const first = budget.turn(1);
    const w3 = watch(third.acquire(10));
    const w2 = watch(second.acquire(10));
    await ticks();
    expect([w2.got, w3.got]).toEqual([null, null]);
    const w1 = watch(first.acquire(10));
    await w1.done;
    await ticks();
    expect([w1.got !== null, w2.got, w3.got]).toEqual([true, null, null]);
    w1.got!();
    await w2.done;
    await ticks();
    expect(w3.got).toBeNull();
    w2.got!();
    await w3.done;
    w3.got!();
    expect(budget.heldBytes).toBe(0);
  });

  it('a place that is left lets the line move on; leaving after the grant keeps the bytes held', async () => {
    const budget = new ByteBudget({ limitBytes: 100, dir, reserveBytes: 0 });
    const refused = budget.turn(1);
    const next = budget.turn(2);
    const waiting = watch(next.acquire(50));
    await ticks();
    expect(waiting.got).toBeNull();
    refused.leave();
    refused.leave(); // idempotent
    await waiting.done;
    expect(waiting.got).not.toBeNull();
    next.leave();
    expect(budget.heldBytes).toBe(50);
    waiting.got!();
    expect(budget.heldBytes).toBe(0);
    expect(budget.sizing).toBe(0);
  });

  it('an earlier job too large for the whole budget fails and no longer holds up the line', async () => {
    const budget = new ByteBudget({ limitBytes: 100, dir, reserveBytes: 0 });
    const huge = budget.turn(1);
    const small = watch(budget.turn(2).acquire(40));
    await ticks();
    expect(small.got).toBeNull();
    await expect(huge.acquire(101)).rejects.toMatchObject({ code: 'ERR_NO_SPACE', retryable: true });
    await small.done;
    expect(small.got).not.toBeNull();
    small.got!();
  });

  it('an earlier waiter that is aborted gives up its place', async () => {
    const budget = new ByteBudget({ limitBytes: 100, dir, reserveBytes: 0 });
    const hold = await budget.acquire(60);
    const ac = new AbortController();
    const big = watch(budget.turn(1).acquire(50, ac.signal));
    const small = watch(budget.turn(2).acquire(30));
    await ticks();
    // 30 would fit beside the 60 held, but the 50 before it does not and is not overtaken.
    expect([big.got, small.got]).toEqual([null, null]);
    ac.abort();
    await Promise.all([big.done, small.done]);
    expect(big.err).toMatchObject({ code: 'ERR_ABORTED' });
    expect(small.got).not.toBeNull();
    expect(budget.waiting.count).toBe(0);
    hold();
    small.got!();
    expect(budget.heldBytes).toBe(0);
  });

  it('a reservation without a place queues behind every place, also when the limit is the free space', async () => {
    const budget = new ByteBudget({ limitBytes: null, dir, reserveBytes: 0 });
    const sizing = budget.turn(7);
    const order: string[] = [];
    // Asked first, but behind the place taken before it.
    const plain = budget.acquire(1).then((r) => (order.push('plain'), r));
    await ticks();
    const placed = sizing.acquire(1).then((r) => (order.push('place'), r));
    for (const release of await Promise.all([plain, placed])) release();
    expect(order).toEqual(['place', 'plain']);
    expect(budget.heldBytes).toBe(0);
  });
});

// ---------------------------------------------------------------------------------------------
// The scenario: slots 2, buffer 10,000 bytes; job 1 needs 6,000 bytes and does not say so (a HEAD
// sizes it, and the store holds that HEAD); job 2 needs 5,000 and declares them.
// ---------------------------------------------------------------------------------------------

interface StoreRequest {
  readonly method: string;
  readonly name: string;
  readonly range: string | undefined;
}

/** An object store on 127.0.0.1 serving HEAD and ranged GET; HEADs of `holdHeadOf` wait for `release()`. */
class HoldingStore {
  readonly requests: StoreRequest[] = [];
  release!: () => void;
  readonly #released = new Promise<void>((resolve) => (this.release = resolve));
  readonly #server: Server;
  readonly #objects: ReadonlyMap<string, Buffer>;

  private constructor(objects: ReadonlyMap<string, Buffer>, holdHeadOf: string) {
    this.#objects = objects;
    this.#server = createServer((req, res) => {
      const name = decodeURIComponent(new URL(req.url ?? '/', 'http://store').pathname.slice(1));
      const range = req.headers.range;
      this.requests.push({ method: req.method ?? '', name, range });
      const held = req.method === 'HEAD' && name === holdHeadOf ? this.#released : Promise.resolve();
      void held.then(() => this.#answer(req.method ?? '', name, range, res));
    });
  }

  #answer(method: string, name: string, range: string | undefined, res: ServerResponse): void {
    const body = this.#objects.get(name);
    if (body === undefined) {
      res.writeHead(404, { 'content-length': '0' }).end();
      return;
    }
    const headers = { 'accept-ranges': 'bytes', etag: `"${name}-1"`, 'content-type': 'application/octet-stream' };
    if (method === 'HEAD') {
      res.writeHead(200, { ...headers, 'content-length': String(body.length) }).end();
      return;
    }
    if (method !== 'GET') {
      res.writeHead(405, { 'content-length': '0' }).end();
      return;
    }
    const m = /^bytes=(\d+)-(\d+)$/.exec(range ?? '');
    if (!m) {
      res.writeHead(200, { ...headers, 'content-length': String(body.length) }).end(body);
      return;
    }
    const start = Number(m[1]);
    const end = Math.min(Number(m[2]), body.length - 1);
    res
      .writeHead(206, { ...headers, 'content-range': `bytes ${start}-${end}/${body.length}`, 'content-length': String(end - start + 1) })
      .end(body.subarray(start, end + 1));
  }

  static async start(objects: ReadonlyMap<string, Buffer>, holdHeadOf: string): Promise<HoldingStore> {
    const store = new HoldingStore(objects, holdHeadOf);
    await new Promise<void>((resolve, reject) => {
      store.#server.once('error', reject);
      store.#server.listen(0, '127.0.0.1', () => resolve());
    });
    return store;
  }

  url(name: string): string {
    const { port } = this.#server.address() as AddressInfo;
    return `http://127.0.0.1:${port}/${name}`;
  }

  requestsFor(name: string, method: string): StoreRequest[] {
    return this.requests.filter((r) => r.name === name && r.method === method);
  }

  async close(): Promise<void> {
    this.release();
    this.#server.closeAllConnections();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }
}

function bytes(n: number, seed: number): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + seed * 7) & 0xff;
  return b;
}

async function until(cond: () => boolean | Promise<boolean>, what: string, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

describe('buffer bytes in claim order', () => {
  let dir: string;
  let queue: JobQueue;
  let store: HoldingStore;
  let clients: StorageClients;
  const cleanups: (() => Promise<void>)[] = [];

  async function setup(sizes: { unsized: number; declared: number }): Promise<{ first: JobRecord; second: JobRecord; objects: Map<string, Buffer> }> {
    const objects = new Map([
      ['unsized.bin', bytes(sizes.unsized, 1)],
      ['declared.bin', bytes(sizes.declared, 2)],
    ]);
    store = await HoldingStore.start(objects, 'unsized.bin');
    const first = await queue.submit({ inputs: [{ url: store.url('unsized.bin') }], processor: 'sleep' });
    const second = await queue.submit({ inputs: [{ url: store.url('declared.bin'), size: sizes.declared }], processor: 'sleep' });
    return { first, second, objects };
  }

  beforeEach(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'roboflow-budget-'));
    queue = await openQueue(`sqlite://${path.join(dir, 'queue.db')}`);
    clients = new StorageClients();
  });

  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
    await clients.close();
    await store?.close();
    await queue.close();
    await rm(dir, { recursive: true, force: true });
  });

  function prefetchQueue(limiter?: ConcurrencyLimiter): { pq: PrefetchQueue; budget: ByteBudget } {
    const bufferDir = path.join(dir, 'buffer');
    const downloader = new ParallelDownloader({
      connections: 1,
      chunkSize: 4 * KiB,
      clients,
      stallTimeoutMs: 10_000,
      retry: { maxAttempts: 2, baseDelayMs: 1, maxDelayMs: 5 },
      ...(limiter ? { limiter } : {}),
    });
    const budget = new ByteBudget({ limitBytes: 10_000, dir: bufferDir, reserveBytes: 0 });
    const pq = new PrefetchQueue({
      queue,
      downloader,
      config: { slots: 2, downloadConnections: 1, chunkSize: 4 * KiB, bufferDir, bufferBudgetBytes: 10_000 },
      owner: 'worker-a',
      leaseMs: 5_000,
      heartbeatMs: 1_000,
      pollIntervalMs: 20,
      clients,
      budget,
      drain: true,
      ...(limiter ? { limiter } : {}),
    });
    cleanups.push(async () => {
      await pq.destroy();
      await downloader.destroy();
    });
    return { pq, budget };
  }

  /** Hands out both jobs in claim order, checks their files and completes them. */
  async function runBoth(pq: PrefetchQueue, first: JobRecord, second: JobRecord, objects: Map<string, Buffer>, pending: ReturnType<PrefetchQueue['nextReady']>): Promise<void> {
    for (const [job, name, next] of [
      [first, 'unsized.bin', pending],
      [second, 'declared.bin', null],
    ] as const) {
      const ready = await (next ?? pq.nextReady());
      expect(ready?.job.id).toBe(job.id);
      expect(await readFile(ready!.inputPaths[0]!)).toEqual(objects.get(name));
      await queue.complete(job.id, 'worker-a', { ok: true });
      await pq.notifyComplete(job.id);
    }
    expect(await pq.nextReady()).toBeNull();
    expect(await queue.counts()).toMatchObject({ done: 2, pending: 0, claimed: 0, running: 0 });
  }

  it('a later job with a declared size waits for the earlier one still sizing, and both complete', async () => {
    const { first, second, objects } = await setup({ unsized: 6_000, declared: 5_000 });
    const { pq, budget } = prefetchQueue();
    const pending = pq.nextReady();
    // Job 1 is sizing (its HEAD held); job 2 knows its size and asks for its bytes at once. Served
    // first come, first served, job 2 took 5,000 bytes and got ready here, and job 1 then waited
    // for 6,000 of 10,000 bytes for good.
    await until(
      () =>
        store.requestsFor('unsized.bin', 'HEAD').length > 0 &&
        pq.slotInfo().some((s) => s.jobId === second.id && (s.waitingForBytes === 5_000 || s.state === 'ready')),
      'job 1 sizing and job 2 asking for its bytes',
    );
    // Job 2 fits the empty budget but does not go first.
    expect(budget.heldBytes).toBe(0);
    expect(budget.sizing).toBe(1);
    expect(pq.slotInfo().map((s) => [s.jobId, s.state])).toEqual([
      [first.id, 'claiming'],
      [second.id, 'claiming'],
    ]);
    expect(store.requestsFor('declared.bin', 'GET')).toEqual([]);
    store.release();
    await runBoth(pq, first, second, objects, pending);
    // Job 2 got its bytes only once job 1's were back: its first range came after job 1's last.
    const lastOfFirst = store.requests.findLastIndex((r) => r.name === 'unsized.bin' && r.method === 'GET');
    const firstOfSecond = store.requests.findIndex((r) => r.name === 'declared.bin' && r.method === 'GET');
    expect(lastOfFirst).toBeGreaterThanOrEqual(0);
    expect(firstOfSecond).toBeGreaterThan(lastOfFirst);
  });

  it('with one shared transfer (host limit at one download\'s connections) both jobs complete', async () => {
    const { first, second, objects } = await setup({ unsized: 6_000, declared: 5_000 });
    const limiter = new ConcurrencyLimiter({ max: 1 });
    const { pq, budget } = prefetchQueue(limiter);
    const pending = pq.nextReady();
    await until(
      () => store.requestsFor('unsized.bin', 'HEAD').length > 0 && pq.slotInfo().filter((s) => s.jobId !== null).length === 2,
      'both jobs claimed and job 1 sizing',
    );
    expect(budget.heldBytes).toBe(0);
    expect(limiter.active).toBe(0);
    expect(store.requestsFor('declared.bin', 'GET')).toEqual([]);
    store.release();
    await runBoth(pq, first, second, objects, pending);
    expect(limiter.active).toBe(0);
  });

  it('a job that fails while sizing gives up its place: the job behind it is handed out', async () => {
    const objects = new Map([['declared.bin', bytes(5_000, 2)]]);
    store = await HoldingStore.start(objects, 'missing.bin');
    const missing = await queue.submit({ inputs: [{ url: store.url('missing.bin') }], processor: 'sleep', maxAttempts: 1 });
    const second = await queue.submit({ inputs: [{ url: store.url('declared.bin'), size: 5_000 }], processor: 'sleep' });
    const { pq, budget } = prefetchQueue();
    const pending = pq.nextReady();
    await until(() => store.requestsFor('missing.bin', 'HEAD').length > 0, 'the HEAD of the missing object');
    store.release(); // 404: job 1 fails while sizing
    const ready = await pending;
    expect(ready?.job.id).toBe(second.id);
    expect(await readFile(ready!.inputPaths[0]!)).toEqual(objects.get('declared.bin'));
    await queue.complete(second.id, 'worker-a', { ok: true });
    await pq.notifyComplete(second.id);
    expect(await pq.nextReady()).toBeNull();
    expect(await queue.get(missing.id)).toMatchObject({ status: 'dead' });
    expect(budget.heldBytes).toBe(0);
    expect(budget.sizing).toBe(0);
  });

  it('the worker with a host limit at one download\'s connections completes both jobs', async () => {
    // The worker's budget has a 64 KiB floor: the same scenario, scaled.
    const { first, second } = await setup({ unsized: 40 * KiB, declared: 30 * KiB });
    const worker = new Worker({
      queue,
      drain: true,
      owner: 'worker-a',
      config: {
        slots: 2,
        downloadConnections: 1,
        maxHostConnections: 1,
        chunkSize: 16 * KiB,
        bufferDir: path.join(dir, 'buffer'),
        bufferBudgetBytes: 64 * KiB,
        pollIntervalMs: 20,
        leaseMs: 5_000,
        heartbeatMs: 1_000,
      },
    });
    const run = worker.run();
    await until(
      async () => store.requestsFor('unsized.bin', 'HEAD').length > 0 && (await queue.get(second.id))?.status === 'claimed',
      'both jobs claimed and job 1 sizing',
    );
    expect(store.requestsFor('declared.bin', 'GET')).toEqual([]);
    store.release();
    const summary = await run;
    expect(summary).toMatchObject({ done: 2, failed: 0, dead: 0 });
    expect((await queue.get(first.id))?.status).toBe('done');
    expect((await queue.get(second.id))?.status).toBe('done');
  });
});
