/**
 * Loading the configuration: the layers DEFAULTS < config file < environment < flags (see
 * src/config.ts) are read, each value parsed with its field's schema, and every problem collected
 * into one `ERR_CONFIG` naming key, value, source and what is allowed. Also what the library
 * takes from a loaded configuration (prefetch settings, security policy, storage options).
 */

import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { parse as parseToml } from 'smol-toml';
import { z } from 'zod';
import { configFileSchema, configSchema, displayValue, FIELDS, flagName, KEYS, shape, type Config, type ConfigKey } from '../config.js';
import { RoboflowError } from '../errors.js';
import { redactUrl } from '../redact.js';
import { compilePolicy, type PolicyOptions, type SecurityPolicy } from '../security/policy.js';
import type { PrefetchConfig, StorageOptions } from '../types.js';
import { hostLanes } from '../prefetch/concurrency.js';

export type ConfigLayer = 'default' | 'file' | 'env' | 'flag';

export interface ConfigSource {
  readonly layer: ConfigLayer;
  /** `DEFAULTS`, the file path, the environment variable or the flag that set the value. */
  readonly detail: string;
}

export interface LoadedConfig {
  readonly config: Config;
  readonly sources: Readonly<Record<ConfigKey, ConfigSource>>;
  /** Absolute path of the config file read, or null. */
  readonly configFile: string | null;
}

/** A flag value as commander hands it over (strings, booleans, repeated flags as arrays). */
export type FlagValue = string | number | boolean | readonly string[] | null;

export interface LoadConfigOptions {
  /** Parsed command-line values keyed by config key; undefined entries are ignored. */
  readonly flags?: Partial<Record<ConfigKey, FlagValue | undefined>>;
  /** Flag names for messages, where they differ from the standard flags (`--chunk-size`). */
  readonly flagNames?: Partial<Record<ConfigKey, string>>;
  /** Default `process.env`. */
  readonly env?: NodeJS.ProcessEnv;
  /** Resolves relative paths. Default `process.cwd()`. */
  readonly cwd?: string;
  /** The `--config` value; else `ROBOFLOW_CONFIG` from `env`; else no file. */
  readonly configPath?: string;
}

/** The environment variable that names a config file. */
export const CONFIG_ENV = 'ROBOFLOW_CONFIG';

interface Problem {
  readonly keys: readonly ConfigKey[];
  readonly line: string;
}

interface RawEntry {
  readonly value: unknown;
  readonly source: ConfigSource;
  /** How the value is named in messages: `file x.toml (key chunkSize)`, `environment variable X`. */
  readonly where: string;
}

/** A raw value as messages quote it: JSON, with URL passwords and signatures removed. */
function show(v: unknown): string {
  const clean = typeof v === 'string' ? redactUrl(v) : Array.isArray(v) ? v.map((x: unknown) => (typeof x === 'string' ? redactUrl(x) : x)) : v;
  return JSON.stringify(clean) ?? String(v);
}


/** The closest known key to a mistyped one, or undefined when nothing is close. */
export function closestKey(unknownKey: string): ConfigKey | undefined {
  const norm = (s: string) => s.toLowerCase().replace(/[-_\s]/g, '');
  const target = norm(unknownKey);
  const exactish = KEYS.find((k) => norm(k) === target || norm(k).startsWith(target) || target.startsWith(norm(k)));
  if (exactish !== undefined && target.length >= 3) return exactish;
  let best: ConfigKey | undefined;
  let bestDistance = Infinity;
  for (const k of KEYS) {
    const d = levenshtein(target, norm(k));
    if (d < bestDistance) {
      bestDistance = d;
      best = k;
    }
  }
  return bestDistance <= Math.max(2, Math.floor(target.length / 3)) ? best : undefined;
}

function levenshtein(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const row = [i];
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      row.push(Math.min((prev[j] ?? 0) + 1, (row[j - 1] ?? 0) + 1, (prev[j - 1] ?? 0) + cost));
    }
    prev = row;
  }
  return prev[b.length] ?? 0;
}

