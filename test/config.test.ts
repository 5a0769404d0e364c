import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Command } from 'commander';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { addConfigFlags, configFromCommand } from '../src/cli/config-flags.js';
import { parseListenAddress } from '../src/config.js';
import { configReference, describeConfig, renderConfigReference } from '../src/config/describe.js';
import { closestKey, loadConfig, prefetchConfigFrom, storageOptionsFrom } from '../src/config/load.js';
import { DEFAULTS } from '../src/defaults.js';
import { RoboflowError } from '../src/errors.js';
import { describeFull } from './tier.js';

let dir: string;

beforeEach(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'roboflow-'));
});

afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function file(name: string, body: string): Promise<string> {
  const p = path.join(dir, name);
  await writeFile(p, body);
  return p;
}

async function configError(promise: Promise<unknown>): Promise<RoboflowError> {
  const err = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(RoboflowError);
  expect((err as RoboflowError).code).toBe('ERR_CONFIG');
  return err as RoboflowError;
}

describe('loadConfig layers', () => {
  it('uses DEFAULTS when nothing is set, with bufferDir resolved against cwd', async () => {
    const { config, sources, configFile } = await loadConfig({ env: {}, cwd: dir });
    expect(configFile).toBeNull();
    expect(config.slots).toBe(DEFAULTS.slots);
    expect(config.chunkSize).toBe(DEFAULTS.chunkSize);
    expect(config.leaseMs).toBe(DEFAULTS.leaseMs);
    expect(config.queue).toBe(DEFAULTS.queue);
    expect(config.bufferBudgetBytes).toBeNull();
    expect(config.metricsAddr).toBeNull();
    expect(config.endpoint).toBeNull();
    expect(config.forcePathStyle).toBeNull();
    expect(config.allowSources).toEqual([]);
    expect(config.bufferDir).toBe(path.join(dir, DEFAULTS.bufferDir));
    for (const key of Object.keys(DEFAULTS)) {
      expect(sources[key as keyof typeof sources]).toEqual({ layer: 'default', detail: 'DEFAULTS' });
    }
  });

  it('orders default < file < env < flag, one key proven per layer', async () => {
    const cfg = await file(
      'roboflow.toml',
      [
        'slots = 5', // file wins over default
        'chunkSize = "16MiB"', // env beats file
        'leaseMs = "2m"', // flag beats env and file
        'downloadConnections = 4',
        'allowSources = ["s3://bkt-a/*", "s3://bkt-b/*"]',
      ].join('\n'),
    );
    const { config, sources } = await loadConfig({
      configPath: cfg,
      cwd: dir,
      env: { CHUNK_SIZE: '32MiB', ROBOFLOW_LEASE: '90s', ROBOFLOW_HEARTBEAT: '5s', ROBOFLOW_ALLOW_SOURCES: 's3://bkt-c/*, s3://bkt-d/*' },
      flags: { leaseMs: '3m', downloadConnections: '8' },
    });
    expect(config.maxAttempts).toBe(DEFAULTS.maxAttempts);
    expect(sources.maxAttempts.layer).toBe('default');
    expect(config.slots).toBe(5);
    expect(sources.slots).toEqual({ layer: 'file', detail: cfg });
    expect(config.chunkSize).toBe(32 * 2 ** 20);
    expect(sources.chunkSize).toEqual({ layer: 'env', detail: 'CHUNK_SIZE' });
    expect(config.heartbeatMs).toBe(5_000);
    expect(config.leaseMs).toBe(180_000);
    expect(sources.leaseMs).toEqual({ layer: 'flag', detail: '--lease' });
    expect(config.downloadConnections).toBe(8);
    expect(sources.downloadConnections).toEqual({ layer: 'flag', detail: '--connections' });
    // A later layer replaces a list rather than appending to it.
    expect(config.allowSources).toEqual(['s3://bkt-c/*', 's3://bkt-d/*']);
    expect(sources.allowSources.layer).toBe('env');
  });

  it('reads a JSON file named by ROBOFLOW_CONFIG, numbers and strings alike', async () => {
    const cfg = await file(
      'roboflow.json',
      JSON.stringify({
        chunkSize: 1048576,
        bufferBudgetBytes: '10GiB',
        stallTimeoutMs: '45s',
        headersTimeoutMs: 5000,
        metricsAddr: '9464',
        logLevel: 'DEBUG',
        forcePathStyle: true,
        endpoint: 'http://127.0.0.1:9000',
        bufferDir: 'buf',
        queue: 'postgres://root@127.0.0.1/test',
      }),
    );
    const { config, configFile, sources } = await loadConfig({ env: { ROBOFLOW_CONFIG: 'roboflow.json' }, cwd: dir });
    expect(configFile).toBe(cfg);
    expect(config.chunkSize).toBe(1_048_576);
    expect(config.bufferBudgetBytes).toBe(10 * 2 ** 30);
    expect(config.stallTimeoutMs).toBe(45_000);
    expect(config.headersTimeoutMs).toBe(5_000);
    expect(config.metricsAddr).toBe('9464');
    expect(config.logLevel).toBe('debug');
    expect(config.forcePathStyle).toBe(true);
    expect(config.endpoint).toBe('http://127.0.0.1:9000');
    expect(config.queue).toBe('postgres://root@127.0.0.1/test');
    expect(sources.queue.layer).toBe('file');
    expect(config.bufferDir).toBe(path.join(dir, 'buf'));
  });

  it('resolves a relative bufferDir in a file against the file, not the cwd', async () => {
    const sub = path.join(dir, 'etc');
    await import('node:fs/promises').then((fs) => fs.mkdir(sub));
    const cfg = path.join(sub, 'roboflow.toml');
    await writeFile(cfg, 'bufferDir = "cache"\n');
    const { config } = await loadConfig({ configPath: cfg, env: {}, cwd: dir });
    expect(config.bufferDir).toBe(path.join(sub, 'cache'));
    const fromEnv = await loadConfig({ env: { BUFFER_DIR: 'cache' }, cwd: dir });
    expect(fromEnv.config.bufferDir).toBe(path.join(dir, 'cache'));
  });

  it('lets none unset a nullable key in a later layer, and treats empty variables as unset', async () => {
    const cfg = await file('r.toml', 'bufferBudgetBytes = "2GiB"\nmetricsAddr = "0.0.0.0:9464"\n');
    const { config, sources } = await loadConfig({
      configPath: cfg,
      env: { ROBOFLOW_BUFFER_BUDGET: 'none', ROBOFLOW_METRICS_ADDR: '', PREFETCH_SLOTS: '' },
      cwd: dir,
    });
    expect(config.bufferBudgetBytes).toBeNull();
    expect(sources.bufferBudgetBytes.layer).toBe('env');
    expect(config.metricsAddr).toBe('0.0.0.0:9464');
    expect(config.slots).toBe(DEFAULTS.slots);
  });

  it('reads booleans and lists from the environment', async () => {
    const { config } = await loadConfig({
      env: { ROBOFLOW_FORCE_PATH_STYLE: 'yes', ROBOFLOW_ALLOW_OUTPUTS: 'file:///out/*,,s3://bkt-x/*' },
      cwd: dir,
    });
    expect(config.forcePathStyle).toBe(true);
    expect(config.allowOutputs).toEqual(['file:///out/*', 's3://bkt-x/*']);
  });
});

