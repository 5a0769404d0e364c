/**
 * The job queue on PostgreSQL (pg): many workers on many machines.
 *
 * Mirrors `sqlite.ts` operation by operation: same methods in the same order, same comments,
 * the same SQL except where the dialect must differ. Semantics common to both:
 *
 * - `submit` adds a job unless its key is taken; `replace` re-queues a done or dead job with that
 *   key (the new spec written over it, attempts reset). `submitMany` does that for a batch in one
 *   transaction.
 * - `claim` takes the job of highest `priority`, oldest (`run_at`, `id`) first among equals, that
 *   is `pending` with `run_at <= now`, or
 *   `claimed`/`running` whose lease has expired. A job reclaimed while `running` has spent its
 *   attempt; if no attempt is left (`attempts >= max_attempts`) it goes `dead` instead of being
 *   handed out ("lease expired after N attempts (worker lost)") and the claim looks again. The
 *   same holds for a `pending` job whose last attempt was released. So `attempts` never exceeds
 *   `max_attempts`.
 * - `start` spends the attempt (`claimed` → `running`); `claim` does not.
 * - `fail` of a merely `claimed` job spends an attempt too: the failure (say, an input that never
 *   downloads) is a try, and without counting it such a job would circle forever.
 * - `release` hands a `claimed` or `running` job back as `pending` without touching `attempts`
 *   or `run_at`: `run_at` is already past, so the job keeps its place at the front of the line.
 *   An attempt that was running stays counted (a job that keeps outliving shutdowns still ends).
 * - `complete` clears `last_error`; `retry` keeps it (it still tells why the job died until the
 *   next attempt overwrites it or the job completes).
 * - A lease-holding call by a worker that no longer holds the lease changes nothing and fails
 *   with `ERR_LEASE_LOST`; a call naming a job that does not exist fails with `ERR_JOB_NOT_FOUND`.
 *
 * PostgreSQL specifics:
 * - Every operation is one statement, atomic by itself. The claim picks its row with
 *   `FOR UPDATE SKIP LOCKED`, so concurrent claimers take different jobs without waiting on each
 *   other. Migrations run in one transaction under an advisory lock, on a connection of their
 *   own that the per-query time limit does not apply to.
 * - Lease and retry times come from the database clock (`now()`): workers on different machines
 *   have clocks that drift apart, and a lease judged by each worker's own clock could be seen as
 *   expired by one while its owner still believes it holds it. One clock decides for everyone.
 * - A pool of a few connections (`poolMax`, default 4). A failed query is not retried here: it
 *   fails with `ERR_QUEUE` (retryable for connection trouble) and the worker's loop retries with
 *   backoff. Errors of idle connections (a server restart) are absorbed; the pool drops those
 *   connections and opens new ones on the next query.
 * - Tables live in their own schema (default `roboflow`), named in every statement rather than
 *   through `search_path`, which a connection string or a pooler could override.
 * - Whatever makes jobs claimable (submit, release, retry, a failure with a retry delay) sends a
 *   notification on the schema's channel; `onWork` subscribers hear of it through one listening
 *   connection (`wakeups.ts`), so idle workers need not poll.
 */

import pg from 'pg';
import { RoboflowError } from '../errors.js';
import type { Logger } from '../log.js';
import type { FailOptions, JobQueue, JobRecord, JobSpec, JobStatus, SubmitOptions, SubmitOutcome } from '../types.js';
import {
  JOB_STATUSES,
  checkAttempt,
  checkBackoffMs,
  checkLeaseMs,
  checkListLimit,
  checkOwner,
  checkStatus,
  closedError,
  leaseRefusal,
  notDeadRefusal,
  parseJobId,
  resultJson,
  truncateError,
  type JobLeaseState,
  type LeaseOperation,
} from './checks.js';
import { POSTGRES_MIGRATIONS, latestVersion } from './migrations.js';
import { parseJobSpecs } from './spec.js';
import { KEEPALIVE_INITIAL_DELAY_MS, PostgresWakeups, wakeChannel, wakePayload } from './wakeups.js';

/** Connections per queue: a worker holds one at a time; a few more cover heartbeats and listings. */
const DEFAULT_POOL_MAX = 4;
/**
 * Default time limit of one queue query, and of opening a connection. A worker passes a shorter
 * one derived from its heartbeat interval (`queryTimeoutFor`), so that a network partition, where
 * packets vanish and nothing ever answers, fails a lease renewal in time for the next one instead
 * of blocking it until TCP gives up (minutes).
 */
