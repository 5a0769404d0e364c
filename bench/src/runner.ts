/**
 * One measured download: a fresh empty directory, the tool as a child process under GNU time,
 * the SHA-256 of what it wrote, then everything deleted and the page cache settled, so no run
 * inherits another's files or dirty pages.
 */

import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, readdir, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { pageReportedKiB } from './machine.js';
import { runCommand, runMeasured } from './measure.js';
import type { ToolRun } from './results.js';
import { parseLastJsonLine } from './results.js';
import type { ServedObject } from './server-process.js';
import type { ResolvedTool, ToolSpec } from './tools.js';

export interface BenchContext {
  /** Repository root (dist/ and bench/ live here). */
  readonly root: string;
  /** Scratch directory on the download file system; removed at the end. */
  readonly scratch: string;
  /** Tool configuration files (aws, rclone). */
  readonly configDir: string;
  readonly repeat: number;
  readonly quick: boolean;
  /** Whether `/proc/sys/vm/drop_caches` is writable; checked once at start. */
  readonly dropCaches: boolean;
  /** Whether the kernel reports free memory to a host (`pageReportedKiB`); checked once at start. */
  readonly pageReporting: boolean;
  readonly signal: AbortSignal;
  log(message: string): void;
  /** Adds a line to the results' notes (shown in BENCHMARKS.md). */
  note(message: string): void;
}

let runSeq = 0;

export async function sha256File(file: string): Promise<string> {
  const hash = createHash('sha256');
  await pipeline(createReadStream(file, { highWaterMark: 1 << 20 }), hash);
  return hash.digest('hex');
}

/**
 * Flushes dirty pages (`sync`) and, where the kernel lets us, drops the page cache, so the next
 * run neither pays for this run's writeback nor reads from its cache. Where the kernel hands free
 * memory back to a hypervisor, it then waits until that has stopped.
 */
export async function settle(ctx: BenchContext): Promise<void> {
  await runCommand('sync', [], { timeoutMs: 120_000 });
  if (ctx.dropCaches) await writeFile('/proc/sys/vm/drop_caches', '1\n').catch(() => undefined);
  if (ctx.pageReporting) await pageReportingQuiet(ctx.signal);
}

/** No change in reported memory for this long ends the wait: the waves come ~2.1 s apart. */
const REPORTING_QUIET_MS = 2_500;
const REPORTING_POLL_MS = 250;
/** Longest wait; a run after it may still share its CPU with the reporting. */
const REPORTING_MAX_WAIT_MS = 20_000;

/**
 * Waits until the kernel has stopped reporting freed memory to the host. Freeing a 1 GiB output
 * file starts waves of reporting ~1.9 s later, every ~2.1 s for ~6 s (measured on a Firecracker
 * guest); a run that overlaps them pays for it in system time (1 GiB uncapped: 0.8 s → 1.9 s), and
 * which runs overlap depends only on how long the run before took.
 */
async function pageReportingQuiet(signal: AbortSignal): Promise<void> {
  const started = Date.now();
  let last = await pageReportedKiB();
  let quietSince = Date.now();
  while (!signal.aborted && Date.now() - started < REPORTING_MAX_WAIT_MS) {
    await new Promise((r) => setTimeout(r, REPORTING_POLL_MS));
    const now = await pageReportedKiB();
    if (now !== last) {
      last = now;
      quietSince = Date.now();
    } else if (Date.now() - quietSince >= REPORTING_QUIET_MS) {
      return;
    }
  }
}

/** A fresh, empty directory for one run. */
export async function runDir(ctx: BenchContext): Promise<string> {
  const dir = path.join(ctx.scratch, `run-${++runSeq}`);
  await rm(dir, { recursive: true, force: true });
  await mkdir(dir, { recursive: true });
  return dir;
}

/** Generous: a run that takes this long is broken, not slow. */
export function timeoutFor(bytes: number): number {
  return Math.max(120_000, (bytes / 2e6) * 1000);
}

/**
 * Runs a roboflow tool once on `object` in a fresh run directory with extra Node.js flags (a
 * preloaded hook, a profiler) and environment, both made for that directory, and hands the
 * outcome to `read` before the directory goes.
 */
