/**
 * Worker processes for the scenarios that kill workers: the fixture
 * `test/fixtures/chaos-worker.mjs` runs a `Worker` from the compiled library (`dist/`) and
 * reports on stdout, one JSON object per line, when it starts, when a download pass starts (with
 * the bytes it resumed), when a job's processing starts and how each job ended. The scenario
 * kills it with SIGKILL and starts the next one.
 */

import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { RoboflowError } from '../src/errors.js';
import { packageRoot } from '../test/support/package-root.js';

const ROOT = packageRoot(import.meta.url);
export const WORKER_FIXTURE = path.join(ROOT, 'test', 'fixtures', 'chaos-worker.mjs');

/** The settings the fixture reads (see its header). */
export interface FixtureSettings {
  readonly queue: string;
  readonly bufferDir: string;
  readonly owner: string;
  readonly endpoint: string;
  readonly slots?: number;
  readonly connections?: number;
  readonly chunkSize?: number;
  readonly leaseMs?: number;
  readonly heartbeatMs?: number;
  readonly pollIntervalMs?: number;
  readonly processDelayMs?: number;
  readonly stallTimeoutMs?: number;
}

export type WorkerEvent =
  | { readonly kind: 'started'; readonly at: number; readonly owner: string }
  | { readonly kind: 'downloadStart'; readonly at: number; readonly url: string; readonly resumedBytes: number }
  | { readonly kind: 'processing'; readonly at: number; readonly jobId: string }
  | { readonly kind: 'finished'; readonly at: number; readonly jobId: string; readonly outcome: string }
  | { readonly kind: 'summary'; readonly at: number; readonly summary: Record<string, unknown> };

export interface WorkerProcess {
  readonly owner: string;
  readonly proc: ChildProcess;
  readonly events: WorkerEvent[];
  /** The last lines of stderr, for messages. */
  readonly stderr: () => string;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Still running (not exited, not killed). */
  readonly alive: () => boolean;
}

/** Throws a clear error when the compiled library the fixture imports is missing. */
export function checkBuilt(): void {
  if (!existsSync(path.join(ROOT, 'dist', 'worker.js'))) {
    throw new RoboflowError('ERR_CONFIG', `${path.join(ROOT, 'dist')} is missing: build first (npm run build; npm test and npm run chaos do)`);
  }
  if (!existsSync(WORKER_FIXTURE)) throw new RoboflowError('ERR_CONFIG', `the worker fixture ${WORKER_FIXTURE} is missing`);
}

export function spawnWorker(settings: FixtureSettings): WorkerProcess {
  const proc = spawn(process.execPath, [WORKER_FIXTURE, JSON.stringify(settings)], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true' },
  });
  const events: WorkerEvent[] = [];
  let err = '';
  let buf = '';
  let running = true;
  proc.stdout?.setEncoding('utf8').on('data', (chunk: string) => {
    buf += chunk;
    let nl: number;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl).trim();
      buf = buf.slice(nl + 1);
      if (line === '') continue;
      const e = parseEvent(line);
      if (e) events.push(e);
    }
  });
  proc.stderr?.setEncoding('utf8').on('data', (chunk: string) => {
    err = (err + chunk).slice(-4096);
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    proc.once('exit', (code, signal) => {
      running = false;
      resolve({ code, signal });
    });
    proc.once('error', () => {
      running = false;
      resolve({ code: null, signal: null });
    });
  });
  return { owner: settings.owner, proc, events, stderr: () => err, exited, alive: () => running };
}

function parseEvent(line: string): WorkerEvent | null {
  let o: Record<string, unknown>;
  try {
    o = JSON.parse(line) as Record<string, unknown>;
  } catch {
    return null;
  }
  const at = Date.now();
  if (o['started'] === true) return { kind: 'started', at, owner: String(o['owner']) };
  const ds = o['downloadStart'] as { url?: unknown; resumedBytes?: unknown } | undefined;
  if (ds !== undefined) return { kind: 'downloadStart', at, url: String(ds.url), resumedBytes: Number(ds.resumedBytes) || 0 };
  if (typeof o['processing'] === 'string') return { kind: 'processing', at, jobId: o['processing'] };
  if (typeof o['finished'] === 'string') return { kind: 'finished', at, jobId: o['finished'], outcome: String(o['outcome']) };
  if (o['summary'] !== undefined) return { kind: 'summary', at, summary: o['summary'] as Record<string, unknown> };
  return null;
}

/** SIGKILLs the process if it still runs and waits for it to be gone. */
export async function killWorker(w: WorkerProcess): Promise<void> {
  if (w.alive()) w.proc.kill('SIGKILL');
  await w.exited;
}
