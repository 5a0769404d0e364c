// The job queue shared by real processes: concurrent claimers in separate processes, and a
// worker killed with SIGKILL while it holds a lease. Children run test/fixtures/jobs-claimer.mjs
// on the compiled library in dist/ (`npm test` builds it first).
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { openQueue } from '../src/jobs/index.js';
import type { JobQueue, JobRecord } from '../src/types.js';
import { postgresBackend, sqliteBackend, waitFor, type QueueBackend } from './fixtures/jobs-backends.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const fixture = path.join(root, 'test', 'fixtures', 'jobs-claimer.mjs');
const compiled = path.join(root, 'dist', 'jobs', 'index.js');

beforeAll(() => {
  if (!existsSync(compiled)) {
    throw new Error(`${compiled} is missing: build first with \`npx tsc -p tsconfig.build.json\` (npm test does)`);
  }
});

/** A child process whose stdout is JSON lines, kept as they arrive. */
interface Child {
  readonly proc: ChildProcess;
  readonly lines: Record<string, unknown>[];
  readonly stderr: string[];
  /** Resolves with the first line (old or new) that matches. */
  line(match: (l: Record<string, unknown>) => boolean, what: string): Promise<Record<string, unknown>>;
  readonly exited: Promise<number | null>;
}

const children: Child[] = [];

function child(args: string[]): Child {
  const proc = spawn(process.execPath, [fixture, ...args], { stdio: ['pipe', 'pipe', 'pipe'], cwd: root });
  const lines: Record<string, unknown>[] = [];
  const stderr: string[] = [];
  const waiters = new Set<() => void>();
  createInterface({ input: proc.stdout as NodeJS.ReadableStream }).on('line', (text) => {
    lines.push(JSON.parse(text) as Record<string, unknown>);
    for (const w of waiters) w();
  });
  proc.stderr?.setEncoding('utf8').on('data', (s: string) => stderr.push(s));
  const exited = new Promise<number | null>((resolve) => proc.on('exit', (code) => resolve(code)));
  const c: Child = {
    proc,
    lines,
    stderr,
    exited,
    line(match, what) {
      return new Promise((resolve, reject) => {
        const check = () => {
          const found = lines.find(match);
          if (found !== undefined) {
            waiters.delete(check);
            clearTimeout(timer);
            resolve(found);
          }
        };
        const timer = setTimeout(() => {
          waiters.delete(check);
          reject(new Error(`child ${args.join(' ')}: no ${what} within 30 s; stderr: ${stderr.join('')}`));
        }, 30_000);
        waiters.add(check);
        void exited.then(() => {
          if (waiters.has(check)) {
            check();
            if (waiters.has(check)) {
              waiters.delete(check);
              clearTimeout(timer);
              reject(new Error(`child ${args.join(' ')} exited before ${what}; stderr: ${stderr.join('')}`));
            }
          }
        });
        check();
      });
    },
  };
  children.push(c);
  return c;
}

afterEach(async () => {
  for (const c of children.splice(0)) {
    if (c.proc.exitCode === null && c.proc.signalCode === null) c.proc.kill('SIGKILL');
    await c.exited;
  }
});

const backends: QueueBackend[] = [sqliteBackend(), postgresBackend()];

afterAll(async () => {
  for (const b of backends) await b.cleanup();
});

// Child processes start slowly on a busy two-core machine; the limits are generous on purpose.
describe.each(backends)('job queue across processes: $name', { timeout: 180_000 }, (backend) => {
  const open: JobQueue[] = [];

  afterEach(async () => {
    await Promise.all(open.splice(0).map((q) => q.close()));
  });

  it('four processes drain 60 jobs; every job is done exactly once', async () => {
    const url = await backend.freshUrl();
    // The children open the fresh store together, so they also race to create its schema.
    const claimers = Array.from({ length: 4 }, (_, i) => child(['drain', url, `proc-${i}`]));
    await Promise.all(claimers.map((c) => c.line((l) => l.ready === true, 'ready')));
    const q = await openQueue(url);
    open.push(q);
    const ids = new Set<string>();
    for (let i = 0; i < 60; i++) ids.add((await q.submit({ inputs: [{ url: `s3://b/${i}.mcap` }], processor: 'checksum' })).id);
    for (const c of claimers) c.proc.stdin?.end('go\n');
    const codes = await Promise.all(claimers.map((c) => c.exited));
    expect(codes, claimers.map((c) => c.stderr.join('')).join('\n')).toEqual([0, 0, 0, 0]);

    const claimed = claimers.flatMap((c) => c.lines.filter((l) => 'claimed' in l).map((l) => String(l.claimed)));
    expect(claimed.length).toBe(60);
    expect(new Set(claimed)).toEqual(ids);
    expect(await q.counts()).toEqual({ pending: 0, claimed: 0, running: 0, done: 60, dead: 0 });
    const jobs = await q.list({ limit: 100 });
    for (const job of jobs) {
      expect(job.attempts).toBe(1);
      const owner = claimers.findIndex((c) => c.lines.some((l) => l.claimed === job.id));
      expect(job.result).toEqual({ by: `proc-${owner}` });
    }
  });

  it('a SIGKILLed worker loses its job when the lease expires; another finishes it', async () => {
    const url = await backend.freshUrl();
    const q = await openQueue(url);
    open.push(q);
    const job = await q.submit({ inputs: [{ url: 's3://b/big.mcap' }], processor: 'checksum', maxAttempts: 3 });
    const worker = child(['hold', url, 'doomed', '1000']);
    await worker.line((l) => l.started === job.id, 'start');
    const started = (await q.get(job.id)) as JobRecord;
    expect(started).toMatchObject({ status: 'running', attempts: 1, leaseOwner: 'doomed' });
    // Heartbeats move the lease forward while the worker lives.
    await worker.line((l) => l.heartbeat === 2, 'second heartbeat');
    const beating = (await q.get(job.id)) as JobRecord;
    expect((beating.leaseExpiresAt as Date).getTime()).toBeGreaterThan((started.leaseExpiresAt as Date).getTime());
    expect(worker.lines.filter((l) => 'error' in l)).toEqual([]);

    worker.proc.kill('SIGKILL');
    expect(await worker.exited).toBeNull();
    expect(worker.proc.signalCode).toBe('SIGKILL');

    const rescued = await waitFor('the dead worker lease to expire', () => q.claim('rescuer', 30_000));
    expect(rescued).toMatchObject({
      id: job.id,
      leaseOwner: 'rescuer',
      attempts: 1,
      lastError: 'lease expired during attempt 1 (worker lost)',
    });
    expect((await q.start(job.id, 'rescuer', 30_000)).attempts).toBe(2);
    const done = await q.complete(job.id, 'rescuer', { rescued: true });
    expect(done).toMatchObject({ status: 'done', attempts: 2, result: { rescued: true }, lastError: null });
  });
});
