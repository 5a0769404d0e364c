/**
 * The front door of the job queue: a queue URL becomes an open `JobQueue`, SQLite or PostgreSQL.
 *
 * Accepted URLs:
 * - `sqlite:///abs/path/file.db`: an absolute path (three slashes).
 * - `sqlite://relative.db`: relative to the working directory (`sqlite://data/q.db` too).
 * - `sqlite::memory:`: a private in-memory queue, gone when closed (tests, demos).
 * - `postgres://user[:password]@host[:port]/db[?schema=name]`, or `postgresql://...`: the tables
 *   live in schema `name` (default `roboflow`), created if missing. Other query parameters
 *   (`sslmode`, `host=/socket/dir`...) go to the driver unchanged.
 *
 * SQLite paths are taken literally (no percent-decoding), so a file name is what it looks like.
 * Passwords never appear in errors: every message shows the URL through `redactUrl`.
 */

import path from 'node:path';
import { RoboflowError } from '../errors.js';
import type { Logger } from '../log.js';
import { redactUrl } from '../redact.js';
import type { JobQueue } from '../types.js';
import { PostgresJobQueue } from './postgres.js';
import { SqliteJobQueue } from './sqlite.js';

export { PostgresJobQueue, queryTimeoutFor, type PostgresJobQueueOptions } from './postgres.js';
export { SqliteJobQueue, type SqliteJobQueueOptions } from './sqlite.js';
export { parseJobSpec, splitCommand, type CheckedJobSpec } from './spec.js';
export { JOB_STATUSES } from './checks.js';

/** Schema used when a PostgreSQL URL names none. */
export const DEFAULT_POSTGRES_SCHEMA = 'roboflow';

/** A schema name we put in SQL unquoted-safe: what PostgreSQL accepts as a plain identifier. */
const SCHEMA_NAME = /^[A-Za-z_][A-Za-z0-9_]{0,62}$/;

const ACCEPTED_FORMS =
  'sqlite:///absolute/path.db, sqlite://relative/path.db, sqlite::memory:, ' +
  'postgres://user@host:port/db[?schema=name] or postgresql://...';

/** Where a queue URL points. */
export type QueueLocation =
  | {
      readonly kind: 'sqlite';
      /** Absolute file path, or `:memory:`. */
      readonly path: string;
      /** The URL as messages show it. */
      readonly displayUrl: string;
    }
  | {
      readonly kind: 'postgres';
      /** What the driver gets: the URL without our `schema` parameter. */
      readonly connectionString: string;
      readonly schema: string;
      /** The URL as messages show it, password removed. */
      readonly displayUrl: string;
    };

function badUrl(url: string, why: string): RoboflowError {
  return new RoboflowError(
    'ERR_CONFIG',
    `queue URL ${JSON.stringify(redactUrl(url))} ${why}; accepted forms: ${ACCEPTED_FORMS}`,
  );
}

/**
 * Parses a queue URL. Throws `ERR_CONFIG` naming the (redacted) URL and the accepted forms.
 * A relative SQLite path is resolved against `cwd` now, so later `chdir`s do not move the queue.
 */
export function parseQueueUrl(url: string, cwd: string = process.cwd()): QueueLocation {
  if (typeof url !== 'string' || url.trim() === '') throw badUrl(String(url ?? ''), 'is empty');
  const trimmed = url.trim();
  if (trimmed === 'sqlite::memory:') {
    return { kind: 'sqlite', path: ':memory:', displayUrl: 'sqlite::memory:' };
  }
  const lower = trimmed.toLowerCase();
  if (lower.startsWith('sqlite://')) {
    const rest = trimmed.slice('sqlite://'.length);
    if (rest === '' || rest === '/') throw badUrl(trimmed, 'names no database file');
    if (rest.includes('?') || rest.includes('#')) {
      throw badUrl(trimmed, 'has a query or fragment; SQLite queue URLs take none');
    }
    if (rest.endsWith('/')) throw badUrl(trimmed, 'names a directory, not a database file');
    const file = path.isAbsolute(rest) ? path.normalize(rest) : path.resolve(cwd, rest);
    return { kind: 'sqlite', path: file, displayUrl: `sqlite://${file}` };
  }
  if (lower.startsWith('postgres://') || lower.startsWith('postgresql://')) {
    let parsed: URL;
    try {
      parsed = new URL(trimmed);
    } catch {
      throw badUrl(trimmed, 'is not a valid URL');
    }
    const schemas = parsed.searchParams.getAll('schema');
    if (schemas.length > 1) throw badUrl(trimmed, 'gives schema more than once');
    const schema = schemas[0] ?? DEFAULT_POSTGRES_SCHEMA;
    if (!SCHEMA_NAME.test(schema)) {
      throw badUrl(trimmed, `has schema ${JSON.stringify(schema)}; use letters, digits and _ (not first), at most 63`);
    }
    parsed.searchParams.delete('schema');
    const connectionString = parsed.toString();
    const display = redactUrl(connectionString);
    const sep = display.includes('?') ? '&' : '?';
    return {
      kind: 'postgres',
      connectionString,
      schema,
      displayUrl: `${display}${sep}schema=${schema}`,
    };
  }
  throw badUrl(trimmed, 'is not a supported job queue');
}

/**
 * Opens the queue a URL names, creating or migrating its schema. The caller closes it.
 * `ERR_CONFIG` for a bad URL; `ERR_QUEUE` (retryable for connection trouble) when the database
 * cannot be reached.
 */
export interface OpenQueueOptions {
  /**
   * Time limit of one PostgreSQL query (and of opening a connection); a worker passes
   * `queryTimeoutFor(heartbeatMs)`. SQLite ignores it: its calls are local and bounded by the
   * busy timeout. (Default: 10 s)
   */
  readonly queryTimeoutMs?: number;
  /** Where a running schema migration is announced (PostgreSQL). (Default: nowhere) */
  readonly log?: Logger;
}

export async function openQueue(url: string, opts: OpenQueueOptions = {}): Promise<JobQueue> {
  const location = parseQueueUrl(url);
  switch (location.kind) {
    case 'sqlite':
      return SqliteJobQueue.open({ path: location.path, displayUrl: location.displayUrl });
    case 'postgres':
      return PostgresJobQueue.open({
        connectionString: location.connectionString,
        schema: location.schema,
        displayUrl: location.displayUrl,
        ...(opts.queryTimeoutMs !== undefined ? { queryTimeoutMs: opts.queryTimeoutMs } : {}),
        ...(opts.log !== undefined ? { log: opts.log } : {}),
      });
    default: {
      const _exhaustive: never = location;
      throw new Error(`unknown queue location ${String(_exhaustive)}`);
    }
  }
}
