/**
 * The configuration: one typed object, checked by one zod schema, layered
 *
 *     DEFAULTS (src/defaults.ts) < config file < environment < command-line flags
 *
 * - **Config file**: `--config <path>`, else `$ROBOFLOW_CONFIG`; TOML (`.toml`) or JSON (`.json`),
 *   flat, with the keys of `Config` in camelCase. Unknown keys are an error (typo protection)
 *   that names the closest known key. A relative `bufferDir` is resolved against the file's
 *   directory; everywhere else against the working directory.
 * - **Environment**: `ROBOFLOW_<KEY>` where `<KEY>` is the key in UPPER_SNAKE without its unit
 *   suffix (`stallTimeoutMs` → `ROBOFLOW_STALL_TIMEOUT`, `bufferBudgetBytes` →
 *   `ROBOFLOW_BUFFER_BUDGET`), since the value carries its unit (`30s`, `8MiB`). The seed's
 *   names stay: `PREFETCH_SLOTS`, `DOWNLOAD_CONNECTIONS`, `CHUNK_SIZE`, `BUFFER_DIR`. An empty
 *   variable counts as unset. Lists are comma-separated.
 * - **Flags**: `addConfigFlags()` adds the same flags to every command that needs a config
 *   (`roboflow config`, `roboflow worker`), `configFromCommand()` reads them back.
 *
 * Values: durations (`*Ms` keys) are milliseconds or duration strings (`30s`, `5m`, `250ms`);
 * sizes (`chunkSize`, `buffer*Bytes`) are bytes or size strings (`8MiB`, `8MB`, `1.5GiB`);
 * nullable keys take `none` (or JSON `null`) to mean "not set". A later layer replaces a list,
 * it does not append to it. `configReference()` renders all of this as a table.
 *
 * The security keys (`allowSources`, `allowOutputs`, `allowPrivateRanges`, `processors`,
 * `execCommand`) are compiled as they load, the allowlists into the worker's security policy, so
 * a bad pattern, block, processor name or command is a configuration error like a bad size, named
 * by key and source, and the worker never starts with a policy it cannot enforce.
 *
 * Every problem is collected before anything is thrown, so one run shows all of them: one
 * `ERR_CONFIG` whose message has one line per problem, each naming the key, the value, where it
 * came from (file and key, environment variable, flag) and what is allowed.
 */

import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { Option, type Command } from 'commander';
import { parse as parseToml } from 'smol-toml';
import { z } from 'zod';
import { DEFAULTS, type Defaults } from './defaults.js';
import { RoboflowError } from './errors.js';
import { parseExecCommand } from './processors/exec.js';
import { processorNames } from './processors/index.js';
import { REDACTED, redactUrl, redactUrlsInText } from './redact.js';
import { parseCidr } from './security/address.js';
import { compileAllowlist, compilePolicy, type PolicyOptions, type SecurityPolicy } from './security/policy.js';
import { hostLanes } from './prefetch/concurrency.js';
import { DURABILITIES, type PrefetchConfig, type StorageOptions } from './types.js';
import { DURATION_SYNTAX, SIZE_SYNTAX, formatDuration, formatSize, parseDuration, parseSize } from './units.js';

const KiB = 1024;
const GiB = 1024 ** 3;
/**
 * Node's timers hold at most 2^31−1 ms (~24.8 days); a longer delay fires at once with a
 * warning, so no duration may exceed it.
 */
const MAX_TIMER_MS = 2 ** 31 - 1;

// ---------------------------------------------------------------------------------------------
// Field schemas: each accepts what a file, the environment or a flag may hold and yields the
// typed value, with messages that read after "<key>: <value> from <where> ".
// ---------------------------------------------------------------------------------------------

type FieldKind = 'count' | 'size' | 'duration' | 'string' | 'enum' | 'boolean' | 'list';

interface FieldType<S extends z.ZodType> {
  readonly kind: FieldKind;
  readonly schema: S;
  /** What is allowed, for messages and the reference table. */
  readonly allowed: string;
}

const NONE_RE = /^\s*none\s*$/i;

