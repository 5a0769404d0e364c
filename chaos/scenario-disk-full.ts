/**
 * Scenario `disk-full`: the buffer directory is a 32 MiB tmpfs.
 *
 * - One job needs more than the whole file system: it must fail with a clear `ERR_NO_SPACE`
 *   (before a byte is written), be retried as its attempts allow, and end dead with that error —
 *   never lost, never blocking the others.
 * - One job fits, but while it downloads a second file grows in the tmpfs until the disk is full,
 *   so `ENOSPC` hits the downloader's positioned writes, past every free-space check. That
 *   download must fail with `ERR_NO_SPACE`, promote nothing, and the job must come back (released
 *   or retried) and complete once the space is free again.
 * - The jobs that fit complete; the worker keeps running throughout.
 */

import { open, unlink, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
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
  putGenerated,
  runScenario,
  runWorkerBounded,
  serverFaults,
  startObjectServer,
  submitChecksumJobs,
  verifyJobs,
  type ChaosObject,
  type ScenarioContext,
} from './harness.js';
import type { ScenarioOptions, ScenarioReport } from './report.js';
import { deriveSeed } from './seed.js';
import { mountTmpfs } from './tmpfs.js';

const TMPFS_BYTES = 32 * MiB;
/** Room left after filling the disk: a few pages, less than one network read of object bytes. */
const STATE_WRITE_ROOM = 16 * KiB;

type Role = 'fits' | 'too-big' | 'disk-filled';

export function runDiskFullScenario(opts: ScenarioOptions): Promise<ScenarioReport> {
  return runScenario('disk-full', opts, async (ctx) => {
    const roles: Role[] = ctx.short ? ['fits', 'too-big', 'disk-filled', 'fits'] : ['fits', 'fits', 'too-big', 'disk-filled', 'fits', 'fits'];
    const dir = await ctx.tempDir('run');
    const bufferDir = path.join(dir, 'buffer');
    const unmount = await mountTmpfs(bufferDir, TMPFS_BYTES);
    ctx.cleanup.defer(`unmount the tmpfs at ${bufferDir}`, unmount);
    ctx.log(`buffer directory ${bufferDir} is a ${TMPFS_BYTES / MiB} MiB tmpfs`);

    // Capped per connection so the disk-filled download lasts long enough to be filled under.
    const server = await startObjectServer(ctx, { rateLimitBytesPerSec: 8 * MiB });
    const queue = await openLocalQueue(ctx, dir);

    const objects: ChaosObject[] = [];
    for (const [i, role] of roles.entries()) {
      const size =
        role === 'too-big' ? TMPFS_BYTES + 16 * MiB : role === 'disk-filled' ? (ctx.short ? 12 : 16) * MiB + ctx.rng.int(0, 512 * KiB) : ctx.rng.int(3 * MiB, ctx.short ? 4 * MiB : 6 * MiB);
      objects.push(await putGenerated(server, 'recordings', `${role}-${i}.mcap`, size, deriveSeed(ctx.seed, `disk-full/${i}`)));
    }
    const outputs = localJobOutputs(path.join(dir, 'out'));
    const submitted = await submitChecksumJobs(queue, objects, outputs.url);
    const victimIndex = roles.indexOf('disk-filled');
    const victim = objects[victimIndex] as ChaosObject;
    const victimJob = submitted[victimIndex]?.id ?? '';

    const observer = observeChannels(ctx);
    const { logger, lines } = capturedLogger('info');
    const worker = new Worker({
      queue,
      drain: true,
      owner: 'chaos-disk-full',
      log: logger,
      config: chaosWorkerConfig(bufferDir, {
        downloadConnections: 2,
        chunkSize: 1 * MiB,
        // Measured: free space of the tmpfs, nothing held back.
        bufferBudgetBytes: null,
        bufferReserveBytes: 0,
        jobRetryBaseDelayMs: 100,
        jobRetryMaxDelayMs: 300,
      }),
    });

    const stopFilling = new AbortController();
    ctx.cleanup.defer('stop the disk filler', () => stopFilling.abort());
    const filler = fillDuring(ctx, {
      file: path.join(bufferDir, 'chaos-filler.bin'),
      startWhen: () => (observer.downloadStarts.get(victim.url)?.length ?? 0) > 0 && server.bytesServed(victim.bucket, victim.key) >= victim.size / 4,
      stopWhen: () => (observer.prefetchErrors.get(victimJob)?.length ?? 0) > 0,
      signal: stopFilling.signal,
    });
    ctx.log(`${roles.length} jobs: ${roles.join(', ')}`);
    const summary = await runWorkerBounded(ctx, worker);
    stopFilling.abort();
    const fill = await filler;
    observer.stop();

    const expected = expectWholeObjects(submitted, objects, outputs.read, (i) => (roles[i] === 'too-big' ? { may: 'dead', deadCodes: ['ERR_NO_SPACE'] } : { may: 'done' }));
    const verdict = await verifyJobs(ctx, queue, expected, observer.observations());
    ctx.counts.faultsInjected = serverFaults(server) + (fill.filledBytes > 0 ? 1 : 0);
    ctx.counts.bytesRefetched = bytesRefetched(server, objects);

    const bigIndex = roles.indexOf('too-big');
    const big = verdict.records.get(submitted[bigIndex]?.id ?? '');
    ctx.checks.check(
      'the job bigger than the disk failed with a clear ERR_NO_SPACE, retried as its attempts allowed',
      big?.status === 'dead' && (big.attempts ?? 0) === big.maxAttempts && /space/i.test(big.lastError ?? ''),
      `status ${big?.status}, attempts ${big?.attempts}/${big?.maxAttempts}, error: ${big?.lastError ?? 'none'}`,
    );
    const victimCodes = observer.prefetchErrors.get(victimJob) ?? [];
    const failure = lines.find((l) => l.level === 'warn' && l.fields['jobId'] === victimJob && /download failed/.test(l.msg));
    const failedWrite = String((failure?.fields['err'] as { message?: string } | undefined)?.message ?? '');
    const hit = /roboflow-partial/.test(failedWrite) ? 'a positioned write into the temp file' : /roboflow-state/.test(failedWrite) ? 'a state file write' : 'another write';
    // ERR_NO_SPACE itself, or a range that gave up retrying because the disk stayed full.
    const noSpace = victimCodes[0] === 'ERR_NO_SPACE' || (victimCodes[0] === 'ERR_RETRIES_EXHAUSTED' && /no space/i.test(failedWrite));
    ctx.checks.check(
      'filling the disk during a download made it fail with ERR_NO_SPACE',
      fill.filledBytes > 0 && noSpace,
      `filler wrote ${(fill.filledBytes / MiB).toFixed(1)} MiB until ${fill.stoppedBy}; the download failed with ${victimCodes.join(', ') || 'nothing'} on ${hit}`,
    );
    ctx.details['noSpaceHit'] = hit;
    const victimRecord = verdict.records.get(victimJob);
    ctx.checks.check(
      'the job whose download hit the full disk came back and completed',
      victimRecord?.status === 'done',
      `status ${victimRecord?.status}, attempts ${victimRecord?.attempts}/${victimRecord?.maxAttempts}, last error ${victimRecord?.lastError ?? 'none'}`,
    );
    await checkNothingLeft(ctx, 'nothing is left in the buffer directory (no partial or corrupt file kept)', bufferDir);
    ctx.details['summary'] = summary;
    ctx.details['filler'] = fill;
    ctx.details['warnings'] = lines.filter((l) => l.level === 'warn' || l.level === 'error').map((l) => `${l.msg}: ${String((l.fields['err'] as { message?: string } | undefined)?.message ?? '')}`).slice(0, 20);
  });
}

