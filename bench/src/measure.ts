/**
 * Runs one tool as a child process and measures it: wall time on the bench's monotonic clock,
 * user + system CPU and peak RSS from GNU time (`/usr/bin/time -o FILE -f '%e %U %S %M'`), so
 * every tool, roboflow included, is measured the same way from outside.
 *
 * Each child runs in its own process group; a run that outlives its time limit is killed with
 * its whole group (time, the tool and anything the tool started).
 */

import { spawn } from 'node:child_process';
import { readFile, rm } from 'node:fs/promises';
import { constants } from 'node:os';
import type { Measurement } from './results.js';
import { parseTimeOutput, TIME_FORMAT } from './results.js';

export const TIME_BINARY = '/usr/bin/time';

/** Output kept per stream: enough for an error message, bounded for chatty tools. */
const OUTPUT_TAIL_BYTES = 64 * 1024;

export interface RunOptions {
  readonly env?: NodeJS.ProcessEnv;
  readonly cwd?: string;
  readonly timeoutMs: number;
  readonly signal?: AbortSignal;
}

export interface CommandResult {
  readonly exitCode: number | null;
  readonly signal: string | null;
  readonly stdout: string;
  readonly stderr: string;
  readonly wallSeconds: number;
  readonly timedOut: boolean;
  /** Why the command could not be started (ENOENT...), if it could not. */
  readonly spawnError?: string;
}

export interface MeasuredResult extends CommandResult {
  readonly measurement: Measurement;
}

class Tail {
  private chunks: Buffer[] = [];
  private size = 0;
  push(chunk: Buffer): void {
    this.chunks.push(chunk);
    this.size += chunk.length;
    while (this.size > OUTPUT_TAIL_BYTES && this.chunks.length > 1) this.size -= this.chunks.shift()!.length;
  }
  toString(): string {
    return Buffer.concat(this.chunks).toString('utf8');
  }
}

/** Runs a command to completion, capturing the tail of its output. Never throws for the
 * command's own failure: the result says what happened. */
export function runCommand(cmd: string, args: readonly string[], opts: RunOptions): Promise<CommandResult> {
  return new Promise((resolve) => {
    const started = process.hrtime.bigint();
    const out = new Tail();
    const err = new Tail();
    let timedOut = false;
    let spawnError: string | undefined;
    let wallSeconds = 0;
    const child = spawn(cmd, [...args], {
      env: opts.env ?? process.env,
      cwd: opts.cwd,
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true,
    });
    const killGroup = (): void => {
      if (child.pid === undefined || child.exitCode !== null || child.signalCode !== null) return;
      try {
        process.kill(-child.pid, 'SIGKILL');
      } catch {
        // The group is already gone.
      }
    };
    const timer = setTimeout(() => {
      timedOut = true;
      killGroup();
    }, opts.timeoutMs);
    const onAbort = (): void => killGroup();
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    child.stdout.on('data', (c: Buffer) => out.push(c));
    child.stderr.on('data', (c: Buffer) => err.push(c));
    child.on('error', (e) => {
      spawnError = e.message;
    });
    child.on('exit', () => {
      wallSeconds = Number(process.hrtime.bigint() - started) / 1e9;
    });
    child.on('close', (code, sig) => {
      clearTimeout(timer);
      opts.signal?.removeEventListener('abort', onAbort);
      if (wallSeconds === 0) wallSeconds = Number(process.hrtime.bigint() - started) / 1e9;
      resolve({
        exitCode: code,
        signal: sig,
        stdout: out.toString(),
        stderr: err.toString(),
        wallSeconds,
        timedOut,
        ...(spawnError !== undefined ? { spawnError } : {}),
      });
    });
  });
}

function signalName(n: number): string {
  const entry = Object.entries(constants.signals).find(([, v]) => v === n);
  return entry ? entry[0] : `signal ${n}`;
}

/**
 * Runs `cmd args` under GNU time. `timeFile` is where time writes its line (a fresh path in the
 * bench's scratch directory); it is removed afterwards.
 */
export async function runMeasured(
  cmd: string,
  args: readonly string[],
  timeFile: string,
  opts: RunOptions,
): Promise<MeasuredResult> {
  const res = await runCommand(TIME_BINARY, ['-o', timeFile, '-f', TIME_FORMAT, cmd, ...args], opts);
  const text = await readFile(timeFile, 'utf8').catch(() => '');
  await rm(timeFile, { force: true });
  const parsed = parseTimeOutput(text);
  const measurement: Measurement = {
    wallSeconds: res.wallSeconds,
    userSeconds: parsed?.userSeconds ?? Number.NaN,
    sysSeconds: parsed?.sysSeconds ?? Number.NaN,
    maxRssKiB: parsed?.maxRssKiB ?? Number.NaN,
    // time reports the tool's status; when time itself was killed (timeout), the group was.
    exitCode: parsed ? parsed.exitCode : res.exitCode,
    signal: parsed?.signal != null ? signalName(parsed.signal) : res.signal,
  };
  return { ...res, measurement };
}