/** Lets `none` (any case) and `null` stand for "not set". */
function nullable<S extends z.ZodType>(t: FieldType<S>) {
  return {
    kind: t.kind,
    allowed: `${t.allowed}; or none`,
    schema: z.preprocess((v) => (typeof v === 'string' && NONE_RE.test(v) ? null : v), t.schema.nullable()),
  } satisfies FieldType<z.ZodType>;
}

function count(min: number, max: number) {
  return {
    kind: 'count',
    allowed: `a whole number from ${min} to ${max}`,
    schema: z
      .union([z.number(), z.string()], { error: 'is not a number' })
      .transform((v, ctx) => {
        const n = typeof v === 'number' ? v : /^\s*[+-]?\d+\s*$/.test(v) ? Number(v) : Number.NaN;
        if (!Number.isSafeInteger(n)) {
          ctx.issues.push({ code: 'custom', message: 'is not a whole number', input: v });
          return z.NEVER;
        }
        return n;
      })
      .pipe(z.number().min(min, { error: `is below ${min}` }).max(max, { error: `is above ${max}` })),
  } satisfies FieldType<z.ZodType>;
}

function size(min: number, max: number) {
  return {
    kind: 'size',
    allowed: `${max === Number.MAX_SAFE_INTEGER ? (min === 0 ? 'a size' : `a size of at least ${formatSize(min)}`) : `a size from ${formatSize(min)} to ${formatSize(max)}`}: ${SIZE_SYNTAX}`,
    schema: z
      .union([z.number(), z.string()], { error: 'is not a size' })
      .transform((v, ctx) => {
        try {
          return parseSize(v);
        } catch {
          ctx.issues.push({ code: 'custom', message: 'is not a size', input: v });
          return z.NEVER;
        }
      })
      .pipe(
        z
          .number()
          .min(min, { error: `is below ${formatSize(min)}` })
          .max(max, { error: `is above ${formatSize(max)}` }),
      ),
  } satisfies FieldType<z.ZodType>;
}

function duration(min: number, max: number = MAX_TIMER_MS) {
  // 2^31−1 ms is 24d20h31m23s647ms; "24 days" reads better and errs on the safe side.
  return {
    kind: 'duration',
    allowed: `a duration from ${formatDuration(min)} to ${max === MAX_TIMER_MS ? '24 days' : formatDuration(max)}: ${DURATION_SYNTAX}`,
    schema: z
      .union([z.number(), z.string()], { error: 'is not a duration' })
      .transform((v, ctx) => {
        try {
          return parseDuration(v);
        } catch {
          ctx.issues.push({ code: 'custom', message: 'is not a duration', input: v });
          return z.NEVER;
        }
      })
      .pipe(
        z
          .number()
          .min(min, { error: `is shorter than ${formatDuration(min)}` })
          .max(max, { error: `is longer than ${max === MAX_TIMER_MS ? `${max}ms, the longest timer Node.js keeps` : formatDuration(max)}` }),
      ),
  } satisfies FieldType<z.ZodType>;
}

/** A non-empty string; `check` returns a problem or undefined. */
function text(allowed: string, check: (s: string) => string | undefined = () => undefined) {
  return {
    kind: 'string',
    allowed,
    schema: z
      .string({ error: 'is not a string' })
      .transform((s, ctx) => {
        const trimmed = s.trim();
        const problem = trimmed === '' ? 'is empty' : check(trimmed);
        if (problem !== undefined) {
          ctx.issues.push({ code: 'custom', message: problem, input: s });
          return z.NEVER;
        }
        return trimmed;
      }),
  } satisfies FieldType<z.ZodType>;
}

function oneOf<const T extends readonly [string, ...string[]]>(values: T) {
  return {
    kind: 'enum',
    allowed: `one of ${values.join(', ')}`,
    schema: z
      .string({ error: 'is not a string' })
      .transform((s) => s.trim().toLowerCase())
      .pipe(z.enum(values, { error: 'is not one of the allowed values' })),
  } satisfies FieldType<z.ZodType>;
}

const TRUE_RE = /^(true|1|yes|on)$/i;
const FALSE_RE = /^(false|0|no|off)$/i;

