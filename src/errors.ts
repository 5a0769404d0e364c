/**
 * Errors. Every failure the library reports is a `RoboflowError` with a stable `code`; callers
 * match on `code`, never on message text. Whether a failure is worth retrying is decided in one
 * place, `RETRY_TABLE`, and the delay by `backoffDelay()`.
 */

export type ErrorCode =
  // Input the caller gave us.
  | 'ERR_BAD_URL'
  | 'ERR_UNSUPPORTED_SCHEME'
  | 'ERR_MISSING_CREDENTIALS'
  | 'ERR_CONFIG'
  | 'ERR_UNSAFE_PATH'
  | 'ERR_POLICY_DENIED'
  // What the store answered.
  | 'ERR_NOT_FOUND'
  | 'ERR_ACCESS_DENIED'
  | 'ERR_HTTP_STATUS'
  | 'ERR_THROTTLED'
  | 'ERR_SERVER'
  | 'ERR_BAD_RESPONSE'
  | 'ERR_RANGE_NOT_SUPPORTED'
  | 'ERR_SOURCE_CHANGED'
  // The wire.
  | 'ERR_CONNECTION'
  | 'ERR_TIMEOUT'
  | 'ERR_TRUNCATED_BODY'
  | 'ERR_STALLED'
  // The local disk and the result.
  | 'ERR_NO_SPACE'
  | 'ERR_IO'
  | 'ERR_SIZE_MISMATCH'
  | 'ERR_CHECKSUM_MISMATCH'
  // Jobs and processing.
  | 'ERR_QUEUE'
  | 'ERR_JOB_NOT_FOUND'
  | 'ERR_LEASE_LOST'
  | 'ERR_PROCESSOR'
  | 'ERR_BAD_INPUT_FILE'
  | 'ERR_UPLOAD'
  // Life cycle.
  | 'ERR_ABORTED'
  | 'ERR_CLOSED'
  | 'ERR_RETRIES_EXHAUSTED';

/**
 * The one retry table. `retryable` decides whether an operation is tried again; the delays bound
 * the exponential backoff (full jitter) used for that code. Statuses map to codes in
 * `codeForStatus()`, so this table also decides for HTTP statuses.
 */
export const RETRY_TABLE = {
  ERR_BAD_URL: { retryable: false },
  ERR_UNSUPPORTED_SCHEME: { retryable: false },
  ERR_MISSING_CREDENTIALS: { retryable: false },
  ERR_CONFIG: { retryable: false },
  ERR_UNSAFE_PATH: { retryable: false },
  ERR_POLICY_DENIED: { retryable: false },
  ERR_NOT_FOUND: { retryable: false },
  ERR_ACCESS_DENIED: { retryable: false },
  ERR_HTTP_STATUS: { retryable: false },
  // Throttling wants longer waits than a dropped connection: the store asked us to slow down.
  ERR_THROTTLED: { retryable: true, minDelayMs: 500, maxDelayMs: 20_000 },
  ERR_SERVER: { retryable: true, minDelayMs: 200, maxDelayMs: 10_000 },
  ERR_BAD_RESPONSE: { retryable: false },
  ERR_RANGE_NOT_SUPPORTED: { retryable: false },
  // The downloader restarts once on its own; retrying the same range would mix versions.
  ERR_SOURCE_CHANGED: { retryable: false },
  ERR_CONNECTION: { retryable: true, minDelayMs: 100, maxDelayMs: 5_000 },
  ERR_TIMEOUT: { retryable: true, minDelayMs: 100, maxDelayMs: 5_000 },
  ERR_TRUNCATED_BODY: { retryable: true, minDelayMs: 100, maxDelayMs: 5_000 },
  ERR_STALLED: { retryable: true, minDelayMs: 100, maxDelayMs: 5_000 },
  ERR_NO_SPACE: { retryable: false },
  ERR_IO: { retryable: false },
  ERR_SIZE_MISMATCH: { retryable: false },
  ERR_CHECKSUM_MISMATCH: { retryable: false },
  // A lost database connection comes back; the worker loop retries queue calls with these delays.
  ERR_QUEUE: { retryable: true, minDelayMs: 250, maxDelayMs: 15_000 },
  ERR_JOB_NOT_FOUND: { retryable: false },
  ERR_LEASE_LOST: { retryable: false },
  // A processor that failed may succeed on another attempt (the job's max attempts bound it).
  ERR_PROCESSOR: { retryable: true, minDelayMs: 1_000, maxDelayMs: 60_000 },
  ERR_BAD_INPUT_FILE: { retryable: false },
  ERR_UPLOAD: { retryable: true, minDelayMs: 500, maxDelayMs: 20_000 },
  ERR_ABORTED: { retryable: false },
  ERR_CLOSED: { retryable: false },
  ERR_RETRIES_EXHAUSTED: { retryable: true, minDelayMs: 1_000, maxDelayMs: 60_000 },
} as const satisfies Record<
  ErrorCode,
  { retryable: false } | { retryable: true; minDelayMs: number; maxDelayMs: number }