export const DEFAULT_QUERY_TIMEOUT_MS = 10_000;
/** Slack the server-side `statement_timeout` leaves the client-side timer, which decides. */
const SERVER_TIMEOUT_SLACK_MS = 100;
/** First key of the migration advisory lock (the second is the schema's hash): "RoFl". */
const MIGRATION_LOCK_CLASS = 0x526f466c;
/**
 * Longest a migration's DDL waits for a table lock once it holds the advisory lock. Its ACCESS
 * EXCLUSIVE request queues every later query on the table behind it, so a migration stuck behind
 * a long transaction fails (and the worker retries) rather than stalling every other worker.
 * Waiting for the advisory lock itself, i.e. for another worker's migration, has no limit.
 */
const MIGRATION_DDL_LOCK_TIMEOUT_MS = 60_000;
/** Identifiers (schema and channel names) are at most 63 bytes; PostgreSQL cuts longer ones. */
const MAX_IDENTIFIER_BYTES = 63;

export interface PostgresJobQueueOptions {
  /** libpq-style connection string, without our `schema` parameter. */
  readonly connectionString: string;
  /** Schema holding the queue's tables; created if missing. */
  readonly schema: string;
  /** The queue URL as errors show it (password masked). */
  readonly displayUrl: string;
  /** `application_name` of the connections, as `pg_stat_activity` shows them. (Default: `roboflow`) */
  readonly applicationName?: string;
  /** Most connections the pool opens. (Default: 4) */
  readonly poolMax?: number;
  /**
   * Time limit of one query and of opening a connection, in ms. A query that has not answered by
   * then fails with a retryable `ERR_QUEUE` and its connection is destroyed, not reused; the
   * server also cancels the statement (`statement_timeout`) so it does not run on unseen.
   * A schema migration is not held to it (only its connecting is).
   * (Default: 10 s; a worker uses `queryTimeoutFor(heartbeatMs)`)
   */
  readonly queryTimeoutMs?: number;
  /** Where a running migration is announced. (Default: nowhere) */
  readonly log?: Logger;
}

/**
 * The query time limit for a worker renewing leases every `heartbeatMs`: half of it, so a renewal
 * stuck in a partition has failed before the next one is due, but at least 250 ms (a loaded
 * database must not fail every query) and at most the default.
 */
export function queryTimeoutFor(heartbeatMs: number): number {
  return Math.min(DEFAULT_QUERY_TIMEOUT_MS, Math.max(250, Math.floor(heartbeatMs / 2)));
}

interface JobRow {
  readonly id: string;
  readonly key: string;
  readonly priority: number;
  readonly inputs: JobRecord['inputs'];
  readonly output: string | null;
  readonly processor: string;
  readonly args: JobRecord['args'];
  readonly status: JobStatus;
  readonly attempts: number;
  readonly max_attempts: number;
  readonly lease_owner: string | null;
  readonly lease_expires_at: Date | null;
  readonly last_error: string | null;
  readonly result: unknown;
  readonly commit_attempt: string | null;
  readonly run_at: Date;
  readonly created_at: Date;
  readonly updated_at: Date;
}

export class PostgresJobQueue implements JobQueue {
  readonly displayUrl: string;
  readonly #pool: pg.Pool;
  /** `"schema".jobs`, for every statement. */
  readonly #jobs: string;
  /** The schema's notification channel. */
  readonly #channel: string;
  readonly #wakeups: PostgresWakeups;
  #closing: Promise<void> | null = null;