function bool() {
  return {
    kind: 'boolean',
    allowed: 'true or false (also 1/0, yes/no, on/off)',
    schema: z
      .union([z.boolean(), z.string()], { error: 'is not true or false' })
      .transform((v, ctx) => {
        if (typeof v === 'boolean') return v;
        if (TRUE_RE.test(v.trim())) return true;
        if (FALSE_RE.test(v.trim())) return false;
        ctx.issues.push({ code: 'custom', message: 'is not true or false', input: v });
        return z.NEVER;
      }),
  } satisfies FieldType<z.ZodType>;
}

/** A list of strings; `check` returns a problem with the whole list, or undefined. */
function list(allowed: string, check: (items: string[]) => string | undefined = () => undefined) {
  return {
    kind: 'list',
    allowed: `${allowed} (a list; comma-separated in the environment, a repeated flag)`,
    schema: z
      .union([z.array(z.string({ error: 'has an element that is not a string' })), z.string()], {
        error: 'is not a list of strings',
      })
      .transform((v, ctx) => {
        const items = (Array.isArray(v) ? v : v.split(','))
          .map((s) => s.trim())
          .filter((s) => s !== '');
        const problem = check(items);
        if (problem !== undefined) {
          ctx.issues.push({ code: 'custom', message: problem, input: v });
          return z.NEVER;
        }
        return items;
      }),
  } satisfies FieldType<z.ZodType>;
}

/**
 * The first problem of a list of allowlist patterns, as the policy compiles them. The policy's
 * message names the flag; here the key and where the value came from say that already.
 */
function patternsProblem(what: 'source' | 'output'): (items: string[]) => string | undefined {
  return (items) => {
    try {
      compileAllowlist(items, what);
      return undefined;
    } catch (err) {
      return `has a bad pattern: ${(err as Error).message.replace(/^--allow-(source|output) pattern/, 'pattern')}`;
    }
  };
}

function rangesProblem(items: string[]): string | undefined {
  for (const item of items) {
    try {
      parseCidr(item);
    } catch (err) {
      return `has a bad block: ${(err as Error).message.replace(/^--allow-private-range /, '')}`;
    }
  }
  return undefined;
}

function processorsProblem(items: string[]): string | undefined {
  const unknown = items.filter((p) => !(processorNames as readonly string[]).includes(p));
  if (unknown.length === 0) return undefined;
  return `names unknown processor${unknown.length === 1 ? '' : 's'} ${unknown.map((u) => JSON.stringify(u)).join(', ')}`;
}

function execCommandProblem(line: string): string | undefined {
  try {
    parseExecCommand(line, 'it');
    return undefined;
  } catch (err) {
    return `is not a command that can run: ${(err as Error).message.replace(/^it: /, '')}`;
  }
}

/**
 * `host:port`, `port` or `:port` (both loopback), `[v6]:port`. Port 0 picks a free port.
 * Loopback is the default so that metrics are never exposed by accident; `0.0.0.0:9464` opens
 * them on purpose.
 */
export function parseListenAddress(addr: string): { host: string; port: number } {
  const m = /^(?:(\[[0-9a-fA-F:.]+\]|[^:[\]\s]*):)?(\d{1,5})$/.exec(addr.trim());
  const port = Number(m?.[2]);
  if (!m || port > 65_535) {
    throw new RoboflowError(
      'ERR_CONFIG',
      `"${addr}" is not a listen address; use host:port, [ipv6]:port or a port alone (binds 127.0.0.1)`,
    );
  }
  const rawHost = m[1] ?? '';
  const host = rawHost === '' ? '127.0.0.1' : rawHost.replace(/^\[(.*)\]$/, '$1');
  return { host, port };
}

function listenAddressProblem(s: string): string | undefined {
  try {
    parseListenAddress(s);
    return undefined;
  } catch {
    return 'is not a listen address';
  }
}

function httpUrlProblem(s: string): string | undefined {
  try {
    const u = new URL(s);
    return u.protocol === 'http:' || u.protocol === 'https:' ? undefined : 'is not an http(s) URL';
  } catch {
    return 'is not a URL';
  }
}

// ---------------------------------------------------------------------------------------------
// The fields
// ---------------------------------------------------------------------------------------------

