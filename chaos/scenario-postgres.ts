/**
 * Scenario `postgres`: the job queue's database goes away under running workers. Always a
 * private cluster (`postgres-cluster.ts`), never a shared server.
 *
 * Part 1: two workers (each with its own connection pool) run checksum jobs while the cluster is
 * restarted at seeded moments (`-m fast`; the full form also crashes it with `-m immediate`).
 * They must reconnect and continue: every job done exactly once, none lost, none completed twice.
 *
 * Part 2: the cluster is stopped while a worker polls for work — its port is closed. The worker
 * must back off and say so once, not spin: over a few seconds its failed claims and its log lines
 * stay few. When the cluster is back it must pick up a new job by itself.
 */

import path from 'node:path';
import { type ErrorCode } from '../src/errors.js';
import { openQueue } from '../src/jobs/index.js';
import type { ObjectServer } from '../test/support/object-server.js';
import type { JobQueue } from '../src/types.js';
import { Worker } from '../src/worker.js';
import {
  bytesRefetched,
  capturedLogger,
  chaosWorkerConfig,
  CountingQueue,
  expectWholeObjects,
  localJobOutputs,
  localOutputUrl,
  MiB,
  observeChannels,
  putGenerated,
  putRecordings,
  runScenario,
  runWorkerBounded,
  settle,
  slowChecksum,
  startObjectServer,
  submitChecksumJobs,
  verifyJobs,
  type LogLine,
  type ScenarioContext,
} from './harness.js';
import { PrivateCluster, type StopMode } from './postgres-cluster.js';
import type { ScenarioOptions, ScenarioReport } from './report.js';
import { deriveSeed } from './seed.js';

/** How long part 2 watches a worker knock on a closed port. */
const OUTAGE_WINDOW_MS = 3_000;
/** Most failed claims allowed in that window: backoff starts at 250 ms and doubles. */
const MAX_FAILED_CLAIMS = 10;
/** Most warnings and errors allowed in that window: one to say the queue is gone, a few more. */
const MAX_LOUD_LINES = 5;
const SCHEMA = 'chaos';

export function runPostgresScenario(opts: ScenarioOptions): Promise<ScenarioReport> {
  return runScenario('postgres', opts, async (ctx) => {
    const cluster = await PrivateCluster.create();
    ctx.cleanup.defer(`remove the private PostgreSQL cluster in ${cluster.dir}`, () => cluster.destroy());
    ctx.log(`private PostgreSQL cluster on port ${cluster.port} in ${cluster.dir}`);
    const url = cluster.url(SCHEMA);
    const admin = await openQueue(url);
    ctx.cleanup.defer('close the admin queue', () => admin.close());
    const dir = await ctx.tempDir('run');
    const server = await startObjectServer(ctx);
    await restarts(ctx, cluster, url, admin, server, dir);
    await outage(ctx, cluster, url, admin, server, dir);
  });
}

