/**
 * Scenario 1: roboflow's downloader against its peers on one object, (a) with every connection
 * capped (as S3 and OSS cap them) plus a first-byte latency, and (b) uncapped on loopback, where
 * two cores are the limit. Also measures the server alone (16 curls of 1/16 of the object each,
 * to /dev/null) in the same conditions: the ceiling no tool can pass; and the disk alone (`dd`
 * + `fdatasync`), the ceiling of a download that returns only once its file is on disk.
 */

import { rm } from 'node:fs/promises';
import path from 'node:path';
import { generatedSha256 } from '../../src/cli/demo/content.js';
import { runMeasured } from './measure.js';
import { profileDownload } from './profile.js';
import { measurePhases } from './phases.js';
import type { DiskAloneResult, DownloadCondition, DownloadScenario, PhaseTimeline, ProfileSummary, ServerAloneResult, ToolRun } from './results.js';
import { measureDownload, rotated, settle, timeoutFor, type BenchContext } from './runner.js';
import { ServerProcess, type ServedObject } from './server-process.js';
import type { ResolvedTool } from './tools.js';
import { benchEnv, ROBOFLOW_ID, ROBOFLOW_PROCESS_ID } from './tools.js';

export interface DownloadScenarioOptions {
  readonly objectSize: number;
  /** Object for single-stream tools when capped: at 25 MB/s a 1 GiB object takes 43 s per run. */
  readonly singleStreamSize: number;
  readonly ratePerConnection: number;
  readonly latencyMs: number;
  readonly conditions: readonly ('capped' | 'uncapped')[];
  /** Also profile one roboflow download per condition (`node --cpu-prof`), unmeasured. */
  readonly profile: boolean;
}

export const BUCKET = 'bench';
/** roboflow's tools whose runs are also taken apart phase by phase (`phases.ts`). */
const TIMELINE_TOOLS: readonly string[] = [ROBOFLOW_ID, ROBOFLOW_PROCESS_ID];
const STARTUP_OBJECT_SIZE = 2 ** 20;

export async function runDownloadScenario(
  ctx: BenchContext,
  tools: readonly ResolvedTool[],
  curl: string | null,
  opts: DownloadScenarioOptions,
): Promise<{ scenario: DownloadScenario; profiles: ProfileSummary[] }> {
  const conditions: DownloadCondition[] = [];
  const profiles: ProfileSummary[] = [];
  for (const id of opts.conditions) {
    const capped = id === 'capped';
    const big: ServedObject = { bucket: BUCKET, key: 'object-big.bin', size: opts.objectSize, seed: 1 };
    const small: ServedObject = { bucket: BUCKET, key: 'object-small.bin', size: Math.min(opts.singleStreamSize, opts.objectSize), seed: 2 };
    // Uncapped, a 1 MiB object measures what one run costs before the bytes matter (start-up).
    const tiny: ServedObject = { bucket: BUCKET, key: 'object-tiny.bin', size: STARTUP_OBJECT_SIZE, seed: 4 };
    const objects = capped ? [big, small] : [big, tiny];
    ctx.log(`download, ${id}: computing SHA-256 of the generated objects`);
    const sha = new Map<ServedObject, string>();
    for (const o of objects) sha.set(o, await generatedSha256(o.size, o.seed));
    const server = await ServerProcess.start({
      root: ctx.root,
      ...(capped ? { ratePerConnection: opts.ratePerConnection } : {}),
      latencyMs: capped ? opts.latencyMs : 0,
      objects,
      // As S3 keeps for objects uploaded by current AWS SDKs (a CRC32 by default); roboflow
      // verifies the cheapest checksum offered, rclone the MD5 ETag.
      fullObjectCrc32: true,
    });
    const runs: ToolRun[] = [];
    const startupRuns: ToolRun[] = [];
    const timelines: PhaseTimeline[] = [];
    let serverAlone: ServerAloneResult | undefined;
    let diskAlone: DiskAloneResult | undefined;
    try {
      ctx.log(`download, ${id}: server ${server.endpoint}`);
      for (let rep = 1; rep <= ctx.repeat; rep++) {
        ctx.log(`download, ${id}: repetition ${rep}/${ctx.repeat}`);
        for (const tool of rotated(tools, rep - 1)) {
          if (ctx.signal.aborted) throw new Error('interrupted');
          const object = capped && tool.spec.singleStream ? small : big;
          runs.push(
            await measureDownload(ctx, tool, { endpoint: server.endpoint, httpUrl: server.httpUrl(object.bucket, object.key), object, sha256: sha.get(object)! }, rep),
          );
        }
      }
      if (!capped) {
        ctx.log(`download, ${id}: start-up cost (${STARTUP_OBJECT_SIZE / 2 ** 20} MiB object)`);
        for (let rep = 1; rep <= ctx.repeat; rep++) {
          for (const tool of rotated(tools, rep - 1)) {
            if (ctx.signal.aborted) throw new Error('interrupted');
            startupRuns.push(await measureDownload(ctx, tool, { endpoint: server.endpoint, httpUrl: server.httpUrl(tiny.bucket, tiny.key), object: tiny, sha256: sha.get(tiny)! }, rep));
          }
        }
      }
      for (const tool of tools.filter((t) => TIMELINE_TOOLS.includes(t.spec.id))) {
        ctx.log(`download, ${id}: where the time of a ${tool.spec.id} run goes`);
        const t = await measurePhases(ctx, tool, server.endpoint, big, ctx.repeat);
        if (t) timelines.push(t);
      }
      if (opts.profile) {
        ctx.log(`download, ${id}: profiling roboflow (node --cpu-prof)`);
        const p = await profileDownload(ctx, server.endpoint, big, id);
        if (p) profiles.push(p);
      }
      if (curl !== null) serverAlone = await measureServerAlone(ctx, curl, server.httpUrl(big.bucket, big.key), big.size, 16);
      else ctx.note('The server-alone ceiling was not measured: curl is missing (run: bash bench/setup).');
      diskAlone = await measureDiskAlone(ctx, big.size);
    } finally {
      await server.close();
    }
    conditions.push({
      id,
      ratePerConnection: capped ? opts.ratePerConnection : null,
      latencyMs: capped ? opts.latencyMs : 0,
      objectSize: big.size,
      singleStreamObjectSize: capped ? small.size : big.size,
      runs,
      ...(serverAlone ? { serverAlone } : {}),
      ...(diskAlone ? { diskAlone } : {}),
      ...(startupRuns.length > 0 ? { startup: { objectSize: tiny.size, runs: startupRuns } } : {}),
      ...(timelines.length > 0 ? { timelines } : {}),
    });
  }
  return { scenario: { conditions }, profiles };
}

