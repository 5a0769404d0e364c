// The job-queue contract: one suite, run against SQLite and PostgreSQL alike.
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { RoboflowError, type ErrorCode } from '../src/errors.js';
import { openQueue } from '../src/jobs/index.js';
import { POSTGRES_MIGRATIONS, SQLITE_MIGRATIONS } from '../src/jobs/migrations.js';
import { PostgresJobQueue } from '../src/jobs/postgres.js';
import { PartitionProxy } from '../chaos/partition-proxy.js';
import type { JobQueue, JobRecord, JobSpec } from '../src/types.js';
import { TEST_POSTGRES_URL, postgresBackend, sqliteBackend, waitFor, type QueueBackend } from './fixtures/jobs-backends.js';
import pg from 'pg';
import { rejection } from './helpers.js';
import { describeFull, FULL_TIER } from './tier.js';

// The fast tier runs the contract on SQLite alone: it needs no database server.
const backends: QueueBackend[] = [sqliteBackend(), ...(FULL_TIER ? [postgresBackend()] : [])];

afterAll(async () => {
  for (const b of backends) await b.cleanup();
});

const spec = (name: string, extra: Partial<JobSpec> = {}): JobSpec => ({
  inputs: [{ url: `s3://bucket/${name}.mcap` }],
  processor: 'checksum',
  ...extra,
});


async function expectCode(promise: Promise<unknown>, code: ErrorCode): Promise<RoboflowError> {
  const err = await rejection(promise);
  expect(err.code, err.message).toBe(code);
  return err;
}