describe('loadConfig errors', () => {
  it('names the file and key of a bad size', async () => {
    const cfg = await file('roboflow.toml', 'chunkSize = "8XB"\n');
    const err = await configError(loadConfig({ configPath: cfg, env: {}, cwd: dir }));
    expect(err.message).toContain(`chunkSize: "8XB" from file ${cfg} (key chunkSize) is not a size`);
    expect(err.message).toMatch(/allowed: a size from 64 KiB to 5 GiB/);
  });

  it('names the environment variable of a bad value', async () => {
    const err = await configError(loadConfig({ env: { ROBOFLOW_STALL_TIMEOUT: 'soon' }, cwd: dir }));
    expect(err.message).toContain('stallTimeoutMs: "soon" from environment variable ROBOFLOW_STALL_TIMEOUT is not a duration');
    expect(err.message).toContain('30s');
  });

  it('names the flag of a bad value', async () => {
    const err = await configError(loadConfig({ env: {}, cwd: dir, flags: { chunkSize: '12 parsecs' } }));
    expect(err.message).toContain('chunkSize: "12 parsecs" from flag --chunk-size is not a size');
  });

  it('enforces ranges: chunk size, connections, slots', async () => {
    const err = await configError(
      loadConfig({
        env: { CHUNK_SIZE: '32KiB', DOWNLOAD_CONNECTIONS: '0', PREFETCH_SLOTS: '65' },
        cwd: dir,
        flags: {},
      }),
    );
    expect(err.message).toContain('chunkSize: "32KiB" from environment variable CHUNK_SIZE is below 64 KiB');
    expect(err.message).toContain('downloadConnections: "0" from environment variable DOWNLOAD_CONNECTIONS is below 1');
    expect(err.message).toContain('slots: "65" from environment variable PREFETCH_SLOTS is above 64');
    const big = await configError(loadConfig({ env: {}, cwd: dir, flags: { chunkSize: '6GiB', downloadConnections: '257' } }));
    expect(big.message).toContain('is above 5 GiB');
    expect(big.message).toContain('downloadConnections: "257" from flag --connections is above 256');
    const frac = await configError(loadConfig({ env: { PREFETCH_SLOTS: '1.5' }, cwd: dir }));
    expect(frac.message).toContain('is not a whole number');
  });

  it('rejects unknown keys in a file, suggesting the closest one', async () => {
    const cfg = await file('roboflow.toml', 'chunk_size = "8MiB"\nstallTimeout = "30s"\nzzzqqq = 1\n');
    const err = await configError(loadConfig({ configPath: cfg, env: {}, cwd: dir }));
    expect(err.message).toContain(`chunk_size: unknown key in file ${cfg}; did you mean chunkSize?`);
    expect(err.message).toContain(`stallTimeout: unknown key in file ${cfg}; did you mean stallTimeoutMs?`);
    expect(err.message).toMatch(/zzzqqq: unknown key in file .*; known keys: slots, downloadConnections/);
    expect(closestKey('heartbeat')).toBe('heartbeatMs');
    expect(closestKey('slost')).toBe('slots');
  });

  it('checks fields against each other, naming both values and their sources', async () => {
    const err = await configError(
      loadConfig({ env: { ROBOFLOW_HEARTBEAT: '20s' }, cwd: dir, flags: { leaseMs: '10s' } }),
    );
    expect(err.message).toContain('heartbeatMs must be shorter than leaseMs');
    expect(err.message).toContain('heartbeatMs = 20s (env ROBOFLOW_HEARTBEAT)');
    expect(err.message).toContain('leaseMs = 10s (flag --lease)');
    // Below the lease but inside its safety margin (a tenth): the worker would fence its own
    // jobs off between two heartbeats.
    const margin = await configError(loadConfig({ env: { ROBOFLOW_HEARTBEAT: '9500ms' }, cwd: dir, flags: { leaseMs: '10s' } }));
    expect(margin.message).toContain('less its safety margin');
    expect((await loadConfig({ env: { ROBOFLOW_HEARTBEAT: '8900ms' }, cwd: dir, flags: { leaseMs: '10s' } })).config.heartbeatMs).toBe(8_900);
    const retry = await configError(
      loadConfig({ env: { ROBOFLOW_RETRY_BASE_DELAY: '1m', ROBOFLOW_RETRY_MAX_DELAY: '1s' }, cwd: dir }),
    );
    expect(retry.message).toContain('retryBaseDelayMs must not exceed retryMaxDelayMs');
  });

  it('reads durability from the environment and refuses a mode it does not know', async () => {
    expect((await loadConfig({ env: {}, cwd: dir })).config.durability).toBe('disk');
    const { config, sources } = await loadConfig({ env: { ROBOFLOW_DURABILITY: 'process' }, cwd: dir });
    expect(config.durability).toBe('process');
    expect(sources.durability.layer).toBe('env');
    const err = await configError(loadConfig({ env: {}, cwd: dir, flags: { durability: 'none' } }));
    expect(err.message).toMatch(/durability: "none" from flag --durability is not one of the allowed values; allowed: one of disk, process/);
  });

  it('lists every problem at once, one per line', async () => {
    const cfg = await file('roboflow.json', JSON.stringify({ slots: -1, chunkSize: true, logLevel: 'loud', typo: 1 }));
    const err = await configError(
      loadConfig({
        configPath: cfg,
        env: { ROBOFLOW_LEASE: 'forever', ROBOFLOW_METRICS_ADDR: 'localhost:99999' },
        cwd: dir,
        flags: { forcePathStyle: 'maybe', endpoint: 'ftp://x' },
      }),
    );
    const lines = err.message.split('\n');
    expect(lines[0]).toBe('invalid configuration (8 problems):');
    expect(lines).toHaveLength(9);
    expect(err.message).toContain('slots: -1 from file');
    expect(err.message).toContain('chunkSize: true from file');
    expect(err.message).toMatch(/logLevel: "loud" from file .* is not one of the allowed values; allowed: one of fatal, error/);
    expect(err.message).toContain('typo: unknown key');
    expect(err.message).toContain('leaseMs: "forever" from environment variable ROBOFLOW_LEASE');
    expect(err.message).toContain('metricsAddr: "localhost:99999" from environment variable ROBOFLOW_METRICS_ADDR is not a listen address');
    expect(err.message).toContain('forcePathStyle: "maybe" from flag --path-style is not true or false');
    expect(err.message).toContain('endpoint: "ftp://x" from flag --endpoint is not an http(s) URL');
    // The cross-field rule is not checked against a lease that was never accepted.
    expect(err.message).not.toContain('heartbeatMs must be shorter');
  });

  it('catches a lease given in seconds by mistake', async () => {
    const err = await configError(loadConfig({ env: { ROBOFLOW_LEASE: '60' }, cwd: dir }));
    expect(err.message).toContain('leaseMs: "60" from environment variable ROBOFLOW_LEASE is shorter than 100ms');
  });

  it('refuses a lease longer than the job queues take (a day), naming the key', async () => {
    const err = await configError(loadConfig({ env: { ROBOFLOW_LEASE: '2d' }, cwd: dir }));
    expect(err.code).toBe('ERR_CONFIG');
    expect(err.message).toContain('leaseMs: "2d" from environment variable ROBOFLOW_LEASE is longer than 1d');
    expect((await loadConfig({ env: { ROBOFLOW_LEASE: '1d' }, cwd: dir })).config.leaseMs).toBe(86_400_000);
  });

  it('reports missing, unparsable and oddly named files', async () => {
    const missing = await configError(loadConfig({ configPath: 'nope.toml', env: {}, cwd: dir }));
    expect(missing.message).toContain(`config file ${path.join(dir, 'nope.toml')} (from --config) does not exist`);
    const viaEnv = await configError(loadConfig({ env: { ROBOFLOW_CONFIG: 'nope.json' }, cwd: dir }));
    expect(viaEnv.message).toContain('(from ROBOFLOW_CONFIG) does not exist');
    const toml = await file('bad.toml', 'slots = = 3\n');
    expect((await configError(loadConfig({ configPath: toml, env: {}, cwd: dir }))).message).toMatch(/is not valid TOML/);
    const json = await file('bad.json', '{ "slots": 3, }');
    expect((await configError(loadConfig({ configPath: json, env: {}, cwd: dir }))).message).toMatch(/is not valid JSON/);
    const arr = await file('arr.json', '[1, 2]');
    expect((await configError(loadConfig({ configPath: arr, env: {}, cwd: dir }))).message).toMatch(/must hold a table of keys/);
    const yaml = await file('r.yaml', 'slots: 3\n');
    expect((await configError(loadConfig({ configPath: yaml, env: {}, cwd: dir }))).message).toMatch(/must end in \.toml or \.json/);
  });
});

