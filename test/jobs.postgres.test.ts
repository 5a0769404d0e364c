// PostgreSQL queue specifics the contract suite does not cover: migrations of a large store under
// a worker's short query time limit, the listening connection in a silent partition, and schema
// names that need quoting or are long in bytes.
import { Writable } from 'node:stream';
import { afterAll, describe, expect, it } from 'vitest';
import pg from 'pg';
import { PartitionProxy } from '../chaos/partition-proxy.js';
import { createLogger } from '../src/log.js';
import { POSTGRES_MIGRATIONS } from '../src/jobs/migrations.js';
import { PostgresJobQueue } from '../src/jobs/postgres.js';
import { PostgresWakeups, wakeChannel } from '../src/jobs/wakeups.js';
import type { JobQueue } from '../src/types.js';
import { TEST_POSTGRES_URL, waitFor } from './fixtures/jobs-backends.js';
import { rejection } from './helpers.js';
import { describeFull } from './tier.js';

const prefix = `roboflow_pgtest_${process.pid}_${Math.random().toString(36).slice(2, 8)}`;
const quote = (name: string) => `"${name.replace(/"/g, '""')}"`;

describe('wake-up channel names', () => {
  it('stay within 63 bytes, however many bytes the schema name has per character, and stay apart', () => {
    // 26 characters but 50 bytes: the plain channel would be 40 characters and 64 bytes.
    const wide = `${'ü'.repeat(24)}"x`;
    expect(Buffer.byteLength(wakeChannel(wide))).toBeLessThanOrEqual(63);
    expect(wakeChannel(wide)).not.toBe(wakeChannel(`${'ü'.repeat(24)}"y`));
    // A name that fits is used as it is.
    expect(wakeChannel('roboflow')).toBe('roboflow_jobs_roboflow');
    expect(wakeChannel('ü'.repeat(24))).toBe(`roboflow_jobs_${'ü'.repeat(24)}`);
  });
});

