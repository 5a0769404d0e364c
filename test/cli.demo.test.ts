/**
 * `roboflow demo` as built: its store runs on a thread whose program is a file of its own beside
 * the code that starts it (dist/cli/demo/ for the library, dist/bin/ in the bundled command), so
 * both compiled forms are run here. Figures are not judged (the bench and the demo's own output
 * do that); that both runs complete against the thread's store is.
 */

import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';

const MAIN = fileURLToPath(new URL('../dist/bin/roboflow.js', import.meta.url));
const LIBRARY_COMPARISON = new URL('../dist/cli/demo/comparison.js', import.meta.url).href;

let dir: string;

beforeAll(() => {
  if (!existsSync(MAIN)) throw new Error(`${MAIN} is missing: run \`npm run build\` first`);
});
beforeEach(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'roboflow-demo-test-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

interface DemoJson {
  readonly prefetch: { readonly summary: { readonly done: number }; readonly slots: number };
  readonly sequential: { readonly summary: { readonly done: number } };
  readonly ratePerConn: number | null;
}

describe('roboflow demo', () => {
  it('runs both runs against the store on its own thread (bundled command)', async () => {
    const child = spawn(process.execPath, [MAIN, 'demo', '--jobs', '2', '--size', '2MiB', '--rate', '20MB/s', '--process', 'sleep', '--process-ms', '20ms', '--json'], {
      cwd: dir,
      env: { ...process.env, TMPDIR: dir },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (b: Buffer) => (stdout += b.toString()));
    child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
    const code = await new Promise<number | null>((resolve) => child.once('close', (c) => resolve(c)));
    expect(stderr).not.toMatch(/roboflow demo:/);
    expect(code).toBe(0);
    const result = JSON.parse(stdout) as DemoJson;
    expect(result.prefetch.summary.done).toBe(2);
    expect(result.prefetch.slots).toBe(2);
    expect(result.sequential.summary.done).toBe(2);
    expect(result.ratePerConn).toBe(20e6);
    // The temporary directory is removed and the thread ended (the process exited by itself).
    expect((await readdir(dir)).filter((f) => f.startsWith('roboflow-demo-'))).toEqual([]);
  });

  it('runs from the compiled library with the default store, and stops the thread', async () => {
    const mod = (await import(LIBRARY_COMPARISON)) as typeof import('../src/cli/demo/comparison.js');
    const store = await mod.startThreadStore({ objects: [], ratePerConn: null, latencyMs: 0 });
    const missing = await fetch(store.httpUrl('episodes', 'nothing.mcap'), { method: 'HEAD' });
    expect(missing.status).toBe(404);
    await store.close();
    await expect(fetch(store.httpUrl('episodes', 'nothing.mcap'), { method: 'HEAD' })).rejects.toThrow();

    const c = await mod.runPrefetchComparison({
      jobs: 2,
      sizeBytes: 1024 * 1024,
      ratePerConn: 8e6,
      latencyMs: 2,
      connections: 2,
      chunkSize: 256 * 1024,
      tempDir: dir,
      processor: { kind: 'sleep', ms: 10 },
    });
    expect(c.prefetch.summary.done).toBe(2);
    expect(c.sequential.summary.done).toBe(2);
    expect((await readdir(dir)).filter((f) => f.startsWith('roboflow-demo-'))).toEqual([]);
  });

  it('refuses generated objects: the demo store serves files', async () => {
    const mod = (await import(LIBRARY_COMPARISON)) as typeof import('../src/cli/demo/comparison.js');
    await expect(
      mod.startThreadStore({ objects: [{ bucket: 'b', key: 'k', source: { generated: { size: 1, seed: 1 } } }], ratePerConn: null, latencyMs: 0 }),
    ).rejects.toMatchObject({ code: 'ERR_CONFIG' });
  });
});