describe('describeConfig', () => {
  it('shows every value with its source, as text and JSON', async () => {
    const cfg = await file('r.toml', 'chunkSize = "16MiB"\n');
    const loaded = await loadConfig({ configPath: cfg, env: { ROBOFLOW_LEASE: '2m' }, cwd: dir, flags: { slots: 3 } });
    const { text, json } = describeConfig(loaded);
    expect(text).toContain(`config file: ${cfg}`);
    expect(text).toMatch(/^chunkSize\s+16 MiB\s+file .*r\.toml$/m);
    expect(text).toMatch(/^leaseMs\s+2m\s+env ROBOFLOW_LEASE$/m);
    expect(text).toMatch(/^slots\s+3\s+flag --slots$/m);
    expect(text).toMatch(/^maxAttempts\s+3\s+default$/m);
    expect(text).toMatch(/^bufferBudgetBytes\s+none\s+default$/m);
    expect(json.values.chunkSize).toEqual({ value: 16 * 2 ** 20, display: '16 MiB', source: { layer: 'file', detail: cfg } });
    expect(Object.keys(json.values)).toHaveLength(configReference().length);
    expect(JSON.parse(JSON.stringify(json))).toEqual(json);
  });

  it('masks passwords and signatures unless asked', async () => {
    const loaded = await loadConfig({
      env: {
        ROBOFLOW_QUEUE: 'postgres://worker:hunter2@db.internal:5432/jobs',
        ROBOFLOW_ENDPOINT: 'https://s3.example.com/?X-Amz-Signature=abcdef0123',
      },
      cwd: dir,
    });
    const { text, json } = describeConfig(loaded);
    const all = text + JSON.stringify(json);
    expect(all).not.toContain('hunter2');
    expect(all).not.toContain('abcdef0123');
    expect(text).toContain('postgres://worker:****@db.internal:5432/jobs');
    expect(json.values.endpoint.value).toBe('https://s3.example.com/?X-Amz-Signature=****');
    const shown = describeConfig(loaded, { showSecrets: true });
    expect(shown.text).toContain('hunter2');
  });
});