describeFull('PostgreSQL queue: migrations, listener liveness, schema names', () => {
  const open: JobQueue[] = [];
  const schemas: string[] = [];
  const admin = new pg.Pool({ connectionString: TEST_POSTGRES_URL, max: 2 });

  afterAll(async () => {
    await Promise.all(open.splice(0).map((q) => q.close()));
    for (const schema of schemas) await admin.query(`DROP SCHEMA IF EXISTS ${quote(schema)} CASCADE`);
    await admin.end();
  });

  async function openAt(schema: string, extra: Partial<Parameters<typeof PostgresJobQueue.open>[0]> = {}) {
    const q = await PostgresJobQueue.open({
      connectionString: TEST_POSTGRES_URL,
      schema,
      displayUrl: `${TEST_POSTGRES_URL}?schema=${encodeURIComponent(schema)}`,
      ...extra,
    });
    open.push(q);
    return q;
  }

  it('migrates a large version 2 store under a short query time limit, two workers at once, and says so in the log', async () => {
    const schema = `${prefix}_large`;
    schemas.push(schema);
    const rows = 80_000;
    const v1 = POSTGRES_MIGRATIONS[0]?.sql as string;
    const v2 = POSTGRES_MIGRATIONS[1]?.sql as string;
    const setup = await admin.connect();
    try {
      await setup.query(`CREATE SCHEMA ${quote(schema)}; SET search_path TO ${quote(schema)};
        ${v1} ${v2}
        CREATE TABLE migrations (version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now());
        INSERT INTO migrations (version, name) VALUES (1, 'create jobs'), (2, 'output commit attempt');
        INSERT INTO jobs (inputs, processor, max_attempts)
          SELECT jsonb_build_array(jsonb_build_object('url', 's3://b/old-' || i)), 'checksum', 3 FROM generate_series(1, ${rows}) AS i;
        RESET search_path;`);
    } finally {
      setup.release();
    }
    const lines: string[] = [];
    const log = createLogger({
      pretty: false,
      destination: new Writable({
        write(chunk: Buffer, _enc, done) {
          lines.push(...chunk.toString().split('\n').filter((l) => l !== ''));
          done();
        },
      }),
    });
    // A worker's limit, far shorter than rewriting every row and building the key index takes;
    // the second worker waits on the advisory lock for as long as the first migrates.
    const queryTimeoutMs = 300;
    const [a, b] = await Promise.all([openAt(schema, { queryTimeoutMs, log }), openAt(schema, { queryTimeoutMs, log })]);
    const { rows: check } = await admin.query(
      `SELECT (SELECT max(version) FROM ${quote(schema)}.migrations) AS version,
              (SELECT count(*)::int FROM ${quote(schema)}.jobs WHERE key = 'id:' || id AND priority = 0) AS keyed`,
    );
    expect(check[0]).toEqual({ version: 3, keyed: rows });
    expect((await a.get('1'))?.key).toBe('id:1');
    expect((await b.get(String(rows)))?.key).toBe(`id:${rows}`);
    // One of the two migrated, and said when it began and how long it took.
    const logged = lines.map((l) => JSON.parse(l) as Record<string, unknown>);
    const began = logged.filter((l) => l.msg === 'migrating the job queue schema');
    const done = logged.filter((l) => l.msg === 'migrated the job queue schema');
    expect(began).toHaveLength(1);
    expect(began[0]).toMatchObject({ fromVersion: 2, toVersion: 3 });
    expect(done).toHaveLength(1);
    expect(done[0]).toMatchObject({ fromVersion: 2, toVersion: 3 });
    expect(typeof done[0]?.durationMs).toBe('number');
    // The migration outlasted the limit it was no longer held to.
    expect(done[0]?.durationMs as number).toBeGreaterThan(queryTimeoutMs);
  }, 60_000);

  it('tears down a listening connection that stalls in a silent partition, and listens again after the heal', async () => {
    const schema = `${prefix}_listen`;
    schemas.push(schema);
    await openAt(schema);
    const channel = wakeChannel(schema);
    const target = new URL(TEST_POSTGRES_URL);
    const proxy = await PartitionProxy.start(target.hostname, Number(target.port || 5432));
    const proxied = new URL(TEST_POSTGRES_URL);
    proxied.port = String(proxy.port);
    const wakeups = new PostgresWakeups({
      connectionString: proxied.toString(),
      applicationName: 'roboflow_test_listen',
      channel,
      jobsTable: `${quote(schema)}.jobs`,
      connectTimeoutMs: 500,
      queryTimeoutMs: 500,
      livenessIntervalMs: 200,
    });
    let wakes = 0;
    wakeups.subscribe(() => {
      wakes += 1;
    });
    const notified = async (what: string) => {
      const before = wakes;
      await waitFor(what, async () => {
        if (wakes > before) return true;
        await admin.query('SELECT pg_notify($1, $2)', [channel, '']);
        await new Promise((r) => setTimeout(r, 50));
        return null;
      });
    };
    try {
      await notified('the first wake-up');
      expect(proxy.accepted).toBe(1);
      proxy.partition();
      // Nothing resets the connection; only the unanswered liveness query shows it is gone, and
      // the listener tries another (which the partition holds up too).
      await waitFor('a new listening connection', async () => (proxy.accepted >= 2 ? true : null));
      const before = wakes;
      proxy.heal();
      // Listening again: one wake-up for what may have been missed, then notifications arrive.
      await waitFor('the wake-up on reconnecting', async () => (wakes > before ? true : null));
      await notified('a wake-up after the heal');
    } finally {
      proxy.heal();
      await wakeups.close();
      await proxy.close();
    }
  }, 60_000);

  it('works in a schema whose name needs quoting or is long in bytes, and wakes its listeners', async () => {
    // The second name fits in 63 bytes, but its plain channel does not (and would in characters).
    for (const name of ['we"ird', `${'ü'.repeat(22)}"q`]) {
      const schema = `${name}_${process.pid}`;
      schemas.push(schema);
      if (name !== 'we"ird') expect(Buffer.byteLength(`roboflow_jobs_${schema}`)).toBeGreaterThan(63);
      const q = await openAt(schema);
      const other = await openAt(schema);
      let wakes = 0;
      const unsubscribe = q.onWork(() => {
        wakes += 1;
      });
      // Submits send a notification in their transaction; a bad channel would fail every one.
      await waitFor(`a wake-up in schema ${schema}`, async () => {
        if (wakes > 0) return true;
        await other.submitMany([{ inputs: [{ url: `s3://b/${Date.now()}` }], processor: 'checksum' }]);
        await new Promise((r) => setTimeout(r, 50));
        return null;
      });
      unsubscribe();
      expect((await q.counts()).pending).toBeGreaterThan(0);
      const { rows } = await admin.query('SELECT 1 FROM pg_namespace WHERE nspname = $1', [schema]);
      expect(rows).toHaveLength(1);
    }
  });

  it('refuses a schema name PostgreSQL would cut or cannot hold, naming it', async () => {
    for (const schema of ['', 'ü'.repeat(32), 'a\0b']) {
      const err = await rejection(openAt(schema));
      expect(err.code).toBe('ERR_CONFIG');
      expect(err.message).toContain('schema');
      expect(err.message).toContain(JSON.stringify(schema));
    }
  });
});