async function restarts(ctx: ScenarioContext, cluster: PrivateCluster, url: string, admin: JobQueue, server: ObjectServer, dir: string): Promise<void> {
  const jobsWanted = ctx.short ? 6 : 12;
  const plan: StopMode[] = ctx.short ? ['fast'] : ['fast', 'immediate'];
  const objects = await putRecordings(ctx, server, {
    count: jobsWanted,
    key: (i) => `pg-${i}.mcap`,
    size: () => ctx.rng.int(1 * MiB, 3 * MiB),
    seedLabel: (i) => `postgres/${i}`,
  });
  const outputs = localJobOutputs(path.join(dir, 'out'));
  const submitted = await submitChecksumJobs(admin, objects, outputs.url);
  const observer = observeChannels(ctx);
  const processErrors = new Map<string, string[]>();

  const workers: Worker[] = [];
  const logs: { name: string; lines: LogLine[] }[] = [];
  for (const name of ['a', 'b']) {
    const q = await openQueue(url);
    ctx.cleanup.defer(`close worker ${name}'s queue`, () => q.close());
    const captured = capturedLogger('info');
    logs.push({ name, lines: captured.lines });
    workers.push(
      new Worker({
        queue: q,
        drain: true,
        owner: `chaos-pg-${name}`,
        log: captured.logger,
        processors: { checksum: slowChecksum(ctx.short ? 150 : 250) },
        config: chaosWorkerConfig(path.join(dir, `buffer-${name}`), { leaseMs: 4_000, heartbeatMs: 500, pollIntervalMs: 100 }),
        onJob: (r) => {
          if (r.error !== undefined) processErrors.set(r.jobId, [...(processErrors.get(r.jobId) ?? []), r.error]);
        },
      }),
    );
  }
  // Restart when a seeded share of the jobs is done, so each restart lands mid-run.
  const triggers = plan.map((_, k) => Math.max(1, Math.floor(((k + 1) * jobsWanted) / (plan.length + 1)) + ctx.rng.int(-1, 0)));
  const doneCount = () => [...observer.outcomes.values()].filter((o) => o.includes('done')).length;
  const restarted: { mode: StopMode; afterDone: number; seconds: number }[] = [];
  const workersDone = new AbortController();
  const restarter = (async () => {
    for (const [k, mode] of plan.entries()) {
      await ctx.waitFor(`${triggers[k]} jobs done before restart ${k + 1}`, () => doneCount() >= (triggers[k] ?? 0), 10, workersDone.signal);
      const t = performance.now();
      await cluster.restart(mode);
      restarted.push({ mode, afterDone: doneCount(), seconds: Math.round(performance.now() - t) / 1000 });
      ctx.log(`restarted PostgreSQL (-m ${mode}) after ${doneCount()} jobs done`);
    }
  })();
  ctx.log(`${jobsWanted} jobs, two workers; restarts after ${triggers.join(', ')} jobs done`);
  const runs = await Promise.all(workers.map((w) => settle(() => runWorkerBounded(ctx, w))));
  workersDone.abort();
  const restartResult = await settle(() => restarter);
  observer.stop();
  ctx.checks.check('restarts: both workers ran to the end', runs.every((r) => r.ok), runs.map((r) => (r.ok ? `done ${r.value.done}` : `${r.error.code}: ${r.error.message}`)).join('; '));
  ctx.checks.check('restarts: PostgreSQL was restarted as planned', restartResult.ok && restarted.length === plan.length, restartResult.ok ? restarted.map((r) => `-m ${r.mode} after ${r.afterDone} done (${r.seconds} s)`).join('; ') : `${restartResult.error.message}\n${await cluster.logTail()}`);
  ctx.counts.faultsInjected += restarted.length;

  await verifyJobs(ctx, admin, expectWholeObjects(submitted, objects, outputs.read), {
    doneReports: (id) => observer.doneReports(id),
    // A completion whose reply was lost in a restart is recorded by the database, not reported.
    allReportsSeen: false,
    codes: (id) => [...(observer.prefetchErrors.get(id) ?? []), ...(processErrors.get(id) ?? [])] as ErrorCode[],
  });
  ctx.counts.bytesRefetched += bytesRefetched(server, objects);
  const byWorker = runs.map((r) => (r.ok ? r.value.done : 0));
  // What the workers said while the database went away and came back.
  const warnings = logs.flatMap(({ name, lines }) => lines.filter((l) => l.level === 'warn' || l.level === 'error').map((l) => `${name}: ${l.msg}`));
  ctx.details['restarts'] = { plan, restarted, doneByWorker: byWorker, outcomes: Object.fromEntries(observer.outcomes), warnings };
}

