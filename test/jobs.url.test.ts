// Queue URLs: which forms open which backend, and the errors for everything else.
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { RoboflowError } from '../src/errors.js';
import { openQueue, parseQueueUrl } from '../src/jobs/index.js';

function configError(url: string): RoboflowError {
  try {
    parseQueueUrl(url, '/work/dir');
  } catch (err) {
    expect(err).toBeInstanceOf(RoboflowError);
    expect((err as RoboflowError).code).toBe('ERR_CONFIG');
    return err as RoboflowError;
  }
  throw new Error(`${url} was accepted`);
}

describe('parseQueueUrl', () => {
  it('takes an absolute SQLite path after three slashes', () => {
    expect(parseQueueUrl('sqlite:///var/lib/roboflow/queue.db', '/work/dir')).toEqual({
      kind: 'sqlite',
      path: '/var/lib/roboflow/queue.db',
      displayUrl: 'sqlite:///var/lib/roboflow/queue.db',
    });
  });

  it('resolves a relative SQLite path against the working directory', () => {
    expect(parseQueueUrl('sqlite://roboflow.db', '/work/dir')).toMatchObject({ kind: 'sqlite', path: '/work/dir/roboflow.db' });
    expect(parseQueueUrl('sqlite://data/q.db', '/work/dir')).toMatchObject({ path: '/work/dir/data/q.db' });
    expect(parseQueueUrl('sqlite://./q.db', '/work/dir')).toMatchObject({ path: '/work/dir/q.db' });
    expect(parseQueueUrl('sqlite://q.db')).toMatchObject({ path: path.resolve('q.db') });
  });

  it('accepts an in-memory SQLite queue', () => {
    expect(parseQueueUrl('sqlite::memory:')).toEqual({ kind: 'sqlite', path: ':memory:', displayUrl: 'sqlite::memory:' });
  });

  it('takes postgres:// and postgresql:// with the default schema', () => {
    expect(parseQueueUrl('postgres://worker@db.internal:5433/pipeline')).toEqual({
      kind: 'postgres',
      connectionString: 'postgres://worker@db.internal:5433/pipeline',
      schema: 'roboflow',
      displayUrl: expect.stringContaining('@db.internal:5433/pipeline?schema=roboflow'),
    });
    expect(parseQueueUrl('postgresql://worker@db.internal/pipeline')).toMatchObject({ kind: 'postgres', schema: 'roboflow' });
  });

  it('takes the schema parameter out of the connection string and keeps the others', () => {
    const loc = parseQueueUrl('postgresql://worker:s3cr3t@db:5432/pipeline?sslmode=require&schema=team_a');
    expect(loc).toMatchObject({
      kind: 'postgres',
      schema: 'team_a',
      connectionString: 'postgresql://worker:s3cr3t@db:5432/pipeline?sslmode=require',
    });
    expect(loc.displayUrl).not.toContain('s3cr3t');
    expect(loc.displayUrl).toContain('worker');
    expect(loc.displayUrl).toContain('schema=team_a');
  });

  it('refuses other schemes, naming the URL without its password and the accepted forms', () => {
    const err = configError('mysql://root:topsecret@db/pipeline');
    expect(err.message).toContain('mysql://root:');
    expect(err.message).not.toContain('topsecret');
    expect(err.message).toContain('sqlite:///');
    expect(err.message).toContain('postgres://');
    for (const url of ['', '   ', '/var/lib/queue.db', 'queue.db', 'sqlite:queue.db', 'redis://localhost:6379', 'file:///q.db']) {
      expect(configError(url).message).toContain('accepted forms');
    }
  });

  it('refuses malformed SQLite and PostgreSQL URLs', () => {
    expect(configError('sqlite://').message).toContain('no database file');
    expect(configError('sqlite:///').message).toContain('no database file');
    expect(configError('sqlite://dir/').message).toContain('directory');
    expect(configError('sqlite://q.db?mode=ro').message).toContain('query');
    expect(configError('postgres://db/x?schema=bad-name').message).toContain('bad-name');
    expect(configError('postgres://db/x?schema=').message).toContain('schema');
    expect(configError('postgres://db/x?schema=a&schema=b').message).toContain('more than once');
    expect(configError('postgres://db:notaport/x').message).toContain('not a valid URL');
  });
});

describe('openQueue', () => {
  let dir: string;

  beforeEach(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'roboflow-'));
  });

  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('opens an SQLite queue and an in-memory one', async () => {
    for (const url of [`sqlite://${dir}/q.db`, 'sqlite::memory:']) {
      const q = await openQueue(url);
      try {
        expect(await q.counts()).toEqual({ pending: 0, claimed: 0, running: 0, done: 0, dead: 0 });
      } finally {
        await q.close();
      }
    }
  });

  it('names a missing directory as a configuration error', async () => {
    const err = await openQueue(`sqlite://${dir}/missing/q.db`).then(
      () => undefined,
      (e: unknown) => e as RoboflowError,
    );
    expect(err?.code).toBe('ERR_CONFIG');
    expect(err?.message).toContain(path.join(dir, 'missing'));
  });

  it('refuses a file that is not a database, for good', async () => {
    const file = path.join(dir, 'not-a-db.db');
    await writeFile(file, 'this is plain text, long enough to not look like an empty database file'.repeat(20));
    const err = await openQueue(`sqlite://${file}`).then(
      () => undefined,
      (e: unknown) => e as RoboflowError,
    );
    expect(err?.code).toBe('ERR_QUEUE');
    expect(err?.retryable).toBe(false);
    expect(err?.message).toContain(file);
  });
});
