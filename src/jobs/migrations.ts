/**
 * Schema migrations of the job queue, both dialects side by side so that a change to one is seen
 * next to the other. Each backend applies, on open and inside one transaction, every migration
 * whose version is above the highest recorded in its `migrations` table (SQLite under
 * `BEGIN IMMEDIATE`, PostgreSQL under an advisory lock, so workers starting together do not race).
 *
 * Append new migrations; never edit one that has shipped.
 *
 * Columns (both dialects):
 * - `id`: assigned by the database, never reused; the API hands it out as a string.
 * - `inputs`, `args`, `result`: JSON.
 * - `status`: one of `JobStatus`; `attempts` counts starts (see the glossary in types.ts).
 * - `lease_owner`, `lease_expires_at`: set while `claimed` or `running`, null otherwise.
 * - `run_at`: not claimable before; `created_at`, `updated_at`: bookkeeping.
 * - `commit_attempt` (version 2): the attempt last authorised to publish the job's output (see
 *   `JobQueue.commit` and README "Output commit protocol"); null until one is. Kept through later
 *   claims, so the next attempt knows whose half-published output it may have to clean up.
 * Times are `timestamptz` in PostgreSQL and integer milliseconds since the epoch in SQLite.
 *
 * - `key` (version 3): unique; given by the submitter or derived from the spec (`deriveJobKey`). A submit
 *   whose key is taken adds nothing. Jobs from before version 3 got `id:<id>`.
 * - `priority` (version 3): higher is claimed first.
 *
 * One index serves the claim query: the active jobs ordered by `(priority DESC, run_at, id)`. The
 * claim scans it from the front and skips the few rows whose lease is still live (at most one per
 * worker slot), so it stays cheap however many finished jobs the table holds.
 */

export interface Migration {
  readonly version: number;
  readonly name: string;
  readonly sql: string;
}

export const SQLITE_MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    name: 'create jobs',
    sql: `
      CREATE TABLE jobs (
        id               INTEGER PRIMARY KEY AUTOINCREMENT,
        inputs           TEXT    NOT NULL,
        output           TEXT,
        processor        TEXT    NOT NULL,
        args             TEXT    NOT NULL DEFAULT '{}',
        status           TEXT    NOT NULL DEFAULT 'pending'
                         CHECK (status IN ('pending', 'claimed', 'running', 'done', 'dead')),
        attempts         INTEGER NOT NULL DEFAULT 0,
        max_attempts     INTEGER NOT NULL CHECK (max_attempts BETWEEN 1 AND 100),
        lease_owner      TEXT,
        lease_expires_at INTEGER,
        last_error       TEXT,
        result           TEXT,
        run_at           INTEGER NOT NULL,
        created_at       INTEGER NOT NULL,
        updated_at       INTEGER NOT NULL
      );
      CREATE INDEX jobs_claim_idx ON jobs (run_at, id) WHERE status IN ('pending', 'claimed', 'running');
      CREATE INDEX jobs_status_idx ON jobs (status, id);
    `,
  },
  {
    version: 2,
    name: 'output commit attempt',
    sql: `ALTER TABLE jobs ADD COLUMN commit_attempt TEXT;`,
  },
  {
    version: 3,
    name: 'job keys and priorities',
    // SQLite adds a NOT NULL column only with a default; every insert writes the key.
    sql: `
      ALTER TABLE jobs ADD COLUMN key TEXT;
      ALTER TABLE jobs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
      UPDATE jobs SET key = 'id:' || id;
      CREATE UNIQUE INDEX jobs_key_idx ON jobs (key);
      DROP INDEX jobs_claim_idx;
      CREATE INDEX jobs_claim_idx ON jobs (priority DESC, run_at, id) WHERE status IN ('pending', 'claimed', 'running');
    `,
  },
];

export const POSTGRES_MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    name: 'create jobs',
    sql: `
      CREATE TABLE jobs (
        id               bigint  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        inputs           jsonb   NOT NULL,
        output           text,
        processor        text    NOT NULL,
        args             jsonb   NOT NULL DEFAULT '{}',
        status           text    NOT NULL DEFAULT 'pending'
                         CHECK (status IN ('pending', 'claimed', 'running', 'done', 'dead')),
        attempts         integer NOT NULL DEFAULT 0,
        max_attempts     integer NOT NULL CHECK (max_attempts BETWEEN 1 AND 100),
        lease_owner      text,
        lease_expires_at timestamptz,
        last_error       text,
        result           jsonb,
        run_at           timestamptz NOT NULL DEFAULT now(),
        created_at       timestamptz NOT NULL DEFAULT now(),
        updated_at       timestamptz NOT NULL DEFAULT now()
      );
      CREATE INDEX jobs_claim_idx ON jobs (run_at, id) WHERE status IN ('pending', 'claimed', 'running');
      CREATE INDEX jobs_status_idx ON jobs (status, id);
    `,
  },
  {
    version: 2,
    name: 'output commit attempt',
    sql: `ALTER TABLE jobs ADD COLUMN commit_attempt text;`,
  },
  {
    version: 3,
    name: 'job keys and priorities',
    sql: `
      ALTER TABLE jobs ADD COLUMN key text;
      ALTER TABLE jobs ADD COLUMN priority integer NOT NULL DEFAULT 0;
      UPDATE jobs SET key = 'id:' || id;
      ALTER TABLE jobs ALTER COLUMN key SET NOT NULL;
      CREATE UNIQUE INDEX jobs_key_idx ON jobs (key);
      DROP INDEX jobs_claim_idx;
      CREATE INDEX jobs_claim_idx ON jobs (priority DESC, run_at, id) WHERE status IN ('pending', 'claimed', 'running');
    `,
  },
];

/** The highest version a list of migrations reaches. */
export function latestVersion(migrations: readonly Migration[]): number {
  return migrations.reduce((max, m) => Math.max(max, m.version), 0);
}
