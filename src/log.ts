/**
 * Structured logs with pino: one JSON object per line on stderr (stdout stays free for command
 * output such as `roboflow config --json`), or pino-pretty lines when stderr is a terminal.
 *
 * Conventions
 * - Per-job context goes into a child logger, not into every call:
 *   `const log = logger.child({ jobId: job.id })`, then `log.info({ url }, 'downloading')`.
 *   Likewise `{ slot }` for a prefetch slot and `{ downloadId }` for one download.
 * - Errors under the key `err`: `log.error({ err }, 'job failed')`; the serializer keeps
 *   `code`, `retryable`, `status` and `url` of a `RoboflowError`.
 * - Field names `url`, `source`, `output`, `input`, `inputs`, `dest` hold URLs or paths.
 *
 * Secrets never reach the output, whatever a caller passes:
 * - pino `redact` censors known secret fields (`secretAccessKey`, `sessionToken`, `password`,
 *   `authorization` and the usual headers) at the top level and one level down;
 * - a formatter walks every log object and every child binding at any depth: fields named like a
 *   secret are censored, URL fields go through `redactUrl` (query signatures, user:password),
 *   and every other string through `redactText` (URLs embedded in text, values of secret
 *   environment variables such as AWS_SECRET_ACCESS_KEY);
 * - messages and interpolation arguments go through `redactText` before pino formats them;
 * - finally every written line goes through `redactUrlsInText` and loses the values of secret
 *   environment variables, which catches what `logger.child()` bindings carry.
 *
 * Both outputs write synchronously: a short CLI run or a test that ends right after logging
 * still has every line, and a crash loses none. pino-pretty runs as an in-process stream, not a
 * worker-thread transport, for the same reason.
 */

import { destination, pino, stdSerializers, stdTimeFunctions, type DestinationStream, type Logger as PinoLogger } from 'pino';
import pretty from 'pino-pretty';
import { REDACTED, redactSecrets, redactText, redactUrl, redactUrlsInText, secretsFromEnv } from './redact.js';

export type Logger = PinoLogger;
export type LogLevel = 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';

export interface LoggerOptions {
  /** Least severe level written. (Default: `info`) */
  readonly level?: LogLevel;
  /** Human-readable lines instead of JSON. (Default: whether stderr is a terminal) */
  readonly pretty?: boolean;
  /** Where lines go: a stream or a file descriptor. (Default: stderr, fd 2) */
  readonly destination?: NodeJS.WritableStream | DestinationStream | number;
  /** Fields on every line. (Default: `pid` and `hostname`) */
  readonly base?: Record<string, unknown>;
  /** Environment whose secret variables are scrubbed from every string. (Default: `process.env`) */
  readonly env?: NodeJS.ProcessEnv;
}

/** Field names whose values are secrets wherever they appear (compared case-insensitively). */
const SECRET_FIELDS = new Set(
  [
    'secretAccessKey',
    'secret_access_key',
    'accessKeySecret',
    'sessionToken',
    'session_token',
    'securityToken',
    'password',
    'passwd',
    'authorization',
    'proxy-authorization',
    'cookie',
    'set-cookie',
    'x-amz-security-token',
    'x-oss-security-token',
    'token',
    'accessToken',
    'secret',
    'clientSecret',
    'apiKey',
    'api_key',
    'credentials',
  ].map((s) => s.toLowerCase()),
);

/** Fields that hold a URL or a path. */
const URL_FIELDS = new Set(['url', 'source', 'output', 'input', 'inputs', 'dest', 'endpoint', 'queue', 'location']);

/** pino `redact` paths: the cheap first line, for the names above at depth 0 and 1. */
const REDACT_PATHS = [
  'secretAccessKey',
  'sessionToken',
  'password',
  'authorization',
  'credentials',
  '*.secretAccessKey',
  '*.sessionToken',
  '*.password',
  '*.authorization',
  '*.credentials',
  'headers.authorization',
  'headers.cookie',
  'headers["x-amz-security-token"]',
  '*.headers.authorization',
  '*.headers.cookie',
  '*.headers["x-amz-security-token"]',
];

/** Deeper than any log object we write; a bound so that a huge object cannot stall logging. */
const MAX_DEPTH = 8;