/** `connections` curls, each fetching its 1/n of the object to /dev/null, all at once. */
async function measureServerAlone(ctx: BenchContext, curl: string, url: string, size: number, connections: number): Promise<ServerAloneResult> {
  const runs: { wallSeconds: number; cpuSeconds: number; ok: boolean }[] = [];
  const part = Math.ceil(size / connections);
  for (let rep = 1; rep <= ctx.repeat; rep++) {
    const started = process.hrtime.bigint();
    const results = await Promise.all(
      Array.from({ length: connections }, (_, i) => {
        const start = i * part;
        const end = Math.min(size, start + part) - 1;
        return runMeasured(curl, ['-sSf', '-r', `${start}-${end}`, '-o', '/dev/null', url], path.join(ctx.scratch, `alone-${rep}-${i}.txt`), {
          env: benchEnv(),
          timeoutMs: timeoutFor(size),
          signal: ctx.signal,
        });
      }),
    );
    const wallSeconds = Number(process.hrtime.bigint() - started) / 1e9;
    const cpuSeconds = results.reduce((s, r) => s + r.measurement.userSeconds + r.measurement.sysSeconds, 0);
    const ok = results.every((r) => r.measurement.exitCode === 0);
    runs.push({ wallSeconds, cpuSeconds, ok });
    ctx.log(`  server alone (${connections} curls → /dev/null) ${(size / 1e6 / wallSeconds).toFixed(0)} MB/s${ok ? '' : ' (a curl failed)'}`);
    await settle(ctx);
  }
  return { connections, bytes: size, runs };
}

/** Block size of the disk-alone write: what rclone writes per call, and where page-cache writes cost least here. */
const DISK_ALONE_BLOCK_BYTES = 32 * 1024;

/** `dd` of `size` zeros into the download directory in 32 KiB blocks, then `fdatasync`. */
async function measureDiskAlone(ctx: BenchContext, size: number): Promise<DiskAloneResult> {
  const runs: { wallSeconds: number; cpuSeconds: number; ok: boolean }[] = [];
  const count = Math.ceil(size / DISK_ALONE_BLOCK_BYTES);
  for (let rep = 1; rep <= ctx.repeat; rep++) {
    const file = path.join(ctx.scratch, `disk-alone-${rep}.bin`);
    const started = process.hrtime.bigint();
    const r = await runMeasured(
      'dd',
      ['if=/dev/zero', `of=${file}`, `bs=${DISK_ALONE_BLOCK_BYTES}`, `count=${count}`, 'conv=fdatasync', 'status=none'],
      path.join(ctx.scratch, `disk-alone-${rep}.txt`),
      { env: benchEnv(), timeoutMs: timeoutFor(size), signal: ctx.signal },
    );
    const wallSeconds = Number(process.hrtime.bigint() - started) / 1e9;
    const ok = r.measurement.exitCode === 0;
    runs.push({ wallSeconds, cpuSeconds: r.measurement.userSeconds + r.measurement.sysSeconds, ok });
    ctx.log(`  disk alone (dd ${DISK_ALONE_BLOCK_BYTES / 1024} KiB blocks + fdatasync) ${((count * DISK_ALONE_BLOCK_BYTES) / 1e6 / wallSeconds).toFixed(0)} MB/s${ok ? '' : ' (dd failed)'}`);
    await rm(file, { force: true });
    await settle(ctx);
  }
  return { bytes: count * DISK_ALONE_BLOCK_BYTES, blockBytes: DISK_ALONE_BLOCK_BYTES, runs };
}
