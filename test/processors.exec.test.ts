import { readFileSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, realpath, rm, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { RoboflowError } from '../src/errors.js';
import { createExecProcessor, runExec, type ExecOptions } from '../src/processors/exec.js';
import type { JobRecord } from '../src/types.js';

const CHILD = fileURLToPath(new URL('./fixtures/processors-exec-child.mjs', import.meta.url));

function makeJob(args: Record<string, unknown>, inputs: string[] = []): JobRecord {
  const now = new Date();
  return {
    id: 'job-42',
    key: 'job-42',
    priority: 0,
    inputs: inputs.map((p) => ({ url: `file://${p}` })),
    output: null,
    processor: 'exec',
    args,
    status: 'running',
    attempts: 1,
    maxAttempts: 3,
    leaseOwner: 'w1',
    leaseExpiresAt: now,
    lastError: null,
    result: null,
    commitAttempt: null,
    runAt: now,
    createdAt: now,
    updatedAt: now,
  };
}

/** Runs `command` with `inputPaths` and returns the thrown error (fails if nothing is thrown). */
async function runFailing(
  command: unknown,
  inputPaths: string[],
  outputDir: string,
  opts: ExecOptions = {},
  signal: AbortSignal = new AbortController().signal,
): Promise<RoboflowError> {
  const err = await runExec({ job: makeJob({ command }, inputPaths), inputPaths, outputDir, signal }, opts).then(
    () => null,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(RoboflowError);
  return err as RoboflowError;
}

/** True while the process exists and is not a zombie waiting to be reaped. */
function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ESRCH') return false;
    throw err;
  }
  try {
    const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1] ?? '';
    return !fields.startsWith('Z');
  } catch {
    return false;
  }
}

async function waitFor<T>(probe: () => Promise<T | null> | T | null, what: string, timeoutMs = 20_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== null) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

async function readPids(pidfile: string): Promise<number[]> {
  const text = await waitFor(() => readFile(pidfile, 'utf8').catch(() => null), 'the child to write its pids');
  return text.trim().split(' ').map(Number);
}

let dir: string;
let outputDir: string;
const started: number[] = [];

beforeEach(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'roboflow-'));
  outputDir = path.join(dir, 'out');
  await mkdir(outputDir);
});

afterEach(async () => {
  for (const pid of started.splice(0)) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // Already gone, as it should be.
    }
  }
  await rm(dir, { recursive: true, force: true });
});

