// The security settings as configuration: the keys, their layers, and every bad value refused at
// load time with the key and where it came from; the worker's rules for exec jobs that follow.
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Command } from 'commander';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { addConfigFlags, configFromCommand } from '../src/cli/config-flags.js';
import { configReference } from '../src/config/describe.js';
import { loadConfig, policyFromConfig } from '../src/config/load.js';
import { DEFAULTS } from '../src/defaults.js';
import { RoboflowError } from '../src/errors.js';
import { openQueue } from '../src/jobs/index.js';
import { execTemplateFor, parseExecCommand } from '../src/processors/index.js';
import type { JobQueue, JobRecord } from '../src/types.js';
import { Worker, type WorkerSettings } from '../src/worker.js';

let dir: string;

beforeEach(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'roboflow-'));
});

afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function configError(p: Promise<unknown>): Promise<RoboflowError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  if (!(err instanceof RoboflowError)) throw new Error(`expected ERR_CONFIG, got ${String(err)}`);
  expect(err.code).toBe('ERR_CONFIG');
  return err;
}

async function fromFlags(args: string[], env: NodeJS.ProcessEnv = {}) {
  const cmd = new Command('worker').exitOverride();
  addConfigFlags(cmd);
  let parsed!: Command;
  cmd.action((_opts: unknown, c: Command) => {
    parsed = c;
  });
  await cmd.parseAsync(args, { from: 'user' });
  return configFromCommand(parsed, { env, cwd: dir });
}

describe('security keys in the configuration', () => {
  it('have defaults in DEFAULTS that keep a single machine working, and show in the reference', async () => {
    const { config, sources } = await loadConfig({ env: {}, cwd: dir });
    expect(config).toMatchObject({
      allowSources: [],
      allowOutputs: [],
      allowPrivateRanges: [],
      processors: [],
      execCommand: null,
      allowJobCommands: null,
    });
    expect(sources.allowPrivateRanges).toEqual({ layer: 'default', detail: 'DEFAULTS' });
    expect(DEFAULTS.allowPrivateRanges).toEqual([]);
    const rows = Object.fromEntries(configReference().map((r) => [r.key, r]));
    expect(rows.allowPrivateRanges).toMatchObject({ env: 'ROBOFLOW_ALLOW_PRIVATE_RANGES', flag: '--allow-private-range <cidr>' });
    expect(rows.processors).toMatchObject({ env: 'ROBOFLOW_PROCESSORS', flag: '--processor <name>' });
    expect(rows.execCommand).toMatchObject({ env: 'ROBOFLOW_EXEC_COMMAND', flag: '--exec-command <command>' });
    expect(rows.allowJobCommands).toMatchObject({ env: 'ROBOFLOW_ALLOW_JOB_COMMANDS', flag: '--allow-job-commands, --no-allow-job-commands' });
    expect(rows.allowJobCommands?.description).toContain('automatic');
    // With nothing set the policy lets everything through and refuses no address.
    expect(policyFromConfig(config).summary()).toEqual({ sources: 'any', outputs: 'any', privateAddresses: 'allowed', allowPrivateRanges: [] });
  });

  it('read private ranges from a file, the environment (comma-separated) and repeated flags', async () => {
    const cfg = path.join(dir, 'roboflow.toml');
    await writeFile(cfg, 'allowPrivateRanges = ["10.0.0.0/8"]\nprocessors = ["checksum"]\n');
    const file = await loadConfig({ configPath: cfg, env: {}, cwd: dir });
    expect(file.config.allowPrivateRanges).toEqual(['10.0.0.0/8']);
    expect(file.config.processors).toEqual(['checksum']);
    const env = await loadConfig({ env: { ROBOFLOW_ALLOW_PRIVATE_RANGES: '10.0.0.0/8, fd00::/8' }, cwd: dir });
    expect(env.config.allowPrivateRanges).toEqual(['10.0.0.0/8', 'fd00::/8']);
    expect(env.sources.allowPrivateRanges).toEqual({ layer: 'env', detail: 'ROBOFLOW_ALLOW_PRIVATE_RANGES' });
    const flags = await fromFlags([
      '--allow-private-range', '10.0.0.0/8',
      '--allow-private-range', '192.168.0.0/16',
      '--processor', 'exec',
      '--processor', 'checksum',
      '--exec-command', "ffmpeg -i {input} '{output}/out file.mp4'",
      '--no-allow-job-commands',
    ]);
    expect(flags.config).toMatchObject({
      allowPrivateRanges: ['10.0.0.0/8', '192.168.0.0/16'],
      processors: ['exec', 'checksum'],
      execCommand: "ffmpeg -i {input} '{output}/out file.mp4'",
      allowJobCommands: false,
    });
    expect(flags.sources.allowPrivateRanges).toEqual({ layer: 'flag', detail: '--allow-private-range' });
    const policy = policyFromConfig(flags.config);
    expect(policy.summary()).toMatchObject({ privateAddresses: 'refused', allowPrivateRanges: ['10.0.0.0/8', '192.168.0.0/16'] });
  });

  it('refuse bad patterns, blocks, processors and commands at load, naming key and source of each', async () => {
    const cfg = path.join(dir, 'roboflow.toml');
    await writeFile(cfg, 'allowOutputs = ["s3://results/no-star/"]\nexecCommand = "{input} --evil"\n');
    const err = await configError(
      loadConfig({
        configPath: cfg,
        env: { ROBOFLOW_ALLOW_SOURCES: 's3://recordings/raw/../*', ROBOFLOW_PROCESSORS: 'checksum,shell' },
        flags: { allowPrivateRanges: ['10.0.0.1/8'] },
        cwd: dir,
      }),
    );
    const lines = err.message.split('\n').slice(1);
    expect(lines).toHaveLength(5);
    const line = (key: string) => lines.find((l) => l.includes(`- ${key}:`)) ?? '';
    expect(line('allowSources')).toContain('environment variable ROBOFLOW_ALLOW_SOURCES');
    expect(line('allowSources')).toContain('".." path segment');
    expect(line('allowOutputs')).toContain(`file ${cfg} (key allowOutputs)`);
    expect(line('allowOutputs')).toContain('must end in "*"');
    expect(line('allowPrivateRanges')).toContain('flag --allow-private-range');
    expect(line('allowPrivateRanges')).toContain('did you mean 10.0.0.0/8');
    expect(line('processors')).toContain('environment variable ROBOFLOW_PROCESSORS');
    expect(line('processors')).toContain('unknown processor "shell"');
    expect(line('execCommand')).toContain(`file ${cfg} (key execCommand)`);
    expect(line('execCommand')).toContain('placeholder in the program name');
  });

  it('parse an exec command without a shell, like `jobs submit --exec`, and refuse what cannot run', () => {
    expect(parseExecCommand(`sh -c 'echo "$1" > x' sh {input}`)).toEqual(['sh', '-c', 'echo "$1" > x', 'sh', '{input}']);
    expect(parseExecCommand('gzip -k {inputs}')).toEqual(['gzip', '-k', '{inputs}']);
    expect(parseExecCommand('echo $HOME; rm -rf ~ `id`')).toEqual(['echo', '$HOME;', 'rm', '-rf', '~', '`id`']);
    for (const [line, why] of [
      ["ffmpeg -i '{input}", 'unterminated'],
      ['{input}', 'placeholder in the program name'],
      ['cat --files={inputs}', 'whole argument'],
      ['   ', 'empty'],
    ] as const) {
      expect(() => parseExecCommand(line), line).toThrow(why);
    }
  });
});

