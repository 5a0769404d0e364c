/**
 * Scenario `replace`: objects replaced while their jobs are being prefetched.
 *
 * - Two objects are replaced once in the middle of their download (one by content of the same
 *   size, one by a different size): the downloader must notice (every range carries `If-Match`),
 *   start over once and deliver the new version whole — its SHA-256 is the new version's, and
 *   the downloader published a second download pass for the URL.
 * - One object is replaced again during that second pass: the download must fail with
 *   `ERR_SOURCE_CHANGED` and the job go dead with that error, never complete.
 * - The other jobs complete with their unchanged objects.
 * Whatever happens, no completed job may show a SHA-256 that is not one whole version.
 */

import path from 'node:path';
import { generatedSha256 } from '../src/cli/demo/content.js';
import { Worker } from '../src/worker.js';
import {
  bytesRefetched,
  capturedLogger,
  chaosWorkerConfig,
  KiB,
  localJobOutputs,
  MiB,
  observeChannels,
  openLocalQueue,
  putGenerated,
  runScenario,
  runWorkerBounded,
  serverFaults,
  startObjectServer,
  submitChecksumJobs,
  verifyJobs,
  type ChaosObject,
  type ExpectedJob,
} from './harness.js';
import type { ScenarioOptions, ScenarioReport } from './report.js';
import { deriveSeed } from './seed.js';

type Fate = 'unchanged' | 'replaced-same-size' | 'replaced-new-size' | 'replaced-twice';

