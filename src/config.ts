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
 *   `ROBOFLOW_BUFFER_BUDGET`), since the value carries its unit (`30s`, `8MiB`). The names of
 *   the PrefetchQueue design (docs/design.md) stay: `PREFETCH_SLOTS`, `DOWNLOAD_CONNECTIONS`,
 *   `CHUNK_SIZE`, `BUFFER_DIR`. An empty variable counts as unset. Lists are comma-separated.
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
 *
 * This file holds the field table and the schema. What is done with them: `config/load.ts`
 * (loading the layers; the library's views of a config), `config/describe.ts` (`roboflow config`
 * and the reference table), `cli/config-flags.ts` (the flags, the only part that knows commander).
 */

import { z } from 'zod';
import { DEFAULTS, type Defaults } from './defaults.js';
import { RoboflowError } from './errors.js';
import { MAX_LEASE_MS } from './jobs/checks.js';
import { leaseTrustMs } from './lease.js';
import { parseExecCommand } from './processors/exec.js';
import { processorNames } from './processors/index.js';
import { parseCidr } from './security/address.js';
import { compileAllowlist } from './security/policy.js';
import { DURABILITIES } from './types.js';
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

export type FieldKind = 'count' | 'size' | 'duration' | 'string' | 'enum' | 'boolean' | 'list';

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

export interface FlagSpec {
  /** `--chunk-size <size>` as commander reads it. */
  readonly spec: string;
  /** Repeatable flag that collects into a list. */
  readonly repeatable?: boolean;
  /** A boolean flag with its `--no-` twin. */
  readonly negatable?: boolean;
}

export interface FieldSpec<S extends z.ZodType = z.ZodType> extends FieldType<S> {
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

/** The field table: every configuration key with its schema, documentation, environment
 * variable, flag and default. */
export const FIELDS = {
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
    doc: 'Longest backoff between two attempts of one range, and the longest wait a server may ask for (Retry-After, x-oss-qos-delay-time): one asking for more fails the download at once, saying so.',
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
    doc: 'Time to wait for the complete response head of one request; a download also gives up on a head after the stall timeout when that is shorter (1xx heads are no progress).',
    env: 'ROBOFLOW_HEADERS_TIMEOUT',
    default: DEFAULTS.headersTimeoutMs,
  }),
  lowSpeedLimitBytes: field(size(0, Number.MAX_SAFE_INTEGER), {
    doc: 'Minimum rate of a range, bytes per second: one slower over lowSpeedTimeMs is retried on another connection; 0 = off.',
    env: 'ROBOFLOW_LOW_SPEED_LIMIT',
    default: DEFAULTS.lowSpeedLimitBytes,
  }),
  lowSpeedTimeMs: field(nullable(duration(10)), {
    doc: 'Window of the minimum rate; none = the stall timeout.',
    env: 'ROBOFLOW_LOW_SPEED_TIME',
    default: DEFAULTS.lowSpeedTimeMs,
  }),
  progressIntervalMs: field(duration(10), {
    doc: 'How often download progress is reported.',
    env: 'ROBOFLOW_PROGRESS_INTERVAL',
    default: DEFAULTS.progressIntervalMs,
  }),
  // A lease below 100 ms is no lease; the minimum also catches `ROBOFLOW_LEASE=60` meant as seconds.
  // The job queues take no longer lease (src/jobs/checks.ts); refused here, named by its key.
  leaseMs: field(duration(100, MAX_LEASE_MS), {
    doc: 'Lease on a claimed job; renewed by heartbeats.',
    env: 'ROBOFLOW_LEASE',
    default: DEFAULTS.leaseMs,
    flag: { spec: '--lease <duration>' },
  }),
  heartbeatMs: field(duration(10), {
    doc: 'Heartbeat interval; must be shorter than the lease less its safety margin (a tenth of the lease).',
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
  fallbackPollIntervalMs: field(duration(10), {
    doc: 'How often an idle worker asks a queue that wakes it on new work (PostgreSQL) anyway: for jobs of lost workers.',
    env: 'ROBOFLOW_FALLBACK_POLL_INTERVAL',
    default: DEFAULTS.fallbackPollIntervalMs,
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
/** Every key, in the table's order. */
export const KEYS = Object.keys(FIELDS) as ConfigKey[];

export type Shape = { [K in ConfigKey]: Fields[K]['schema'] };
export const shape = Object.fromEntries(KEYS.map((k) => [k, FIELDS[k].schema])) as Shape;

interface CrossCheck {
  readonly keys: readonly [ConfigKey, ConfigKey];
  readonly ok: (c: z.output<z.ZodObject<Shape>>) => boolean;
  readonly rule: string;
}

const CROSS_CHECKS: readonly CrossCheck[] = [
  {
    keys: ['heartbeatMs', 'leaseMs'],
    ok: (c) => c.heartbeatMs < leaseTrustMs(c.leaseMs),
    rule: 'heartbeatMs must be shorter than leaseMs less its safety margin (a tenth of it, src/lease.ts), or the worker gives up its jobs between two heartbeats',
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
// Values as people read them
// ---------------------------------------------------------------------------------------------

/** The long flag of a key (`--chunk-size`), if it has one. */
export function flagName(key: ConfigKey): string | undefined {
  const spec: FlagSpec | undefined = (FIELDS[key] as FieldSpec).flag;
  return spec?.spec.split(' ')[0];
}

/** A value as `roboflow config`, flag help and messages show it (`8 MiB`, `30s`, `none`). */
export function displayValue(key: ConfigKey, v: unknown): string {
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