  private constructor(pool: pg.Pool, opts: PostgresJobQueueOptions) {
    this.#pool = pool;
    this.#jobs = `${quoteIdent(opts.schema)}.jobs`;
    this.#channel = wakeChannel(opts.schema);
    this.displayUrl = opts.displayUrl;
    this.#wakeups = new PostgresWakeups({
      connectionString: opts.connectionString,
      applicationName: opts.applicationName ?? 'roboflow',
      channel: this.#channel,
      jobsTable: this.#jobs,
      connectTimeoutMs: opts.queryTimeoutMs ?? DEFAULT_QUERY_TIMEOUT_MS,
      queryTimeoutMs: opts.queryTimeoutMs ?? DEFAULT_QUERY_TIMEOUT_MS,
    });
  }

  /** Connects, creating the schema if needed, and brings it up to date. */
  static async open(opts: PostgresJobQueueOptions): Promise<PostgresJobQueue> {
    const timeout = opts.queryTimeoutMs ?? DEFAULT_QUERY_TIMEOUT_MS;
    if (!Number.isFinite(timeout) || timeout <= 0) {
      throw new RoboflowError('ERR_CONFIG', `queue query timeout must be above 0 ms, got ${timeout}`);
    }
    checkSchemaName(opts.schema);
    const pool = new pg.Pool({
      connectionString: opts.connectionString,
      max: opts.poolMax ?? DEFAULT_POOL_MAX,
      application_name: opts.applicationName ?? 'roboflow',
      connectionTimeoutMillis: timeout,
      // Client side: the query fails after `timeout` and the pool, seeing the error, ends the
      // connection, which pg destroys since a query is still outstanding on it. A partitioned
      // socket is never reused.
      query_timeout: timeout,
      // Server side, a little later: a statement that did reach the server is cancelled there
      // rather than holding row locks for a client that has given up on it.
      statement_timeout: timeout + SERVER_TIMEOUT_SLACK_MS,
      keepAlive: true,
    });
    // An idle connection that the server drops (restart, idle timeout) emits 'error' on the pool;
    // without a listener that would crash the process. The pool has already discarded it.
    pool.on('error', () => {});
    try {
      await migrate(pool, opts, timeout);
    } catch (err) {
      await pool.end().catch(() => {});
      throw postgresError(err, opts.displayUrl, 'open');
    }
    return new PostgresJobQueue(pool, opts);
  }

  async submit(spec: JobSpec, opts: SubmitOptions = {}): Promise<JobRecord> {
    const [outcome] = await this.submitMany([spec], opts);
    const job = outcome === undefined ? null : await this.get(outcome.id);
    if (job === null) throw new RoboflowError('ERR_QUEUE', `job queue ${this.displayUrl}: submitted job is gone`);
    return job;
  }

  async submitMany(specs: readonly JobSpec[], opts: SubmitOptions = {}): Promise<SubmitOutcome[]> {
    const checked = parseJobSpecs(specs);
    if (checked.length === 0) return [];
    // A key given twice in one batch is written once (its first spec); the rest find it there.
    const firstOf = new Map<string, number>();
    checked.forEach((spec, i) => {
      if (!firstOf.has(spec.key)) firstOf.set(spec.key, i);
    });
    const rows = JSON.stringify(
      [...firstOf.values()].map((i) => {
        const spec = checked[i] as (typeof checked)[number];
        return {
          key: spec.key,
          inputs: spec.inputs,
          output: spec.output ?? null,
          processor: spec.processor,
          args: spec.args,
          max_attempts: spec.maxAttempts,
          priority: spec.priority,
        };
      }),
    );
    const batch = `ROWS FROM (jsonb_to_recordset($1::jsonb) AS (key text, inputs jsonb, output text, processor text,
      args jsonb, max_attempts integer, priority integer))
      WITH ORDINALITY AS s(key, inputs, output, processor, args, max_attempts, priority, ord)`;
    // One transaction, a few statements whatever the batch's length: re-queue, insert, look up.
    const { replaced, added, found } = await this.transaction('submit', async (client) => {
      const replaced = new Set<string>();
      if (opts.replace === true) {
        const r = await client.query<{ key: string }>(
          `UPDATE ${this.#jobs} AS j SET inputs = s.inputs, output = s.output, processor = s.processor, args = s.args,
             max_attempts = s.max_attempts, priority = s.priority, status = 'pending', attempts = 0,
             last_error = NULL, result = NULL, lease_owner = NULL, lease_expires_at = NULL,
             run_at = now(), updated_at = now()
           FROM ${batch}
           WHERE j.key = s.key AND j.status IN ('done', 'dead')
           RETURNING j.key`,
          [rows],
        );
        for (const row of r.rows) replaced.add(row.key);
      }
      // Keys already there are left out before the insert, which would otherwise use up an id for
      // each; ON CONFLICT covers a concurrent submitter inserting the same key meanwhile.
      const a = await client.query<{ key: string }>(
        `INSERT INTO ${this.#jobs} (key, inputs, output, processor, args, max_attempts, priority, run_at, created_at, updated_at)
         SELECT s.key, s.inputs, s.output, s.processor, s.args, s.max_attempts, s.priority, now(), now(), now()
         FROM ${batch}
         WHERE NOT EXISTS (SELECT 1 FROM ${this.#jobs} AS j WHERE j.key = s.key)
         ORDER BY s.ord
         ON CONFLICT (key) DO NOTHING
         RETURNING key`,
        [rows],
      );
      const added = new Set(a.rows.map((row) => row.key));
      const f = await client.query<{ id: string; key: string; status: JobStatus }>(
        `SELECT id, key, status FROM ${this.#jobs} WHERE key = ANY($1::text[])`,
        [[...firstOf.keys()]],
      );
      if (added.size + replaced.size > 0) await client.query('SELECT pg_notify($1, $2)', [this.#channel, wakePayload(0)]);
      return { replaced, added, found: new Map(f.rows.map((row) => [row.key, row])) };
    });
    return checked.map((spec, i): SubmitOutcome => {
      const row = found.get(spec.key);
      if (row === undefined) throw new RoboflowError('ERR_QUEUE', `job queue ${this.displayUrl}: key ${JSON.stringify(spec.key)} neither added nor found`);
      const first = firstOf.get(spec.key) === i;
      const outcome = first && added.has(spec.key) ? 'added' : first && replaced.has(spec.key) ? 'replaced' : 'exists';
      return { id: String(row.id), key: spec.key, outcome, status: row.status };
    });
  }

  async claim(owner: string, leaseMs: number): Promise<JobRecord | null> {
    checkOwner(owner);
    checkLeaseMs(leaseMs);
    // Each round takes one candidate atomically. A candidate with no attempt left goes dead
    // instead of being handed out, and the next round looks again; every such round retires a
    // job for good, so the loop ends.
    for (;;) {
      const row = await this.write(
        'claim',
        `UPDATE ${this.#jobs} SET
           status = CASE WHEN attempts >= max_attempts THEN 'dead' ELSE 'claimed' END,
           lease_owner = CASE WHEN attempts >= max_attempts THEN NULL ELSE $1 END,
           lease_expires_at = CASE WHEN attempts >= max_attempts THEN NULL ELSE now() + $2::float8 * interval '1 millisecond' END,
           last_error = CASE
             WHEN status = 'running' AND attempts >= max_attempts
               THEN 'lease expired after ' || attempts || ' attempts (worker lost)'
             WHEN attempts >= max_attempts
               THEN 'no attempts left: attempt ' || attempts || ' of ' || max_attempts || ' was released before it finished'
             WHEN status = 'running'
               THEN 'lease expired during attempt ' || attempts || ' (worker lost)'
             ELSE last_error END,
           updated_at = now()
         WHERE id = (
           SELECT id FROM ${this.#jobs}
           WHERE (status = 'pending' AND run_at <= now())
              OR (status IN ('claimed', 'running') AND lease_expires_at < now())
           ORDER BY priority DESC, run_at, id
           LIMIT 1
           FOR UPDATE SKIP LOCKED)
         RETURNING *`,
        [owner, leaseMs],
      );
      if (row === undefined) return null;
      if (row.status === 'claimed') return recordFromRow(row);
    }
  }

  async heartbeat(id: string, owner: string, leaseMs: number): Promise<void> {
    const jobId = parseJobId(id);
    checkOwner(owner);
    checkLeaseMs(leaseMs);
    const row = await this.write(
      'heartbeat',
      `UPDATE ${this.#jobs} SET lease_expires_at = now() + $3::float8 * interval '1 millisecond', updated_at = now()
       WHERE id = $1 AND lease_owner = $2 AND status IN ('claimed', 'running')
       RETURNING *`,
      [jobId, owner, leaseMs],
    );
    if (row === undefined) throw await this.refusal('heartbeat', id, owner);
  }

  async start(id: string, owner: string, leaseMs: number): Promise<JobRecord> {
    const jobId = parseJobId(id);
    checkOwner(owner);
    checkLeaseMs(leaseMs);
    const row = await this.write(
      'start',
      `UPDATE ${this.#jobs} SET status = 'running', attempts = attempts + 1,
         lease_expires_at = now() + $3::float8 * interval '1 millisecond', updated_at = now()
       WHERE id = $1 AND lease_owner = $2 AND status = 'claimed'
       RETURNING *`,
      [jobId, owner, leaseMs],
    );
    if (row === undefined) throw await this.refusal('start', id, owner);
    return recordFromRow(row);
  }

  async commit(id: string, owner: string, attempt: string, leaseMs: number): Promise<JobRecord> {
    const jobId = parseJobId(id);
    checkOwner(owner);
    checkAttempt(attempt);
    checkLeaseMs(leaseMs);
    // Unlike a heartbeat, an expired lease is refused even while no one else has claimed the
    // job: the owner's own deadline has passed, so it may already have fenced itself off, and
    // another worker may claim the job at any moment.
    const row = await this.write(
      'commit',
      `UPDATE ${this.#jobs} SET commit_attempt = $3,
         lease_expires_at = now() + $4::float8 * interval '1 millisecond', updated_at = now()
       WHERE id = $1 AND lease_owner = $2 AND status = 'running' AND lease_expires_at > now()
       RETURNING *`,
      [jobId, owner, attempt, leaseMs],
    );
    if (row === undefined) throw await this.refusal('commit', id, owner);
    return recordFromRow(row);
  }

  async complete(id: string, owner: string, result: unknown): Promise<JobRecord> {
    const jobId = parseJobId(id);
    checkOwner(owner);
    const row = await this.write(
      'complete',
      `UPDATE ${this.#jobs} SET status = 'done', result = $3::jsonb, last_error = NULL,
         lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
       WHERE id = $1 AND lease_owner = $2 AND status IN ('claimed', 'running')
       RETURNING *`,
      [jobId, owner, resultJson(id, result)],
    );
    if (row === undefined) throw await this.refusal('complete', id, owner);
    return recordFromRow(row);
  }

  async fail(id: string, owner: string, error: string, opts: FailOptions): Promise<JobRecord> {
    const jobId = parseJobId(id);
    checkOwner(owner);
    checkBackoffMs(opts.backoffMs);
    // The right-hand sides see the row as it was, so the attempt a claimed job's failure spends
    // is added again where the new count decides between pending and dead.
    const row = await this.write(
      'fail',
      `UPDATE ${this.#jobs} SET
         attempts = attempts + (CASE WHEN status = 'claimed' THEN 1 ELSE 0 END),
         status = CASE
           WHEN $4::boolean AND attempts + (CASE WHEN status = 'claimed' THEN 1 ELSE 0 END) < max_attempts
             THEN 'pending' ELSE 'dead' END,
         run_at = CASE
           WHEN $4::boolean AND attempts + (CASE WHEN status = 'claimed' THEN 1 ELSE 0 END) < max_attempts
             THEN now() + $5::float8 * interval '1 millisecond' ELSE run_at END,
         last_error = $3, lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
       WHERE id = $1 AND lease_owner = $2 AND status IN ('claimed', 'running')
       RETURNING *`,
      [jobId, owner, truncateError(error), opts.retryable, Math.round(opts.backoffMs)],
    );
    if (row === undefined) throw await this.refusal('fail', id, owner);
    if (row.status === 'pending') await this.notify(Math.round(opts.backoffMs));
    return recordFromRow(row);
  }

  async release(id: string, owner: string): Promise<void> {
    const jobId = parseJobId(id);
    checkOwner(owner);
    const row = await this.write(
      'release',
      `UPDATE ${this.#jobs} SET status = 'pending', lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
       WHERE id = $1 AND lease_owner = $2 AND status IN ('claimed', 'running')
       RETURNING *`,
      [jobId, owner],
    );
    if (row === undefined) throw await this.refusal('release', id, owner);
    await this.notify(0);
  }

  async retry(id: string): Promise<JobRecord> {
    const jobId = parseJobId(id);
    const row = await this.write(
      'retry',
      `UPDATE ${this.#jobs} SET status = 'pending', attempts = 0, run_at = now(),
         lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
       WHERE id = $1 AND status = 'dead'
       RETURNING *`,
      [jobId],
    );
    if (row !== undefined) {
      await this.notify(0);
      return recordFromRow(row);
    }
    const current = await this.get(id);
    if (current === null) throw new RoboflowError('ERR_JOB_NOT_FOUND', `retry of job ${id}: no such job`);
    throw notDeadRefusal(id, current.status);
  }

  async get(id: string): Promise<JobRecord | null> {
    const jobId = parseJobId(id);
    const row = await this.one('get', `SELECT * FROM ${this.#jobs} WHERE id = $1`, [jobId]);
    return row === undefined ? null : recordFromRow(row);
  }

  async list(filter: { status?: JobStatus; limit?: number } = {}): Promise<JobRecord[]> {
    checkStatus(filter.status);
    const limit = checkListLimit(filter.limit);
    const rows =
      filter.status === undefined
        ? await this.all('list', `SELECT * FROM ${this.#jobs} ORDER BY id DESC LIMIT $1`, [limit])
        : await this.all('list', `SELECT * FROM ${this.#jobs} WHERE status = $2 ORDER BY id DESC LIMIT $1`, [
            limit,
            filter.status,
          ]);
    return rows.map(recordFromRow);
  }

  async counts(): Promise<Record<JobStatus, number>> {
    const rows = (await this.all('counts', `SELECT status, count(*) AS n FROM ${this.#jobs} GROUP BY status`, [])) as unknown as {
      status: JobStatus;
      n: number | string;
    }[];
    const counts = Object.fromEntries(JOB_STATUSES.map((s) => [s, 0])) as Record<JobStatus, number>;
    for (const r of rows) counts[r.status] = Number(r.n);
    return counts;
  }

  onWork(listener: () => void): () => void {
    if (this.#closing !== null) return () => {};
    return this.#wakeups.subscribe(listener);
  }

  async close(): Promise<void> {
    // pg's end() waits for checked-out connections to come back, then closes them all; a second
    // end() would throw, so every caller awaits the first.
    this.#closing ??= Promise.all([this.#wakeups.close(), this.#pool.end().catch(() => {})]).then(() => {});
    return this.#closing;
  }

  /**
   * Tells listening workers that a job is claimable in `delayMs` (0: now). Best effort: the state
   * change has been committed already, and a lost notification only delays a pickup until the
   * next fallback poll, so a failure here does not fail the operation.
   */
  private async notify(delayMs: number): Promise<void> {
    if (this.#closing !== null) return;
    await this.#pool.query('SELECT pg_notify($1, $2)', [this.#channel, wakePayload(delayMs)]).catch(() => {});
  }

  /** Runs `fn` in one transaction on one connection; rolled back when it throws. */
  private async transaction<T>(op: string, fn: (client: pg.PoolClient) => Promise<T>): Promise<T> {
    if (this.#closing !== null) throw closedError(this.displayUrl);
    let client: pg.PoolClient;
    try {
      client = await this.#pool.connect();
    } catch (err) {
      throw postgresError(err, this.displayUrl, op);
    }
    // A checked-out connection has no pool listener; one that drops here must not crash the process.
    const onError = () => {};
    client.on('error', onError);
    let broken: Error | undefined;
    try {
      await client.query('BEGIN');
      const result = await fn(client);
      await client.query('COMMIT');
      return result;
    } catch (err) {
      broken = err as Error;
      await client.query('ROLLBACK').catch(() => {});
      throw postgresError(err, this.displayUrl, op);
    } finally {
      client.off('error', onError);
      // A connection that failed mid-transaction is not trusted again.
      client.release(broken);
    }
  }

  /** Why a lease-holding call matched no row, as the error to throw. */
  private async refusal(op: LeaseOperation, id: string, owner: string): Promise<RoboflowError> {
    const row = (await this.one(op, `SELECT *, lease_expires_at <= now() AS lease_expired FROM ${this.#jobs} WHERE id = $1`, [
      parseJobId(id),
    ])) as (JobRow & { lease_expired: boolean | null }) | undefined;
    const state: JobLeaseState | null =
      row === undefined ? null : { status: row.status, leaseOwner: row.lease_owner, leaseExpired: row.lease_expired === true };
    return leaseRefusal(op, id, owner, state);
  }

  /** One write statement, atomic by itself; returns its first row. */
  private async write(op: string, sql: string, params: readonly unknown[]): Promise<JobRow | undefined> {
    return (await this.run(op, sql, params))[0];
  }

  /** One read; MVCC lets it run beside writes. */
  private async one(op: string, sql: string, params: readonly unknown[]): Promise<JobRow | undefined> {
    return (await this.run(op, sql, params))[0];
  }

  private async all(op: string, sql: string, params: readonly unknown[]): Promise<JobRow[]> {
    return this.run(op, sql, params);
  }

  /** Runs one statement, refusing it after `close()` and mapping driver errors to `ERR_QUEUE`. */
  private async run(op: string, sql: string, params: readonly unknown[]): Promise<JobRow[]> {
    if (this.#closing !== null) throw closedError(this.displayUrl);
    try {
      const res = await this.#pool.query<JobRow>(sql, params as unknown[]);
      return res.rows;
    } catch (err) {
      throw postgresError(err, this.displayUrl, op);
    }
  }
}

function quoteIdent(name: string): string {
  return `"${name.replace(/"/g, '""')}"`;
}

/**
 * Any name PostgreSQL keeps as given: quoting makes every character safe, but a name above 63
 * bytes would be cut (so the schema created and the one looked up would differ) and NUL ends it.
 */
function checkSchemaName(schema: unknown): void {
  if (typeof schema !== 'string' || schema === '' || schema.includes('\0') || Buffer.byteLength(schema) > MAX_IDENTIFIER_BYTES) {
    const bytes = typeof schema === 'string' ? ` (${Buffer.byteLength(schema)} bytes)` : '';
    throw new RoboflowError(
      'ERR_CONFIG',
      `job queue schema ${JSON.stringify(schema)}${bytes} is not a usable PostgreSQL schema name; give 1 to ${MAX_IDENTIFIER_BYTES} bytes without NUL`,
    );
  }
}

/**
 * The recorded schema version, read with plain SELECTs, or null when there is no migrations
 * table yet. Needs no privilege beyond USAGE on the schema and SELECT on `migrations`.
 */
async function recordedVersion(pool: pg.Pool, schema: string): Promise<number | null> {
  const table = `${quoteIdent(schema)}.migrations`;
  const found = await pool.query<{ t: string | null }>('SELECT to_regclass($1)::text AS t', [table]);
  if (found.rows[0]?.t == null) return null;
  const { rows } = await pool.query<{ v: number }>(`SELECT coalesce(max(version), 0)::int AS v FROM ${table}`);
  return rows[0]?.v ?? 0;
}

function newerSchemaError(displayUrl: string, current: number, latest: number): RoboflowError {
  return new RoboflowError(
    'ERR_QUEUE',
    `job queue ${displayUrl} has schema version ${current}, newer than this roboflow knows (${latest}); upgrade roboflow`,
    { retryable: false },
  );
}

/**
 * Applies every migration above the recorded version, all in one transaction. The advisory lock
 * serialises workers that start together: without it two could both see version 0 and both
 * create the tables (or the schema), and one would fail.
 *
 * A schema that is already current is only read, never written: PostgreSQL checks the CREATE
 * privilege for `CREATE TABLE IF NOT EXISTS` even when the table exists, and a worker's role
 * should not need it (SECURITY.md lists the grants). The check and the locked path agree because
 * the locked path reads the version again under the lock.
 *
 * The migration runs on a connection of its own, outside the pool and its per-query time limit:
 * that limit is sized for a lease renewal (a worker's is a fraction of its heartbeat), while a
 * migration rewrites every row and builds indexes, and a second worker waits on the advisory lock
 * for as long as the first one migrates. Under the pool's limit a large queue would fail and roll
 * back its migration on every start. The server-side limits are lifted for the transaction too,
 * whatever the role or database sets by default.
 */
async function migrate(pool: pg.Pool, opts: PostgresJobQueueOptions, connectTimeoutMs: number): Promise<void> {
  const { schema, displayUrl } = opts;
  const latest = latestVersion(POSTGRES_MIGRATIONS);
  const recorded = await recordedVersion(pool, schema);
  if (recorded !== null && recorded > latest) throw newerSchemaError(displayUrl, recorded, latest);
  if (recorded === latest) return;
  const client = new pg.Client({
    connectionString: opts.connectionString,
    application_name: opts.applicationName ?? 'roboflow',
    connectionTimeoutMillis: connectTimeoutMs,
    keepAlive: true,
    keepAliveInitialDelayMillis: KEEPALIVE_INITIAL_DELAY_MS,
  });
  // A connection that drops mid-migration fails the query in flight; the event must not crash the
  // process.
  client.on('error', () => {});
  try {
    await client.connect();
    await client.query('BEGIN');
    await client.query('SET LOCAL statement_timeout = 0');
    await client.query('SET LOCAL lock_timeout = 0');
    await client.query('SELECT pg_advisory_xact_lock($1, hashtext($2))', [MIGRATION_LOCK_CLASS, schema]);
    await client.query(`SET LOCAL lock_timeout = ${MIGRATION_DDL_LOCK_TIMEOUT_MS}`);
    // CREATE SCHEMA IF NOT EXISTS needs the CREATE privilege even when the schema exists; look first.
    const found = await client.query('SELECT 1 FROM pg_namespace WHERE nspname = $1', [schema]);
    if (found.rowCount === 0) await client.query(`CREATE SCHEMA ${quoteIdent(schema)}`);
    await client.query(`SET LOCAL search_path TO ${quoteIdent(schema)}`);
    await client.query(
      `CREATE TABLE IF NOT EXISTS migrations (
         version integer PRIMARY KEY,
         name text NOT NULL,
         applied_at timestamptz NOT NULL DEFAULT now()
       )`,
    );
    const { rows } = await client.query<{ v: number }>('SELECT coalesce(max(version), 0)::int AS v FROM migrations');
    const current = rows[0]?.v ?? 0;
    if (current > latest) throw newerSchemaError(displayUrl, current, latest);
    if (current === latest) {
      await client.query('COMMIT');
      return;
    }
    const started = Date.now();
    // A migration of a large queue takes a while and holds the table; say why the start waits.
    opts.log?.info({ url: displayUrl, fromVersion: current, toVersion: latest }, 'migrating the job queue schema');
    for (const m of POSTGRES_MIGRATIONS) {
      if (m.version <= current) continue;
      await client.query(m.sql);
      await client.query('INSERT INTO migrations (version, name) VALUES ($1, $2)', [m.version, m.name]);
    }
    await client.query('COMMIT');
    opts.log?.info(
      { url: displayUrl, fromVersion: current, toVersion: latest, durationMs: Date.now() - started },
      'migrated the job queue schema',
    );
  } catch (err) {
    await client.query('ROLLBACK').catch(() => {});
    throw err;
  } finally {
    await client.end().catch(() => {});
  }
}

function recordFromRow(row: JobRow): JobRecord {
  return {
    id: String(row.id),
    key: row.key,
    priority: row.priority,
    inputs: row.inputs,
    output: row.output,
    processor: row.processor,
    args: row.args,
    status: row.status,
    attempts: row.attempts,
    maxAttempts: row.max_attempts,
    leaseOwner: row.lease_owner,
    leaseExpiresAt: row.lease_expires_at,
    lastError: row.last_error,
    result: row.result ?? null,
    commitAttempt: row.commit_attempt,
    runAt: row.run_at,
    createdAt: row.created_at,
    updatedAt: row.updated_at,
  };
}

/**
 * Maps a pg error. Connection trouble (refused, reset, terminated, a server shutting down or out
 * of connections) and transaction conflicts are worth retrying: the server comes back. Anything
 * the server rejected on its merits (a wrong password, a missing database, a permission) will not
 * heal by itself.
 */
function postgresError(err: unknown, displayUrl: string, what: string): RoboflowError {
  if (err instanceof RoboflowError) return err;
  const e = err as { code?: unknown; message?: unknown; errors?: unknown };
  let message = typeof e?.message === 'string' ? e.message : String(err);
  // Node reports a refused connection to a name with several addresses as an AggregateError
  // whose own message is empty.
  if (message === '' && Array.isArray(e?.errors)) {
    message = (e.errors as { message?: string }[]).map((x) => x.message ?? String(x)).join('; ');
  }
  const code = typeof e?.code === 'string' ? e.code : undefined;
  const sqlState = code !== undefined && /^[0-9A-Z]{5}$/.test(code) ? code : undefined;
  // Without a SQLSTATE the failure happened below SQL: the socket, the connect timeout, the pool.
  const retryable = sqlState === undefined || ['08', '40', '53', '57'].includes(sqlState.slice(0, 2));
  const detail = sqlState !== undefined ? ` [${sqlState}]` : code !== undefined ? ` [${code}]` : '';
  const hint = retryable && sqlState === undefined ? ' — is the PostgreSQL server running and reachable?' : '';
  return new RoboflowError('ERR_QUEUE', `job queue ${displayUrl}: ${what} failed: ${message}${detail}${hint}`, {
    cause: err,
    url: displayUrl,
    retryable,
  });
}