export async function runRoboflowWith<T>(
  ctx: BenchContext,
  tool: { readonly spec: ToolSpec; readonly path: string },
  endpoint: string,
  object: ServedObject,
  extra: (dir: string) => { readonly nodeArgs: readonly string[]; readonly env?: Readonly<Record<string, string>> },
  read: (res: Awaited<ReturnType<typeof runCommand>>, dir: string) => Promise<T>,
): Promise<T> {
  const dir = await runDir(ctx);
  try {
    const inv = tool.spec.invocation(
      tool.path,
      { endpoint, bucket: object.bucket, key: object.key, httpUrl: '', dest: path.join(dir, 'object.bin'), configDir: ctx.configDir },
      ctx.root,
    );
    const { nodeArgs, env } = extra(dir);
    const res = await runCommand(inv.cmd, [...nodeArgs, ...inv.args], {
      env: { ...(inv.env ?? process.env), ...env },
      timeoutMs: timeoutFor(object.size),
      signal: ctx.signal,
    });
    return await read(res, dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

export interface DownloadTarget {
  readonly endpoint: string;
  readonly httpUrl: string;
  readonly object: ServedObject;
  readonly sha256: string;
}

/** Runs one tool once and checks its output. Never throws for the tool's failure. */
export async function measureDownload(
  ctx: BenchContext,
  tool: ResolvedTool,
  target: DownloadTarget,
  repetition: number,
): Promise<ToolRun> {
  const dir = await runDir(ctx);
  const dest = path.join(dir, 'object.bin');
  const inv = tool.spec.invocation(
    tool.path,
    { endpoint: target.endpoint, bucket: target.object.bucket, key: target.object.key, httpUrl: target.httpUrl, dest, configDir: ctx.configDir },
    ctx.root,
  );
  const timeFile = path.join(ctx.scratch, `time-${runSeq}.txt`);
  const res = await runMeasured(inv.cmd, inv.args, timeFile, { env: inv.env, timeoutMs: timeoutFor(target.object.size), signal: ctx.signal });
  let sha256Ok = false;
  let error: string | undefined;
  if (res.timedOut) error = `timed out after ${timeoutFor(target.object.size) / 1000} s`;
  else if (res.spawnError) error = `could not start: ${res.spawnError}`;
  else if (res.measurement.exitCode !== 0) error = lastLines(res.stderr || res.stdout) || `exit code ${res.measurement.exitCode}`;
  const reported = parseLastJsonLine(res.stdout);
  if (error === undefined && tool.spec.printsJson && reported === null) {
    error = `exited 0 without printing its --json result${await describeLeftovers(dir)}`;
  }
  if (error === undefined) {
    try {
      sha256Ok = (await sha256File(dest)) === target.sha256;
      if (!sha256Ok) error = 'SHA-256 of the output differs from the object';
    } catch (err) {
      error = `no output file: ${(err as Error).message}`;
    }
  }
  await rm(dir, { recursive: true, force: true });
  await settle(ctx);
  const run: ToolRun = {
    tool: tool.spec.id,
    repetition,
    bytes: target.object.size,
    measurement: res.measurement,
    sha256Ok,
    ...(error !== undefined ? { error } : {}),
    ...(reported !== null ? { reported } : {}),
  };
  const m = run.measurement;
  ctx.log(
    `  ${tool.spec.id.padEnd(24)} ${(target.object.size / 1e6 / m.wallSeconds).toFixed(0).padStart(5)} MB/s ` +
      `${m.wallSeconds.toFixed(2)} s  cpu ${(m.userSeconds + m.sysSeconds).toFixed(2)} s  rss ${(m.maxRssKiB / 1024).toFixed(0)} MiB` +
      `${sha256Ok ? '' : `  FAILED: ${error ?? ''}`}`,
  );
  return run;
}

/** What a run left in its directory, for the error of a run that did not finish. */
export async function describeLeftovers(dir: string): Promise<string> {
  const names = await readdir(dir).catch(() => [] as string[]);
  return names.length > 0 ? `; it left ${names.sort().join(', ')}` : '';
}

function lastLines(text: string): string {
  return text.trim().split(/\r?\n/).slice(-3).join(' | ').slice(0, 500);
}

/** Rotates the order of the tools per repetition, so no tool always runs first (warm) or right
 * after the heaviest one. */
export function rotated<T>(items: readonly T[], repetition: number): T[] {
  if (items.length === 0) return [];
  const k = repetition % items.length;
  return [...items.slice(k), ...items.slice(0, k)];
}
