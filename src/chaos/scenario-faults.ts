/**
 * Scenario `faults`: connection resets, truncated bodies and stalls on 5 % of range requests,
 * drawn by seeded fault rules, while one worker runs a queue of checksum jobs with prefetch.
 *
 * Every fault is transient, so every job must complete, with the exact bytes of its object;
 * the bytes re-fetched show what the retries cost (a retry continues a range from the last byte
 * written, so a fault costs at most the rest of one chunk).
 */

import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { openQueue } from '../jobs/index.js';
import { ObjectServer, type FaultRule } from '../testing/object-server.js';
import { Worker } from '../worker.js';
import {
  bytesRefetched,
  capturedLogger,
  ChannelObserver,
  chaosWorkerConfig,
  KiB,
  listFiles,
  MiB,
  putGenerated,
  readLocalChecksums,
  runScenario,
  runWorkerBounded,
  serverFaults,
  submitChecksumJobs,
  verifyJobs,
  type ChaosObject,
} from './harness.js';
import type { ScenarioOptions, ScenarioReport } from './report.js';
import { deriveSeed } from './seed.js';

/** Share of range requests that meet a fault. */
const FAULT_RATE = 0.05;

export function runFaultsScenario(opts: ScenarioOptions): Promise<ScenarioReport> {
  return runScenario('faults', opts, async (ctx) => {
    const jobsWanted = ctx.short ? 6 : 12;
    const [minSize, maxSize] = ctx.short ? [2 * MiB, 5 * MiB] : [8 * MiB, 24 * MiB];
    // The short form cuts smaller chunks so its few megabytes still make ~100 range requests.
    const chunkSize = ctx.short ? 256 * KiB : 1 * MiB;
    const stallTimeoutMs = ctx.short ? 500 : 1_000;

    const dir = await ctx.tempDir('run');
    const bufferDir = path.join(dir, 'buffer');
    const outRoot = path.join(dir, 'out');
    const server = await ObjectServer.start();
    ctx.cleanup.defer('close the object server', () => server.close());
    const queue = await openQueue(`sqlite://${path.join(dir, 'queue.db')}`);
    ctx.cleanup.defer('close the job queue', () => queue.close());

    const objects: ChaosObject[] = [];
    for (let i = 0; i < jobsWanted; i++) {
      const size = ctx.rng.int(minSize, maxSize);
      objects.push(await putGenerated(server, 'recordings', `episode-${String(i).padStart(2, '0')}.mcap`, size, deriveSeed(ctx.seed, `faults/object/${i}`)));
    }

    // Three rules share the 5 %: the first rule that takes a request applies, so each gets the
    // rate r with (1 - r)^3 = 0.95.
    const perRule = 1 - Math.pow(1 - FAULT_RATE, 1 / 3);
    const rules: FaultRule[] = [
      { fault: { kind: 'reset', afterBytes: ctx.rng.int(0, chunkSize - 1) }, match: { rangedOnly: true }, probability: perRule, seed: deriveSeed(ctx.seed, 'faults/reset') },
      { fault: { kind: 'truncate', afterBytes: ctx.rng.int(0, chunkSize - 1) }, match: { rangedOnly: true }, probability: perRule, seed: deriveSeed(ctx.seed, 'faults/truncate') },
      { fault: { kind: 'stall', afterBytes: ctx.rng.int(0, chunkSize - 1) }, match: { rangedOnly: true }, probability: perRule, seed: deriveSeed(ctx.seed, 'faults/stall') },
    ];
    for (const r of rules) server.addFault(r);
    ctx.details['faultSchedule'] = rules;

    const outputDir = (i: number) => path.join(outRoot, `job-${i}`);
    const submitted = await submitChecksumJobs(queue, objects, (i) => `${pathToFileURL(outputDir(i)).href}/`);
    const observer = new ChannelObserver();
    ctx.cleanup.defer('stop observing', () => observer.stop());
    const { logger } = capturedLogger('info');
    const worker = new Worker({
      queue,
      drain: true,
      owner: 'chaos-faults',
      log: logger,
      config: chaosWorkerConfig(bufferDir, { chunkSize, stallTimeoutMs, downloadConnections: 4, slots: 2 }),
    });
    ctx.log(`${jobsWanted} jobs of ${minSize / MiB}-${maxSize / MiB} MiB, chunk ${chunkSize / KiB} KiB, faults on ${FAULT_RATE * 100} % of ranges`);
    const summary = await runWorkerBounded(ctx, worker);
    observer.stop();

    const faults = serverFaults(server);
    ctx.counts.faultsInjected = faults;
    ctx.counts.bytesRefetched = bytesRefetched(server, objects);
    const verdict = await verifyJobs(
      ctx,
      queue,
      submitted.map((job, i) => ({
        id: job.id,
        label: objects[i]?.key ?? job.id,
        versions: [objects[i]?.sha256 ?? ''],
        may: 'done' as const,
        readOutput: () => readLocalChecksums(outputDir(i)),
      })),
      {
        doneReports: (id) => (observer.outcomes.get(id) ?? []).filter((o) => o === 'done').length,
        allReportsSeen: true,
        codes: (id) => observer.prefetchErrors.get(id) ?? [],
      },
    );
    ctx.counts.jobsCompleted = verdict.completed;
    ctx.counts.jobsDead = verdict.dead;

    const rangeRequests = server.requests.filter((r) => r.method === 'GET' && r.range !== undefined).length;
    ctx.checks.check('faults were injected', faults > 0, `${faults} of ${rangeRequests} range requests met a fault`);
    ctx.checks.check('the downloader retried the faulted ranges', observer.retryCount >= 1, `${observer.retryCount} range retries (${[...observer.retries].map(([c, n]) => `${c} ${n}`).join(', ')})`);
    const leftovers = await listFiles(bufferDir);
    ctx.checks.check('the buffer directory is empty afterwards', leftovers.length === 0, leftovers.join(', ') || 'empty');
    ctx.details['summary'] = summary;
    ctx.details['rangeRequests'] = rangeRequests;
    ctx.details['retriesByCode'] = Object.fromEntries(observer.retries);
  });
}
