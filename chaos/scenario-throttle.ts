/**
 * Scenario `throttle`: a store that says "slow down".
 *
 * Part 1, storms: a worker runs checksum jobs while the object server answers 503 SlowDown to the
 * first range requests (with `Retry-After: 1`), then to bursts later in the run (one without any
 * delay hint, one with OSS's `x-oss-qos-delay-time`). Every job must still complete with its exact
 * bytes.
 *
 * Part 2, a throttle: the server serves at most K GETs at once and turns the rest away with 503.
 * The same objects are downloaded twice, all at once through one shared concurrency limiter:
 * once with the adaptive (AIMD) limiter starting at 16, once with 16 fixed permits (the limiter
 * cannot go down: blind retries). The adaptive run should settle near K permits in flight — the
 * scenario records the limiter's limit and permits held every few milliseconds and the limit
 * changes published on the concurrency channel — and provoke far fewer 503s. Both runs must end
 * with byte-identical files; their times and 503 counts go into the report.
 */

import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { channels } from '../src/diagnostics.js';
import { ConcurrencyLimiter } from '../src/prefetch/concurrency.js';
import { ParallelDownloader } from '../src/prefetch/downloader.js';
import { sha256File } from '../src/processors/index.js';
import type { FaultRule, ObjectServer } from '../test/support/object-server.js';
import { Worker } from '../src/worker.js';
import {
  bytesRefetched,
  capturedLogger,
  chaosWorkerConfig,
  expectWholeObjects,
  KiB,
  localJobOutputs,
  MiB,
  observeChannels,
  openLocalQueue,
  putRecordings,
  runScenario,
  runWorkerBounded,
  serverFaults,
  settle,
  startObjectServer,
  submitChecksumJobs,
  verifyJobs,
  type ChaosObject,
  type ScenarioContext,
} from './harness.js';
import type { ScenarioOptions, ScenarioReport } from './report.js';

/** GETs the throttling server serves at once. */
const K = 4;
/** Permits of both runs of part 2: the downloader's default connections. */
const START_CONNECTIONS = 16;
/** How often part 2 samples the limiter. */
const SAMPLE_MS = 10;
/**
 * Slack over K the adaptive limiter may show once it has converged: AIMD probes one step above
 * what the store allows before it halves, and a range that ends while another starts can overlap.
 */
const CONVERGED_SLACK = 2;
/** Convergence counts only when the run goes on at least this long after it (a few AIMD rounds). */
const MIN_OBSERVED_MS = 1_000;

interface Sample {
  /** ms since the run started. */
  readonly t: number;
  readonly limit: number;
  readonly active: number;
  /** Range requests in flight (look-ahead requests included), from the range-request channel. */
  readonly requests: number;
}

export interface ThrottleRun {
  readonly mode: 'adaptive' | 'fixed';
  readonly seconds: number;
  readonly ok: boolean;
  readonly error?: string;
  /** GETs the server turned away with 503 during the run. */
  readonly throttled: number;
  readonly rangeRequests: number;
  /** Files whose SHA-256 equals the object's. */
  readonly identical: number;
  /** ms after the start when the limit first came down to K or below; null if it never did. */
  readonly convergedAtMs: number | null;
  /** How long the run went on after that: the window the peaks below are taken over. */
  readonly observedAfterConvergenceMs: number;
  /** Most permits held at once after convergence (whole run when it never converged). */
  readonly peakActiveAfterConvergence: number;
  readonly peakLimitAfterConvergence: number;
  /** Most range requests in flight after convergence, look-ahead requests included. */
  readonly peakRequestsAfterConvergence: number;
  /** Mean permits held after convergence. */
  readonly meanActiveAfterConvergence: number;
  /** Limit changes published on the concurrency channel: [ms, limit]. */
  readonly limitChanges: readonly (readonly [number, number])[];
  /** Every 100 ms: [ms, limit, permits held, requests in flight], for plotting. */
  readonly timeline: readonly (readonly [number, number, number, number])[];
}

export function runThrottleScenario(opts: ScenarioOptions): Promise<ScenarioReport> {
  return runScenario('throttle', opts, async (ctx) => {
    await storms(ctx);
    await throttle(ctx);
  });
}

