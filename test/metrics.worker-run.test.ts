/**
 * Metrics after a real, scripted worker run against the test object server: the counters must
 * agree with what the server sent, the faults it injected, and the worker's own time accounting.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { openQueue } from '../src/jobs/index.js';
import { Metrics } from '../src/metrics.js';
import { ObjectServer } from './support/object-server.js';
import type { JobQueue } from '../src/types.js';
import { Worker } from '../src/worker.js';

const KiB = 1024;
const MiB = 1024 * KiB;

let dir: string;
let queue: JobQueue;
let server: ObjectServer;
let metrics: Metrics;

beforeEach(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'roboflow-metrics-run-'));
  queue = await openQueue(`sqlite://${path.join(dir, 'queue.db')}`);
  server = await ObjectServer.start();
  metrics = new Metrics({ processMetrics: false });
  metrics.subscribe();
});

afterEach(async () => {
  await metrics.close();
  await server.close();
  await queue.close();
  await rm(dir, { recursive: true, force: true });
});

/** Sum of a metric's samples whose labels include `labels`. */
async function total(name: string, labels: Record<string, string> = {}): Promise<number> {
  const all = await metrics.registry.getMetricsAsJSON();
  const base = name.replace(/_(bucket|sum|count)$/, '');
  const metric = all.find((m) => m.name === base);
  const values = (metric?.values ?? []) as { metricName?: string; labels: Record<string, unknown>; value: number }[];
  return values
    .filter((v) => (v.metricName ?? base) === name)
    .filter((v) => Object.entries(labels).every(([k, want]) => String(v.labels[k]) === want))
    .reduce((sum, v) => sum + v.value, 0);
}

describe('metrics of a scripted worker run', () => {
  it('count the bytes the server sent, the faults it injected, and the time the worker spent', async () => {
    const sizes = [3 * MiB + 17, 2 * MiB, 1 * MiB + 5];
    for (const [i, size] of sizes.entries()) {
      server.putObject('bucket', `ep${i}.bin`, { generated: { size, seed: i + 1 } });
      await queue.submit({ inputs: [{ url: server.httpUrl('bucket', `ep${i}.bin`) }], processor: 'checksum' });
    }
    // A job whose input does not exist: one download error, no bytes, the job goes dead.
    await queue.submit({ inputs: [{ url: server.httpUrl('bucket', 'missing.bin') }], processor: 'checksum' });
    // Three connection resets in the middle of range bodies: each costs one range retry.
    const resets = 3;
    server.addFault({ fault: { kind: 'reset', afterBytes: 100 * KiB }, match: { method: 'GET', rangedOnly: true }, times: resets, skip: 2 });

    const worker = new Worker({
      queue,
      drain: true,
      owner: 'metrics-run',
      config: {
        slots: 2,
        downloadConnections: 2,
        chunkSize: 256 * KiB,
        bufferDir: path.join(dir, 'buffer'),
        bufferBudgetBytes: 64 * MiB,
        pollIntervalMs: 20,
        retryBaseDelayMs: 1,
        retryMaxDelayMs: 5,
        jobRetryBaseDelayMs: 1,
        jobRetryMaxDelayMs: 5,
      },
    });
    const summary = await worker.run();
    expect(summary.done).toBe(sizes.length);
    expect(summary.dead + summary.downloadFailures).toBeGreaterThanOrEqual(1);

    // Bytes: every byte written exactly once (a retry fetches only the rest of its range), and the
    // server sent those bytes plus the partial bodies cut by the resets.
    const objectBytes = sizes.reduce((a, b) => a + b, 0);
    expect(await total('roboflow_prefetch_bytes_downloaded_total')).toBe(objectBytes);
    expect(server.bytesServed()).toBeGreaterThanOrEqual(objectBytes);

    // Faults: one retry per injected reset; the missing object is one download error.
    const injected = server.requests.filter((r) => r.fault === 'reset').length;
    expect(injected).toBe(resets);
    expect(await total('roboflow_download_range_retries_total')).toBe(injected);
    // The prefetch queue sizes inputs before downloading, so the 404 surfaces there, once.
    expect(await total('roboflow_prefetch_errors_total', { reason: 'ERR_NOT_FOUND' })).toBe(1);
    expect(await total('roboflow_prefetch_errors_total', { reason: 'ERR_NOT_FOUND', stage: 'prefetch' })).toBe(1);
    expect(await total('roboflow_download_ranges_in_flight')).toBe(0);
    expect(await total('roboflow_prefetch_download_duration_seconds_count')).toBe(sizes.length);

    // Time: the counters are the worker's own accounting, and wait + busy covers its wall time
    // (what is left is claim polling and start-up, small against the run).
    const wait = await total('roboflow_worker_input_wait_seconds_total');
    const busy = await total('roboflow_worker_busy_seconds_total');
    expect(wait).toBeCloseTo(summary.inputWaitSeconds, 2);
    expect(busy).toBeCloseTo(summary.busySeconds, 2);
    expect(wait + busy).toBeLessThanOrEqual(summary.wallSeconds + 0.05);
    expect(wait + busy).toBeGreaterThanOrEqual(summary.wallSeconds * 0.8 - 0.1);
    expect(await total('roboflow_worker_jobs_total', { outcome: 'done' })).toBe(sizes.length);
  });
});