async function outage(ctx: ScenarioContext, cluster: PrivateCluster, url: string, admin: JobQueue, server: ObjectServer, dir: string): Promise<void> {
  const counted = new CountingQueue(await openQueue(url));
  ctx.cleanup.defer('close the outage worker queue', () => counted.close());
  const { logger, lines } = capturedLogger('debug');
  const stop = new AbortController();
  ctx.cleanup.defer('stop the outage worker', () => stop.abort());
  const worker = new Worker({
    queue: counted,
    owner: 'chaos-pg-outage',
    log: logger,
    config: chaosWorkerConfig(path.join(dir, 'buffer-outage'), { leaseMs: 4_000, heartbeatMs: 500, pollIntervalMs: 100 }),
  });
  const run = settle(() => runWorkerBounded(ctx, worker, stop.signal));
  await ctx.waitFor('the outage worker to poll', () => counted.claims.length >= 2, 20);

  // The window opens when the stop begins: the first failed claim comes while it shuts down.
  const down = Date.now();
  await cluster.stop('fast');
  ctx.counts.faultsInjected++;
  ctx.log(`stopped PostgreSQL; watching the worker for ${OUTAGE_WINDOW_MS / 1000} s`);
  await ctx.pause(OUTAGE_WINDOW_MS);
  const windowEnd = Date.now();
  const windowS = Math.round((windowEnd - down) / 100) / 10;
  const failed = counted.claims.filter((c) => !c.ok && c.at >= down && c.at <= windowEnd).length;
  const loud = lines.filter((l) => l.time >= down && l.time <= windowEnd && (l.level === 'warn' || l.level === 'error' || l.level === 'fatal'));
  const all = lines.filter((l) => l.time >= down && l.time <= windowEnd);
  const said = loud.some((l) => /claim/i.test(l.msg));
  ctx.checks.check(
    'outage: the worker backs off instead of spinning',
    failed >= 1 && failed <= MAX_FAILED_CLAIMS,
    `${failed} failed claims in ${windowS} s (at most ${MAX_FAILED_CLAIMS})`,
  );
  ctx.checks.check(
    'outage: the worker says clearly, and once, that it cannot claim',
    said && loud.length <= MAX_LOUD_LINES,
    `${loud.length} warnings/errors (${all.length} lines in all): ${[...new Set(loud.map((l) => l.msg))].join(' | ') || 'none'}`,
  );

  await cluster.start();
  const object = await putGenerated(server, 'recordings', 'after-outage.mcap', 1 * MiB + 17, deriveSeed(ctx.seed, 'postgres/after'));
  const outputDir = path.join(dir, 'out', 'after-outage');
  // The admin pool lost its connections too; a submit may need a retry while it reconnects.
  let jobId: string | undefined;
  for (let attempt = 1; jobId === undefined; attempt++) {
    const r = await settle(() => submitChecksumJobs(admin, [object], () => localOutputUrl(outputDir)));
    if (r.ok) jobId = r.value[0]?.id;
    else if (attempt >= 10) throw r.error;
    else await ctx.pause(200);
  }
  const id = jobId;
  await ctx.waitFor('the job submitted after the outage to complete', async () => (await admin.get(id))?.status === 'done', 50);
  stop.abort();
  const result = await run;
  const record = await admin.get(id);
  const sha = (record?.result as { processorResult?: { files?: { sha256: string }[] } } | null)?.processorResult?.files?.[0]?.sha256;
  ctx.checks.check(
    'outage: once PostgreSQL is back the worker claims and completes new work',
    result.ok && record?.status === 'done' && sha === object.sha256,
    `job ${id}: ${record?.status ?? 'missing'}, sha256 ${sha === object.sha256 ? 'matches' : (sha ?? 'none')}; ${lines.some((l) => /reachable again/.test(l.msg)) ? 'the worker logged that the queue is reachable again' : 'no recovery line'}`,
  );
  ctx.counts.jobsCompleted += record?.status === 'done' ? 1 : 0;
  ctx.details['outage'] = { windowSeconds: windowS, failedClaims: failed, loudLines: loud.map((l) => l.msg), linesInWindow: all.map((l) => `${l.level} ${l.msg}`) };
}