describe.each(backends)('JobQueue contract: $name', (backend) => {
  const open: JobQueue[] = [];

  afterEach(async () => {
    await Promise.all(open.splice(0).map((q) => q.close()));
  });

  /** A queue on a fresh store, and a function that opens further instances on the same store. */
  async function fresh(): Promise<{ q: JobQueue; url: string; another: () => Promise<JobQueue> }> {
    const url = await backend.freshUrl();
    const another = async () => {
      const q = await openQueue(url);
      open.push(q);
      return q;
    };
    return { q: await another(), url, another };
  }

  it('submits, gets, lists newest first and counts', async () => {
    const { q } = await fresh();
    const a = await q.submit({
      inputs: [
        { url: 's3://bucket/a.mcap', size: 1234, checksum: { algorithm: 'md5', hex: 'D41D8CD98F00B204E9800998ECF8427E' } },
        { url: 'https://example.com/b.mcap' },
      ],
      output: 's3://bucket/out/',
      processor: 'exec',
      args: { command: ['gzip', '-k', '{input}'], nested: { n: 1, list: [1, 'two', null] } },
      maxAttempts: 5,
    });
    expect(a).toMatchObject({
      inputs: [
        { url: 's3://bucket/a.mcap', size: 1234, checksum: { algorithm: 'md5', hex: 'd41d8cd98f00b204e9800998ecf8427e' } },
        { url: 'https://example.com/b.mcap' },
      ],
      output: 's3://bucket/out/',
      processor: 'exec',
      args: { command: ['gzip', '-k', '{input}'], nested: { n: 1, list: [1, 'two', null] } },
      status: 'pending',
      attempts: 0,
      maxAttempts: 5,
      leaseOwner: null,
      leaseExpiresAt: null,
      lastError: null,
      result: null,
      commitAttempt: null,
    });
    expect(a.id).toMatch(/^[1-9][0-9]*$/);
    expect(a.runAt).toBeInstanceOf(Date);
    expect(a.createdAt.getTime()).toBe(a.updatedAt.getTime());

    const b = await q.submit(spec('b'));
    const c = await q.submit(spec('c'));
    expect(b.maxAttempts).toBe(3);
    expect(b.output).toBeNull();
    expect(b.args).toEqual({});
    expect(new Set([a.id, b.id, c.id]).size).toBe(3);

    expect(await q.get(a.id)).toEqual(a);
    expect(await q.get('999999')).toBeNull();
    await expectCode(q.get('not-a-number'), 'ERR_JOB_NOT_FOUND');

    expect((await q.list()).map((j) => j.id)).toEqual([c.id, b.id, a.id]);
    expect((await q.list({ limit: 2 })).map((j) => j.id)).toEqual([c.id, b.id]);
    expect((await q.list({ status: 'done' })).length).toBe(0);
    expect((await q.list({ status: 'pending' })).length).toBe(3);
    await expectCode(q.list({ limit: 0 }), 'ERR_CONFIG');

    expect(await q.counts()).toEqual({ pending: 3, claimed: 0, running: 0, done: 0, dead: 0 });
    await q.claim('w1', 60_000);
    expect(await q.counts()).toEqual({ pending: 2, claimed: 1, running: 0, done: 0, dead: 0 });
  });

  it('refuses an invalid spec at submit, naming the field', async () => {
    const { q } = await fresh();
    const e1 = await expectCode(q.submit({ inputs: [], processor: 'checksum' }), 'ERR_CONFIG');
    expect(e1.message).toContain('inputs');
    const e2 = await expectCode(q.submit({ ...spec('x'), maxAttempts: 0 }), 'ERR_CONFIG');
    expect(e2.message).toContain('maxAttempts');
    const e3 = await expectCode(q.submit({ ...spec('x'), processor: '' }), 'ERR_CONFIG');
    expect(e3.message).toContain('processor');
    const e4 = await expectCode(q.submit({ inputs: [{ url: 7 as unknown as string }], processor: 'p' }), 'ERR_CONFIG');
    expect(e4.message).toContain('inputs[0].url');
    expect(await q.counts()).toMatchObject({ pending: 0 });
  });

  it('claims the oldest job first and returns null when none is claimable', async () => {
    const { q } = await fresh();
    expect(await q.claim('w1', 60_000)).toBeNull();
    const ids = [];
    for (const name of ['a', 'b', 'c']) ids.push((await q.submit(spec(name))).id);
    const claimed: JobRecord[] = [];
    for (let i = 0; i < 3; i++) {
      const job = await q.claim(`w${i}`, 60_000);
      expect(job).not.toBeNull();
      claimed.push(job as JobRecord);
    }
    expect(claimed.map((j) => j.id)).toEqual(ids);
    expect(claimed[0]).toMatchObject({ status: 'claimed', leaseOwner: 'w0', attempts: 0 });
    expect(claimed[0]?.leaseExpiresAt?.getTime()).toBeGreaterThan(Date.now() + 30_000);
    expect(await q.claim('w9', 60_000)).toBeNull();
  });

  it('makes a job claimable again when its lease expires; the old owner has lost it', async () => {
    const { q } = await fresh();
    const job = await q.submit(spec('a'));
    const first = await q.claim('w1', 200);
    expect(first?.id).toBe(job.id);
    const second = await waitFor('the lease to expire', () => q.claim('w2', 60_000));
    expect(second).toMatchObject({ id: job.id, status: 'claimed', leaseOwner: 'w2', attempts: 0 });
    const lost = await expectCode(q.heartbeat(job.id, 'w1', 60_000), 'ERR_LEASE_LOST');
    expect(lost.message).toContain(job.id);
    expect(lost.message).toContain('w2');
    await expectCode(q.start(job.id, 'w1', 60_000), 'ERR_LEASE_LOST');
    await expectCode(q.complete(job.id, 'w1', { stale: true }), 'ERR_LEASE_LOST');
    await expectCode(q.fail(job.id, 'w1', 'stale', { retryable: true, backoffMs: 0 }), 'ERR_LEASE_LOST');
    await expectCode(q.release(job.id, 'w1'), 'ERR_LEASE_LOST');
    expect(await q.get(job.id)).toMatchObject({ status: 'claimed', leaseOwner: 'w2', result: null });
    const done = await q.complete(job.id, 'w2', { ok: 1 });
    expect(done).toMatchObject({ status: 'done', result: { ok: 1 }, leaseOwner: null, leaseExpiresAt: null });
  });

  it('heartbeat extends the lease of its owner only', async () => {
    const { q } = await fresh();
    const job = await q.submit(spec('a'));
    const claimed = (await q.claim('w1', 300)) as JobRecord;
    const firstExpiry = (claimed.leaseExpiresAt as Date).getTime();
    await q.heartbeat(job.id, 'w1', 60_000);
    const after = (await q.get(job.id)) as JobRecord;
    expect((after.leaseExpiresAt as Date).getTime()).toBeGreaterThan(firstExpiry + 30_000);
    // Once the first lease would have run out, the job is still not claimable.
    await waitFor('the first lease to pass', async () => (Date.now() > firstExpiry + 100 ? true : null));
    expect(await q.claim('w2', 60_000)).toBeNull();
    await expectCode(q.heartbeat(job.id, 'w2', 60_000), 'ERR_LEASE_LOST');
    await expectCode(q.heartbeat('424242', 'w1', 60_000), 'ERR_JOB_NOT_FOUND');
    await expectCode(q.heartbeat(job.id, 'w1', 0), 'ERR_CONFIG');
    await q.complete(job.id, 'w1', null);
    await expectCode(q.heartbeat(job.id, 'w1', 60_000), 'ERR_LEASE_LOST');
  });

  it('counts an attempt on start, not on claim', async () => {
    const { q } = await fresh();
    const job = await q.submit(spec('a'));
    expect((await q.claim('w1', 60_000))?.attempts).toBe(0);
    const started = await q.start(job.id, 'w1', 60_000);
    expect(started).toMatchObject({ status: 'running', attempts: 1, leaseOwner: 'w1' });
    const again = await expectCode(q.start(job.id, 'w1', 60_000), 'ERR_LEASE_LOST');
    expect(again.message).toContain('already started');
    expect((await q.get(job.id))?.attempts).toBe(1);
  });

  it('fails with backoff, then goes dead after max attempts with the last error', async () => {
    const { q } = await fresh();
    const job = await q.submit(spec('a', { maxAttempts: 2 }));
    await q.claim('w1', 60_000);
    await q.start(job.id, 'w1', 60_000);
    const failed = await q.fail(job.id, 'w1', 'first failure', { retryable: true, backoffMs: 60_000 });
    expect(failed).toMatchObject({ status: 'pending', attempts: 1, lastError: 'first failure', leaseOwner: null });
    expect(failed.runAt.getTime()).toBeGreaterThan(Date.now() + 30_000);
    expect(await q.claim('w2', 60_000)).toBeNull();

    const other = await q.submit(spec('b', { maxAttempts: 2 }));
    await q.claim('w1', 60_000);
    await q.start(other.id, 'w1', 60_000);
    await q.fail(other.id, 'w1', 'flaky', { retryable: true, backoffMs: 300 });
    const again = await waitFor('the backoff to pass', () => q.claim('w2', 60_000));
    expect(again).toMatchObject({ id: other.id, attempts: 1, lastError: 'flaky' });
    await q.start(other.id, 'w2', 60_000);
    const dead = await q.fail(other.id, 'w2', 'second failure', { retryable: true, backoffMs: 0 });
    expect(dead).toMatchObject({ status: 'dead', attempts: 2, lastError: 'second failure', leaseOwner: null });
    expect(await q.claim('w3', 60_000)).toBeNull();
    expect(await q.counts()).toMatchObject({ pending: 1, dead: 1 });
  });

  it('sends a job dead at once on a permanent error, and truncates huge errors', async () => {
    const { q } = await fresh();
    const job = await q.submit(spec('a', { maxAttempts: 5 }));
    await q.claim('w1', 60_000);
    await q.start(job.id, 'w1', 60_000);
    const dead = await q.fail(job.id, 'w1', `ERR_NOT_FOUND ${'x'.repeat(10_000)}`, { retryable: false, backoffMs: 1000 });
    expect(dead).toMatchObject({ status: 'dead', attempts: 1 });
    expect(dead.lastError?.startsWith('ERR_NOT_FOUND')).toBe(true);
    expect(dead.lastError?.length).toBeLessThanOrEqual(4_000);
  });

  it('counts a failure of a claimed (not started) job as an attempt', async () => {
    const { q } = await fresh();
    const job = await q.submit(spec('a', { maxAttempts: 2 }));
    await q.claim('w1', 60_000);
    expect(await q.fail(job.id, 'w1', 'download failed', { retryable: true, backoffMs: 0 })).toMatchObject({
      status: 'pending',
      attempts: 1,
    });
    await q.claim('w1', 60_000);
    expect(await q.fail(job.id, 'w1', 'download failed again', { retryable: true, backoffMs: 0 })).toMatchObject({
      status: 'dead',
      attempts: 2,
    });
  });

  it('release hands a job back without changing its attempts', async () => {
    const { q } = await fresh();
    const a = await q.submit(spec('a'));
    const b = await q.submit(spec('b'));
    await q.claim('w1', 60_000);
    await q.start(a.id, 'w1', 60_000);
    await expectCode(q.release(a.id, 'w2'), 'ERR_LEASE_LOST');
    await q.release(a.id, 'w1');
    expect(await q.get(a.id)).toMatchObject({ status: 'pending', attempts: 1, leaseOwner: null, leaseExpiresAt: null });
    // It keeps its place at the front of the line.
    const next = await q.claim('w2', 60_000);
    expect(next?.id).toBe(a.id);
    await q.release(a.id, 'w2');
    expect(await q.get(a.id)).toMatchObject({ status: 'pending', attempts: 1 });
    expect((await q.claim('w3', 60_000))?.id).toBe(a.id);
    expect((await q.claim('w3', 60_000))?.id).toBe(b.id);
    await expectCode(q.release('424242', 'w3'), 'ERR_JOB_NOT_FOUND');
  });

  it('retry resets a dead job and keeps its last error; refuses others', async () => {
    const { q } = await fresh();
    const job = await q.submit(spec('a', { maxAttempts: 1 }));
    await q.claim('w1', 60_000);
    await q.start(job.id, 'w1', 60_000);
    await q.fail(job.id, 'w1', 'broken input', { retryable: true, backoffMs: 0 });
    expect((await q.get(job.id))?.status).toBe('dead');
    const retried = await q.retry(job.id);
    expect(retried).toMatchObject({ status: 'pending', attempts: 0, lastError: 'broken input', leaseOwner: null });
    const notDead = await expectCode(q.retry(job.id), 'ERR_QUEUE');
    expect(notDead.retryable).toBe(false);
    expect(notDead.message).toContain('pending');
    await expectCode(q.retry('424242'), 'ERR_JOB_NOT_FOUND');
    await q.claim('w2', 60_000);
    await q.start(job.id, 'w2', 60_000);
    const done = await q.complete(job.id, 'w2', [1, 2, 3]);
    expect(done).toMatchObject({ status: 'done', attempts: 1, lastError: null, result: [1, 2, 3] });
  });

  it('complete stores the result, for the owner only', async () => {
    const { q } = await fresh();
    const job = await q.submit(spec('a'));
    await q.claim('w1', 60_000);
    await q.start(job.id, 'w1', 60_000);
    await expectCode(q.complete(job.id, 'intruder', 'nope'), 'ERR_LEASE_LOST');
    const done = await q.complete(job.id, 'w1', { files: ['a.txt'], bytes: 12 });
    expect(done).toMatchObject({ status: 'done', result: { files: ['a.txt'], bytes: 12 }, leaseOwner: null });
    await expectCode(q.complete(job.id, 'w1', 'twice'), 'ERR_LEASE_LOST');
    expect((await q.get(job.id))?.result).toEqual({ files: ['a.txt'], bytes: 12 });
    await expectCode(q.complete('424242', 'w1', null), 'ERR_JOB_NOT_FOUND');
  });

  it('commit authorises the running attempt of the lease holder only, renews its lease and records it', async () => {
    const { q } = await fresh();
    const job = await q.submit(spec('a', { output: 's3://bucket/out/a/' }));
    expect(job.commitAttempt).toBeNull();
    await q.claim('w1', 60_000);
    // Only a running attempt publishes: a claimed job has not started one.
    const notStarted = await expectCode(q.commit(job.id, 'w1', '1-aaaa', 60_000), 'ERR_LEASE_LOST');
    expect(notStarted.message).toContain('commit needs a job that is running');
    const running = await q.start(job.id, 'w1', 1_000);
    await expectCode(q.commit(job.id, 'intruder', '1-bbbb', 60_000), 'ERR_LEASE_LOST');
    await expectCode(q.commit(job.id, 'w1', '../x', 60_000), 'ERR_CONFIG');
    await expectCode(q.commit(job.id, 'w1', '', 60_000), 'ERR_CONFIG');
    const committed = await q.commit(job.id, 'w1', '1-aaaa', 60_000);
    expect(committed).toMatchObject({ status: 'running', commitAttempt: '1-aaaa', leaseOwner: 'w1' });
    expect((committed.leaseExpiresAt as Date).getTime()).toBeGreaterThan((running.leaseExpiresAt as Date).getTime() + 30_000);
    // The same attempt may ask again (a retried call whose answer was lost).
    expect((await q.commit(job.id, 'w1', '1-aaaa', 60_000)).commitAttempt).toBe('1-aaaa');
    const done = await q.complete(job.id, 'w1', { ok: 1 });
    expect(done).toMatchObject({ status: 'done', commitAttempt: '1-aaaa' });
    await expectCode(q.commit(job.id, 'w1', '1-aaaa', 60_000), 'ERR_LEASE_LOST');
    await expectCode(q.commit('424242', 'w1', '1-aaaa', 60_000), 'ERR_JOB_NOT_FOUND');
  });

  it('refuses to commit once the lease expired, even before anyone else claimed the job', async () => {
    const { q } = await fresh();
    const job = await q.submit(spec('a', { output: 's3://bucket/out/a/' }));
    await q.claim('w1', 60_000);
    const running = await q.start(job.id, 'w1', 200);
    const expiry = (running.leaseExpiresAt as Date).getTime();
    await waitFor('the lease to expire', async () => (Date.now() > expiry + 100 ? true : null));
    // A heartbeat still renews an expired lease nobody took; a commit does not.
    const err = await expectCode(q.commit(job.id, 'w1', '1-late', 60_000), 'ERR_LEASE_LOST');
    expect(err.message).toContain('lease expired before the commit');
    expect((await q.get(job.id))?.commitAttempt).toBeNull();
    // The next attempt, by another worker, is authorised; the record names it.
    await q.claim('w2', 60_000);
    await q.start(job.id, 'w2', 60_000);
    expect((await q.commit(job.id, 'w2', '2-win', 60_000)).commitAttempt).toBe('2-win');
    await expectCode(q.commit(job.id, 'w1', '1-late', 60_000), 'ERR_LEASE_LOST');
    expect((await q.complete(job.id, 'w2', null)).commitAttempt).toBe('2-win');
  });

  it('migrates a store of schema version 1: existing jobs keep their data and gain commitAttempt null', async () => {
    const url = await backend.freshUrl();
    const first = await openQueue(url);
    const job = await first.submit(spec('old', { output: 'file:///tmp/out/' }));
    await first.close();
    // Back to what version 1 created, as a database from before the change looks.
    await backend.sql(
      url,
      `DROP INDEX jobs_key_idx; DROP INDEX jobs_claim_idx;
       CREATE INDEX jobs_claim_idx ON jobs (run_at, id) WHERE status IN ('pending', 'claimed', 'running');
       ALTER TABLE jobs DROP COLUMN key; ALTER TABLE jobs DROP COLUMN priority; ALTER TABLE jobs DROP COLUMN commit_attempt;
       DELETE FROM migrations WHERE version >= 2;`,
    );
    const reopened = await openQueue(url);
    open.push(reopened);
    expect(await reopened.get(job.id)).toMatchObject({
      id: job.id,
      output: 'file:///tmp/out/',
      status: 'pending',
      commitAttempt: null,
      key: `id:${job.id}`,
      priority: 0,
    });
    await reopened.claim('w1', 60_000);
    await reopened.start(job.id, 'w1', 60_000);
    expect((await reopened.commit(job.id, 'w1', '1-x', 60_000)).commitAttempt).toBe('1-x');
  });

  it('reclaims an expired running job with its attempt counted, or sends it dead when none is left', async () => {
    const { q } = await fresh();
    const lives = await q.submit(spec('lives', { maxAttempts: 3 }));
    await q.claim('lost-1', 200);
    await q.start(lives.id, 'lost-1', 200);
    const reclaimed = await waitFor('the lease to expire', () => q.claim('w2', 60_000));
    expect(reclaimed).toMatchObject({
      id: lives.id,
      status: 'claimed',
      attempts: 1,
      leaseOwner: 'w2',
      lastError: 'lease expired during attempt 1 (worker lost)',
    });
    expect((await q.start(lives.id, 'w2', 60_000)).attempts).toBe(2);
    await q.complete(lives.id, 'w2', null);

    const last = await q.submit(spec('last', { maxAttempts: 1 }));
    await q.claim('lost-2', 200);
    const running = await q.start(last.id, 'lost-2', 200);
    const expiry = (running.leaseExpiresAt as Date).getTime();
    await waitFor('the lease to expire', async () => (Date.now() > expiry + 100 ? true : null));
    const next = await q.submit(spec('next'));
    // One claim retires the exhausted job and hands out the next candidate.
    expect((await q.claim('w3', 60_000))?.id).toBe(next.id);
    expect(await q.get(last.id)).toMatchObject({
      status: 'dead',
      attempts: 1,
      leaseOwner: null,
      lastError: 'lease expired after 1 attempts (worker lost)',
    });
  });

  it('sends a released job with no attempt left dead instead of running it again', async () => {
    const { q } = await fresh();
    const job = await q.submit(spec('a', { maxAttempts: 1 }));
    await q.claim('w1', 60_000);
    await q.start(job.id, 'w1', 60_000);
    await q.release(job.id, 'w1');
    expect(await q.claim('w2', 60_000)).toBeNull();
    const dead = await q.get(job.id);
    expect(dead).toMatchObject({ status: 'dead', attempts: 1 });
    expect(dead?.lastError).toContain('no attempts left');
  });

  it('never hands one job to two of many concurrent claimers', async () => {
    const { q, another } = await fresh();
    const ids = new Set<string>();
    for (let i = 0; i < 20; i++) ids.add((await q.submit(spec(`j${i}`))).id);
    const queues = await Promise.all(Array.from({ length: 8 }, () => another()));
    const claims = await Promise.all(
      queues.map(async (queue, i) => {
        const mine: string[] = [];
        for (;;) {
          const job = await queue.claim(`claimer-${i}`, 60_000);
          if (job === null) return mine;
          expect(job.leaseOwner).toBe(`claimer-${i}`);
          mine.push(job.id);
        }
      }),
    );
    const all = claims.flat();
    expect(all.length).toBe(20);
    expect(new Set(all)).toEqual(ids);
    const counts = await q.counts();
    expect(counts).toEqual({ pending: 0, claimed: 20, running: 0, done: 0, dead: 0 });
    for (const [i, mine] of claims.entries()) {
      for (const id of mine) expect((await q.get(id))?.leaseOwner).toBe(`claimer-${i}`);
    }
  });

  it('migrates once when several instances open a fresh store together, and keeps data on reopen', async () => {
    const url = await backend.freshUrl();
    const queues = await Promise.all(Array.from({ length: 4 }, () => openQueue(url)));
    open.push(...queues);
    const [first] = queues;
    const job = await (first as JobQueue).submit(spec('a'));
    await Promise.all(queues.map((q) => q.close()));
    const reopened = await openQueue(url);
    open.push(reopened);
    expect((await reopened.get(job.id))?.id).toBe(job.id);

    const future =
      backend.name === 'sqlite'
        ? "INSERT INTO migrations (version, name, applied_at) VALUES (999, 'from the future', 0)"
        : "INSERT INTO migrations (version, name) VALUES (999, 'from the future')";
    await backend.sql(url, future);
    const err = await expectCode(openQueue(url), 'ERR_QUEUE');
    expect(err.message).toContain('newer');
  });

  it('derives a key from what the job does; the same work submitted again adds nothing', async () => {
    const { q } = await fresh();
    const a = await q.submit(spec('a', { output: 's3://out/a/', args: { x: 1, y: [1, 2] } }));
    expect(a.key).toMatch(/^sha256:[0-9a-f]{64}$/);
    expect(a.priority).toBe(0);
    // Same work: args in another order, another maxAttempts or priority. Nothing new.
    const again = await q.submit(spec('a', { output: 's3://out/a/', args: { y: [1, 2], x: 1 }, maxAttempts: 7, priority: 5 }));
    expect(again).toEqual(a);
    // Other work: another output, other args, another input.
    const other = [
      await q.submit(spec('a', { output: 's3://out/b/', args: { x: 1, y: [1, 2] } })),
      await q.submit(spec('a', { output: 's3://out/a/', args: { x: 2, y: [1, 2] } })),
      await q.submit(spec('b', { output: 's3://out/a/', args: { x: 1, y: [1, 2] } })),
    ];
    expect(new Set([a.key, ...other.map((j) => j.key)]).size).toBe(4);
    expect(await q.counts()).toMatchObject({ pending: 4 });

    // A given key names the job whatever its spec.
    const named = await q.submit(spec('c', { key: 'episode-0001' }));
    expect(named.key).toBe('episode-0001');
    expect((await q.submit(spec('d', { key: 'episode-0001' }))).id).toBe(named.id);
    expect((await q.get(named.id))?.inputs).toEqual([{ url: 's3://bucket/c.mcap' }]);
    await expectCode(q.submit(spec('e', { key: '' })), 'ERR_CONFIG');
    await expectCode(q.submit(spec('e', { key: 'k'.repeat(513) })), 'ERR_CONFIG');
    await expectCode(q.submit(spec('e', { priority: 1.5 })), 'ERR_CONFIG');
    expect(await q.counts()).toMatchObject({ pending: 5 });
  });

  it('does not add a job whose key is claimed, running, done or dead; replace re-queues done and dead only', async () => {
    const { q } = await fresh();
    const ids: Record<string, string> = {};
    for (const name of ['claimed', 'running', 'done', 'dead']) ids[name] = (await q.submit(spec(name, { key: name, maxAttempts: 1 }))).id;
    const id = (name: string) => ids[name] as string;
    await q.claim('w1', 60_000);
    await q.claim('w1', 60_000);
    await q.start(id('running'), 'w1', 60_000);
    await q.claim('w1', 60_000);
    await q.start(id('done'), 'w1', 60_000);
    await q.complete(id('done'), 'w1', { out: 1 });
    await q.claim('w1', 60_000);
    await q.start(id('dead'), 'w1', 60_000);
    await q.fail(id('dead'), 'w1', 'broken', { retryable: false, backoffMs: 0 });

    const names = ['claimed', 'running', 'done', 'dead', 'new'];
    const plain = await q.submitMany(names.map((name) => spec(`${name}-v2`, { key: name, priority: 3 })));
    expect(plain.map((o) => [o.key, o.outcome, o.status])).toEqual([
      ['claimed', 'exists', 'claimed'],
      ['running', 'exists', 'running'],
      ['done', 'exists', 'done'],
      ['dead', 'exists', 'dead'],
      ['new', 'added', 'pending'],
    ]);
    expect(plain.slice(0, 4).map((o) => o.id)).toEqual(['claimed', 'running', 'done', 'dead'].map(id));
    expect(await q.get(id('done'))).toMatchObject({ status: 'done', result: { out: 1 }, priority: 0 });

    const replaced = await q.submitMany(names.map((name) => spec(`${name}-v3`, { key: name, priority: 3 })), { replace: true });
    expect(replaced.map((o) => o.outcome)).toEqual(['exists', 'exists', 'replaced', 'replaced', 'exists']);
    for (const name of ['done', 'dead']) {
      expect(await q.get(id(name))).toMatchObject({
        id: id(name),
        status: 'pending',
        attempts: 0,
        result: null,
        lastError: null,
        priority: 3,
        maxAttempts: 3,
        inputs: [{ url: `s3://bucket/${name}-v3.mcap` }],
      });
    }
    // A running job is never touched by a replace.
    expect(await q.get(id('running'))).toMatchObject({ status: 'running', leaseOwner: 'w1', inputs: [{ url: 's3://bucket/running.mcap' }] });
    // submit() with replace returns the re-queued record.
    await q.claim('w2', 60_000);
    const again = await q.submit(spec('claimed-v4', { key: 'claimed' }), { replace: true });
    expect(again).toMatchObject({ id: id('claimed'), status: 'claimed' });
  });

  it('submits a batch in one call: outcomes in order, a repeated key once, a bad spec refuses the batch', async () => {
    const { q } = await fresh();
    const specs = Array.from({ length: 250 }, (_, i) => spec(`batch-${i}`, { priority: i % 3 }));
    const first = await q.submitMany([...specs, specs[7] as JobSpec]);
    expect(first.length).toBe(251);
    expect(first.slice(0, 250).every((o) => o.outcome === 'added' && o.status === 'pending')).toBe(true);
    expect(first[250]).toMatchObject({ id: first[7]?.id, outcome: 'exists' });
    expect(new Set(first.map((o) => o.id)).size).toBe(250);
    const listed = await q.list({ limit: 1000 });
    expect(listed.length).toBe(250);
    // Ids follow the order of the batch.
    expect(first.slice(0, 250).map((o) => Number(o.id))).toEqual([...first.slice(0, 250).map((o) => Number(o.id))].sort((a, b) => a - b));
    const byId = new Map(listed.map((j) => [j.id, j]));
    expect(byId.get(first[9]?.id as string)).toMatchObject({ inputs: [{ url: 's3://bucket/batch-9.mcap' }], priority: 0 });

    const second = await q.submitMany(specs);
    expect(second.every((o, i) => o.outcome === 'exists' && o.id === first[i]?.id)).toBe(true);
    expect(await q.counts()).toMatchObject({ pending: 250 });

    const bad = await expectCode(q.submitMany([spec('ok-1'), { inputs: [], processor: 'checksum' }, spec('ok-2')]), 'ERR_CONFIG');
    expect(bad.message).toContain('spec 1');
    expect(bad.message).toContain('inputs');
    expect(await q.counts()).toMatchObject({ pending: 250 });
    expect(await q.submitMany([])).toEqual([]);
  });

  it('claims the highest priority first, then the oldest', async () => {
    const { q } = await fresh();
    const low = await q.submit(spec('low', { priority: -5 }));
    const old = await q.submit(spec('old'));
    const high = await q.submit(spec('high', { priority: 10 }));
    const newer = await q.submit(spec('newer'));
    const higher = await q.submit(spec('higher', { priority: 11 }));
    const order: string[] = [];
    for (;;) {
      const job = await q.claim('w1', 60_000);
      if (job === null) break;
      order.push(job.id);
    }
    expect(order).toEqual([higher.id, high.id, old.id, newer.id, low.id]);
    // A retried job keeps its priority: it comes before older jobs of lower priority.
    const next = await q.submit(spec('next'));
    await q.start(high.id, 'w1', 60_000);
    await q.fail(high.id, 'w1', 'flaky', { retryable: true, backoffMs: 0 });
    expect((await q.claim('w2', 60_000))?.id).toBe(high.id);
    expect((await q.claim('w2', 60_000))?.id).toBe(next.id);
  });

  it('migrates a version 1 store: existing jobs get keys and priority 0 and stay claimable', async () => {
    const url = await backend.freshUrl();
    const v1 = backend.name === 'sqlite' ? SQLITE_MIGRATIONS[0] : POSTGRES_MIGRATIONS[0];
    const schema = backend.name === 'postgres' ? `"${new URL(url).searchParams.get('schema') as string}"` : '';
    const setup =
      backend.name === 'sqlite'
        ? `${v1?.sql}
           CREATE TABLE migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL);
           INSERT INTO migrations VALUES (1, 'create jobs', 0);
           INSERT INTO jobs (inputs, processor, max_attempts, run_at, created_at, updated_at)
             VALUES ('[{"url":"s3://b/old-1"}]', 'checksum', 3, 0, 0, 0), ('[{"url":"s3://b/old-2"}]', 'checksum', 3, 0, 0, 0);`
        : `CREATE SCHEMA ${schema}; SET search_path TO ${schema};
           ${v1?.sql}
           CREATE TABLE migrations (version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now());
           INSERT INTO migrations (version, name) VALUES (1, 'create jobs');
           INSERT INTO jobs (inputs, processor, max_attempts) VALUES ('[{"url":"s3://b/old-1"}]', 'checksum', 3), ('[{"url":"s3://b/old-2"}]', 'checksum', 3);`;
    await backend.sql(url, setup);
    const q = await openQueue(url);
    open.push(q);
    const jobs = await q.list();
    expect(jobs.map((j) => [j.key, j.priority])).toEqual([
      ['id:2', 0],
      ['id:1', 0],
    ]);
    const added = await q.submit(spec('new', { priority: 1 }));
    expect(added.key).toMatch(/^sha256:/);
    expect((await q.claim('w1', 60_000))?.id).toBe(added.id);
    expect((await q.claim('w1', 60_000))?.id).toBe('1');
  });

  it('close is idempotent and later calls fail with ERR_CLOSED', async () => {
    const { q } = await fresh();
    await q.submit(spec('a'));
    await Promise.all([q.close(), q.close()]);
    await q.close();
    await expectCode(q.claim('w1', 1000), 'ERR_CLOSED');
    await expectCode(q.counts(), 'ERR_CLOSED');
  });

  it('checks lease arguments', async () => {
    const { q } = await fresh();
    await expectCode(q.claim('', 1000), 'ERR_CONFIG');
    await expectCode(q.claim('w1', -5), 'ERR_CONFIG');
    await expectCode(q.claim('w1', 1.5), 'ERR_CONFIG');
    const job = await q.submit(spec('a'));
    await q.claim('w1', 1000);
    await expectCode(q.fail(job.id, 'w1', 'x', { retryable: true, backoffMs: -1 }), 'ERR_CONFIG');
    await expectCode(q.complete(job.id, 'w1', { big: 10n }), 'ERR_QUEUE');
    expect((await q.get(job.id))?.status).toBe('claimed');
  });
});