interface FlagSpec {
  /** `--chunk-size <size>` as commander reads it. */
  readonly spec: string;
  /** Repeatable flag that collects into a list. */
  readonly repeatable?: boolean;
  /** A boolean flag with its `--no-` twin. */
  readonly negatable?: boolean;
}

interface FieldSpec<S extends z.ZodType = z.ZodType> extends FieldType<S> {
  readonly doc: string;
  readonly env: string;
  readonly flag?: FlagSpec;
  readonly default: unknown;
}

function field<S extends z.ZodType>(
  t: FieldType<S>,
  extra: { doc: string; env: string; default: unknown; flag?: FlagSpec },
): FieldSpec<S> {
  return { ...t, ...extra };
}

const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;

const FIELDS = {
  slots: field(count(0, 64), {
    doc: 'Jobs downloaded ahead of the one being processed (0 = download, then process).',
    env: 'PREFETCH_SLOTS',
    default: DEFAULTS.slots,
    flag: { spec: '--slots <n>' },
  }),
  downloadConnections: field(count(1, 256), {
    doc: 'Range requests in flight per object.',
    env: 'DOWNLOAD_CONNECTIONS',
    default: DEFAULTS.downloadConnections,
    flag: { spec: '--connections <n>' },
  }),
  maxHostConnections: field(nullable(count(1, 4096)), {
    doc: 'Most range transfers in flight across all downloads of the worker (each may have a look-ahead request open beside it); the job handed out next gets them first. none = every slot downloads with all its connections.',
    env: 'ROBOFLOW_MAX_HOST_CONNECTIONS',
    default: DEFAULTS.maxHostConnections,
    flag: { spec: '--max-host-connections <n>' },
  }),
  chunkSize: field(size(64 * KiB, 5 * GiB), {
    doc: 'Length of one range request.',
    env: 'CHUNK_SIZE',
    default: DEFAULTS.chunkSize,
    flag: { spec: '--chunk-size <size>' },
  }),
  bufferDir: field(text('a directory path'), {
    doc: 'Where prefetched inputs are written.',
    env: 'BUFFER_DIR',
    default: DEFAULTS.bufferDir,
    flag: { spec: '--buffer-dir <dir>' },
  }),
  bufferBudgetBytes: field(nullable(size(64 * KiB, Number.MAX_SAFE_INTEGER)), {
    doc: 'Most bytes the buffer directory may hold across slots; none = free space minus the reserve.',
    env: 'ROBOFLOW_BUFFER_BUDGET',
    default: DEFAULTS.bufferBudgetBytes,
    flag: { spec: '--buffer-budget <size>' },
  }),
  bufferReserveBytes: field(size(0, Number.MAX_SAFE_INTEGER), {
    doc: 'Free space left untouched on the buffer file system when no budget is set.',
    env: 'ROBOFLOW_BUFFER_RESERVE',
    default: DEFAULTS.bufferReserveBytes,
  }),
  durability: field(oneOf(DURABILITIES), {
    doc: 'What a download survives: disk (a power cut: fdatasync before counting bytes and before the rename) or process (the process being killed, not the machine: no fdatasync; for scratch inputs on disks slower than the network).',
    env: 'ROBOFLOW_DURABILITY',
    default: DEFAULTS.durability,
    flag: { spec: '--durability <mode>' },
  }),
  rangeMaxAttempts: field(count(1, 100), {
    doc: 'Attempts per range, first included, before a download fails.',
    env: 'ROBOFLOW_RANGE_MAX_ATTEMPTS',
    default: DEFAULTS.rangeMaxAttempts,
  }),
  retryBaseDelayMs: field(duration(0), {
    doc: 'First backoff ceiling between range attempts; doubles per attempt.',
    env: 'ROBOFLOW_RETRY_BASE_DELAY',
    default: DEFAULTS.retryBaseDelayMs,
  }),
  retryMaxDelayMs: field(duration(0), {
    doc: 'Longest backoff between two attempts of one range.',
    env: 'ROBOFLOW_RETRY_MAX_DELAY',
    default: DEFAULTS.retryMaxDelayMs,
  }),
  stallTimeoutMs: field(duration(10), {
    doc: 'A range that receives no byte for this long is aborted and retried.',
    env: 'ROBOFLOW_STALL_TIMEOUT',
    default: DEFAULTS.stallTimeoutMs,
    flag: { spec: '--stall-timeout <duration>' },
  }),
  headersTimeoutMs: field(duration(10), {
    doc: 'Time to wait for the response headers of one request.',
    env: 'ROBOFLOW_HEADERS_TIMEOUT',
    default: DEFAULTS.headersTimeoutMs,
  }),
  progressIntervalMs: field(duration(10), {
    doc: 'How often download progress is reported.',
    env: 'ROBOFLOW_PROGRESS_INTERVAL',
    default: DEFAULTS.progressIntervalMs,
  }),
  // A lease below 100 ms is no lease; the minimum also catches `ROBOFLOW_LEASE=60` meant as seconds.
  leaseMs: field(duration(100), {
    doc: 'Lease on a claimed job; renewed by heartbeats.',
    env: 'ROBOFLOW_LEASE',
    default: DEFAULTS.leaseMs,
    flag: { spec: '--lease <duration>' },
  }),
  heartbeatMs: field(duration(10), {
    doc: 'Heartbeat interval; must be shorter than the lease.',
    env: 'ROBOFLOW_HEARTBEAT',
    default: DEFAULTS.heartbeatMs,
    flag: { spec: '--heartbeat <duration>' },
  }),
  maxAttempts: field(count(1, 1000), {
    doc: 'Attempts per job before it is dead.',
    env: 'ROBOFLOW_MAX_ATTEMPTS',
    default: DEFAULTS.maxAttempts,
    flag: { spec: '--max-attempts <n>' },
  }),
  jobRetryBaseDelayMs: field(duration(0), {
    doc: 'First delay before a failed job is retried; doubles per attempt.',
    env: 'ROBOFLOW_JOB_RETRY_BASE_DELAY',
    default: DEFAULTS.jobRetryBaseDelayMs,
  }),
  jobRetryMaxDelayMs: field(duration(0), {
    doc: 'Longest delay before a failed job is retried.',
    env: 'ROBOFLOW_JOB_RETRY_MAX_DELAY',
    default: DEFAULTS.jobRetryMaxDelayMs,
  }),
  pollIntervalMs: field(duration(10), {
    doc: 'How often an idle worker asks the queue for work.',
    env: 'ROBOFLOW_POLL_INTERVAL',
    default: DEFAULTS.pollIntervalMs,
  }),
  queue: field(text('a queue URL: sqlite://<file> or postgres://user@host/db'), {
    doc: 'Job queue URL.',
    env: 'ROBOFLOW_QUEUE',
    default: DEFAULTS.queue,
    flag: { spec: '--queue <url>' },
  }),
  metricsAddr: field(nullable(text('host:port, [ipv6]:port or a port (127.0.0.1)', listenAddressProblem)), {
    doc: 'Address of /metrics, /healthz and /readyz; a bare port binds 127.0.0.1.',
    env: 'ROBOFLOW_METRICS_ADDR',
    default: DEFAULTS.metricsAddr,
    flag: { spec: '--metrics-addr <addr>' },
  }),
  logLevel: field(oneOf(LOG_LEVELS), {
    doc: 'Least severe log level written.',
    env: 'ROBOFLOW_LOG_LEVEL',
    default: DEFAULTS.logLevel,
    flag: { spec: '--log-level <level>' },
  }),
  execTimeoutMs: field(duration(1_000), {
    doc: 'Time limit for one exec processor run.',
    env: 'ROBOFLOW_EXEC_TIMEOUT',
    default: DEFAULTS.execTimeoutMs,
  }),
  execKillGraceMs: field(duration(0), {
    doc: 'Time an exec program gets between SIGTERM and SIGKILL when it is stopped.',
    env: 'ROBOFLOW_EXEC_KILL_GRACE',
    default: DEFAULTS.execKillGraceMs,
  }),
  endpoint: field(nullable(text('an http(s) URL', httpUrlProblem)), {
    doc: 'S3 endpoint; none = AWS_ENDPOINT_URL or the SDK default.',
    env: 'ROBOFLOW_ENDPOINT',
    default: null,
    flag: { spec: '--endpoint <url>' },
  }),
  region: field(
    nullable(text('a region name', (s) => (/^[A-Za-z0-9-]+$/.test(s) ? undefined : 'is not a region name'))),
    {
      doc: "S3 region; none = the SDK's default chain, else us-east-1.",
      env: 'ROBOFLOW_REGION',
      default: null,
      flag: { spec: '--region <region>' },
    },
  ),
  forcePathStyle: field(nullable(bool()), {
    doc: 'Path-style S3 addressing; none = automatic (on for IP and localhost endpoints).',
    env: 'ROBOFLOW_FORCE_PATH_STYLE',
    default: null,
    flag: { spec: '--path-style', negatable: true },
  }),
  allowSources: field(list('URL patterns: s3://bucket/prefix/*, https://host/path/*, file:///dir/*', patternsProblem('source')), {
    doc:
      'URL patterns job inputs may be read from; a job with any other input goes dead (ERR_POLICY_DENIED). Empty allows ' +
      'every source (one machine); setting it also refuses non-public addresses and turns job commands off (see SECURITY.md).',
    env: 'ROBOFLOW_ALLOW_SOURCES',
    default: DEFAULTS.allowSources,
    flag: { spec: '--allow-source <pattern>', repeatable: true },
  }),
  allowOutputs: field(list('URL prefix patterns ending in *: s3://bucket/prefix/*, file:///dir/*', patternsProblem('output')), {
    doc: 'URL prefixes job outputs may be written under; a job with any other output goes dead. Empty allows every output.',
    env: 'ROBOFLOW_ALLOW_OUTPUTS',
    default: DEFAULTS.allowOutputs,
    flag: { spec: '--allow-output <pattern>', repeatable: true },
  }),
  allowPrivateRanges: field(list('CIDR blocks such as 10.0.0.0/8 or fd00::/8', rangesProblem), {
    doc:
      'Non-public address blocks the worker may connect to. Private addresses (loopback, 169.254.169.254, RFC 1918...) ' +
      'are refused at connect time once a source allowlist or one of these blocks is set.',
    env: 'ROBOFLOW_ALLOW_PRIVATE_RANGES',
    default: DEFAULTS.allowPrivateRanges,
    flag: { spec: '--allow-private-range <cidr>', repeatable: true },
  }),
  processors: field(list(`processor names: ${processorNames.join(', ')}`, processorsProblem), {
    doc: 'Processors this worker runs; a job naming another goes dead (ERR_POLICY_DENIED). Empty runs every processor.',
    env: 'ROBOFLOW_PROCESSORS',
    default: DEFAULTS.processors,
    flag: { spec: '--processor <name>', repeatable: true },
  }),
  execCommand: field(
    nullable(text('a command line with {input}, {inputs}, {output}, {job}; white space separates, quotes group, no shell', execCommandProblem)),
    {
      doc:
        "The command every exec job runs, e.g. 'ffmpeg -i {input} {output}/out.mp4'; a job carrying a different " +
        'args.command goes dead. none = jobs bring their command, if allowJobCommands allows it.',
      env: 'ROBOFLOW_EXEC_COMMAND',
      default: DEFAULTS.execCommand,
      flag: { spec: '--exec-command <command>' },
    },
  ),
  allowJobCommands: field(nullable(bool()), {
    doc:
      'Whether exec jobs may run the command they carry (anyone who can submit one runs programs as the worker user). ' +
      'none = automatic: yes while allowSources is empty, no once it is set.',
    env: 'ROBOFLOW_ALLOW_JOB_COMMANDS',
    default: DEFAULTS.allowJobCommands,
    flag: { spec: '--allow-job-commands', negatable: true },
  }),
};

