/**
 * Where roboflow's CPU time goes: runs one download under `node --cpu-prof` and reduces the
 * V8 profile to self time per function, so the report can name the hot spots when roboflow
 * falls short of a goal.
 */

import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import type { ProfileSummary } from './results.js';
import { runRoboflowWith, type BenchContext } from './runner.js';
import type { ServedObject } from './server-process.js';
import { roboflowTool } from './tools.js';

/** The parts of a `.cpuprofile` (Chrome DevTools format) the summary reads. */
export interface CpuProfile {
  readonly nodes: readonly {
    readonly id: number;
    readonly callFrame: { readonly functionName: string; readonly url: string; readonly lineNumber: number };
  }[];
  readonly samples: readonly number[];
  readonly timeDeltas: readonly number[];
}

/**
 * Self time per function (name + file:line), largest first. Sample i is charged `timeDeltas[i+1]`
 * (the time until the next sample), the last one the mean interval.
 */
export function summariseCpuProfile(profile: CpuProfile, condition: string, top = 12): ProfileSummary {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const self = new Map<string, { name: string; where: string; us: number }>();
  const n = profile.samples.length;
  const mean = n > 1 ? profile.timeDeltas.slice(1).reduce((a, b) => a + b, 0) / (n - 1) : 0;
  let total = 0;
  for (let i = 0; i < n; i++) {
    const node = byId.get(profile.samples[i]!);
    if (!node) continue;
    const dt = i + 1 < n ? Math.max(0, profile.timeDeltas[i + 1] ?? 0) : mean;
    const f = node.callFrame;
    const file = f.url ? f.url.replace(/^file:\/\//, '').replace(/^.*\/(dist|node_modules)\//, '$1/') : '';
    const where = file ? `${file}:${f.lineNumber + 1}` : 'native';
    const name = f.functionName || '(anonymous)';
    const k = `${name}@${where}`;
    const entry = self.get(k) ?? { name, where, us: 0 };
    entry.us += dt;
    self.set(k, entry);
    total += dt;
  }
  const rows = [...self.values()].sort((a, b) => b.us - a.us).slice(0, top);
  return {
    condition,
    totalMs: total / 1000,
    top: rows.map((r) => ({ name: r.name, where: r.where, selfMs: r.us / 1000, share: total > 0 ? r.us / total : 0 })),
  };
}

/** Downloads the object once with roboflow (16 × 8 MiB) under `--cpu-prof` and summarises it. */
export async function profileDownload(
  ctx: BenchContext,
  endpoint: string,
  object: ServedObject,
  condition: string,
): Promise<ProfileSummary | null> {
  const tool = { spec: roboflowTool('roboflow', 'roboflow', 16, '8MiB'), path: process.execPath };
  return runRoboflowWith(
    ctx,
    tool,
    endpoint,
    object,
    // Node.js creates the profile directory itself.
    (dir) => ({ nodeArgs: ['--cpu-prof', '--cpu-prof-dir', path.join(dir, 'prof')] }),
    async (res, dir) => {
      if (res.exitCode !== 0) {
        ctx.note(`The CPU profile of the ${condition} download failed: ${res.stderr.trim().split('\n').slice(-1)[0] ?? ''}`);
        return null;
      }
      const profDir = path.join(dir, 'prof');
      const file = (await readdir(profDir)).find((f) => f.endsWith('.cpuprofile'));
      if (!file) return null;
      const profile = JSON.parse(await readFile(path.join(profDir, file), 'utf8')) as CpuProfile;
      return summariseCpuProfile(profile, condition);
    },
  );
}