describe('exec placeholders', () => {
  it('passes hostile input paths as single literal argv elements, never through a shell', async () => {
    const hostile = [
      path.join(dir, 'with space.mcap'),
      path.join(dir, 'semi;colon && echo pwned.mcap'),
      path.join(dir, '$(rm -rf ~)', 'dollar.mcap'),
      path.join(dir, '`id` backtick.mcap'),
      path.join(dir, `quotes ' " \\ {output} {job}.mcap`),
      '-rf',
    ];
    const command = [
      process.execPath,
      CHILD,
      'record',
      'argv.json',
      '{input}',
      '--in={input}',
      '--out={output}/x',
      'job={job}',
      '{inputs}',
      'literal;$(echo no)',
    ];
    const job = makeJob({ command }, hostile);
    const result = await runExec({ job, inputPaths: hostile, outputDir, signal: new AbortController().signal });
    expect(result).toEqual({ exitCode: 0, stdoutTail: '' });

    const recorded = JSON.parse(await readFile(path.join(outputDir, 'argv.json'), 'utf8')) as { args: string[]; cwd: string };
    expect(recorded.args).toEqual([
      hostile[0],
      `--in=${hostile[0]}`,
      `--out=${outputDir}/x`,
      'job=job-42',
      ...hostile,
      'literal;$(echo no)',
    ]);
    // The placeholder text inside an input path stayed literal (one pass, no re-substitution).
    expect(recorded.args).toContain(hostile[4]);
    expect(recorded.cwd).toBe(await realpath(outputDir));
    // Nothing the "commands" in the names would have done happened.
    await expect(stat(path.join(dir, '$(rm -rf ~)'))).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it('lets an operator choose sh, which still receives the input as a positional argument', async () => {
    const input = path.join(dir, 'a; echo INJECTED > injected.txt');
    const command = ['sh', '-c', 'printf %s "$1" > seen.txt', 'sh', '{input}'];
    await runExec({ job: makeJob({ command }, [input]), inputPaths: [input], outputDir, signal: new AbortController().signal });
    expect(await readFile(path.join(outputDir, 'seen.txt'), 'utf8')).toBe(input);
    await expect(stat(path.join(outputDir, 'injected.txt'))).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it('expands {inputs} to one element per input, and to nothing for a job without inputs', async () => {
    const inputs = ['/a/1.mcap', '/b/2 two.mcap', '/c/3.mcap'];
    const command = [process.execPath, CHILD, 'record', 'argv.json', 'pre', '{inputs}', 'post'];
    await runExec({ job: makeJob({ command }, inputs), inputPaths: inputs, outputDir, signal: new AbortController().signal });
    const withInputs = JSON.parse(await readFile(path.join(outputDir, 'argv.json'), 'utf8')) as { args: string[] };
    expect(withInputs.args).toEqual(['pre', ...inputs, 'post']);

    await runExec({ job: makeJob({ command }, []), inputPaths: [], outputDir, signal: new AbortController().signal });
    const without = JSON.parse(await readFile(path.join(outputDir, 'argv.json'), 'utf8')) as { args: string[] };
    expect(without.args).toEqual(['pre', 'post']);
  });

  it('rejects bad commands with ERR_CONFIG naming the job', async () => {
    for (const command of [undefined, 'gzip {input}', [], [1, 2], ['ok', 3], ['']]) {
      const err = await runFailing(command, ['/x'], outputDir);
      expect(err.code).toBe('ERR_CONFIG');
      expect(err.message).toContain('job-42');
      expect(err.retryable).toBe(false);
    }
    const embedded = await runFailing([process.execPath, '--files={inputs}'], ['/x'], outputDir);
    expect(embedded.code).toBe('ERR_CONFIG');
    expect(embedded.message).toContain('{inputs}');

    const programFromData = await runFailing(['{input}', '-v'], ['/tmp/evil'], outputDir);
    expect(programFromData.code).toBe('ERR_CONFIG');
    expect(programFromData.message).toContain('program');

    const noInput = await runFailing([process.execPath, '{input}'], [], outputDir);
    expect(noInput.code).toBe('ERR_CONFIG');
    expect(noInput.message).toContain('no inputs');
  });
});

describe('exec outcomes', () => {
  it('returns exit code 0 and a bounded stdout tail', async () => {
    const processor = createExecProcessor();
    expect(processor.name).toBe('exec');
    const command = [process.execPath, CHILD, 'chatter'];
    const result = (await processor.run({
      job: makeJob({ command }),
      inputPaths: [],
      outputDir,
      signal: new AbortController().signal,
    })) as { exitCode: number; stdoutTail: string };
    expect(result.exitCode).toBe(0);
    expect(result.stdoutTail.endsWith('STDOUT-END\n')).toBe(true);
    expect(Buffer.byteLength(result.stdoutTail)).toBeLessThanOrEqual(2048);
    expect(result.stdoutTail).not.toContain('EARLY-LINE-0 ');
  });

  it('fails with ERR_PROCESSOR carrying the exit code and only the tail of stderr', async () => {
    const err = await runFailing([process.execPath, CHILD, 'fail', '3'], [], outputDir);
    expect(err.code).toBe('ERR_PROCESSOR');
    expect(err.retryable).toBe(true);
    expect(err.message).toContain('job-42');
    expect(err.message).toContain('code 3');
    expect(err.message).toContain('LAST-LINE-MARKER');
    expect(err.message).not.toContain('EARLY-LINE-0 ');
    // ~10 KiB were written; the message holds about 2 KiB of them.
    expect(err.message.length).toBeLessThan(2048 + 600);
  });

  it('fails non-retryably, naming the program, when it does not exist', async () => {
    const err = await runFailing(['roboflow-no-such-program-xyz', '{input}'], ['/x'], outputDir);
    expect(err.code).toBe('ERR_PROCESSOR');
    expect(err.retryable).toBe(false);
    expect(err.message).toContain('roboflow-no-such-program-xyz');
    expect(err.message).toContain('not found');
  });

  it('stops a program that exceeds its time limit, escalating to SIGKILL, grandchildren included', async () => {
    const pidfile = path.join(dir, 'pids');
    // The limit leaves the child ample time to start on a busy machine and write its pids.
    const pending = runFailing([process.execPath, CHILD, 'hang', pidfile, 'stubborn'], [], outputDir, {
      timeoutMs: 3000,
      killGraceMs: 300,
    });
    const pids = await readPids(pidfile);
    started.push(...pids);
    const err = await pending;
    expect(err.code).toBe('ERR_PROCESSOR');
    expect(err.message).toContain('timed out after 3000 ms');
    for (const pid of pids) await waitFor(() => (isAlive(pid) ? null : true), `process ${pid} to be gone`);
  });

  it('stops the program when the signal aborts, with ERR_ABORTED', async () => {
    const pidfile = path.join(dir, 'pids');
    const ac = new AbortController();
    const pending = runFailing([process.execPath, CHILD, 'hang', pidfile], [], outputDir, {}, ac.signal);
    const pids = await readPids(pidfile);
    started.push(...pids);
    ac.abort();
    const err = await pending;
    expect(err.code).toBe('ERR_ABORTED');
    for (const pid of pids) await waitFor(() => (isAlive(pid) ? null : true), `process ${pid} to be gone`);
  });

  it('does not start at all when the signal is already aborted', async () => {
    const ac = new AbortController();
    ac.abort();
    const err = await runFailing([process.execPath, CHILD, 'record', 'argv.json'], [], outputDir, {}, ac.signal);
    expect(err.code).toBe('ERR_ABORTED');
    await expect(stat(path.join(outputDir, 'argv.json'))).rejects.toMatchObject({ code: 'ENOENT' });
  });
});

describe('exec environment', () => {
  const saved: Record<string, string | undefined> = {};
  const secrets = {
    AWS_SECRET_ACCESS_KEY: 'aws-secret-for-test',
    AWS_ACCESS_KEY_ID: 'aws-id-for-test',
    OSS_ACCESS_KEY_SECRET: 'oss-secret-for-test',
    ROBOFLOW_TEST_PASSED: 'passed-through',
  };
  beforeEach(() => {
    for (const [k, v] of Object.entries(secrets)) {
      saved[k] = process.env[k];
      process.env[k] = v;
    }
  });
  afterEach(() => {
    for (const k of Object.keys(secrets)) {
      if (saved[k] === undefined) delete process.env[k];
      else process.env[k] = saved[k];
    }
  });

  async function recordedEnv(opts: ExecOptions, inputs: string[] = ['/in/a.mcap', '/in/b.mcap']): Promise<Record<string, string>> {
    const command = [process.execPath, CHILD, 'record', 'env.json'];
    await runExec({ job: makeJob({ command }, inputs), inputPaths: inputs, outputDir, signal: new AbortController().signal }, opts);
    return (JSON.parse(await readFile(path.join(outputDir, 'env.json'), 'utf8')) as { env: Record<string, string> }).env;
  }

  it('gives the program a scrubbed environment without storage credentials', async () => {
    const env = await recordedEnv({});
    expect(env['AWS_SECRET_ACCESS_KEY']).toBeUndefined();
    expect(env['AWS_ACCESS_KEY_ID']).toBeUndefined();
    expect(env['OSS_ACCESS_KEY_SECRET']).toBeUndefined();
    expect(env['ROBOFLOW_TEST_PASSED']).toBeUndefined();
    expect(env['PATH']).toBe(process.env['PATH']);
    expect(env['ROBOFLOW_JOB_ID']).toBe('job-42');
    expect(env['ROBOFLOW_OUTPUT_DIR']).toBe(outputDir);
    expect(env['ROBOFLOW_INPUTS']).toBe('/in/a.mcap\n/in/b.mcap');
    const allowed = new Set(['PATH', 'HOME', 'LANG', 'LC_ALL', 'TZ', 'TMPDIR', 'ROBOFLOW_JOB_ID', 'ROBOFLOW_OUTPUT_DIR', 'ROBOFLOW_INPUTS']);
    // Node may add nothing of its own to a child's environment; anything else leaked.
    expect(Object.keys(env).filter((k) => !allowed.has(k))).toEqual([]);
  });

  it('passes exactly the variables the operator lists in passEnv', async () => {
    const env = await recordedEnv({ passEnv: ['ROBOFLOW_TEST_PASSED', 'AWS_SECRET_ACCESS_KEY', 'NOT_SET_ANYWHERE_XYZ'] });
    expect(env['ROBOFLOW_TEST_PASSED']).toBe('passed-through');
    expect(env['AWS_SECRET_ACCESS_KEY']).toBe('aws-secret-for-test');
    expect(env['AWS_ACCESS_KEY_ID']).toBeUndefined();
    expect('NOT_SET_ANYWHERE_XYZ' in env).toBe(false);
  });

  it('reads passed variables from opts.env when given, not from process.env', async () => {
    const env = await recordedEnv({ env: { PATH: process.env['PATH'], ROBOFLOW_TEST_PASSED: 'from-opts' }, passEnv: ['ROBOFLOW_TEST_PASSED'] });
    expect(env['ROBOFLOW_TEST_PASSED']).toBe('from-opts');
    expect(env['HOME']).toBeUndefined();
  });
});