async function readConfigFile(file: string, origin: string): Promise<Record<string, unknown>> {
  const ext = path.extname(file).toLowerCase();
  if (ext !== '.toml' && ext !== '.json') {
    throw new RoboflowError('ERR_CONFIG', `config file ${file} (${origin}) must end in .toml or .json`);
  }
  let body: string;
  try {
    body = await readFile(file, 'utf8');
  } catch (err) {
    const code = (err as { code?: string }).code;
    const why = code === 'ENOENT' ? 'does not exist' : `cannot be read (${code ?? String(err)})`;
    throw new RoboflowError('ERR_CONFIG', `config file ${file} (${origin}) ${why}`, { cause: err });
  }
  let parsed: unknown;
  try {
    parsed = ext === '.toml' ? parseToml(body) : JSON.parse(body);
  } catch (err) {
    const message = (err as Error).message.split('\n')[0];
    throw new RoboflowError('ERR_CONFIG', `config file ${file} (${origin}) is not valid ${ext === '.toml' ? 'TOML' : 'JSON'}: ${message}`, {
      cause: err,
    });
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    throw new RoboflowError('ERR_CONFIG', `config file ${file} (${origin}) must hold a table of keys, e.g. chunkSize = "8MiB"`);
  }
  return parsed as Record<string, unknown>;
}

/**
 * Parses one layer's raw values with the field schemas. Valid values go into `values` and
 * `sources`; each invalid one adds a problem naming the key, the value and where it came from.
 */
function applyLayer(
  entries: Partial<Record<ConfigKey, RawEntry>>,
  values: Record<string, unknown>,
  sources: Record<string, ConfigSource>,
  problems: Problem[],
  resolveDir: string,
): void {
  const raw: Record<string, unknown> = {};
  for (const key of KEYS) if (entries[key] !== undefined) raw[key] = entries[key].value;
  const parsed = z.object(shape).partial().safeParse(raw);
  const bad = new Set<ConfigKey>();
  for (const issue of parsed.error?.issues ?? []) {
    const key = issue.path[0] as ConfigKey;
    const entry = entries[key];
    if (bad.has(key) || entry === undefined) continue;
    bad.add(key);
    problems.push({
      keys: [key],
      line: `${key}: ${show(entry.value)} from ${entry.where} ${issue.message}; allowed: ${FIELDS[key].allowed}`,
    });
  }
  // A partial object fails as a whole; parse the good keys one by one to keep them.
  for (const key of KEYS) {
    const entry = entries[key];
    if (entry === undefined || bad.has(key)) continue;
    const one = FIELDS[key].schema.safeParse(entry.value);
    if (!one.success) continue;
    values[key] = key === 'bufferDir' ? path.resolve(resolveDir, one.data as string) : one.data;
    sources[key] = entry.source;
  }
}

/**
 * Builds the configuration from DEFAULTS, the config file, the environment and flags, in that
 * order. Throws one `ERR_CONFIG` listing every problem.
 */