>;

/**
 * Codes that end one attempt but are worth another attempt of the JOB later, although retrying
 * the same request at once is not: a full disk frees up as other jobs finish, or another worker
 * with room claims the job. Range retries use `retryable`; job retries use `isJobRetryable()`.
 */
const JOB_RETRYABLE_CODES: ReadonlySet<ErrorCode> = new Set<ErrorCode>(['ERR_NO_SPACE']);

/** Whether a job that failed with `err` goes back to pending (attempts permitting) or dead. */
export function isJobRetryable(err: RoboflowError): boolean {
  return err.retryable || JOB_RETRYABLE_CODES.has(err.code);
}

export interface RoboflowErrorOptions {
  readonly cause?: unknown;
  /** The URL involved, already stripped of secrets. */
  readonly url?: string;
  /** HTTP status, where one was received. */
  readonly status?: number;
  /** Server-requested delay (`Retry-After`, `x-oss-qos-delay-time`). */
  readonly retryAfterMs?: number;
  /** Overrides the table, for the rare error whose code alone does not decide. */
  readonly retryable?: boolean;
}

export class RoboflowError extends Error {
  override readonly name: string = 'RoboflowError';
  readonly code: ErrorCode;
  readonly retryable: boolean;
  readonly url: string | undefined;
  readonly status: number | undefined;
  readonly retryAfterMs: number | undefined;

  constructor(code: ErrorCode, message: string, opts: RoboflowErrorOptions = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.code = code;
    this.retryable = opts.retryable ?? RETRY_TABLE[code].retryable;
    this.url = opts.url;
    this.status = opts.status;
    this.retryAfterMs = opts.retryAfterMs;
  }
}

export function isRoboflowError(err: unknown): err is RoboflowError {
  return err instanceof RoboflowError;
}

/** Maps an HTTP status that is not a success to an error code. */
export function codeForStatus(status: number): ErrorCode {
  if (status === 404 || status === 410) return 'ERR_NOT_FOUND';
  if (status === 401 || status === 403) return 'ERR_ACCESS_DENIED';
  if (status === 412) return 'ERR_SOURCE_CHANGED';
  if (status === 416) return 'ERR_RANGE_NOT_SUPPORTED';
  if (status === 429 || status === 503) return 'ERR_THROTTLED';
  if (status === 408) return 'ERR_TIMEOUT';
  if (status >= 500) return 'ERR_SERVER';
  return 'ERR_HTTP_STATUS';
}

/** Builds the error for an unexpected HTTP status, with the URL and status in the message. */
export function errorForStatus(
  status: number,
  url: string,
  what: string,
  opts: { retryAfterMs?: number; detail?: string } = {},
): RoboflowError {
  const code = codeForStatus(status);
  const hint =
    code === 'ERR_NOT_FOUND'
      ? ' — check the bucket and key'
      : code === 'ERR_ACCESS_DENIED'
        ? ' — check the credentials and that they may read this object'
        : '';
  const detail = opts.detail ? ` (${opts.detail})` : '';
  return new RoboflowError(code, `${what} ${url}: HTTP ${status}${detail}${hint}`, {
    url,
    status,
    ...(opts.retryAfterMs !== undefined ? { retryAfterMs: opts.retryAfterMs } : {}),
  });
}

const CONNECTION_ERRNOS = new Set([
  'ECONNRESET',
  'ECONNREFUSED',
  'ECONNABORTED',
  'EPIPE',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENETDOWN',
  'EAI_AGAIN',
]);

/**
 * Turns anything thrown into a `RoboflowError`. Known Node and AWS SDK failures get their
 * proper code; unknown errors become `fallback` (not retryable unless the table says so).
 */
export function toRoboflowError(
  err: unknown,
  fallback: ErrorCode = 'ERR_IO',
  url?: string,
): RoboflowError {
  if (err instanceof RoboflowError) return err;
  const e = err as { name?: string; code?: string; message?: string } | undefined;
  const message = e?.message ?? String(err);
  const where = url ? ` (${url})` : '';
  const opts = { cause: err, ...(url !== undefined ? { url } : {}) };
  if (e?.name === 'AbortError' || e?.code === 'ABORT_ERR') {
    return new RoboflowError('ERR_ABORTED', `aborted${where}`, opts);
  }
  if (e?.code === 'ENOSPC' || e?.code === 'EDQUOT') {
    return new RoboflowError('ERR_NO_SPACE', `no space left on device${where}: ${message}`, opts);
  }
  if (e?.name === 'TimeoutError') {
    return new RoboflowError('ERR_TIMEOUT', `request timed out${where}: ${message}`, opts);
  }
  if (e?.code && CONNECTION_ERRNOS.has(e.code)) {
    return new RoboflowError('ERR_CONNECTION', `connection failed${where}: ${message}`, opts);
  }
  if (e?.code === 'ERR_STREAM_PREMATURE_CLOSE') {
    return new RoboflowError('ERR_TRUNCATED_BODY', `response body ended early${where}: ${message}`, opts);
  }
  return new RoboflowError(fallback, `${message}${where}`, opts);
}

