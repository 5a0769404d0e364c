/**
 * Scenario `faults`: connection resets, truncated bodies and stalls on 5 % of range requests,
 * drawn by seeded fault rules, while one worker runs a queue of checksum jobs with prefetch.
 *
 * Every fault is transient, so every job must complete, with the exact bytes of its object;
 * the bytes re-fetched show what the retries cost (a retry continues a range from the last byte
 * written, so a fault costs at most the rest of one chunk).
 */

import path from 'node:path';
import type { FaultRule } from '../test/support/object-server.js';
import { Worker } from '../src/worker.js';
import {
  bytesRefetched,
  capturedLogger,
  chaosWorkerConfig,
  checkNothingLeft,
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
  startObjectServer,
  submitChecksumJobs,
  verifyJobs,
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
    const server = await startObjectServer(ctx);
    const queue = await openLocalQueue(ctx, dir);

    const objects = await putRecordings(ctx, server, {
      count: jobsWanted,
      key: (i) => `episode-${String(i).padStart(2, '0')}.mcap`,
      size: () => ctx.rng.int(minSize, maxSize),
      seedLabel: (i) => `faults/object/${i}`,
    });

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

    const outputs = localJobOutputs(path.join(dir, 'out'));
    const submitted = await submitChecksumJobs(queue, objects, outputs.url);
    const observer = observeChannels(ctx);
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
    await verifyJobs(ctx, queue, expectWholeObjects(submitted, objects, outputs.read), observer.observations());

    const rangeRequests = server.requests.filter((r) => r.method === 'GET' && r.range !== undefined).length;
    ctx.checks.check('faults were injected', faults > 0, `${faults} of ${rangeRequests} range requests met a fault`);
    ctx.checks.check('the downloader retried the faulted ranges', observer.retryCount >= 1, `${observer.retryCount} range retries (${[...observer.retries].map(([c, n]) => `${c} ${n}`).join(', ')})`);
    await checkNothingLeft(ctx, 'the buffer directory is empty afterwards', bufferDir);
    ctx.details['summary'] = summary;
    ctx.details['rangeRequests'] = rangeRequests;
    ctx.details['retriesByCode'] = Object.fromEntries(observer.retries);
  });
}