// Every default has a field: adding a key to DEFAULTS without a field fails to compile here.
const _everyDefaultHasAField: Record<keyof Defaults, FieldSpec> = FIELDS;

type Fields = typeof FIELDS;
export type ConfigKey = keyof Fields;
const KEYS = Object.keys(FIELDS) as ConfigKey[];

type Shape = { [K in ConfigKey]: Fields[K]['schema'] };
const shape = Object.fromEntries(KEYS.map((k) => [k, FIELDS[k].schema])) as Shape;

interface CrossCheck {
  readonly keys: readonly [ConfigKey, ConfigKey];
  readonly ok: (c: z.output<z.ZodObject<Shape>>) => boolean;
  readonly rule: string;
}

const CROSS_CHECKS: readonly CrossCheck[] = [
  {
    keys: ['heartbeatMs', 'leaseMs'],
    ok: (c) => c.heartbeatMs < c.leaseMs,
    rule: 'heartbeatMs must be shorter than leaseMs, or the lease expires between two heartbeats',
  },
  {
    keys: ['retryBaseDelayMs', 'retryMaxDelayMs'],
    ok: (c) => c.retryBaseDelayMs <= c.retryMaxDelayMs,
    rule: 'retryBaseDelayMs must not exceed retryMaxDelayMs',
  },
  {
    keys: ['jobRetryBaseDelayMs', 'jobRetryMaxDelayMs'],
    ok: (c) => c.jobRetryBaseDelayMs <= c.jobRetryMaxDelayMs,
    rule: 'jobRetryBaseDelayMs must not exceed jobRetryMaxDelayMs',
  },
];