describeFull('PostgreSQL connection handling', () => {
  const backend = postgresBackend();
  const open: JobQueue[] = [];
  let admin: pg.Pool | undefined;

  afterAll(async () => {
    await Promise.all(open.splice(0).map((q) => q.close()));
    await admin?.end();
    await backend.cleanup();
  });

  it('reports an unreachable server as a retryable ERR_QUEUE without the password', async () => {
    const err = await expectCode(openQueue('postgres://postgres:hunter2@127.0.0.1:1/test?schema=nowhere'), 'ERR_QUEUE');
    expect(err.retryable).toBe(true);
    expect(err.message).toContain('127.0.0.1:1');
    expect(err.message).not.toContain('hunter2');
    expect(String(err.url)).not.toContain('hunter2');
  });

  it('reports a missing database as a permanent ERR_QUEUE', async () => {
    const url = new URL(TEST_POSTGRES_URL);
    url.pathname = '/roboflow_no_such_database';
    const err = await expectCode(openQueue(url.toString()), 'ERR_QUEUE');
    expect(err.retryable).toBe(false);
    expect(err.message).toContain('roboflow_no_such_database');
  });

  it('survives the server dropping its connections and works again afterwards', async () => {
    const url = new URL(await backend.freshUrl());
    const appName = `roboflow_test_${process.pid}_${Date.now()}`;
    const q = await PostgresJobQueue.open({
      connectionString: TEST_POSTGRES_URL,
      schema: url.searchParams.get('schema') as string,
      displayUrl: url.toString(),
      applicationName: appName,
    });
    open.push(q);
    const job = await q.submit(spec('a'));
    // Several idle connections in the pool.
    await Promise.all([q.get(job.id), q.get(job.id), q.counts()]);
    admin = new pg.Pool({ connectionString: TEST_POSTGRES_URL, max: 1 });
    const killed = await admin.query('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1', [
      appName,
    ]);
    expect(killed.rowCount).toBeGreaterThan(0);
    await waitFor('the backends to exit', async () => {
      const r = await (admin as pg.Pool).query('SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = $1', [
        appName,
      ]);
      return r.rows[0].n === 0 ? true : null;
    });
    // A call may still meet a connection that died under it; that is a retryable ERR_QUEUE,
    // and the next call gets a new connection.
    const got = await waitFor('the queue to answer again', async () => {
      try {
        return await q.get(job.id);
      } catch (err) {
        expect(err).toBeInstanceOf(RoboflowError);
        expect((err as RoboflowError).code).toBe('ERR_QUEUE');
        expect((err as RoboflowError).retryable).toBe(true);
        return null;
      }
    });
    expect(got.id).toBe(job.id);
    expect(await q.claim('w1', 60_000)).toMatchObject({ id: job.id });
  });

  it('fails a query that gets no answer (a network partition) with a retryable ERR_QUEUE, then works after the heal', async () => {
    const url = new URL(await backend.freshUrl());
    const target = new URL(TEST_POSTGRES_URL);
    const proxy = await PartitionProxy.start(target.hostname, Number(target.port || 5432));
    try {
      const proxied = new URL(TEST_POSTGRES_URL);
      proxied.port = String(proxy.port);
      const q = await PostgresJobQueue.open({
        connectionString: proxied.toString(),
        schema: url.searchParams.get('schema') as string,
        displayUrl: url.toString(),
        queryTimeoutMs: 300,
      });
      open.push(q);
      const job = await q.submit(spec('a'));
      await q.claim('w1', 60_000);
      proxy.partition();
      // Without a time limit these would wait for TCP to give up: minutes.
      const stuck = await expectCode(q.heartbeat(job.id, 'w1', 60_000), 'ERR_QUEUE');
      expect(stuck.retryable).toBe(true);
      // A new connection cannot be opened either; that fails in time too.
      const results = await Promise.allSettled([q.get(job.id), q.get(job.id), q.counts(), q.counts(), q.get(job.id)]);
      for (const r of results) {
        expect(r.status).toBe('rejected');
        if (r.status === 'rejected') expect((r.reason as RoboflowError).code).toBe('ERR_QUEUE');
      }
      proxy.heal();
      // The connections that timed out were dropped, not handed out again.
      const got = await waitFor('the queue to answer again', async () => {
        try {
          return await q.get(job.id);
        } catch {
          return null;
        }
      });
      expect(got).toMatchObject({ id: job.id, status: 'claimed', leaseOwner: 'w1' });
      await q.heartbeat(job.id, 'w1', 60_000);
    } finally {
      await proxy.close();
    }
  });
});

