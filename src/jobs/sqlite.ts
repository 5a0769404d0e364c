/**
 * The job queue on SQLite (better-sqlite3): zero set-up for one machine, shared safely by several
 * worker processes on it.
 *
 * Mirrors `postgres.ts` operation by operation: same methods in the same order, same comments,
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
 * SQLite specifics:
 * - WAL, `synchronous=NORMAL` (a power cut may lose the last commits, never corrupt the file),
 *   `busy_timeout` 5000 ms. Every write runs in a `BEGIN IMMEDIATE` transaction, which takes the
 *   write lock up front: a deferred transaction that reads and then writes can fail with
 *   SQLITE_BUSY when another process wrote in between, and no timeout helps with that.
 * - Lease and retry times come from this process's clock (`Date.now()`), passed into the SQL.
 *   All processes sharing an SQLite file run on one machine, so they share one clock; SQLite's own
 *   `now` would be the same clock at a coarser grain.
 * - better-sqlite3 is synchronous: a call blocks the event loop while it runs, and up to the busy
 *   timeout while another process holds the write lock. Transactions here are single statements
 *   or two, so that is microseconds in the usual case.
 */

import fs from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import { RoboflowError } from '../errors.js';
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
import { SQLITE_MIGRATIONS, latestVersion } from './migrations.js';
import { parseJobSpecs, type CheckedJobSpec } from './spec.js';

/** How long a write waits for another process's write lock before failing with `ERR_QUEUE`. */
const BUSY_TIMEOUT_MS = 5_000;

export interface SqliteJobQueueOptions {
  /** Absolute path of the database file, or `:memory:` for a private in-memory queue. */
  readonly path: string;
  /** The queue URL as errors show it. */
  readonly displayUrl: string;
}

interface JobRow {
  readonly id: number;
  readonly key: string;
  readonly priority: number;
  readonly inputs: string;
  readonly output: string | null;
  readonly processor: string;
  readonly args: string;
  readonly status: JobStatus;
  readonly attempts: number;
  readonly max_attempts: number;
  readonly lease_owner: string | null;
  readonly lease_expires_at: number | null;
  readonly last_error: string | null;
  readonly result: string | null;
  readonly commit_attempt: string | null;
  readonly run_at: number;
  readonly created_at: number;
  readonly updated_at: number;
}

export class SqliteJobQueue implements JobQueue {
  readonly displayUrl: string;
  readonly #db: Database.Database;
  /** Prepared statements by SQL text: preparing costs more than running these small statements. */
  readonly #statements = new Map<string, Database.Statement>();
  #closed = false;

  private constructor(db: Database.Database, displayUrl: string) {
    this.#db = db;
    this.displayUrl = displayUrl;
  }

  /** Opens (creating if needed) the database file and brings its schema up to date. */
  static async open(opts: SqliteJobQueueOptions): Promise<SqliteJobQueue> {
    if (opts.path !== ':memory:') {
      const dir = path.dirname(opts.path);
      if (!fs.existsSync(dir)) {
        throw new RoboflowError(
          'ERR_CONFIG',
          `job queue ${opts.displayUrl}: directory ${dir} does not exist; create it or choose another queue file`,
        );
      }
    }
    let db: Database.Database;
    try {
      db = new Database(opts.path, { timeout: BUSY_TIMEOUT_MS });
    } catch (err) {
      throw sqliteError(err, opts.displayUrl, 'open');
    }
    try {
      db.pragma(`busy_timeout = ${BUSY_TIMEOUT_MS}`);
      db.pragma('journal_mode = WAL');
      db.pragma('synchronous = NORMAL');
      migrate(db, opts.displayUrl);
    } catch (err) {
      db.close();
      throw sqliteError(err, opts.displayUrl, 'open');
    }
    return new SqliteJobQueue(db, opts.displayUrl);
  }

  async submit(spec: JobSpec, opts: SubmitOptions = {}): Promise<JobRecord> {
    const [outcome] = await this.submitMany([spec], opts);
    const job = outcome === undefined ? null : await this.get(outcome.id);
    if (job === null) throw new RoboflowError('ERR_QUEUE', `job queue ${this.displayUrl}: submitted job is gone`);
    return job;
  }

  async submitMany(specs: readonly JobSpec[], opts: SubmitOptions = {}): Promise<SubmitOutcome[]> {
    const checked = parseJobSpecs(specs);
    const now = Date.now();
    const replace = opts.replace === true;
    // One transaction for the batch: one lock, one WAL commit, whatever its length.
    return this.run('submit', () =>
      this.#db.transaction(() => checked.map((spec) => this.submitOne(spec, replace, now))).immediate(),
    );
  }