describe('flags', () => {
  function program(): { cmd: Command; ran: Promise<Command> } {
    const cmd = new Command('config').exitOverride();
    addConfigFlags(cmd);
    let resolve: (c: Command) => void = () => undefined;
    const ran = new Promise<Command>((r) => (resolve = r));
    cmd.action((_opts: unknown, c: Command) => resolve(c));
    return { cmd, ran };
  }

  it('adds the flags and reads them back into the config', async () => {
    const cfg = await file('r.toml', 'slots = 7\nregion = "eu-west-1"\n');
    const { cmd, ran } = program();
    await cmd.parseAsync(
      [
        '--config', cfg,
        '--connections', '12',
        '--chunk-size', '4MiB',
        '--buffer-budget', '20GB',
        '--lease', '2m',
        '--heartbeat', '10s',
        '--max-attempts', '5',
        '--stall-timeout', '15s',
        '--metrics-addr', '0',
        '--log-level', 'warn',
        '--endpoint', 'http://localhost:9000',
        '--path-style',
        '--allow-source', 's3://bkt-a/*',
        '--allow-source', 's3://bkt-b/*',
        '--allow-output', 'file:///tmp/out/*',
        '--queue', 'sqlite://jobs.db',
        '--buffer-dir', 'buf',
      ],
      { from: 'user' },
    );
    const loaded = await configFromCommand(await ran, { env: { PREFETCH_SLOTS: '4' }, cwd: dir });
    const c = loaded.config;
    expect(loaded.configFile).toBe(cfg);
    expect(c.slots).toBe(4);
    expect(c.region).toBe('eu-west-1');
    expect(c.downloadConnections).toBe(12);
    expect(c.chunkSize).toBe(4 * 2 ** 20);
    expect(c.bufferBudgetBytes).toBe(20e9);
    expect(c.leaseMs).toBe(120_000);
    expect(c.heartbeatMs).toBe(10_000);
    expect(c.maxAttempts).toBe(5);
    expect(c.stallTimeoutMs).toBe(15_000);
    expect(c.metricsAddr).toBe('0');
    expect(c.logLevel).toBe('warn');
    expect(c.endpoint).toBe('http://localhost:9000');
    expect(c.forcePathStyle).toBe(true);
    expect(c.allowSources).toEqual(['s3://bkt-a/*', 's3://bkt-b/*']);
    expect(c.allowOutputs).toEqual(['file:///tmp/out/*']);
    expect(c.queue).toBe('sqlite://jobs.db');
    expect(c.bufferDir).toBe(path.join(dir, 'buf'));
    expect(loaded.sources.allowSources).toEqual({ layer: 'flag', detail: '--allow-source' });
  });

  it('leaves absent flags to lower layers, and --no-path-style turns it off', async () => {
    const { cmd, ran } = program();
    await cmd.parseAsync(['--no-path-style'], { from: 'user' });
    const loaded = await configFromCommand(await ran, { env: { CHUNK_SIZE: '1MiB', ROBOFLOW_FORCE_PATH_STYLE: 'true' }, cwd: dir });
    expect(loaded.config.chunkSize).toBe(2 ** 20);
    expect(loaded.sources.chunkSize.layer).toBe('env');
    expect(loaded.config.forcePathStyle).toBe(false);
    expect(loaded.sources.forcePathStyle.layer).toBe('flag');
  });

  it('names the flag when a flag value is bad', async () => {
    const { cmd, ran } = program();
    await cmd.parseAsync(['--slots', 'many'], { from: 'user' });
    const err = await configError(configFromCommand(await ran, { env: {}, cwd: dir }));
    expect(err.message).toContain('slots: "many" from flag --slots is not a whole number');
  });
});