interface FillResult {
  readonly filledBytes: number;
  readonly stoppedBy: string;
  /** ms the disk stayed full. */
  readonly heldMs: number;
}

/**
 * Grows `file` until the file system is full once `startWhen()` holds, keeps it until
 * `stopWhen()` holds (or the signal aborts), then deletes it.
 */
async function fillDuring(
  ctx: ScenarioContext,
  opts: { file: string; startWhen: () => boolean; stopWhen: () => boolean; signal: AbortSignal },
): Promise<FillResult> {
  try {
    await ctx.waitFor('the download to fill the disk under', opts.startWhen, 5, opts.signal);
  } catch {
    return { filledBytes: 0, stoppedBy: 'the download it waited for never started', heldMs: 0 };
  }
  let fh: FileHandle | undefined;
  let filled = 0;
  let stoppedBy = 'ENOSPC';
  const piece = Buffer.alloc(256 * KiB, 0x5a);
  try {
    fh = await open(opts.file, 'w');
    for (;;) {
      try {
        filled += (await fh.write(piece)).bytesWritten;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOSPC') break;
        stoppedBy = `error ${(err as Error).message}`;
        break;
      }
    }
    // Give a few pages back: the downloader's small state-file writes still fit for a moment,
    // while its stream of data writes uses them up, so the first write to fail is a positioned
    // write of object bytes into the temp file.
    filled -= STATE_WRITE_ROOM;
    await fh.truncate(filled);
    ctx.log(`filled the buffer file system with ${(filled / MiB).toFixed(1)} MiB`);
    const full = performance.now();
    await ctx.waitFor('the download to fail on the full disk', opts.stopWhen, 5, opts.signal).catch(() => undefined);
    return { filledBytes: filled, stoppedBy, heldMs: Math.round(performance.now() - full) };
  } finally {
    await fh?.close().catch(() => undefined);
    await unlink(opts.file).catch(() => undefined);
  }
}
