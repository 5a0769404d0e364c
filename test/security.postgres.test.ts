// Least privilege on PostgreSQL: a worker role with only the grants SECURITY.md lists (USAGE on
// the schema, SELECT on the tables, UPDATE on the bookkeeping columns; no CREATE, no INSERT)
// opens an up-to-date queue and does a worker's whole job. The role is real, made for this file
// and dropped after it.
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openQueue } from '../src/jobs/index.js';
import type { JobQueue } from '../src/types.js';
import { Worker } from '../src/worker.js';
import { TEST_POSTGRES_URL, postgresBackend } from './fixtures/jobs-backends.js';
import { rejection } from './helpers.js';

const ROLE = `roboflow_worker_${process.pid}_${Math.random().toString(36).slice(2, 8)}`;
const WORKER_COLUMNS = 'status, attempts, lease_owner, lease_expires_at, last_error, result, run_at, updated_at, commit_attempt';

function schemaOf(url: string): string {
  const schema = new URL(url).searchParams.get('schema');
  if (schema === null) throw new Error(`no schema in ${url}`);
  return schema;
}

/** The queue URL with the worker role as its user (trust auth on loopback: no password). */
function asRole(url: string): string {
  const u = new URL(url);
  u.username = ROLE;
  u.password = '';
  return u.toString();
}


describe('a worker role without CREATE or INSERT', () => {
  const backend = postgresBackend();
  const opened: JobQueue[] = [];
  let admin: pg.Pool;
  let url: string;
  let empty: string;
  let dir: string;

  beforeAll(async () => {
    admin = new pg.Pool({ connectionString: TEST_POSTGRES_URL, max: 2 });
    dir = await mkdtemp(path.join(os.tmpdir(), 'roboflow-'));
    // The schema owner (the operator) creates the schema and its tables.
    url = await backend.freshUrl();
    const owner = await openQueue(url);
    await owner.close();
    empty = await backend.freshUrl();
    await admin.query(`CREATE SCHEMA "${schemaOf(empty)}"`);

    const s = `"${schemaOf(url)}"`;
    await admin.query(`CREATE ROLE "${ROLE}" LOGIN`);
    for (const sql of [
      `GRANT USAGE ON SCHEMA ${s} TO "${ROLE}"`,
      `GRANT SELECT ON ${s}.jobs, ${s}.migrations TO "${ROLE}"`,
      `GRANT UPDATE (${WORKER_COLUMNS}) ON ${s}.jobs TO "${ROLE}"`,
      `GRANT USAGE ON SCHEMA "${schemaOf(empty)}" TO "${ROLE}"`,
    ]) {
      await admin.query(sql);
    }
  });

  afterAll(async () => {
    await Promise.all(opened.splice(0).map((q) => q.close()));
    await backend.cleanup();
    // Privileges first (in this database), then the role itself.
    await admin.query(`DROP OWNED BY "${ROLE}"`).catch(() => undefined);
    await admin.query(`DROP ROLE IF EXISTS "${ROLE}"`);
    await admin.end();
    await rm(dir, { recursive: true, force: true });
  });

  async function open(queueUrl: string): Promise<JobQueue> {
    const q = await openQueue(queueUrl);
    opened.push(q);
    return q;
  }

  it('really lacks CREATE and INSERT (the test would prove nothing otherwise)', async () => {
    const { rows } = await admin.query<{ create: boolean; insert: boolean; update_inputs: boolean }>(
      `SELECT has_schema_privilege($1, $2, 'CREATE') AS create,
              has_table_privilege($1, $3, 'INSERT') AS insert,
              has_column_privilege($1, $3, 'inputs', 'UPDATE') AS update_inputs`,
      [ROLE, schemaOf(url), `"${schemaOf(url)}".jobs`],
    );
    expect(rows[0]).toEqual({ create: false, insert: false, update_inputs: false });
  });

  it('opens the up-to-date queue with plain reads and does a worker\'s whole job', async () => {
    const owner = await open(url);
    const input = path.join(dir, 'episode.mcap');
    await writeFile(input, Buffer.alloc(10_000, 7));
    const jobs = [];
    for (let i = 0; i < 3; i++) jobs.push(await owner.submit({ inputs: [{ url: pathToFileURL(input).href }], processor: 'checksum', key: `episode-${i}` }));

    const q = await open(asRole(url));
    const summary = await new Worker({
      queue: q,
      drain: true,
      owner: 'restricted-worker',
      config: { slots: 1, bufferDir: path.join(dir, 'buffer'), pollIntervalMs: 20, leaseMs: 5_000, heartbeatMs: 500 },
    }).run();
    expect(summary).toMatchObject({ done: 3, dead: 0 });
    for (const j of jobs) expect((await owner.get(j.id))?.status).toBe('done');

    // The other lease-holding calls a worker makes: heartbeat, commit, fail, release.
    const a = await owner.submit({ inputs: [{ url: 's3://recordings/a.mcap' }], processor: 'checksum', maxAttempts: 2 });
    const b = await owner.submit({ inputs: [{ url: 's3://recordings/b.mcap' }], processor: 'checksum' });
    expect((await q.claim('w', 60_000))?.id).toBe(a.id);
    await q.heartbeat(a.id, 'w', 60_000);
    await q.start(a.id, 'w', 60_000);
    expect((await q.commit(a.id, 'w', '1-restricted', 60_000)).commitAttempt).toBe('1-restricted');
    expect(await q.fail(a.id, 'w', 'broken input', { retryable: true, backoffMs: 0 })).toMatchObject({ status: 'pending', attempts: 1 });
    // The failed job went to the back of the line (run_at moved); release keeps b's place.
    expect((await q.claim('w', 60_000))?.id).toBe(b.id);
    await q.release(b.id, 'w');
    expect((await q.claim('w', 60_000))?.id).toBe(b.id);
    expect((await q.claim('w', 60_000))?.id).toBe(a.id);
    expect(await q.counts()).toMatchObject({ done: 3, claimed: 2 });
  });

  it('cannot submit jobs, nor rewrite what a job reads', async () => {
    const q = await open(asRole(url));
    const err = await rejection(q.submit({ inputs: [{ url: 's3://recordings/x.mcap' }], processor: 'checksum' }));
    expect(err.code).toBe('ERR_QUEUE');
    expect(err.message).toContain('permission denied');
    expect(err.retryable).toBe(false);
    const direct = new pg.Client({ connectionString: asRole(TEST_POSTGRES_URL) });
    await direct.connect();
    try {
      await expect(direct.query(`UPDATE "${schemaOf(url)}".jobs SET inputs = '[]'::jsonb`)).rejects.toThrow(/permission denied/);
    } finally {
      await direct.end();
    }
  });

  it('cannot set up a schema that is not migrated yet: that stays the owner\'s job', async () => {
    const err = await rejection(openQueue(asRole(empty)));
    expect(err.code).toBe('ERR_QUEUE');
    expect(err.message).toMatch(/permission denied for schema/);
    expect(err.retryable).toBe(false);
  });
});