/** Part 1: 503 storms at the start and in bursts, through a worker. */
async function storms(ctx: ScenarioContext): Promise<void> {
  const jobsWanted = ctx.short ? 3 : 6;
  const [minSize, maxSize] = ctx.short ? [2 * MiB, 3 * MiB] : [6 * MiB, 10 * MiB];
  const chunkSize = ctx.short ? 512 * KiB : 1 * MiB;
  const dir = await ctx.tempDir('storms');
  const server = await startObjectServer(ctx, {}, 'the storm server');
  const queue = await openLocalQueue(ctx, dir, 'the storm queue');
  const objects = await putRecordings(ctx, server, {
    count: jobsWanted,
    key: (i) => `storm-${i}.mcap`,
    size: () => ctx.rng.int(minSize, maxSize),
    seedLabel: (i) => `throttle/storm/${i}`,
  });
  // Rule counts: each rule sees only the requests the rules before it let through.
  const first = ctx.short ? 12 : 30;
  const rules: FaultRule[] = [
    { fault: { kind: 'status', status: 503, retryAfterSeconds: 1 }, match: { rangedOnly: true }, times: first },
    { fault: { kind: 'status', status: 503 }, match: { rangedOnly: true }, skip: ctx.rng.int(5, 15), times: ctx.short ? 10 : 25 },
  ];
  if (!ctx.short) {
    rules.push({ fault: { kind: 'status', status: 503, ossDelayMs: 300 }, match: { rangedOnly: true }, skip: ctx.rng.int(40, 60), times: 20 });
  }
  for (const r of rules) server.addFault(r);

  const outputs = localJobOutputs(path.join(dir, 'out'));
  const submitted = await submitChecksumJobs(queue, objects, outputs.url);
  const observer = observeChannels(ctx, 'stop observing the storms');
  const { logger } = capturedLogger('info');
  const worker = new Worker({
    queue,
    drain: true,
    owner: 'chaos-storms',
    log: logger,
    config: chaosWorkerConfig(path.join(dir, 'buffer'), { chunkSize, rangeMaxAttempts: 8, retryMaxDelayMs: 2_000 }),
  });
  ctx.log(`storms: ${jobsWanted} jobs, the first ${first} range requests and later bursts answered 503`);
  const started = performance.now();
  await runWorkerBounded(ctx, worker);
  const seconds = (performance.now() - started) / 1000;
  observer.stop();

  await verifyJobs(ctx, queue, expectWholeObjects(submitted, objects, outputs.read), observer.observations());
  const injected = serverFaults(server);
  ctx.counts.faultsInjected += injected;
  ctx.counts.bytesRefetched += bytesRefetched(server, objects);
  const throttledRetries = observer.retries.get('ERR_THROTTLED') ?? 0;
  ctx.checks.check('storms: the 503s were injected and retried', injected > 0 && throttledRetries > 0, `${injected} 503 answers, ${throttledRetries} throttled range retries`);
  ctx.details['storms'] = { jobs: jobsWanted, seconds: round(seconds), injected503: injected, throttledRetries, rules };
}

/** Part 2: a server that serves K GETs at once; adaptive against fixed concurrency. */
async function throttle(ctx: ScenarioContext): Promise<void> {
  // Long enough for AIMD to come down from 16 (two halvings, at most one per second) and to go
  // through a few rounds of probing afterwards.
  const count = ctx.short ? 2 : 4;
  const size = ctx.short ? 24 * MiB : 32 * MiB;
  const chunkSize = ctx.short ? 512 * KiB : 1 * MiB;
  // A per-connection cap makes K connections the store's real capacity, as on S3.
  const perConnection = 4 * MiB;
  const dir = await ctx.tempDir('throttle');
  const server = await startObjectServer(ctx, { maxConcurrentRequests: K, rateLimitBytesPerSec: perConnection, firstByteLatencyMs: 5 }, 'the throttling server');
  const objects = await putRecordings(ctx, server, { count, key: (i) => `throttled-${i}.mcap`, size: () => size, seedLabel: (i) => `throttle/object/${i}` });
  ctx.log(`throttle: ${count} objects of ${size / MiB} MiB at once, server serves ${K} GETs at a time`);
  const runs: ThrottleRun[] = [];
  for (const mode of ['adaptive', 'fixed'] as const) {
    server.clearRequests();
    const run = await downloadAll(ctx, server, objects, path.join(dir, mode), chunkSize, mode);
    runs.push(run);
    ctx.counts.faultsInjected += run.throttled;
    ctx.counts.bytesRefetched += bytesRefetched(server, objects);
    ctx.log(
      `throttle: ${mode} ${run.ok ? 'finished' : 'failed'} in ${run.seconds} s, ${run.throttled} 503s, ` +
        `converged at ${run.convergedAtMs ?? '-'} ms, peak ${run.peakActiveAfterConvergence} permits / ${run.peakRequestsAfterConvergence} requests after`,
    );
  }
  const [adaptive, fixed] = runs as [ThrottleRun, ThrottleRun];
  for (const r of runs) {
    ctx.checks.check(`throttle: the ${r.mode} run finished with byte-identical files`, r.ok && r.identical === count, r.ok ? `${r.identical}/${count} files identical in ${r.seconds} s` : `failed: ${r.error}`);
  }
  ctx.checks.check(
    'throttle: the adaptive limiter converged near K and stayed there',
    adaptive.convergedAtMs !== null &&
      adaptive.observedAfterConvergenceMs >= MIN_OBSERVED_MS &&
      adaptive.peakActiveAfterConvergence <= K + CONVERGED_SLACK &&
      adaptive.peakLimitAfterConvergence <= K + CONVERGED_SLACK,
    `K = ${K}; limit first <= K after ${adaptive.convergedAtMs ?? 'never'} ms, then watched for ${adaptive.observedAfterConvergenceMs} ms (at least ${MIN_OBSERVED_MS}): ` +
      `at most ${adaptive.peakActiveAfterConvergence} permits held (mean ${adaptive.meanActiveAfterConvergence}), limit at most ${adaptive.peakLimitAfterConvergence} (at most K + ${CONVERGED_SLACK} allowed)`,
  );
  if (!ctx.short) {
    // A timing, so only in the full run (`npm run chaos`), never in `npm test`'s short form.
    ctx.checks.check(
      'throttle: adaptive finished sooner than fixed 16 with blind retries, and drew fewer 503s',
      adaptive.ok && fixed.ok && adaptive.seconds < fixed.seconds && adaptive.throttled < fixed.throttled,
      `adaptive ${adaptive.seconds} s and ${adaptive.throttled} 503s, fixed ${fixed.seconds} s and ${fixed.throttled} 503s`,
    );
  }
  ctx.details['throttle'] = {
    K,
    objects: count,
    objectBytes: size,
    chunkSize,
    perConnectionBytesPerSec: perConnection,
    adaptive,
    fixed,
    speedup: adaptive.ok && fixed.ok && adaptive.seconds > 0 ? round(fixed.seconds / adaptive.seconds) : null,
  };
}