describe('helpers', () => {
  it('prefetchConfigFrom and storageOptionsFrom', async () => {
    const { config } = await loadConfig({ env: { ROBOFLOW_BUFFER_BUDGET: '1GiB', ROBOFLOW_REGION: 'oss-cn-hangzhou' }, cwd: dir });
    expect(prefetchConfigFrom(config)).toEqual({
      slots: DEFAULTS.slots,
      downloadConnections: DEFAULTS.downloadConnections,
      chunkSize: DEFAULTS.chunkSize,
      bufferDir: path.join(dir, DEFAULTS.bufferDir),
      bufferBudgetBytes: 2 ** 30,
    });
    const env = {};
    const storage = storageOptionsFrom(config, env);
    expect(storage).toEqual({
      region: 'oss-cn-hangzhou',
      // Every slot's lanes and their look-ahead requests: slots × connections × 2 sockets.
      maxConnections: DEFAULTS.slots * DEFAULTS.downloadConnections * 2,
      headersTimeoutMs: DEFAULTS.headersTimeoutMs,
      env,
    });
  });

  it('sizes the pools for every slot at full speed, or for the host-wide limit', async () => {
    const load = async (env: Record<string, string>) => (await loadConfig({ env, cwd: dir })).config;
    expect(storageOptionsFrom(await load({ PREFETCH_SLOTS: '3', DOWNLOAD_CONNECTIONS: '4' }), {}).maxConnections).toBe(3 * 4 * 2);
    // 0 slots still downloads one job at a time.
    expect(storageOptionsFrom(await load({ PREFETCH_SLOTS: '0', DOWNLOAD_CONNECTIONS: '4' }), {}).maxConnections).toBe(4 * 2);
    const limited = await load({ PREFETCH_SLOTS: '3', DOWNLOAD_CONNECTIONS: '4', ROBOFLOW_MAX_HOST_CONNECTIONS: '5' });
    expect(limited.maxHostConnections).toBe(5);
    expect(storageOptionsFrom(limited, {}).maxConnections).toBe(5 * 2);
    expect((await load({ ROBOFLOW_MAX_HOST_CONNECTIONS: 'none' })).maxHostConnections).toBeNull();
    const err = await configError(loadConfig({ env: { ROBOFLOW_MAX_HOST_CONNECTIONS: '0' }, cwd: dir }));
    expect(err.message).toContain('maxHostConnections: "0" from environment variable ROBOFLOW_MAX_HOST_CONNECTIONS is below 1');
  });

  it('parseListenAddress defaults to loopback', () => {
    expect(parseListenAddress('9464')).toEqual({ host: '127.0.0.1', port: 9464 });
    expect(parseListenAddress(':0')).toEqual({ host: '127.0.0.1', port: 0 });
    expect(parseListenAddress('0.0.0.0:9464')).toEqual({ host: '0.0.0.0', port: 9464 });
    expect(parseListenAddress('[::1]:80')).toEqual({ host: '::1', port: 80 });
    expect(parseListenAddress('localhost:1')).toEqual({ host: 'localhost', port: 1 });
    for (const bad of ['', 'x', '1:2:3', '70000', 'host:', '::1:80']) {
      expect(() => parseListenAddress(bad)).toThrow(RoboflowError);
    }
  });

  it('the reference table lists every key with its environment variable', () => {
    const rows = configReference();
    for (const key of Object.keys(DEFAULTS)) expect(rows.map((r) => r.key)).toContain(key);
    const md = renderConfigReference();
    expect(md).toContain('| `stallTimeoutMs` | `ROBOFLOW_STALL_TIMEOUT` | `--stall-timeout <duration>` | 30s |');
    expect(md).toContain('| `slots` | `PREFETCH_SLOTS` |');
    expect(md).toContain('`--path-style, --no-path-style`');
    expect(new Set(rows.map((r) => r.env)).size).toBe(rows.length);
  });
});

