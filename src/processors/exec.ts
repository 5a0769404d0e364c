/**
 * The `exec` processor: runs a program on a job's inputs.
 *
 * Which command runs
 * ------------------
 * - With an operator command (`ExecOptions.command`, from `--exec-command`), every exec job runs
 *   that argv template. A job that carries a different `args.command` is refused with
 *   `ERR_POLICY_DENIED` (not retryable) rather than silently run with another program than it
 *   asked for; a job with no command, or with exactly the operator's, runs it.
 * - Without one, the job's own `args.command` runs, but only while `allowJobCommands` is on;
 *   otherwise the job is refused with `ERR_POLICY_DENIED`. Whoever may submit such a job may run
 *   any program as the worker's user, so a fleet turns it off (see SECURITY.md).
 *
 * A command is an argv array, never a shell line: `['gzip', '-k', '{input}']`. Placeholders
 * are replaced by plain string substitution inside elements, in one pass (a substituted value is
 * never scanned again), and the program is started with `spawn(argv[0], argv.slice(1),
 * { shell: false })`. An input path full of `;`, `$(...)`, quotes or spaces therefore reaches the
 * program as one literal argument; nothing from a job can become shell syntax.
 *
 * Placeholders:
 * - `{input}`: the first input's local path.
 * - `{inputs}`: one argv element per input path; only allowed as a whole element.
 * - `{output}`: the output directory (also the working directory).
 * - `{job}`: the job id.
 *
 * The program sees a scrubbed environment: `PATH`, `HOME`, `LANG`, `LC_ALL`, `TZ`, `TMPDIR`, the
 * variables the operator listed in `passEnv`, and `ROBOFLOW_JOB_ID`, `ROBOFLOW_OUTPUT_DIR`,
 * `ROBOFLOW_INPUTS` (input paths, newline separated). Storage credentials (`AWS_*`, `OSS_*`) are
 * never passed unless listed: a job's program has no business writing to our buckets.
 *
 * The program runs in its own process group. When it is stopped (time limit or abort) the whole
 * group gets SIGTERM, then SIGKILL after a grace period; when it exits, whatever it left running
 * in its group is killed, so nothing a job started outlives the job.
 */

import { spawn, type ChildProcess } from 'node:child_process';
import { stat } from 'node:fs/promises';
import { DEFAULTS } from '../defaults.js';
import { abortError, RoboflowError } from '../errors.js';
import { splitCommand } from '../jobs/spec.js';
import type { JobRecord, Processor, ProcessorContext } from '../types.js';

export interface ExecOptions {
  /** Time limit of one run; the program is stopped when it is exceeded. (Default: 1 h) */
  readonly timeoutMs?: number;
  /** Time between SIGTERM and SIGKILL when the program is stopped. (Default: 5 s) */
  readonly killGraceMs?: number;
  /**
   * Names of further environment variables the program may see (e.g. `CUDA_VISIBLE_DEVICES`).
   * Listing a credential variable here is the only way it reaches the program. (Default: none)
   */
  readonly passEnv?: readonly string[];
  /** The environment the passed variables are read from. (Default: `process.env`) */
  readonly env?: NodeJS.ProcessEnv;
  /**
   * The operator's argv template (see `parseExecCommand`). When set, every exec job runs it and a
   * job carrying a different `args.command` is refused. (Default: none; jobs bring their command)
   */
  readonly command?: readonly string[];
  /**
   * Whether a job's own `args.command` may run when there is no operator `command`. Off refuses
   * such jobs with `ERR_POLICY_DENIED`. The worker decides the default from its policy; the
   * library keeps the behaviour it always had. (Default: true)
   */
  readonly allowJobCommands?: boolean;
}

/** Where the operator sets the exec switches, for messages. */
export const EXEC_COMMAND_SETTING = '--exec-command (ROBOFLOW_EXEC_COMMAND)';
export const ALLOW_JOB_COMMANDS_SETTING = '--allow-job-commands (ROBOFLOW_ALLOW_JOB_COMMANDS)';