/** The schema of a complete configuration, cross-field rules included. */
export const configSchema = z.object(shape).superRefine((c, ctx) => {
  for (const check of CROSS_CHECKS) {
    if (!check.ok(c)) {
      ctx.addIssue({ code: 'custom', message: check.rule, path: [check.keys[0]], params: { keys: check.keys } });
    }
  }
});

/** The schema of a config file: any subset of the keys, nothing else. */
export const configFileSchema = z.strictObject(shape).partial();

export type Config = z.output<typeof configSchema>;

// ---------------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------------

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

function flagName(key: ConfigKey): string | undefined {
  const spec: FlagSpec | undefined = (FIELDS[key] as FieldSpec).flag;
  return spec?.spec.split(' ')[0];
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

function describeSource(s: ConfigSource | undefined): string {
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

function displayValue(key: ConfigKey, v: unknown): string {
  if (v === null || v === undefined) return 'none';
  const kind: FieldKind = FIELDS[key].kind;
  switch (kind) {
    case 'size':
      return formatSize(v as number);
    case 'duration':
      return formatDuration(v as number);
    case 'list':
      return (v as string[]).length === 0 ? '(empty)' : (v as string[]).join(', ');
    case 'count':
    case 'string':
    case 'enum':
    case 'boolean':
      return String(v);
    default: {
      const _exhaustive: never = kind;
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

// ---------------------------------------------------------------------------------------------
// Describing
// ---------------------------------------------------------------------------------------------

const MASK = '****';
const SECRET_KEY_RE = /secret|token|password|passwd|credential/i;

function maskString(key: string, s: string): string {
  if (SECRET_KEY_RE.test(key)) return MASK;
  // redactUrl knows every signature and credential parameter; only its marker differs here.
  // URLs inside free text (an exec command line) are found and masked too.
  return redactUrlsInText(redactUrl(s)).split(REDACTED).join(MASK);
}

function maskValue(key: string, v: unknown): unknown {
  if (typeof v === 'string') return maskString(key, v);
  if (Array.isArray(v)) return v.map((x: unknown) => (typeof x === 'string' ? maskString(key, x) : x));
  return v;
}

export interface DescribedConfig {
  readonly configFile: string | null;
  readonly values: Record<ConfigKey, { readonly value: unknown; readonly display: string; readonly source: ConfigSource }>;
}

/**
 * The effective configuration with the source of every value: `text` for people, `json` for
 * tools. Passwords in URLs, signature parameters and keys that look secret are masked as `****`
 * unless `showSecrets`.
 */
export function describeConfig(
  result: LoadedConfig,
  opts: { showSecrets?: boolean } = {},
): { text: string; json: DescribedConfig } {
  const reveal = opts.showSecrets === true;
  const values = {} as Record<ConfigKey, { value: unknown; display: string; source: ConfigSource }>;
  for (const key of KEYS) {
    const raw: unknown = result.config[key];
    const value = reveal ? raw : maskValue(key, raw);
    values[key] = { value, display: displayValue(key, value), source: result.sources[key] };
  }
  const rows = KEYS.map((k) => [k, values[k].display, describeSource(values[k].source)] as const);
  const w0 = Math.max(3, ...rows.map((r) => r[0].length));
  const w1 = Math.max(5, ...rows.map((r) => r[1].length));
  const lines = [
    `config file: ${result.configFile ?? 'none'}`,
    `${'KEY'.padEnd(w0)}  ${'VALUE'.padEnd(w1)}  SOURCE`,
    ...rows.map(([k, v, s]) => `${k.padEnd(w0)}  ${v.padEnd(w1)}  ${s}`),
  ];
  return { text: `${lines.join('\n')}\n`, json: { configFile: result.configFile, values } };
}

export interface ConfigReferenceRow {
  readonly key: ConfigKey;
  readonly env: string;
  readonly flag: string | null;
  readonly default: string;
  readonly allowed: string;
  readonly description: string;
}

/** Every key with its environment variable, flag, default and what it allows. */
export function configReference(): ConfigReferenceRow[] {
  return KEYS.map((key) => {
    const f = FIELDS[key] as FieldSpec;
    return {
      key,
      env: f.env,
      flag: f.flag ? f.flag.spec + (f.flag.negatable ? `, --no-${f.flag.spec.slice(2)}` : '') : null,
      default: displayValue(key, f.default),
      allowed: f.allowed,
      description: f.doc,
    };
  });
}

/** `configReference()` as a Markdown table. */
export function renderConfigReference(): string {
  const esc = (s: string) => s.replace(/\|/g, '\\|');
  const lines = [
    '| Key (file) | Environment | Flag | Default | Description |',
    '| --- | --- | --- | --- | --- |',
    ...configReference().map(
      (r) =>
        `| \`${r.key}\` | \`${r.env}\` | ${r.flag ? `\`${r.flag}\`` : ''} | ${esc(r.default)} | ${esc(r.description)} Allowed: ${esc(r.allowed)}. |`,
    ),
  ];
  return `${lines.join('\n')}\n`;
}

// ---------------------------------------------------------------------------------------------
// Flags
// ---------------------------------------------------------------------------------------------

function collect(value: string, previous: string[] | undefined): string[] {
  return [...(previous ?? []), value];
}

const FLAGGED_KEYS = KEYS.filter((k) => (FIELDS[k] as FieldSpec).flag !== undefined);

/**
 * Adds every configuration flag, plus `--config <file>`, to `command`. No flag has a commander
 * default, so a flag left out never hides the file or the environment.
 */
export function addConfigFlags(command: Command): Command {
  command.addOption(new Option('--config <file>', `config file, .toml or .json (env ${CONFIG_ENV})`));
  for (const key of FLAGGED_KEYS) {
    const f = FIELDS[key] as FieldSpec;
    const spec = f.flag;
    if (spec === undefined) continue;
    const help = `${f.doc} (${f.env}; default ${displayValue(key, f.default)})`;
    const option = new Option(spec.spec, help);
    if (spec.repeatable) option.argParser(collect);
    command.addOption(option);
    if (spec.negatable) command.addOption(new Option(`--no-${spec.spec.slice(2)}`, `turn ${spec.spec} off`));
  }
  return command;
}

/** Loads the configuration from the flags `addConfigFlags` added to `command`. */
export async function configFromCommand(
  command: Command,
  opts: { env?: NodeJS.ProcessEnv; cwd?: string } = {},
): Promise<LoadedConfig> {
  const values = command.optsWithGlobals<Record<string, unknown>>();
  const flags: Partial<Record<ConfigKey, FlagValue>> = {};
  for (const key of FLAGGED_KEYS) {
    const spec = (FIELDS[key] as FieldSpec).flag;
    if (spec === undefined) continue;
    const attr = new Option(spec.spec).attributeName();
    const v = values[attr];
    if (v !== undefined) flags[key] = v as FlagValue;
  }
  const configPath = values['config'];
  return loadConfig({
    flags,
    env: opts.env ?? process.env,
    cwd: opts.cwd ?? process.cwd(),
    ...(typeof configPath === 'string' ? { configPath } : {}),
  });
}