export async function loadConfig(opts: LoadConfigOptions = {}): Promise<LoadedConfig> {
  const env = opts.env ?? process.env;
  const cwd = opts.cwd ?? process.cwd();
  const values: Record<string, unknown> = {};
  const sources: Record<string, ConfigSource> = {};
  const problems: Problem[] = [];

  const defaults: Partial<Record<ConfigKey, RawEntry>> = {};
  for (const key of KEYS) {
    defaults[key] = { value: FIELDS[key].default, source: { layer: 'default', detail: 'DEFAULTS' }, where: 'the defaults' };
  }
  applyLayer(defaults, values, sources, problems, cwd);

  // File.
  const envConfig = env[CONFIG_ENV];
  const fileArg = opts.configPath ?? (envConfig !== undefined && envConfig !== '' ? envConfig : undefined);
  const origin = opts.configPath !== undefined ? 'from --config' : `from ${CONFIG_ENV}`;
  let configFile: string | null = null;
  if (fileArg !== undefined) {
    configFile = path.resolve(cwd, fileArg);
    const body = await readConfigFile(configFile, origin);
    const checked = configFileSchema.safeParse(body);
    for (const issue of checked.error?.issues ?? []) {
      if (issue.code !== 'unrecognized_keys') continue;
      for (const k of issue.keys) {
        const near = closestKey(k);
        problems.push({
          keys: [],
          line: `${k}: unknown key in file ${configFile}${near ? `; did you mean ${near}?` : `; known keys: ${KEYS.join(', ')}`}`,
        });
      }
    }
    const fileEntries: Partial<Record<ConfigKey, RawEntry>> = {};
    for (const key of KEYS) {
      if (Object.hasOwn(body, key)) {
        fileEntries[key] = {
          value: body[key],
          source: { layer: 'file', detail: configFile },
          where: `file ${configFile} (key ${key})`,
        };
      }
    }
    applyLayer(fileEntries, values, sources, problems, path.dirname(configFile));
  }

  // Environment.
  const envEntries: Partial<Record<ConfigKey, RawEntry>> = {};
  for (const key of KEYS) {
    const name = FIELDS[key].env;
    const v = env[name];
    if (v !== undefined && v !== '') {
      envEntries[key] = { value: v, source: { layer: 'env', detail: name }, where: `environment variable ${name}` };
    }
  }
  applyLayer(envEntries, values, sources, problems, cwd);

  // Flags.
  const flagEntries: Partial<Record<ConfigKey, RawEntry>> = {};
  for (const key of KEYS) {
    const v = opts.flags?.[key];
    if (v === undefined) continue;
    const name = opts.flagNames?.[key] ?? flagName(key) ?? `option ${key}`;
    flagEntries[key] = { value: v, source: { layer: 'flag', detail: name }, where: `flag ${name}` };
  }
  applyLayer(flagEntries, values, sources, problems, cwd);

  // Cross-field rules, skipped for keys that already have a problem (their value is not the one
  // the operator meant).
  const badKeys = new Set(problems.flatMap((p) => p.keys));
  const whole = configSchema.safeParse(values);
  for (const issue of whole.error?.issues ?? []) {
    const keys = ((issue as { params?: { keys?: ConfigKey[] } }).params?.keys ?? [issue.path[0] as ConfigKey]).filter(
      (k) => k !== undefined,
    );
    if (keys.some((k) => badKeys.has(k))) continue;
    const parts = keys.map((k) => `${k} = ${displayValue(k, values[k])} (${describeSource(sources[k])})`);
    problems.push({ keys, line: `${issue.message}: ${parts.join(', ')}` });
  }

  // Each list was checked on its own above; compiling the whole policy once more keeps the load
  // and the worker in agreement about what is valid.
  if (problems.length === 0 && whole.success) {
    try {
      policyFromConfig(whole.data);
    } catch (err) {
      const keys: ConfigKey[] = ['allowSources', 'allowOutputs', 'allowPrivateRanges'];
      const parts = keys.map((k) => `${k} (${describeSource(sources[k])})`);
      problems.push({ keys, line: `the security policy does not compile: ${(err as Error).message}; from ${parts.join(', ')}` });
    }
  }

  if (problems.length > 0 || !whole.success) {
    const lines = problems.map((p) => `  - ${p.line}`);
    throw new RoboflowError(
      'ERR_CONFIG',
      `invalid configuration (${problems.length} problem${problems.length === 1 ? '' : 's'}):\n${lines.join('\n')}`,
    );
  }
  return {
    config: whole.data,
    sources: sources as Record<ConfigKey, ConfigSource>,
    configFile,
  };
}

/** Where a value came from, as one phrase (`file /etc/roboflow.toml`, `env ROBOFLOW_CHUNK_SIZE`). */
export function describeSource(s: ConfigSource | undefined): string {
  if (s === undefined) return 'unknown';
  switch (s.layer) {
    case 'default':
      return 'default';
    case 'file':
      return `file ${s.detail}`;
    case 'env':
      return `env ${s.detail}`;
    case 'flag':
      return `flag ${s.detail}`;
    default: {
      const _exhaustive: never = s.layer;
      return _exhaustive;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Conversions for the library
// ---------------------------------------------------------------------------------------------

/** The prefetch queue's view of the configuration. */
export function prefetchConfigFrom(config: Config): PrefetchConfig {
  return {
    slots: config.slots,
    downloadConnections: config.downloadConnections,
    chunkSize: config.chunkSize,
    bufferDir: config.bufferDir,
    bufferBudgetBytes: config.bufferBudgetBytes,
  };
}

/**
 * The security policy the configuration describes (allowlists and private ranges). Throws
 * `ERR_CONFIG` for a bad pattern; `loadConfig` has already refused those, naming key and source.
 */
export function policyFromConfig(
  config: Pick<Config, 'allowSources' | 'allowOutputs' | 'allowPrivateRanges'>,
  opts: Pick<PolicyOptions, 'resolve' | 'refusePrivate'> = {},
): SecurityPolicy {
  return compilePolicy({
    allowSources: config.allowSources,
    allowOutputs: config.allowOutputs,
    allowPrivateRanges: config.allowPrivateRanges,
    ...opts,
  });
}

/** What storage sources and sinks take from the configuration. */
export function storageOptionsFrom(config: Config, env: NodeJS.ProcessEnv = process.env): StorageOptions {
  return {
    ...(config.endpoint !== null ? { endpoint: config.endpoint } : {}),
    ...(config.region !== null ? { region: config.region } : {}),
    ...(config.forcePathStyle !== null ? { forcePathStyle: config.forcePathStyle } : {}),
    // Sockets per origin for every slot's lanes and their look-ahead requests (or the host-wide
    // limit's): one pool of `downloadConnections` made the slots take turns.
    maxConnections: hostLanes(config).sockets,
    headersTimeoutMs: config.headersTimeoutMs,
    env,
  };
}