/** What a successful run returns; stored on the job. */
export interface ExecResult {
  readonly exitCode: 0;
  /** The last bytes the program wrote to stdout (at most `TAIL_BYTES`). */
  readonly stdoutTail: string;
}

/**
 * Bytes of stdout/stderr kept for the result and error messages. Enough for the last lines of a
 * tool's complaint; small enough to store in a job row and print in a log line. A program that
 * writes gigabytes of logs costs only this much memory.
 */
const TAIL_BYTES = 2048;

/** After the program exits, how long its stdio may stay open (held by something it started)
 * before the pipes are closed from our side. */
const STDIO_DRAIN_MS = 1_000;

/** Variables every program gets from the worker's environment, when they are set. */
const BASE_ENV = ['PATH', 'HOME', 'LANG', 'LC_ALL', 'TZ', 'TMPDIR'] as const;

const PLACEHOLDER = /\{(input|inputs|output|job)\}/g;
const HAS_PLACEHOLDER = /\{(input|inputs|output|job)\}/;

/** Keeps the last `max` bytes written to it, however much is written. */
class TailBuffer {
  readonly #max: number;
  #chunks: Buffer[] = [];
  #length = 0;

  constructor(max: number) {
    this.#max = max;
  }

  push(chunk: Buffer): void {
    if (chunk.length >= this.#max) {
      this.#chunks = [Buffer.from(chunk.subarray(chunk.length - this.#max))];
      this.#length = this.#max;
      return;
    }
    this.#chunks.push(chunk);
    this.#length += chunk.length;
    while (this.#length > this.#max) {
      const first = this.#chunks[0]!;
      const excess = this.#length - this.#max;
      if (first.length <= excess) {
        this.#chunks.shift();
        this.#length -= first.length;
      } else {
        this.#chunks[0] = first.subarray(excess);
        this.#length -= excess;
      }
    }
  }

