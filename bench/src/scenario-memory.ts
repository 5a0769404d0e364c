/**
 * Scenario 2: roboflow's peak RSS against the object size. The downloader writes each received
 * buffer at its offset before reading the next, so its memory should not grow with the object;
 * this measures it, uncapped (the most buffers in flight).
 */

import { generatedSha256 } from '../../src/cli/demo/content.js';
import type { MemoryScenario, ToolRun } from './results.js';
import { measureDownload, type BenchContext } from './runner.js';
import { BUCKET } from './scenario-download.js';
import { ServerProcess, type ServedObject } from './server-process.js';
import { roboflowTool } from './tools.js';

export async function runMemoryScenario(ctx: BenchContext, sizes: readonly number[]): Promise<MemoryScenario> {
  const connections = 16;
  const tool = { spec: roboflowTool('roboflow', 'roboflow 16 × 8 MiB', connections, '8MiB'), path: process.execPath };
  const objects: ServedObject[] = sizes.map((size, i) => ({ bucket: BUCKET, key: `memory-${i}.bin`, size, seed: 100 + i }));
  ctx.log('memory: computing SHA-256 of the generated objects');
  const sha: string[] = [];
  for (const o of objects) sha.push(await generatedSha256(o.size, o.seed));
  const server = await ServerProcess.start({ root: ctx.root, latencyMs: 0, objects });
  const points: { size: number; runs: ToolRun[] }[] = objects.map((o) => ({ size: o.size, runs: [] }));
  try {
    for (let rep = 1; rep <= ctx.repeat; rep++) {
      ctx.log(`memory: repetition ${rep}/${ctx.repeat}`);
      for (const [i, o] of objects.entries()) {
        if (ctx.signal.aborted) throw new Error('interrupted');
        points[i]!.runs.push(
          await measureDownload(ctx, tool, { endpoint: server.endpoint, httpUrl: server.httpUrl(o.bucket, o.key), object: o, sha256: sha[i]! }, rep),
        );
      }
    }
  } finally {
    await server.close();
  }
  return { connections, chunkSize: 8 * 2 ** 20, points };
}