describeFull('PostgreSQL wake-ups (LISTEN/NOTIFY)', () => {
  const backend = postgresBackend();
  const open: JobQueue[] = [];

  afterAll(async () => {
    await Promise.all(open.splice(0).map((q) => q.close()));
    await backend.cleanup();
  });

  async function queueAt(url: string): Promise<JobQueue> {
    const q = await openQueue(url);
    open.push(q);
    return q;
  }

  /** Counts calls of a subscriber and lets a test wait for the next one. */
  function counter(): { calls: () => number; listener: () => void; after: (n: number, what: string) => Promise<void> } {
    let n = 0;
    return {
      calls: () => n,
      listener: () => {
        n += 1;
      },
      after: async (want, what) => {
        await waitFor(what, async () => (n >= want ? true : null));
      },
    };
  }

  it('wakes subscribers in other processes on submit, release, retry and when a retry delay runs out; not other schemas', async () => {
    const url = await backend.freshUrl();
    const otherUrl = await backend.freshUrl();
    const worker = await queueAt(url);
    const submitter = await queueAt(url);
    const other = await queueAt(otherUrl);
    const wakes = counter();
    const unsubscribe = (worker.onWork as NonNullable<JobQueue['onWork']>).call(worker, wakes.listener);
    // Subscribed once the listening connection is up: a submit wakes it.
    await waitFor('the first wake-up', async () => {
      if (wakes.calls() > 0) return true;
      await submitter.submitMany([spec(`probe-${Date.now()}`)]);
      return null;
    });
    const base = wakes.calls();
    await other.submit(spec('elsewhere'));
    // A submit that adds nothing (key taken) wakes nobody either; a real one does.
    await submitter.submit(spec('job'));
    await wakes.after(base + 1, 'a wake-up for the submit');
    const atSubmit = wakes.calls();
    await submitter.submit(spec('job'));
    const job = (await worker.claim('w1', 60_000)) as JobRecord;
    await worker.release(job.id, 'w1');
    await wakes.after(atSubmit + 1, 'a wake-up for the release');
    // The wake-ups counted so far are this schema's own: the other schema's submit and the
    // duplicate added none (each real event adds one, and there were two).
    expect(wakes.calls()).toBe(atSubmit + 1);

    while ((await worker.claim('w1', 60_000)) !== null);
    const counted = wakes.calls();
    const failing = (await worker.list({ status: 'claimed', limit: 1 }))[0] as JobRecord;
    await worker.start(failing.id, 'w1', 60_000);
    const failedAt = Date.now();
    await worker.fail(failing.id, 'w1', 'flaky', { retryable: true, backoffMs: 400 });
    await wakes.after(counted + 1, 'a wake-up once the retry delay ran out');
    expect(Date.now() - failedAt).toBeGreaterThanOrEqual(400);
    expect((await worker.claim('w2', 60_000))?.id).toBe(failing.id);

    unsubscribe();
    const unsubscribed = wakes.calls();
    await submitter.submit(spec('after-unsubscribe'));
    // Wait for a second subscriber to hear the same notification; the first must not.
    const second = counter();
    const unsubscribe2 = (submitter.onWork as NonNullable<JobQueue['onWork']>).call(submitter, second.listener);
    await waitFor('the second subscriber', async () => {
      if (second.calls() > 0) return true;
      await submitter.submit(spec(`more-${Date.now()}`));
      return null;
    });
    unsubscribe2();
    expect(wakes.calls()).toBe(unsubscribed);
  });

  it('listens again after the server drops the listening connection, and wakes subscribers on reconnecting', async () => {
    const url = new URL(await backend.freshUrl());
    const appName = `roboflow_listen_${process.pid}_${Date.now()}`;
    const q = await PostgresJobQueue.open({
      connectionString: TEST_POSTGRES_URL,
      schema: url.searchParams.get('schema') as string,
      displayUrl: url.toString(),
      applicationName: appName,
    });
    open.push(q);
    const submitter = await queueAt(url.toString());
    const wakes = counter();
    q.onWork(wakes.listener);
    await waitFor('the first wake-up', async () => {
      if (wakes.calls() > 0) return true;
      await submitter.submitMany([spec(`probe-${Date.now()}`)]);
      return null;
    });
    const admin = new pg.Client({ connectionString: TEST_POSTGRES_URL });
    await admin.connect();
    try {
      // Every connection of the queue goes, the listening one among them.
      const killed = await admin.query('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1', [appName]);
      expect(killed.rowCount).toBeGreaterThan(0);
      const before = wakes.calls();
      // Reconnected: the lost notifications are made up for by one wake-up, then new ones arrive.
      await wakes.after(before + 1, 'the wake-up on reconnecting');
      await waitFor('a wake-up for a submit after the reconnection', async () => {
        const seen = wakes.calls();
        await submitter.submitMany([spec(`after-${Date.now()}`)]);
        await new Promise((r) => setTimeout(r, 200));
        return wakes.calls() > seen ? true : null;
      });
    } finally {
      await admin.end();
    }
  });
});
