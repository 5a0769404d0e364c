/**
 * Scenario 3: throughput of roboflow under the per-connection cap for connections × chunk size,
 * to show where the defaults (16 × 8 MiB) sit and what latency costs small chunks.
 */

import { generatedSha256 } from '../../src/cli/demo/content.js';
import type { SweepScenario, ToolRun } from './results.js';
import { measureDownload, type BenchContext } from './runner.js';
import { BUCKET } from './scenario-download.js';
import { ServerProcess, type ServedObject } from './server-process.js';
import { roboflowTool } from './tools.js';

export interface SweepOptions {
  readonly objectSize: number;
  readonly ratePerConnection: number;
  readonly latencyMs: number;
  readonly connections: readonly number[];
  readonly chunkMiB: readonly number[];
}

export async function runSweepScenario(ctx: BenchContext, opts: SweepOptions): Promise<SweepScenario> {
  const object: ServedObject = { bucket: BUCKET, key: 'sweep.bin', size: opts.objectSize, seed: 3 };
  ctx.log('sweep: computing SHA-256 of the generated object');
  const sha256 = await generatedSha256(object.size, object.seed);
  const server = await ServerProcess.start({ root: ctx.root, ratePerConnection: opts.ratePerConnection, latencyMs: opts.latencyMs, objects: [object] });
  const cells: { connections: number; chunkSize: number; runs: ToolRun[] }[] = [];
  for (const connections of opts.connections) {
    for (const mib of opts.chunkMiB) cells.push({ connections, chunkSize: mib * 2 ** 20, runs: [] });
  }
  try {
    const target = { endpoint: server.endpoint, httpUrl: server.httpUrl(object.bucket, object.key), object, sha256 };
    for (let rep = 1; rep <= ctx.repeat; rep++) {
      ctx.log(`sweep: repetition ${rep}/${ctx.repeat}`);
      for (const cell of cells) {
        if (ctx.signal.aborted) throw new Error('interrupted');
        const mib = cell.chunkSize / 2 ** 20;
        const tool = {
          spec: roboflowTool(`roboflow-${cell.connections}x${mib}MiB`, `roboflow ${cell.connections} × ${mib} MiB`, cell.connections, `${mib}MiB`),
          path: process.execPath,
        };
        cell.runs.push(await measureDownload(ctx, tool, target, rep));
      }
    }
  } finally {
    await server.close();
  }
  return { ratePerConnection: opts.ratePerConnection, latencyMs: opts.latencyMs, objectSize: object.size, cells };
}
