/**
 * Where one roboflow run's time goes: runs a roboflow tool of the download scenario with
 * `phase-hook.ts` preloaded and collects, over repetitions, when each phase began (Node.js
 * start-up, loading and stat, first and last write batch, verification and rename, exit). The
 * report holds the transfer's own rate against the peers' and names the fixed costs around it.
 */

import { readFile } from 'node:fs/promises';
import path from 'node:path';
import type { PhaseMarks, PhaseTimeline } from './results.js';
import { runRoboflowWith, settle, type BenchContext } from './runner.js';
import type { ServedObject } from './server-process.js';
import { median } from './stats.js';
import type { ResolvedTool } from './tools.js';
import { TOOL_SCRIPTS } from '../../test/support/package-root.js';

const PHASES: readonly (keyof PhaseMarks)[] = ['loaded', 'stat', 'firstBatch', 'lastBatch', 'done', 'exit'];

function isMarks(v: unknown): v is PhaseMarks {
  return typeof v === 'object' && v !== null && PHASES.every((k) => typeof (v as Record<string, unknown>)[k] === 'number');
}

/** Runs `tool` (a roboflow download) `repeat` times with the phase hook; null if no run completed. */
export async function measurePhases(
  ctx: BenchContext,
  tool: ResolvedTool,
  endpoint: string,
  object: ServedObject,
  repeat: number,
): Promise<PhaseTimeline | null> {
  const hook = path.join(ctx.root, TOOL_SCRIPTS.phaseHook);
  const got: PhaseMarks[] = [];
  for (let rep = 1; rep <= repeat; rep++) {
    if (ctx.signal.aborted) throw new Error('interrupted');
    try {
      await runRoboflowWith(
        ctx,
        tool,
        endpoint,
        object,
        (dir) => ({ nodeArgs: ['--import', hook], env: { ROBOFLOW_BENCH_PHASES: path.join(dir, 'phases.json') } }),
        async (res, dir) => {
          const marks: unknown =
            res.exitCode === 0 ? JSON.parse(await readFile(path.join(dir, 'phases.json'), 'utf8').catch(() => 'null')) : null;
          if (isMarks(marks)) got.push(marks);
          else ctx.note(`A phase timeline run of ${tool.spec.id} failed: ${res.stderr.trim().split('\n').slice(-1)[0] ?? `exit code ${res.exitCode}`}`);
        },
      );
    } finally {
      await settle(ctx);
    }
  }
  if (got.length === 0) return null;
  const m = Object.fromEntries(PHASES.map((k) => [k, median(got.map((g) => g[k]))])) as unknown as PhaseMarks;
  ctx.log(
    `  ${tool.spec.id.padEnd(24)} phases (ms): loaded ${m.loaded.toFixed(0)}, stat ${m.stat.toFixed(0)}, first batch ${m.firstBatch.toFixed(0)}, ` +
      `last batch ${m.lastBatch.toFixed(0)}, done ${m.done.toFixed(0)}, exit ${m.exit.toFixed(0)}`,
  );
  return { tool: tool.spec.id, bytes: object.size, runs: got.length, marks: m };
}