async function downloadAll(
  ctx: ScenarioContext,
  server: ObjectServer,
  objects: readonly ChaosObject[],
  dir: string,
  chunkSize: number,
  mode: 'adaptive' | 'fixed',
): Promise<ThrottleRun> {
  await mkdir(dir, { recursive: true });
  const limiter = new ConcurrencyLimiter(mode === 'adaptive' ? { max: START_CONNECTIONS } : { max: START_CONNECTIONS, min: START_CONNECTIONS });
  const downloader = new ParallelDownloader({
    connections: START_CONNECTIONS,
    chunkSize,
    limiter,
    stallTimeoutMs: 10_000,
    // Blind retries must not give up on a store that turns most requests away.
    retry: { maxAttempts: 60, baseDelayMs: 100, maxDelayMs: 2_000 },
  });
  const started = performance.now();
  const now = () => Math.round(performance.now() - started);
  let requests = 0;
  const limitChanges: [number, number][] = [];
  const unsubscribe = [
    channels.concurrency.subscribe((e) => limitChanges.push([now(), e.limit])),
    channels.rangeRequest.subscribe((e) => {
      requests += e.delta;
    }),
  ];
  const samples: Sample[] = [];
  const sampler = setInterval(() => samples.push({ t: now(), limit: limiter.limit, active: limiter.active, requests }), SAMPLE_MS);
  const onDeadline = () => void downloader.destroy();
  ctx.deadline.addEventListener('abort', onDeadline, { once: true });
  ctx.counts.runs++;
  const result = await settle(() => Promise.all(objects.map((o) => downloader.download(o.url, path.join(dir, o.key)))));
  const seconds = round((performance.now() - started) / 1000);
  clearInterval(sampler);
  ctx.deadline.removeEventListener('abort', onDeadline);
  for (const u of unsubscribe) u();
  await downloader.close();

  let identical = 0;
  if (result.ok) {
    for (const o of objects) {
      const { sha256 } = await sha256File(path.join(dir, o.key));
      if (sha256 === o.sha256) identical++;
    }
  }
  // Converged: the limit is down to K and the permits held above it have been given back (a
  // holder returns its permit when its range ends, so that takes up to one range).
  const converged = samples.find((s) => s.limit <= K && s.active <= K);
  const after = converged ? samples.filter((s) => s.t >= converged.t) : samples;
  const max = (f: (s: Sample) => number) => after.reduce((m, s) => Math.max(m, f(s)), 0);
  return {
    mode,
    seconds,
    ok: result.ok,
    ...(result.ok ? {} : { error: `${result.error.code}: ${result.error.message}` }),
    throttled: server.requests.filter((r) => r.throttled === true).length,
    rangeRequests: server.requests.filter((r) => r.method === 'GET').length,
    identical,
    convergedAtMs: converged ? converged.t : null,
    observedAfterConvergenceMs: converged ? (samples[samples.length - 1]?.t ?? converged.t) - converged.t : 0,
    peakActiveAfterConvergence: max((s) => s.active),
    peakLimitAfterConvergence: max((s) => s.limit),
    peakRequestsAfterConvergence: max((s) => s.requests),
    meanActiveAfterConvergence: after.length === 0 ? 0 : round(after.reduce((n, s) => n + s.active, 0) / after.length),
    limitChanges,
    timeline: samples.filter((_, i) => i % Math.max(1, Math.round(100 / SAMPLE_MS)) === 0).map((s) => [s.t, s.limit, s.active, s.requests] as const),
  };
}

function round(x: number): number {
  return Math.round(x * 100) / 100;
}
