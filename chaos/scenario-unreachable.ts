/**
 * Scenario `unreachable`: what a worker does when the things it depends on are gone.
 *
 * The store: the object server is closed in the middle of a run (connections cut, port closed)
 * and stays down for a few seconds. The worker must back off — range retries with growing
 * delays, failed jobs retried after a job backoff — and say so, instead of spinning: the range
 * retries, job claims, download passes and warnings it produces in that window are counted and
 * must stay bounded. When the store is back on the same port, every job must complete.
 *
 * The queue: a PostgreSQL URL whose port is closed must fail to open promptly with a clear
 * `ERR_QUEUE` that names the (redacted) URL — no hang, no retry loop. (A queue that goes away
 * under a running worker is part of the `postgres` scenario.)
 */

import path from 'node:path';
import { channels } from '../src/diagnostics.js';
import { openQueue } from '../src/jobs/index.js';
import { ObjectServer } from '../test/support/object-server.js';
import { Worker } from '../src/worker.js';
import {
  capturedLogger,
  chaosWorkerConfig,
  CountingQueue,
  expectWholeObjects,
  KiB,
  localJobOutputs,
  MiB,
  observeChannels,
  openLocalQueue,
  putGenerated,
  runScenario,
  runWorkerBounded,
  settle,
  submitChecksumJobs,
  verifyJobs,
  type ChaosObject,
  type ScenarioContext,
} from './harness.js';
import { freePort } from './postgres-cluster.js';
import type { ScenarioOptions, ScenarioReport } from './report.js';
import { deriveSeed } from './seed.js';

/** How long the store stays down while the worker is watched. */
const OUTAGE_MS = 4_000;
/**
 * Bounds over the outage. Range retries: each of the 4 lanes backs off at least 100 ms, doubling,
 * and a range gives up after 6 attempts. Claims of a job: after each failed attempt it waits a
 * jittered delay whose ceiling doubles from 0.5 s, so a few seconds hold about four attempts;
 * six per job leaves room for unlucky jitter and still catches a loop.
 */
const MAX_RANGE_RETRIES = 60;
const MAX_CLAIMS_PER_JOB = 6;
const MAX_DOWNLOAD_PASSES_PER_JOB = 6;
/** Warnings beyond one per failed attempt (the first failure of a kind may say more). */
const EXTRA_LOUD_LINES = 3;

export function runUnreachableScenario(opts: ScenarioOptions): Promise<ScenarioReport> {
  return runScenario('unreachable', opts, async (ctx) => {
    await storeDown(ctx);
    await queuePortClosed(ctx);
  });
}

