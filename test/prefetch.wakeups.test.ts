// Idle prefetch queues on PostgreSQL are woken by the job queue (LISTEN/NOTIFY) instead of
// polling: with a fallback poll of ten minutes, a job submitted elsewhere is still picked up.
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, describe, expect, it } from 'vitest';
import { openQueue } from '../src/jobs/index.js';
import { ParallelDownloader } from '../src/prefetch/downloader.js';
import { PrefetchQueue } from '../src/prefetch/queue.js';
import { StorageClients } from '../src/storage/index.js';
import { ObjectServer } from './support/object-server.js';
import type { JobQueue } from '../src/types.js';
import { postgresBackend } from './fixtures/jobs-backends.js';

const backend = postgresBackend();

afterAll(async () => {
  await backend.cleanup();
});

/** The queue with its claims counted; `onWork` passed through. */
function counted(inner: JobQueue): { queue: JobQueue; claims: () => number } {
  let claims = 0;
  const queue = new Proxy(inner, {
    get(target, prop, receiver) {
      if (prop === 'claim') {
        return (owner: string, leaseMs: number) => {
          claims++;
          return target.claim(owner, leaseMs);
        };
      }
      const value = Reflect.get(target, prop, receiver) as unknown;
      return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value;
    },
  });
  return { queue, claims: () => claims };
}

describe('prefetch wake-ups on PostgreSQL', { timeout: 60_000 }, () => {
  it('an idle queue claims a job submitted by another process without polling for it', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'roboflow-'));
    const url = await backend.freshUrl();
    const workerQueue = await openQueue(url);
    const submitter = await openQueue(url);
    const server = await ObjectServer.start();
    const clients = new StorageClients();
    const downloader = new ParallelDownloader({ connections: 1, clients });
    const { queue, claims } = counted(workerQueue);
    const pq = new PrefetchQueue({
      queue,
      downloader,
      config: { slots: 1, downloadConnections: 1, chunkSize: 256 * 1024, bufferDir: path.join(dir, 'buffer'), bufferBudgetBytes: null },
      owner: 'idle-worker',
      leaseMs: 30_000,
      heartbeatMs: 10_000,
      pollIntervalMs: 20,
      fallbackPollIntervalMs: 600_000,
      clients,
    });
    try {
      const next = pq.nextReady();
      // Idle: after the first empty claim, no polling at the 20 ms interval.
      await sleep(500);
      const idleClaims = claims();
      expect(idleClaims).toBeGreaterThanOrEqual(1);
      expect(idleClaims).toBeLessThanOrEqual(3);
      server.putObject('bucket', 'ep.mcap', { generated: { size: 1000, seed: 1 } });
      const job = await submitter.submit({ inputs: [{ url: server.httpUrl('bucket', 'ep.mcap') }], processor: 'checksum' });
      const ready = await next;
      expect(ready?.job.id).toBe(job.id);
      pq.notifyComplete(job.id);
    } finally {
      await pq.destroy();
      await downloader.destroy();
      await clients.close();
      await server.close();
      await workerQueue.close();
      await submitter.close();
      await rm(dir, { recursive: true, force: true });
    }
  });
});
