/**
 * Running system commands for the scenarios that need the machine's help: `mount` for a small
 * tmpfs, `initdb` and `pg_ctl` for a private PostgreSQL cluster. No shell: arguments are passed
 * as they are. Commands that must not run as root (PostgreSQL) run as another user through
 * `runuser` when this process is root.
 */

import { spawn } from 'node:child_process';
import { RoboflowError } from '../src/errors.js';

export interface CommandResult {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stdout: string;
  readonly stderr: string;
}

export interface CommandOptions {
  /** Killed (SIGKILL) after this long. (Default: 60 s) */
  readonly timeoutMs?: number;
  /** Run as this user (through `runuser -u`) when this process is root. */
  readonly asUser?: string;
  readonly cwd?: string;
}

/** Output kept per stream: enough for an error message, bounded for a chatty command. */
const MAX_OUTPUT = 64 * 1024;

/**
 * Runs `command args...` and resolves when it exits, whatever its exit code. Resolves on exit,
 * not on the streams closing: a daemon the command starts (pg_ctl starts postgres) may keep them
 * open, so output is read only while the command itself runs.
 */
export function runCommand(command: string, args: readonly string[], opts: CommandOptions = {}): Promise<CommandResult> {
  const asRoot = typeof process.getuid === 'function' && process.getuid() === 0;
  const [file, argv] = opts.asUser !== undefined && asRoot ? ['runuser', ['-u', opts.asUser, '--', command, ...args]] : [command, [...args]];
  return new Promise((resolve, reject) => {
    const child = spawn(file, argv, { stdio: ['ignore', 'pipe', 'pipe'], ...(opts.cwd !== undefined ? { cwd: opts.cwd } : {}) });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => {
      if (stdout.length < MAX_OUTPUT) stdout += d;
    });
    child.stderr.setEncoding('utf8').on('data', (d: string) => {
      if (stderr.length < MAX_OUTPUT) stderr += d;
    });
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 60_000);
    child.once('error', (err) => {
      clearTimeout(timer);
      reject(new RoboflowError('ERR_CONFIG', `cannot run ${file}: ${err.message}`, { cause: err }));
    });
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      // Whatever the command wrote before exiting is in the pipes; the daemon's is not ours.
      child.stdout.destroy();
      child.stderr.destroy();
      resolve({ code, signal, stdout, stderr });
    });
  });
}

/** Runs a command and throws `ERR_IO` with its output when it does not exit 0. */
export async function mustRun(command: string, args: readonly string[], opts: CommandOptions = {}): Promise<CommandResult> {
  const r = await runCommand(command, args, opts);
  if (r.code !== 0) {
    const output = `${r.stderr}${r.stdout}`.trim().split('\n').slice(-5).join(' | ');
    throw new RoboflowError('ERR_IO', `${command} ${args.join(' ')} failed (${r.code ?? r.signal}): ${output}`);
  }
  return r;
}