  /** The kept bytes as text; a multi-byte character cut at the start is dropped. */
  text(): string {
    return Buffer.concat(this.#chunks).toString('utf8').replace(/^\uFFFD+/, '');
  }
}

/** Why an argv template cannot run, or undefined. */
function templateProblem(argv: readonly string[]): string | undefined {
  const program = argv[0];
  if (program === undefined || program === '') return 'names no program';
  // Data must never choose the program: a placeholder in argv[0] would run an input file.
  if (HAS_PLACEHOLDER.test(program)) return 'has a placeholder in the program name; name the program itself';
  for (const element of argv.slice(1)) {
    if (element !== '{inputs}' && element.includes('{inputs}')) {
      return `uses {inputs} inside ${JSON.stringify(element)}; it must be a whole argument (it becomes one argument per input)`;
    }
  }
  return undefined;
}

/**
 * Parses an operator's command line (`ffmpeg -i {input} {output}/out.mp4`) into an argv
 * template, without a shell, with the splitter `roboflow jobs submit --exec` uses
 * (`splitCommand`): white space separates, quotes group, nothing is expanded. Throws `ERR_CONFIG`
 * naming `setting` when it cannot run.
 */
export function parseExecCommand(line: string, setting: string = EXEC_COMMAND_SETTING): string[] {
  let argv: string[];
  try {
    argv = splitCommand(line);
  } catch (err) {
    throw new RoboflowError('ERR_CONFIG', `${setting}: ${(err as Error).message}`, { cause: err });
  }
  const problem = templateProblem(argv);
  if (problem !== undefined) throw new RoboflowError('ERR_CONFIG', `${setting}: the command ${problem}`);
  return argv;
}

function sameArgv(a: readonly unknown[], b: readonly string[]): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

/**
 * The argv template an exec job runs under `opts`: the operator's command, or the job's own when
 * that is allowed. Throws `ERR_POLICY_DENIED` (not retryable) when the job may not run: it
 * carries a command other than the operator's, or it carries one and job commands are off.
 * Run it before anything is downloaded for the job, and again before it runs.
 */
export function execTemplateFor(job: Pick<JobRecord, 'id' | 'args'>, opts: Pick<ExecOptions, 'command' | 'allowJobCommands'> = {}): readonly unknown[] | undefined {
  const jobCommand = job.args['command'];
  if (opts.command !== undefined) {
    if (jobCommand !== undefined && !(Array.isArray(jobCommand) && sameArgv(jobCommand, opts.command))) {
      const program = Array.isArray(jobCommand) && typeof jobCommand[0] === 'string' ? ` (program ${JSON.stringify(jobCommand[0])})` : '';
      throw new RoboflowError(
        'ERR_POLICY_DENIED',
        `job ${job.id}: exec args.command${program} differs from the command this worker runs (${EXEC_COMMAND_SETTING}, ` +
          `program ${JSON.stringify(opts.command[0])}); this worker runs only its operator's command, so submit the job ` +
          `without a command, or with exactly that one`,
      );
    }
    return opts.command;
  }
  if (opts.allowJobCommands === false) {
    throw new RoboflowError(
      'ERR_POLICY_DENIED',
      `job ${job.id}: this worker does not run commands that jobs bring (job commands are off because a source ` +
        `allowlist is set, or by ${ALLOW_JOB_COMMANDS_SETTING}); the operator can give the worker a command of its ` +
        `own with ${EXEC_COMMAND_SETTING}, or allow job commands with --allow-job-commands`,
    );
  }
  return Array.isArray(jobCommand) ? jobCommand : undefined;
}

/**
 * The argv after placeholder substitution. The template is `command` when given (the operator's),
 * else the job's `args.command`. Throws `ERR_CONFIG` naming the job on bad args.
 */
export function buildArgv(job: JobRecord, inputPaths: readonly string[], outputDir: string, command?: readonly unknown[]): string[] {
  const template = command ?? job.args['command'];
  if (!Array.isArray(template) || template.length === 0 || !template.every((c) => typeof c === 'string')) {
    throw new RoboflowError(
      'ERR_CONFIG',
      `job ${job.id}: exec needs args.command, a non-empty array of strings (argv, program first), ` +
        `e.g. ["gzip", "-k", "{input}"]`,
    );
  }
  const argv = template as string[];
  const program = argv[0]!;
  if (program === '') throw new RoboflowError('ERR_CONFIG', `job ${job.id}: exec args.command[0] (the program) is empty`);
  // Data must never choose the program: a placeholder in argv[0] would run an input file.
  if (HAS_PLACEHOLDER.test(program)) {
    throw new RoboflowError(
      'ERR_CONFIG',
      `job ${job.id}: exec args.command[0] (the program) may not contain a placeholder; name the program itself`,
    );
  }

  const out: string[] = [program];
  for (const element of argv.slice(1)) {
    if (element === '{inputs}') {
      out.push(...inputPaths);
      continue;
    }
    const replaced = element.replace(PLACEHOLDER, (_match, name: string) => {
      switch (name) {
        case 'input': {
          const first = inputPaths[0];
          if (first === undefined) {
            throw new RoboflowError('ERR_CONFIG', `job ${job.id}: exec args.command uses {input} but the job has no inputs`);
          }
          return first;
        }
        case 'output':
          return outputDir;
        case 'job':
          return job.id;
        default:
          // Only {inputs} is left, and it is not the whole element here.
          throw new RoboflowError(
            'ERR_CONFIG',
            `job ${job.id}: exec placeholder {inputs} must be a whole argv element (it becomes one element per input), found in ${JSON.stringify(element)}`,
          );
      }
    });
    out.push(replaced);
  }
  return out;
}

/** The scrubbed environment of the program. */
export function buildEnv(
  job: JobRecord,
  inputPaths: readonly string[],
  outputDir: string,
  opts: Pick<ExecOptions, 'passEnv' | 'env'>,
): Record<string, string> {
  const source = opts.env ?? process.env;
  const env: Record<string, string> = {};
  for (const name of [...BASE_ENV, ...(opts.passEnv ?? [])]) {
    const value = source[name];
    if (value !== undefined) env[name] = value;
  }
  env['ROBOFLOW_JOB_ID'] = job.id;
  env['ROBOFLOW_OUTPUT_DIR'] = outputDir;
  env['ROBOFLOW_INPUTS'] = inputPaths.join('\n');
  return env;
}

/** Signals the program's whole process group; falls back to the program alone. */
function killGroup(child: ChildProcess, signal: NodeJS.Signals): void {
  if (child.pid === undefined) return;
  try {
    process.kill(-child.pid, signal);
  } catch {
    // ESRCH: the group is gone already. Anything else: at least try the program itself.
    try {
      child.kill(signal);
    } catch {
      // Already exited.
    }
  }
}

function stderrSuffix(tail: string): string {
  const t = tail.trimEnd();
  return t === '' ? ' (stderr was empty)' : `; stderr tail:\n${t}`;
}

/** Runs one job's command. Resolves with `ExecResult`; throws `RoboflowError` otherwise. */
export async function runExec(ctx: ProcessorContext, opts: ExecOptions = {}): Promise<ExecResult> {
  checkOptions(opts);
  const { job, inputPaths, outputDir, signal } = ctx;
  const argv = buildArgv(job, inputPaths, outputDir, execTemplateFor(job, opts));
  const env = buildEnv(job, inputPaths, outputDir, opts);
  const timeoutMs = opts.timeoutMs ?? DEFAULTS.execTimeoutMs;
  const killGraceMs = opts.killGraceMs ?? DEFAULTS.execKillGraceMs;
  const program = argv[0]!;
  const what = `job ${job.id}: exec ${JSON.stringify(program)}`;

  if (signal.aborted) throw abortError(signal, what);
  // Checked here because a missing cwd makes spawn fail with ENOENT, which would read as
  // "program not found".
  const dirStat = await stat(outputDir).catch(() => null);
  if (!dirStat?.isDirectory()) {
    throw new RoboflowError('ERR_IO', `${what}: output directory ${outputDir} does not exist or is not a directory`);
  }

  let child: ChildProcess;
  try {
    child = spawn(program, argv.slice(1), {
      shell: false,
      cwd: outputDir,
      env,
      stdio: ['ignore', 'pipe', 'pipe'],
      // Own process group, so a stop reaches everything the program started.
      detached: true,
    });
  } catch (err) {
    // Synchronous failures are argument problems, e.g. a NUL byte in an element.
    throw new RoboflowError('ERR_CONFIG', `${what}: cannot start: ${(err as Error).message}`, { cause: err });
  }

  const stdout = new TailBuffer(TAIL_BYTES);
  const stderr = new TailBuffer(TAIL_BYTES);
  child.stdout!.on('data', (chunk: Buffer) => stdout.push(chunk));
  child.stderr!.on('data', (chunk: Buffer) => stderr.push(chunk));

  return await new Promise<ExecResult>((resolve, reject) => {
    let stopReason: 'timeout' | 'abort' | null = null;
    let exited = false;
    let settled = false;
    let killTimer: NodeJS.Timeout | undefined;
    let drainTimer: NodeJS.Timeout | undefined;

    const stop = (reason: 'timeout' | 'abort'): void => {
      // Once the program has exited its result stands; a late stop would only mislabel it.
      if (stopReason !== null || exited || settled) return;
      stopReason = reason;
      killGroup(child, 'SIGTERM');
      killTimer = setTimeout(() => killGroup(child, 'SIGKILL'), killGraceMs);
    };
    const onAbort = (): void => stop('abort');
    const limitTimer = setTimeout(() => stop('timeout'), timeoutMs);
    signal.addEventListener('abort', onAbort, { once: true });

    const finish = (outcome: { ok: ExecResult } | { err: RoboflowError }): void => {
      if (settled) return;
      settled = true;
      clearTimeout(limitTimer);
      clearTimeout(killTimer);
      clearTimeout(drainTimer);
      signal.removeEventListener('abort', onAbort);
      if ('ok' in outcome) resolve(outcome.ok);
      else reject(outcome.err);
    };

    child.on('error', (err: NodeJS.ErrnoException) => {
      // Emitted when the program could not be started (then no 'exit' follows), or when
      // signalling it failed; the latter is handled by 'close'.
      if (child.pid !== undefined) return;
      if (err.code === 'ENOENT') {
        finish({
          err: new RoboflowError(
            'ERR_PROCESSOR',
            `${what}: program not found — install it or give its full path (looked in PATH=${env['PATH'] ?? '(unset)'})`,
            { cause: err, retryable: false },
          ),
        });
      } else if (err.code === 'EACCES') {
        finish({
          err: new RoboflowError('ERR_PROCESSOR', `${what}: program is not executable (EACCES)`, {
            cause: err,
            retryable: false,
          }),
        });
      } else {
        finish({ err: new RoboflowError('ERR_PROCESSOR', `${what}: cannot start: ${err.message}`, { cause: err }) });
      }
    });

    child.once('exit', () => {
      exited = true;
      // Whatever the program left behind in its group goes with it.
      killGroup(child, 'SIGKILL');
      // Something outside the group may still hold the pipes; do not wait for it forever.
      drainTimer = setTimeout(() => {
        child.stdout?.destroy();
        child.stderr?.destroy();
      }, STDIO_DRAIN_MS);
    });

    child.once('close', (code: number | null, sig: NodeJS.Signals | null) => {
      if (child.pid === undefined) return; // spawn failed; 'error' settles.
      switch (stopReason) {
        case 'abort':
          finish({ err: abortError(signal, what) });
          return;
        case 'timeout':
          finish({
            err: new RoboflowError(
              'ERR_PROCESSOR',
              `${what} timed out after ${timeoutMs} ms and was stopped${stderrSuffix(stderr.text())}`,
            ),
          });
          return;
        case null:
          break;
        default: {
          const _exhaustive: never = stopReason;
          return _exhaustive;
        }
      }
      if (code === 0) {
        finish({ ok: { exitCode: 0, stdoutTail: stdout.text() } });
        return;
      }
      const how = code !== null ? `exited with code ${code}` : `was killed by ${sig ?? 'a signal'}`;
      finish({ err: new RoboflowError('ERR_PROCESSOR', `${what} ${how}${stderrSuffix(stderr.text())}`) });
    });
  });
}

/** Longest delay `setTimeout` honours; a larger one would fire at once. */
const MAX_TIMER_MS = 2_147_483_647;

function checkOptions(opts: ExecOptions): void {
  for (const key of ['timeoutMs', 'killGraceMs'] as const) {
    const v = opts[key];
    if (v !== undefined && (!Number.isFinite(v) || v <= 0 || v > MAX_TIMER_MS)) {
      throw new RoboflowError('ERR_CONFIG', `exec option ${key} must be between 1 and ${MAX_TIMER_MS} ms, got ${v}`);
    }
  }
  for (const name of opts.passEnv ?? []) {
    if (typeof name !== 'string' || !/^[A-Za-z_][A-Za-z0-9_]*$/.test(name)) {
      throw new RoboflowError('ERR_CONFIG', `exec option passEnv: ${JSON.stringify(name)} is not an environment variable name`);
    }
  }
  if (opts.command !== undefined) {
    const problem = Array.isArray(opts.command) && opts.command.every((c) => typeof c === 'string') ? templateProblem(opts.command) : 'is not a list of strings';
    if (problem !== undefined) throw new RoboflowError('ERR_CONFIG', `exec option command ${problem}`);
  }
}

/** The `exec` processor with these options; bad options fail here, when the worker starts. */
export function createExecProcessor(opts: ExecOptions = {}): Processor {
  checkOptions(opts);
  return {
    name: 'exec',
    run: (ctx) => runExec(ctx, opts),
  };
}