describe('exec rules on a worker (judged before anything is downloaded)', () => {
  let queue: JobQueue;

  beforeEach(async () => {
    queue = await openQueue('sqlite::memory:');
  });

  afterEach(async () => {
    await queue.close();
  });

  function job(args: Record<string, unknown>, processor = 'exec'): JobRecord {
    return {
      id: '7',
      key: '7',
      priority: 0,
      inputs: [{ url: 's3://recordings/raw/a.mcap' }],
      output: null,
      processor,
      args,
      status: 'claimed',
      attempts: 0,
      maxAttempts: 3,
      leaseOwner: 'w',
      leaseExpiresAt: null,
      lastError: null,
      result: null,
      commitAttempt: null,
      runAt: new Date(),
      createdAt: new Date(),
      updatedAt: new Date(),
    };
  }

  function worker(config: Partial<WorkerSettings>): Worker {
    return new Worker({ queue, config });
  }

  const cmd = { command: ['sh', '-c', 'cat ~/.ssh/id_rsa'] };
  const denied = (w: Worker, j: JobRecord) => {
    try {
      w.checkJob(j);
      return null;
    } catch (err) {
      expect((err as RoboflowError).code).toBe('ERR_POLICY_DENIED');
      expect((err as RoboflowError).retryable).toBe(false);
      return (err as RoboflowError).message;
    }
  };

  it('single machine (no allowlists): job commands run, as `roboflow jobs submit --exec` expects', () => {
    expect(denied(worker({}), job(cmd))).toBeNull();
  });

  it('a fleet (allowSources set): job commands are refused unless allowJobCommands is true', () => {
    const fleet = { allowSources: ['s3://recordings/raw/*'] };
    expect(denied(worker(fleet), job(cmd))).toContain('does not run commands that jobs bring');
    expect(denied(worker({ ...fleet, allowJobCommands: true }), job(cmd))).toBeNull();
    expect(denied(worker({ allowJobCommands: false }), job(cmd))).toContain('--allow-job-commands');
    // Other processors are untouched by the exec rules.
    expect(denied(worker(fleet), job({}, 'checksum'))).toBeNull();
  });

  it('an operator command runs for jobs without one or with exactly it; a different one is refused', () => {
    const w = worker({ allowSources: ['s3://recordings/raw/*'], execCommand: 'gzip -k {input}' });
    expect(denied(w, job({}))).toBeNull();
    expect(denied(w, job({ command: ['gzip', '-k', '{input}'] }))).toBeNull();
    expect(denied(w, job(cmd))).toContain('differs from the command this worker runs');
    expect(denied(w, job({ command: 'gzip -k {input}' }))).toContain('differs');
    expect(execTemplateFor(job({}), { command: ['gzip', '-k', '{input}'] })).toEqual(['gzip', '-k', '{input}']);
  });

  it('processors: only the listed ones, and the allowlists apply to every job', () => {
    const w = worker({ processors: ['checksum'], allowSources: ['s3://recordings/raw/*'] });
    expect(denied(w, job({}, 'checksum'))).toBeNull();
    expect(denied(w, job(cmd))).toContain('processor "exec" is not run by this worker');
    expect(denied(w, { ...job({}, 'checksum'), inputs: [{ url: 'file:///home/worker/.aws/credentials' }] })).toContain('is not an allowed source');
  });
});