async function storeDown(ctx: ScenarioContext): Promise<void> {
  const jobsWanted = ctx.short ? 3 : 5;
  const dir = await ctx.tempDir('run');
  const rate = 4 * MiB;
  let server = await ObjectServer.start({ rateLimitBytesPerSec: rate });
  const port = Number(new URL(server.endpoint).port);
  ctx.cleanup.defer('close the object server', () => server.close());
  const specs = Array.from({ length: jobsWanted }, (_, i) => ({ key: `far-${i}.mcap`, size: ctx.rng.int(3 * MiB, 5 * MiB), seed: deriveSeed(ctx.seed, `unreachable/${i}`) }));
  const objects: ChaosObject[] = [];
  for (const s of specs) objects.push(await putGenerated(server, 'recordings', s.key, s.size, s.seed));

  const queue = new CountingQueue(await openLocalQueue(ctx, dir));
  const outputs = localJobOutputs(path.join(dir, 'out'));
  // Enough attempts to outlive the outage: each failed download spends one.
  const submitted = await submitChecksumJobs(queue, objects, outputs.url, 12);
  const observer = observeChannels(ctx);
  const retriesAt: number[] = [];
  const passesAt: number[] = [];
  const unsubscribe = [channels.rangeRetry.subscribe(() => retriesAt.push(Date.now())), channels.downloadStart.subscribe(() => passesAt.push(Date.now()))];
  ctx.cleanup.defer('stop counting retries', () => unsubscribe.forEach((u) => u()));
  const { logger, lines } = capturedLogger('debug');
  const worker = new Worker({
    queue,
    drain: true,
    owner: 'chaos-unreachable',
    log: logger,
    config: chaosWorkerConfig(path.join(dir, 'buffer'), {
      downloadConnections: 2,
      chunkSize: 512 * KiB,
      // A range gives up within about 2 s of backoff, so the outage shows whole give-ups.
      retryBaseDelayMs: 200,
      retryMaxDelayMs: 1_000,
      jobRetryBaseDelayMs: 500,
      jobRetryMaxDelayMs: 5_000,
      pollIntervalMs: 250,
    }),
  });
  const run = settle(() => runWorkerBounded(ctx, worker));

  // Cut the store while the second job downloads.
  const victim = objects[1] as ChaosObject;
  await ctx.waitFor('the second download to be under way', () => server.bytesServed(victim.bucket, victim.key) >= victim.size / 3, 5);
  const down = Date.now();
  await server.close();
  ctx.counts.faultsInjected++;
  ctx.log(`closed the object server mid-download; watching for ${OUTAGE_MS / 1000} s`);
  await ctx.pause(OUTAGE_MS);
  const end = Date.now();
  const inWindow = (t: number) => t >= down && t <= end;
  const retries = retriesAt.filter(inWindow).length;
  // Claims that handed out a job: each is a try at a download. Empty claims are the idle poll.
  const claims = queue.claims.filter((c) => inWindow(c.at) && c.got).length;
  const polls = queue.claims.filter((c) => inWindow(c.at) && !c.got).length;
  const passes = passesAt.filter(inWindow).length;
  const loud = lines.filter((l) => inWindow(l.time) && (l.level === 'warn' || l.level === 'error' || l.level === 'fatal'));
  const maxClaims = MAX_CLAIMS_PER_JOB * jobsWanted;
  const maxPasses = MAX_DOWNLOAD_PASSES_PER_JOB * jobsWanted;
  ctx.checks.check(
    'store down: the worker backs off instead of spinning',
    retries <= MAX_RANGE_RETRIES && claims <= maxClaims && passes <= maxPasses,
    `in ${OUTAGE_MS / 1000} s: ${retries} range retries (at most ${MAX_RANGE_RETRIES}), ${claims} jobs claimed (at most ${maxClaims}), ${passes} download passes (at most ${maxPasses}), ${polls} empty polls`,
  );
  const says = [...new Set(loud.map((l) => l.msg))];
  const failures = [...observer.prefetchErrors.values()].reduce((n, codes) => n + codes.length, 0);
  ctx.checks.check(
    'store down: the worker says what failed, once per failed attempt',
    loud.length >= 1 && loud.length <= claims + EXTRA_LOUD_LINES,
    `${loud.length} warnings/errors for ${claims} attempts (${failures} download failures in all): ${says.join(' | ') || 'none'}`,
  );

  // Back on the same port, with the same objects (same content, same ETags).
  const before = server;
  server = await ObjectServer.start({ port, rateLimitBytesPerSec: rate });
  for (const s of specs) server.putObject('recordings', s.key, { generated: { size: s.size, seed: s.seed } });
  ctx.log('the object server is back');
  const result = await run;
  observer.stop();
  ctx.checks.check('store down: the worker ran to the end once the store was back', result.ok, result.ok ? `done ${result.value.done}, download failures ${result.value.downloadFailures}` : `${result.error.code}: ${result.error.message}`);
  await verifyJobs(ctx, queue, expectWholeObjects(submitted, objects, outputs.read), observer.observations());
  const after = server;
  ctx.counts.bytesRefetched += objects.reduce((n, o) => n + Math.max(0, before.bytesServed(o.bucket, o.key) + after.bytesServed(o.bucket, o.key) - o.size), 0);
  ctx.details['storeDown'] = { outageMs: end - down, rangeRetries: retries, jobsClaimed: claims, emptyPolls: polls, downloadPasses: passes, warnings: says, failuresByJob: Object.fromEntries(observer.prefetchErrors) };
}

async function queuePortClosed(ctx: ScenarioContext): Promise<void> {
  const port = await freePort();
  const url = `postgres://roboflow:not-a-real-password@127.0.0.1:${port}/roboflow?schema=chaos`;
  const started = performance.now();
  const r = await settle(() => openQueue(url));
  const seconds = Math.round((performance.now() - started) / 100) / 10;
  if (r.ok) await r.value.close();
  const message = r.ok ? '' : r.error.message;
  ctx.checks.check(
    'queue port closed: opening fails promptly with a clear ERR_QUEUE',
    !r.ok && r.error.code === 'ERR_QUEUE' && message.includes(`127.0.0.1:${port}`) && !message.includes('not-a-real-password') && seconds < 15,
    r.ok ? 'it opened?' : `${r.error.code} after ${seconds} s: ${message}`,
  );
  ctx.details['queuePortClosed'] = { seconds, error: r.ok ? null : `${r.error.code}: ${message}` };
}
