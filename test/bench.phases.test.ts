/**
 * The phase hook the benchmark preloads into roboflow (`build/bench/src/phase-hook.js`), in a real
 * `roboflow download` process against the test object server.
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { PhaseMarks } from '../bench/src/results.js';
import { ObjectServer } from './support/object-server.js';
import { TOOL_SCRIPTS } from './support/package-root.js';

// Built by `npm test` (pretest) or `npm run build`.
const MAIN = fileURLToPath(new URL('../dist/bin/roboflow.js', import.meta.url));
const HOOK = fileURLToPath(new URL(`../${TOOL_SCRIPTS.phaseHook}`, import.meta.url));

let server: ObjectServer;
let dir: string;
beforeAll(async () => {
  if (!existsSync(MAIN) || !existsSync(HOOK)) throw new Error('dist/ or build/ is missing: run `npm run build && npm run build:tools` first (npm test does)');
  server = await ObjectServer.start();
  dir = await mkdtemp(path.join(os.tmpdir(), 'roboflow-'));
});
afterAll(async () => {
  await server.close();
  await rm(dir, { recursive: true, force: true });
});

function node(args: readonly string[], env: NodeJS.ProcessEnv): Promise<{ code: number; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = execFile(process.execPath, [...args], { env: { ...process.env, ...env }, cwd: dir }, (err, _stdout, stderr) => {
      if (err && typeof err.code !== 'number') reject(err);
      else resolve({ code: child.exitCode ?? 0, stderr });
    });
  });
}

describe('phase hook', () => {
  it('records every phase of a roboflow download, in order, from the bundled CLI', async () => {
    server.putObject('bench', 'p.bin', { generated: { size: 12 * 2 ** 20, seed: 5 } });
    const marksFile = path.join(dir, 'phases.json');
    const r = await node(['--import', HOOK, MAIN, 'download', server.httpUrl('bench', 'p.bin'), 'p.bin', '--chunk-size', '1MiB', '--json'], {
      ROBOFLOW_BENCH_PHASES: marksFile,
    });
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const m = JSON.parse(await readFile(marksFile, 'utf8')) as PhaseMarks;
    const order: (keyof PhaseMarks)[] = ['loaded', 'stat', 'firstBatch', 'lastBatch', 'done', 'exit'];
    for (const k of order) expect(typeof m[k], k).toBe('number');
    for (let i = 1; i < order.length; i++) expect(m[order[i]!], order[i]).toBeGreaterThanOrEqual(m[order[i - 1]!]);
    expect(m.loaded).toBeGreaterThan(0);
  });

  it('does nothing without ROBOFLOW_BENCH_PHASES', async () => {
    server.putObject('bench', 'q.bin', { generated: { size: 2 ** 20, seed: 6 } });
    await rm(path.join(dir, 'phases.json'), { force: true });
    const r = await node(['--import', HOOK, MAIN, 'download', server.httpUrl('bench', 'q.bin'), 'q.bin', '--json'], { ROBOFLOW_BENCH_PHASES: '' });
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect((await readdir(dir)).sort()).toEqual(['p.bin', 'q.bin']);
  });
});