describeFull('roboflow config (compiled, in a child process)', () => {
  const fixture = new URL('./fixtures/config-cli.mjs', import.meta.url).pathname;

  function run(args: string[], env: NodeJS.ProcessEnv): Promise<{ code: number; stdout: string; stderr: string }> {
    return new Promise((resolve, reject) => {
      const child = execFile(process.execPath, [fixture, 'config', ...args], { env, cwd: dir }, (err, stdout, stderr) => {
        if (err && typeof err.code !== 'number') reject(err);
        else resolve({ code: child.exitCode ?? 0, stdout, stderr });
      });
    });
  }

  // Only what the child needs: a clean environment proves nothing leaks in from this one.
  const baseEnv = (): NodeJS.ProcessEnv => ({ PATH: process.env.PATH ?? '' });

  it('prints the table, JSON, and the reference', async () => {
    const cfg = await file('roboflow.toml', 'slots = 6\n');
    const table = await run(['--config', cfg, '--lease', '2m'], {
      ...baseEnv(),
      ROBOFLOW_QUEUE: 'postgres://w:s3cret-pass@db/jobs',
    });
    expect(table.code).toBe(0);
    expect(table.stdout).toMatch(/^slots\s+6\s+file /m);
    expect(table.stdout).toMatch(/^leaseMs\s+2m\s+flag --lease$/m);
    expect(table.stdout).toMatch(/^queue\s+postgres:\/\/w:\*\*\*\*@db\/jobs\s+env ROBOFLOW_QUEUE$/m);
    expect(table.stdout).not.toContain('s3cret-pass');

    const json = await run(['--json', '--slots', '1'], baseEnv());
    expect(json.code).toBe(0);
    const parsed = JSON.parse(json.stdout) as { values: Record<string, { value: unknown; source: { layer: string } }> };
    expect(parsed.values.slots).toMatchObject({ value: 1, source: { layer: 'flag' } });
    expect(parsed.values.bufferDir?.value).toBe(path.join(dir, '.roboflow-buffer'));

    const ref = await run(['--reference'], baseEnv());
    expect(ref.stdout).toContain('| `chunkSize` | `CHUNK_SIZE` | `--chunk-size <size>` | 8 MiB |');
  });

  it('lists every problem on stderr and exits 2', async () => {
    const res = await run(['--chunk-size', '1KB', '--connections', 'lots'], {
      ...baseEnv(),
      ROBOFLOW_ENDPOINT: 'ftp://user:hunter2@x/',
    });
    expect(res.code).toBe(2);
    expect(res.stdout).toBe('');
    expect(res.stderr).toContain('roboflow config: ERR_CONFIG: invalid configuration (3 problems):');
    expect(res.stderr).toContain('chunkSize: "1KB" from flag --chunk-size is below 64 KiB');
    expect(res.stderr).toContain('downloadConnections: "lots" from flag --connections is not a whole number');
    expect(res.stderr).toContain('endpoint: "ftp://user:REDACTED@x/" from environment variable ROBOFLOW_ENDPOINT');
    expect(res.stderr).not.toContain('hunter2');
  });
});