function scrub(value: unknown, key: string, env: NodeJS.ProcessEnv, seen: WeakSet<object>, depth: number): unknown {
  if (SECRET_FIELDS.has(key.toLowerCase()) && value !== undefined && value !== null) return REDACTED;
  if (typeof value === 'string') {
    return redactText(URL_FIELDS.has(key) ? redactUrl(value) : value, env);
  }
  if (typeof value !== 'object' || value === null) return value;
  if (value instanceof URL) return redactUrl(value.href);
  if (value instanceof Date || Buffer.isBuffer(value) || ArrayBuffer.isView(value)) return value;
  if (seen.has(value) || depth >= MAX_DEPTH) return '[omitted]';
  seen.add(value);
  if (value instanceof Error) return scrub(serializeError(value), key, env, seen, depth + 1);
  if (Array.isArray(value)) return value.map((v) => scrub(v, key, env, seen, depth + 1));
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(value)) out[k] = scrub(v, k, env, seen, depth + 1);
  return out;
}

/**
 * pino's error serializer, which keeps the enumerable fields of a `RoboflowError` (`code`,
 * `retryable`, `status`, `url`). Values that are no longer errors (the formatter runs first)
 * pass through.
 */
function serializeError(err: unknown): unknown {
  return err instanceof Error ? stdSerializers.err(err) : err;
}

/**
 * Secrets shorter than this are left to the structure-aware passes: replacing every `abc` in a
 * serialized line could cut through JSON syntax, and real keys and tokens are far longer.
 */
const MIN_LINE_SECRET = 8;

/**
 * The last net, over each finished line: child bindings skip pino's formatters, so a URL or a
 * secret value bound with `logger.child()` is caught here.
 */
function scrubbingStream(inner: DestinationStream | NodeJS.WritableStream, env: NodeJS.ProcessEnv): DestinationStream {
  return {
    write(line: string): void {
      const secrets = secretsFromEnv(env).filter((x) => x.length >= MIN_LINE_SECRET);
      inner.write(redactSecrets(redactUrlsInText(line), secrets));
    },
  };
}

/**
 * Creates the logger. See the module comment for the conventions and what is redacted.
 */
export function createLogger(opts: LoggerOptions = {}): Logger {
  const env = opts.env ?? process.env;
  const usePretty = opts.pretty ?? process.stderr.isTTY === true;
  const fd = typeof opts.destination === 'number' ? opts.destination : 2;
  const target = typeof opts.destination === 'object' ? opts.destination : undefined;

  let stream: DestinationStream | NodeJS.WritableStream;
  if (usePretty) {
    stream = pretty({
      destination: target ?? fd,
      sync: true,
      colorize: target === undefined && (fd === 2 ? process.stderr.isTTY === true : fd === 1 && process.stdout.isTTY === true),
      translateTime: 'SYS:HH:MM:ss.l',
      ignore: 'pid,hostname',
    });
  } else {
    stream = target ?? destination({ fd, sync: true });
  }

  const scrubTop = (obj: Record<string, unknown>): Record<string, unknown> =>
    scrub(obj, '', env, new WeakSet(), 0) as Record<string, unknown>;

  const scrubField =
    (key: string) =>
    (v: unknown): unknown =>
      scrub(v, key, env, new WeakSet(), 0);
  const urlSerializers = Object.fromEntries([...URL_FIELDS].map((k) => [k, scrubField(k)]));

  return pino(
    {
      level: opts.level ?? 'info',
      ...(opts.base !== undefined ? { base: opts.base } : {}),
      timestamp: stdTimeFunctions.isoTime,
      redact: { paths: REDACT_PATHS, censor: REDACTED },
      // Serializers also apply to child bindings, which the formatter never sees.
      serializers: { ...urlSerializers, err: serializeError, error: serializeError },
      formatters: {
        level: (label) => ({ level: label }),
        bindings: (bindings) => scrubTop(bindings),
        log: (obj) => scrubTop(obj),
      },
      hooks: {
        logMethod(args, method) {
          const scrubbed = args.map((a: unknown) => (typeof a === 'string' ? redactText(a, env) : a)) as unknown[];
          // `log.error(err)` and `log.error({ err })` make the error's message the line's
          // message, after this hook and outside the formatter: hand pino a cleaned one instead.
          const first = scrubbed[0];
          const err =
            first instanceof Error
              ? first
              : typeof first === 'object' && first !== null && (first as { err?: unknown }).err instanceof Error
                ? ((first as { err: Error }).err)
                : undefined;
          if (err !== undefined && typeof scrubbed[1] !== 'string') {
            scrubbed.splice(1, 0, redactText(err.message, env));
          }
          method.apply(this, scrubbed as Parameters<typeof method>);
        },
      },
    },
    scrubbingStream(stream, env),
  );
}