  /** One spec of a batch, inside the batch's transaction: re-queue, insert, or find. */
  private submitOne(spec: CheckedJobSpec, replace: boolean, now: number): SubmitOutcome {
    const params = numbered([
      spec.key,
      JSON.stringify(spec.inputs),
      spec.output ?? null,
      spec.processor,
      JSON.stringify(spec.args),
      spec.maxAttempts,
      spec.priority,
      now,
    ]);
    if (replace) {
      const replaced = this.statement(
        `UPDATE jobs SET inputs = $2, output = $3, processor = $4, args = $5, max_attempts = $6, priority = $7,
           status = 'pending', attempts = 0, last_error = NULL, result = NULL,
           lease_owner = NULL, lease_expires_at = NULL, run_at = $8, updated_at = $8
         WHERE key = $1 AND status IN ('done', 'dead')
         RETURNING id`,
      ).get(params) as { id: number } | undefined;
      if (replaced !== undefined) return { id: String(replaced.id), key: spec.key, outcome: 'replaced', status: 'pending' };
    }
    // Looked up before inserting: an insert that conflicts would still use up an id.
    const found = this.statement('SELECT id, status FROM jobs WHERE key = $1').get(numbered([spec.key])) as
      | { id: number; status: JobStatus }
      | undefined;
    if (found === undefined) {
      const added = this.statement(
        `INSERT INTO jobs (key, inputs, output, processor, args, max_attempts, priority, run_at, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $8)
         RETURNING id`,
      ).get(params) as { id: number };
      return { id: String(added.id), key: spec.key, outcome: 'added', status: 'pending' };
    }
    return { id: String(found.id), key: spec.key, outcome: 'exists', status: found.status };
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
        `UPDATE jobs SET
           status = CASE WHEN attempts >= max_attempts THEN 'dead' ELSE 'claimed' END,
           lease_owner = CASE WHEN attempts >= max_attempts THEN NULL ELSE $1 END,
           lease_expires_at = CASE WHEN attempts >= max_attempts THEN NULL ELSE $3 + $2 END,
           last_error = CASE
             WHEN status = 'running' AND attempts >= max_attempts
               THEN 'lease expired after ' || attempts || ' attempts (worker lost)'
             WHEN attempts >= max_attempts
               THEN 'no attempts left: attempt ' || attempts || ' of ' || max_attempts || ' was released before it finished'
             WHEN status = 'running'
               THEN 'lease expired during attempt ' || attempts || ' (worker lost)'
             ELSE last_error END,
           updated_at = $3
         WHERE id = (
           SELECT id FROM jobs
           WHERE (status = 'pending' AND run_at <= $3)
              OR (status IN ('claimed', 'running') AND lease_expires_at < $3)
           ORDER BY priority DESC, run_at, id
           LIMIT 1)
         RETURNING *`,
        [owner, leaseMs, Date.now()],
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
      `UPDATE jobs SET lease_expires_at = $4 + $3, updated_at = $4
       WHERE id = $1 AND lease_owner = $2 AND status IN ('claimed', 'running')
       RETURNING *`,
      [jobId, owner, leaseMs, Date.now()],
    );
    if (row === undefined) throw await this.refusal('heartbeat', id, owner);
  }

  async start(id: string, owner: string, leaseMs: number): Promise<JobRecord> {
    const jobId = parseJobId(id);
    checkOwner(owner);
    checkLeaseMs(leaseMs);
    const row = await this.write(
      'start',
      `UPDATE jobs SET status = 'running', attempts = attempts + 1,
         lease_expires_at = $4 + $3, updated_at = $4
       WHERE id = $1 AND lease_owner = $2 AND status = 'claimed'
       RETURNING *`,
      [jobId, owner, leaseMs, Date.now()],
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
    const now = Date.now();
    const row = await this.write(
      'commit',
      `UPDATE jobs SET commit_attempt = $3, lease_expires_at = $5 + $4, updated_at = $5
       WHERE id = $1 AND lease_owner = $2 AND status = 'running' AND lease_expires_at > $5
       RETURNING *`,
      [jobId, owner, attempt, leaseMs, now],
    );
    if (row === undefined) throw await this.refusal('commit', id, owner);
    return recordFromRow(row);
  }

  async complete(id: string, owner: string, result: unknown): Promise<JobRecord> {
    const jobId = parseJobId(id);
    checkOwner(owner);
    const row = await this.write(
      'complete',
      `UPDATE jobs SET status = 'done', result = $3, last_error = NULL,
         lease_owner = NULL, lease_expires_at = NULL, updated_at = $4
       WHERE id = $1 AND lease_owner = $2 AND status IN ('claimed', 'running')
       RETURNING *`,
      [jobId, owner, resultJson(id, result), Date.now()],
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
      `UPDATE jobs SET
         attempts = attempts + (CASE WHEN status = 'claimed' THEN 1 ELSE 0 END),
         status = CASE
           WHEN $4 AND attempts + (CASE WHEN status = 'claimed' THEN 1 ELSE 0 END) < max_attempts
             THEN 'pending' ELSE 'dead' END,
         run_at = CASE
           WHEN $4 AND attempts + (CASE WHEN status = 'claimed' THEN 1 ELSE 0 END) < max_attempts
             THEN $6 + $5 ELSE run_at END,
         last_error = $3, lease_owner = NULL, lease_expires_at = NULL, updated_at = $6
       WHERE id = $1 AND lease_owner = $2 AND status IN ('claimed', 'running')
       RETURNING *`,
      [jobId, owner, truncateError(error), opts.retryable ? 1 : 0, Math.round(opts.backoffMs), Date.now()],
    );
    if (row === undefined) throw await this.refusal('fail', id, owner);
    return recordFromRow(row);
  }

  async release(id: string, owner: string): Promise<void> {
    const jobId = parseJobId(id);
    checkOwner(owner);
    const row = await this.write(
      'release',
      `UPDATE jobs SET status = 'pending', lease_owner = NULL, lease_expires_at = NULL, updated_at = $3
       WHERE id = $1 AND lease_owner = $2 AND status IN ('claimed', 'running')
       RETURNING *`,
      [jobId, owner, Date.now()],
    );
    if (row === undefined) throw await this.refusal('release', id, owner);
  }

  async retry(id: string): Promise<JobRecord> {
    const jobId = parseJobId(id);
    const row = await this.write(
      'retry',
      `UPDATE jobs SET status = 'pending', attempts = 0, run_at = $2,
         lease_owner = NULL, lease_expires_at = NULL, updated_at = $2
       WHERE id = $1 AND status = 'dead'
       RETURNING *`,
      [jobId, Date.now()],
    );
    if (row !== undefined) return recordFromRow(row);
    const current = await this.get(id);
    if (current === null) throw new RoboflowError('ERR_JOB_NOT_FOUND', `retry of job ${id}: no such job`);
    throw notDeadRefusal(id, current.status);
  }

  async get(id: string): Promise<JobRecord | null> {
    const jobId = parseJobId(id);
    const row = await this.one('get', 'SELECT * FROM jobs WHERE id = $1', [jobId]);
    return row === undefined ? null : recordFromRow(row);
  }

  async list(filter: { status?: JobStatus; limit?: number } = {}): Promise<JobRecord[]> {
    checkStatus(filter.status);
    const limit = checkListLimit(filter.limit);
    const rows =
      filter.status === undefined
        ? await this.all('list', 'SELECT * FROM jobs ORDER BY id DESC LIMIT $1', [limit])
        : await this.all('list', 'SELECT * FROM jobs WHERE status = $2 ORDER BY id DESC LIMIT $1', [
            limit,
            filter.status,
          ]);
    return rows.map(recordFromRow);
  }

  async counts(): Promise<Record<JobStatus, number>> {
    const rows = (await this.all('counts', 'SELECT status, count(*) AS n FROM jobs GROUP BY status', [])) as unknown as {
      status: JobStatus;
      n: number | string;
    }[];
    const counts = Object.fromEntries(JOB_STATUSES.map((s) => [s, 0])) as Record<JobStatus, number>;
    for (const r of rows) counts[r.status] = Number(r.n);
    return counts;
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#statements.clear();
    this.#db.close();
  }

  /** Why a lease-holding call matched no row, as the error to throw. */
  private async refusal(op: LeaseOperation, id: string, owner: string): Promise<RoboflowError> {
    const row = await this.one(op, 'SELECT * FROM jobs WHERE id = $1', [parseJobId(id)]);
    const state: JobLeaseState | null =
      row === undefined
        ? null
        : {
            status: row.status,
            leaseOwner: row.lease_owner,
            leaseExpired: row.lease_expires_at !== null && row.lease_expires_at <= Date.now(),
          };
    return leaseRefusal(op, id, owner, state);
  }

  /** One write statement, in its own `BEGIN IMMEDIATE` transaction; returns its first row. */
  private async write(op: string, sql: string, params: readonly unknown[]): Promise<JobRow | undefined> {
    return this.run(op, () => {
      const stmt = this.statement(sql);
      return this.#db.transaction(() => stmt.get(numbered(params)) as JobRow | undefined).immediate();
    });
  }

  /** One read; WAL lets it run beside another process's write. */
  private async one(op: string, sql: string, params: readonly unknown[]): Promise<JobRow | undefined> {
    return this.run(op, () => this.statement(sql).get(numbered(params)) as JobRow | undefined);
  }

  private async all(op: string, sql: string, params: readonly unknown[]): Promise<JobRow[]> {
    return this.run(op, () => this.statement(sql).all(numbered(params)) as JobRow[]);
  }

  private statement(sql: string): Database.Statement {
    let stmt = this.#statements.get(sql);
    if (stmt === undefined) {
      stmt = this.#db.prepare(sql);
      this.#statements.set(sql, stmt);
    }
    return stmt;
  }

  /** Runs database work, refusing it after `close()` and mapping driver errors to `ERR_QUEUE`. */
  private run<T>(op: string, fn: () => T): T {
    if (this.#closed) throw closedError(this.displayUrl);
    try {
      return fn();
    } catch (err) {
      throw sqliteError(err, this.displayUrl, op);
    }
  }
}

/**
 * better-sqlite3 binds `$1`, `$2`... as named parameters `1`, `2`...: numbering them like
 * PostgreSQL keeps the SQL of the two backends the same text.
 */
function numbered(params: readonly unknown[]): Record<string, unknown> {
  const named: Record<string, unknown> = {};
  params.forEach((value, i) => {
    named[String(i + 1)] = value;
  });
  return named;
}

/** Applies every migration above the recorded version, all in one `BEGIN IMMEDIATE` transaction. */
function migrate(db: Database.Database, displayUrl: string): void {
  const latest = latestVersion(SQLITE_MIGRATIONS);
  db.transaction(() => {
    db.exec(
      `CREATE TABLE IF NOT EXISTS migrations (
         version INTEGER PRIMARY KEY,
         name TEXT NOT NULL,
         applied_at INTEGER NOT NULL
       )`,
    );
    const { v: current } = db.prepare('SELECT coalesce(max(version), 0) AS v FROM migrations').get() as { v: number };
    if (current > latest) {
      throw new RoboflowError(
        'ERR_QUEUE',
        `job queue ${displayUrl} has schema version ${current}, newer than this roboflow knows (${latest}); upgrade roboflow`,
        { retryable: false },
      );
    }
    for (const m of SQLITE_MIGRATIONS) {
      if (m.version <= current) continue;
      db.exec(m.sql);
      db.prepare('INSERT INTO migrations (version, name, applied_at) VALUES (?, ?, ?)').run(m.version, m.name, Date.now());
    }
  }).immediate();
}

function recordFromRow(row: JobRow): JobRecord {
  return {
    id: String(row.id),
    key: row.key,
    priority: row.priority,
    inputs: JSON.parse(row.inputs) as JobRecord['inputs'],
    output: row.output,
    processor: row.processor,
    args: JSON.parse(row.args) as JobRecord['args'],
    status: row.status,
    attempts: row.attempts,
    maxAttempts: row.max_attempts,
    leaseOwner: row.lease_owner,
    leaseExpiresAt: row.lease_expires_at === null ? null : new Date(row.lease_expires_at),
    lastError: row.last_error,
    result: row.result === null ? null : (JSON.parse(row.result) as unknown),
    commitAttempt: row.commit_attempt,
    runAt: new Date(row.run_at),
    createdAt: new Date(row.created_at),
    updatedAt: new Date(row.updated_at),
  };
}

/**
 * Maps a better-sqlite3 error. Lock contention that outlasted the busy timeout is worth retrying
 * (another process will let go); a full disk has its own code; anything else (a corrupt or
 * read-only file, a file that is not a database) will not heal by itself.
 */
function sqliteError(err: unknown, displayUrl: string, what: string): RoboflowError {
  if (err instanceof RoboflowError) return err;
  const e = err as { code?: unknown; message?: unknown };
  const code = typeof e?.code === 'string' ? e.code : '';
  const message = typeof e?.message === 'string' ? e.message : String(err);
  const opts = { cause: err, url: displayUrl };
  if (code.startsWith('SQLITE_BUSY') || code.startsWith('SQLITE_LOCKED')) {
    return new RoboflowError(
      'ERR_QUEUE',
      `job queue ${displayUrl}: ${what} waited ${BUSY_TIMEOUT_MS} ms for another process's write lock (${message})`,
      { ...opts, retryable: true },
    );
  }
  if (code === 'SQLITE_FULL') {
    return new RoboflowError('ERR_NO_SPACE', `job queue ${displayUrl}: ${what} failed, disk full (${message})`, opts);
  }
  return new RoboflowError('ERR_QUEUE', `job queue ${displayUrl}: ${what} failed: ${message}`, {
    ...opts,
    retryable: false,
  });
}