/**
 * `err` naming the object it happened to: transport errors know only the origin they talked
 * to, the source that asked knows the URL. An error that names a URL already is returned as is.
 */
export function withUrl(err: RoboflowError, url: string): RoboflowError {
  if (err.url !== undefined) return err;
  return new RoboflowError(err.code, `${err.message} (${url})`, {
    url,
    cause: err,
    retryable: err.retryable,
    ...(err.status !== undefined ? { status: err.status } : {}),
    ...(err.retryAfterMs !== undefined ? { retryAfterMs: err.retryAfterMs } : {}),
  });
}

export interface BackoffOptions {
  readonly baseDelayMs: number;
  readonly maxDelayMs: number;
  /** Injected for tests; defaults to `Math.random`. */
  readonly random?: () => number;
}

/**
 * The longest delay a timer can hold (2^31−1 ms, ~24.8 days): Node fires a longer one at once,
 * with a warning. Every delay is clamped to it before it reaches a timer.
 */
export const MAX_TIMER_MS = 2 ** 31 - 1;

/**
 * Exponential backoff with full jitter: a uniform pick in `[0, min(max, base · 2^(attempt-1))]`,
 * never less than what the server asked for (`retryAfterMs`), nor less than the code's minimum.
 * `attempt` is the number of the failed attempt, starting at 1. Never more than `maxDelayMs`:
 * a server's delay is honoured up to it (`serverDelayMs`), whatever it asked.
 */
export function backoffDelay(attempt: number, err: RoboflowError, opts: BackoffOptions): number {
  const row = RETRY_TABLE[err.code];
  const maxDelayMs = Math.min(opts.maxDelayMs, MAX_TIMER_MS);
  const min = 'minDelayMs' in row ? Math.min(row.minDelayMs, maxDelayMs) : 0;
  const max = 'maxDelayMs' in row ? Math.min(row.maxDelayMs, maxDelayMs) : maxDelayMs;
  const ceiling = Math.min(max, opts.baseDelayMs * 2 ** Math.max(0, attempt - 1));
  const jittered = (opts.random ?? Math.random)() * ceiling;
  return Math.max(jittered, min, serverDelayMs(err, maxDelayMs) ?? 0);
}

/** The delay the server asked for (`retryAfterMs`), capped at `maxDelayMs` (and a timer's limit). */
export function serverDelayMs(err: RoboflowError, maxDelayMs: number): number | undefined {
  return err.retryAfterMs === undefined ? undefined : Math.min(err.retryAfterMs, maxDelayMs, MAX_TIMER_MS);
}

/**
 * Parses `Retry-After` (seconds or an HTTP date) and `x-oss-qos-delay-time` (milliseconds). The
 * value is what the server asked, at most `Number.MAX_SAFE_INTEGER` ms (a hostile or broken
 * server can ask for anything); callers cap it at their own longest wait (`serverDelayMs`).
 */
export function retryAfterFromHeaders(
  get: (name: string) => string | undefined,
  now: number = Date.now(),
): number | undefined {
  const clamp = (ms: number) => (Number.isNaN(ms) ? undefined : Math.min(Math.max(0, ms), Number.MAX_SAFE_INTEGER));
  const oss = get('x-oss-qos-delay-time');
  if (oss !== undefined && /^\d+$/.test(oss.trim())) return clamp(Number(oss.trim()));
  const ra = get('retry-after');
  if (ra === undefined) return undefined;
  const trimmed = ra.trim();
  if (/^\d+(\.\d+)?$/.test(trimmed)) return clamp(Math.round(Number(trimmed) * 1000));
  const date = Date.parse(trimmed);
  return Number.isNaN(date) ? undefined : clamp(date - now);
}

/** The error an aborted operation throws, carrying the signal's reason when it is ours. */
export function abortError(signal: AbortSignal | undefined, what: string): RoboflowError {
  const reason: unknown = signal?.reason;
  if (reason instanceof RoboflowError) return reason;
  return new RoboflowError('ERR_ABORTED', `${what} was aborted`, { cause: reason });
}
