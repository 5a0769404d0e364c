import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { openQueue } from '../src/jobs/index.js';
import { ObjectServer } from './support/object-server.js';
import type { JobQueue } from '../src/types.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const fixture = path.join(here, 'fixtures', 'worker-run.mjs');
const KiB = 1024;
const MiB = 1024 * KiB;

interface Child {
  readonly proc: ChildProcess;
  readonly lines: Record<string, unknown>[];
  readonly stderr: string[];
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

let dir: string;
let queueUrl: string;
let queue: JobQueue;
let server: ObjectServer;
const children: Child[] = [];

beforeAll(() => {
  if (!existsSync(path.join(here, '..', 'dist', 'worker.js'))) {
    throw new Error('dist/ is missing: run `npx tsc -p tsconfig.build.json` (npm test does) before this test');
  }
});

beforeEach(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'roboflow-'));
  queueUrl = `sqlite://${path.join(dir, 'queue.db')}`;
  queue = await openQueue(queueUrl);
  server = await ObjectServer.start({ rateLimitBytesPerSec: 1 * MiB });
});

afterEach(async () => {
  for (const c of children.splice(0)) {
    if (c.proc.exitCode === null && c.proc.signalCode === null) c.proc.kill('SIGKILL');
    await c.exited;
  }
  await server.close();
  await queue.close();
  await rm(dir, { recursive: true, force: true });
});

function startWorker(settings: Record<string, unknown>): Child {
  const proc = spawn(process.execPath, [fixture, JSON.stringify({ queue: queueUrl, bufferDir: path.join(dir, `buffer-${String(settings['owner'])}`), ...settings })], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const lines: Record<string, unknown>[] = [];
  const stderr: string[] = [];
  let buf = '';
  proc.stdout!.setEncoding('utf8');
  proc.stdout!.on('data', (chunk: string) => {
    buf += chunk;
    let nl: number;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      if (line.trim() !== '') lines.push(JSON.parse(line) as Record<string, unknown>);
    }
  });
  proc.stderr!.setEncoding('utf8');
  proc.stderr!.on('data', (chunk: string) => stderr.push(chunk));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    proc.once('exit', (code, signal) => resolve({ code, signal }));
  });
  const child = { proc, lines, stderr, exited };
  children.push(child);
  return child;
}

async function until(cond: () => boolean | Promise<boolean>, what: string, child?: Child, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${child ? `; stderr: ${child.stderr.join('')}` : ''}`);
    await sleep(20);
  }
}

async function submitJobs(count: number, size: number): Promise<void> {
  for (let i = 0; i < count; i++) {
    const key = `ep${i}.mcap`;
    server.putObject('bucket', key, { generated: { size, seed: i + 1 } });
    await queue.submit({
      inputs: [{ url: server.httpUrl('bucket', key) }],
      processor: 'mark',
      output: `${pathToFileURL(path.join(dir, 'out')).href}/job${i + 1}/`,
    });
  }
}

describe('worker processes', () => {
  it('SIGTERM finishes the job in progress and hands prefetched jobs back with attempts unchanged', async () => {
    await submitJobs(5, 1 * MiB);
    const w = startWorker({ owner: 'worker-a', slots: 2, processMs: 1_500 });
    await until(() => w.lines.some((l) => l['processing'] === '1'), 'job 1 to be processed', w);
    // Jobs 2 and 3 are claimed and downloading (1 MiB at 1 MiB/s) while job 1 is processed.
    await until(async () => (await queue.counts()).claimed === 2, 'two prefetched jobs', w);
    expect(server.requests.some((r) => r.key === 'ep1.mcap' && r.method === 'GET')).toBe(true);
    w.proc.kill('SIGTERM');
    const exit = await w.exited;
    expect(exit, w.stderr.join('')).toEqual({ code: 0, signal: null });
    const summary = w.lines.find((l) => 'summary' in l)?.['summary'];
    expect(summary).toMatchObject({ jobs: 1, done: 1, released: 0 });
    expect(await queue.get('1')).toMatchObject({ status: 'done', attempts: 1 });
    for (const id of ['2', '3', '4', '5']) {
      expect(await queue.get(id)).toMatchObject({ status: 'pending', attempts: 0, leaseOwner: null });
    }
    expect(await queue.counts()).toMatchObject({ claimed: 0, running: 0 });
    expect(await readFile(path.join(dir, 'out', 'job1', 'mark.txt'), 'utf8')).toBe('worker-a\n');
    // Nothing keeps downloading after the worker exited.
    const sent = server.requests.reduce((n, r) => n + r.bytesSent, 0);
    await sleep(300);
    expect(server.requests.reduce((n, r) => n + r.bytesSent, 0)).toBe(sent);
  });

  it('after a SIGKILL, a second worker finishes every job, none twice', async () => {
    const n = 5;
    await submitJobs(n, 256 * KiB);
    const a = startWorker({ owner: 'worker-a', slots: 2, leaseMs: 1_500, heartbeatMs: 300, processMs: 1_000 });
    await until(() => a.lines.some((l) => l['finished'] === '1') && a.lines.some((l) => l['processing'] === '2'), 'worker a in job 2', a);
    await until(async () => (await queue.counts()).claimed >= 1, 'worker a holding prefetched jobs', a);
    a.proc.kill('SIGKILL');
    expect(await a.exited).toEqual({ code: null, signal: 'SIGKILL' });
    const heldByA = (await queue.list()).filter((j) => j.leaseOwner === 'worker-a').map((j) => j.id);
    expect(heldByA.length).toBeGreaterThanOrEqual(2); // the job in progress and at least one prefetched

    const b = startWorker({ owner: 'worker-b', slots: 2, leaseMs: 1_500, heartbeatMs: 300, processMs: 50, drain: true });
    const exit = await b.exited;
    expect(exit, b.stderr.join('')).toEqual({ code: 0, signal: null });

    const all = await queue.list();
    expect(all.map((j) => j.status)).toEqual(Array(n).fill('done'));
    const doneBy = new Map<string, string[]>();
    for (const [name, child] of [
      ['worker-a', a],
      ['worker-b', b],
    ] as const) {
      for (const l of child.lines) {
        if (l['outcome'] === 'done') doneBy.set(String(l['finished']), [...(doneBy.get(String(l['finished'])) ?? []), name]);
      }
    }
    // Every job completed exactly once, by the worker its result names.
    for (const job of all) {
      expect(doneBy.get(job.id)).toHaveLength(1);
      expect((job.result as { worker: string }).worker).toBe(doneBy.get(job.id)![0]);
      const out = path.join(dir, 'out', `job${job.id}`);
      // The output and the completion marker of the attempt that won; no staging left.
      expect((await readdir(out)).sort()).toEqual(['_SUCCESS', 'mark.txt']);
      expect(await readFile(path.join(out, 'mark.txt'), 'utf8')).toBe(`${doneBy.get(job.id)![0]}\n`);
    }
    expect(doneBy.get('1')).toEqual(['worker-a']);
    // Job 2 was being processed when worker a died: that attempt counts. Jobs a had only
    // prefetched were never started by it: worker b's attempt is their first.
    expect(all.find((j) => j.id === '2')?.attempts).toBe(2);
    for (const id of heldByA.filter((id) => id !== '2')) {
      expect(all.find((j) => j.id === id)?.attempts).toBe(1);
    }
  });
});