export function runReplaceScenario(opts: ScenarioOptions): Promise<ScenarioReport> {
  return runScenario('replace', opts, async (ctx) => {
    const fates: Fate[] = ctx.short
      ? ['unchanged', 'replaced-same-size', 'replaced-twice', 'replaced-new-size']
      : ['unchanged', 'replaced-same-size', 'unchanged', 'replaced-twice', 'replaced-new-size', 'unchanged'];
    const [minSize, maxSize] = ctx.short ? [3 * MiB, 5 * MiB] : [8 * MiB, 16 * MiB];
    const chunkSize = ctx.short ? 256 * KiB : 1 * MiB;
    const connections = 4;
    const dir = await ctx.tempDir('run');
    // A per-connection cap stretches each download over a few hundred milliseconds, so the
    // second replacement lands inside the restarted download.
    const server = await startObjectServer(ctx, { rateLimitBytesPerSec: 4 * MiB });
    const queue = await openLocalQueue(ctx, dir);

    const objects: ChaosObject[] = [];
    /** SHA-256 of every version each object had. */
    const versions: string[][] = [];
    const schedule: Record<string, unknown>[] = [];
    for (const [i, fate] of fates.entries()) {
      const size = fate === 'replaced-twice' ? maxSize : ctx.rng.int(minSize, maxSize);
      const o = await putGenerated(server, 'recordings', `replaced-${i}.mcap`, size, deriveSeed(ctx.seed, `replace/${i}/v1`));
      objects.push(o);
      versions.push([o.sha256]);
      if (fate === 'unchanged') continue;
      const newSize = fate === 'replaced-new-size' ? size + 777 * KiB + 3 : size;
      const v2 = { generated: { size: newSize, seed: deriveSeed(ctx.seed, `replace/${i}/v2`) } };
      // Which range request of the object meets the replacement: one in the first half.
      const skip = ctx.rng.int(1, Math.max(1, Math.floor(size / chunkSize / 2)));
      server.addFault({ fault: { kind: 'replace', body: v2 }, match: { key: o.key, rangedOnly: true }, skip, times: 1 });
      versions[i]?.push(await generatedSha256(v2.generated.size, v2.generated.seed));
      schedule.push({ key: o.key, fate, replacedAtRequest: skip + 1, newSize });
    }
    ctx.details['schedule'] = schedule;

    const twiceIndex = fates.indexOf('replaced-twice');
    const twice = objects[twiceIndex] as ChaosObject;
    const v3 = { size: twice.size, seed: deriveSeed(ctx.seed, `replace/${twiceIndex}/v3`) };
    versions[twiceIndex]?.push(await generatedSha256(v3.size, v3.seed));

    const outputs = localJobOutputs(path.join(dir, 'out'));
    const submitted = await submitChecksumJobs(queue, objects, outputs.url);
    const observer = observeChannels(ctx);
    const { logger } = capturedLogger('info');
    const worker = new Worker({
      queue,
      drain: true,
      owner: 'chaos-replace',
      log: logger,
      config: chaosWorkerConfig(path.join(dir, 'buffer'), { chunkSize, downloadConnections: connections }),
    });

    // The second replacement: once the restarted pass of the twice-replaced object has received
    // bytes, replace the object again.
    let secondReplaced = false;
    const stopWatching = new AbortController();
    ctx.cleanup.defer('stop watching the twice-replaced object', () => stopWatching.abort());
    const watcher = (async () => {
      const watch = stopWatching.signal;
      await ctx.waitFor('the restarted download of the twice-replaced object', () => (observer.downloadStarts.get(twice.url)?.length ?? 0) >= 2, 2, watch);
      const restartedAt = Date.now();
      await ctx.waitFor('bytes of the restarted download', () => server.requests.some((r) => r.key === twice.key && r.method === 'GET' && r.startedAt >= restartedAt && r.bytesSent > 0), 2, watch);
      server.putObject('recordings', twice.key, { generated: v3 });
      secondReplaced = true;
      ctx.log(`replaced ${twice.key} a second time, during its restarted download`);
    })().catch(() => undefined);
    ctx.log(`${fates.length} jobs: ${fates.join(', ')}`);
    const summary = await runWorkerBounded(ctx, worker);
    stopWatching.abort();
    await watcher;
    observer.stop();

    const expected: ExpectedJob[] = submitted.map((job, i) => ({
      id: job.id,
      label: `${objects[i]?.key ?? job.id} (${fates[i]})`,
      versions: versions[i] ?? [],
      may: fates[i] === 'replaced-twice' ? 'dead' : 'done',
      ...(fates[i] === 'replaced-twice' ? { deadCodes: ['ERR_SOURCE_CHANGED' as const] } : {}),
      readOutput: () => outputs.read(i),
    }));
    const verdict = await verifyJobs(ctx, queue, expected, observer.observations());
    ctx.counts.faultsInjected = serverFaults(server) + (secondReplaced ? 1 : 0);
    ctx.counts.bytesRefetched = bytesRefetched(server, objects.map((o) => ({ ...o, size: server.objectSize(o.bucket, o.key) })));

    const problems: string[] = [];
    for (const [i, fate] of fates.entries()) {
      const o = objects[i] as ChaosObject;
      const job = verdict.records.get(submitted[i]?.id ?? '');
      const passes = observer.downloadStarts.get(o.url)?.length ?? 0;
      const sha = (job?.result as { processorResult?: { files?: { sha256: string }[] } } | null)?.processorResult?.files?.[0]?.sha256;
      switch (fate) {
        case 'unchanged':
          if (sha !== versions[i]?.[0]) problems.push(`${o.key}: unchanged object, sha256 ${sha ?? 'none'}`);
          break;
        case 'replaced-same-size':
        case 'replaced-new-size':
          if (sha !== versions[i]?.[1]) problems.push(`${o.key}: replaced once, expected the new version, got ${sha ?? 'no result'} (${job?.lastError ?? ''})`);
          if (passes < 2) problems.push(`${o.key}: replaced once, but the downloader made ${passes} pass(es), no restart`);
          break;
        case 'replaced-twice':
          if (job?.status !== 'dead' || !(observer.prefetchErrors.get(job.id) ?? []).includes('ERR_SOURCE_CHANGED')) {
            problems.push(`${o.key}: replaced twice, expected dead with ERR_SOURCE_CHANGED, got ${job?.status ?? 'nothing'} (${(observer.prefetchErrors.get(job?.id ?? '') ?? []).join(', ')})`);
          }
          break;
        default: {
          const _exhaustive: never = fate;
          throw new Error(`unknown fate ${String(_exhaustive)}`);
        }
      }
    }
    ctx.checks.check('replaced objects: new version whole after one restart, or ERR_SOURCE_CHANGED', problems.length === 0 && secondReplaced, problems.join('; ') || `${schedule.length} replaced objects behaved; second replacement ${secondReplaced ? 'landed in the restarted download' : 'never happened'}`);
    ctx.details['summary'] = summary;
    ctx.details['downloadPasses'] = Object.fromEntries(objects.map((o) => [o.key, observer.downloadStarts.get(o.url)?.length ?? 0]));
  });
}
