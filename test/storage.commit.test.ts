// The publishing step of the output commit protocol (src/storage/commit.ts), on real files and on
// the test object server: staged files move to their names, every attempt of the job's staging
// goes (another job's staging under the same prefix stays), and `_SUCCESS` is written last,
// naming the winning attempt.
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RoboflowError } from '../src/errors.js';
import { StorageClients } from '../src/storage/index.js';
import { publishAttempt, stagingPrefix, type CommitMarker } from '../src/storage/commit.js';
import { ObjectServer } from './support/object-server.js';
import { rejection } from './helpers.js';

let dir: string;
let server: ObjectServer;
let clients: StorageClients;

beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'roboflow-commit-'));
  server = await ObjectServer.start();
  clients = new StorageClients({
    endpoint: server.endpoint,
    region: 'us-east-1',
    forcePathStyle: true,
    env: { AWS_ACCESS_KEY_ID: 'test', AWS_SECRET_ACCESS_KEY: 'testsecret' },
  });
});

afterAll(async () => {
  await clients.close();
  await server.close();
  await rm(dir, { recursive: true, force: true });
});

const live = () => new AbortController().signal;

describe('publishAttempt on file://', () => {
  it('moves the staged files into place, removes the job’s staging, writes _SUCCESS last; a fenced attempt’s marker is replaced', async () => {
    const out = path.join(dir, 'out-file');
    const output = `${pathToFileURL(out).href}/`;
    expect(stagingPrefix(output, '7', '2-win')).toBe(pathToFileURL(path.join(out, '_attempts', '7', '2-win')).href);
    // What an earlier authorised attempt left when it lost its lease midway through publishing.
    await mkdir(path.join(out, '_attempts', '7', '1-dead'), { recursive: true });
    await writeFile(path.join(out, '_attempts', '7', '1-dead', 'a.txt'), 'dead');
    await writeFile(path.join(out, 'stray.txt'), 'dead');
    await writeFile(path.join(out, '_SUCCESS'), JSON.stringify({ attempt: '1-dead' }));
    await mkdir(path.join(out, '_attempts', '7', '2-win', 'sub'), { recursive: true });
    await writeFile(path.join(out, '_attempts', '7', '2-win', 'a.txt'), 'win');
    await writeFile(path.join(out, '_attempts', '7', '2-win', 'sub', 'b.txt'), 'win-b');
    const published = await publishAttempt({
      output,
      jobId: '7',
      owner: 'w2',
      attempt: '2-win',
      files: [
        { name: 'a.txt', bytes: 3 },
        { name: 'sub/b.txt', bytes: 5 },
      ],
      previousAttempt: '1-dead',
      signal: live(),
    });
    expect(published.map((p) => p.name)).toEqual(['a.txt', 'sub/b.txt']);
    expect((await readdir(out)).sort()).toEqual(['_SUCCESS', 'a.txt', 'stray.txt', 'sub'].sort());
    expect(await readFile(path.join(out, 'a.txt'), 'utf8')).toBe('win');
    expect(await readFile(path.join(out, 'sub', 'b.txt'), 'utf8')).toBe('win-b');
    const marker = JSON.parse(await readFile(path.join(out, '_SUCCESS'), 'utf8')) as CommitMarker;
    // The marker lists the output; `stray.txt` is not in it, so it is not part of the output.
    expect(marker).toMatchObject({ version: 1, job: '7', attempt: '2-win', owner: 'w2', files: [{ name: 'a.txt', bytes: 3 }, { name: 'sub/b.txt', bytes: 5 }] });
  });

  it('publishes nothing and deletes nothing once its signal has aborted (the lease can no longer be trusted)', async () => {
    const out = path.join(dir, 'out-fenced');
    await mkdir(path.join(out, '_attempts', '8', '2-late'), { recursive: true });
    await writeFile(path.join(out, '_attempts', '8', '2-late', 'a.txt'), 'late');
    // The marker of the attempt authorised before this one: a fenced worker must leave it alone.
    await writeFile(path.join(out, 'a.txt'), 'first');
    await writeFile(path.join(out, '_SUCCESS'), JSON.stringify({ attempt: '1-first' }));
    const fenced = new AbortController();
    fenced.abort(new RoboflowError('ERR_LEASE_LOST', 'lease can no longer be valid'));
    const err = await rejection(
      publishAttempt({
        output: `${pathToFileURL(out).href}/`,
        jobId: '8',
        owner: 'w1',
        attempt: '2-late',
        files: [{ name: 'a.txt', bytes: 4 }],
        previousAttempt: '1-first',
        signal: fenced.signal,
      }),
    );
    expect(err.code).toBe('ERR_LEASE_LOST');
    expect((await readdir(out)).sort()).toEqual(['_SUCCESS', '_attempts', 'a.txt']);
    expect(await readFile(path.join(out, '_SUCCESS'), 'utf8')).toBe(JSON.stringify({ attempt: '1-first' }));
    expect(await readFile(path.join(out, 'a.txt'), 'utf8')).toBe('first');
    expect(await readFile(path.join(out, '_attempts', '8', '2-late', 'a.txt'), 'utf8')).toBe('late');
  });

  it('leaves the staging of another job with the same output prefix alone', async () => {
    const out = path.join(dir, 'out-shared');
    const output = `${pathToFileURL(out).href}/`;
    await mkdir(path.join(out, '_attempts', '11', '1-aaaa'), { recursive: true });
    await writeFile(path.join(out, '_attempts', '11', '1-aaaa', 'a.txt'), 'eleven');
    await mkdir(path.join(out, '_attempts', '12', '1-bbbb'), { recursive: true });
    await writeFile(path.join(out, '_attempts', '12', '1-bbbb', 'b.txt'), 'twelve');
    // Job 1's staging must not be taken for job 11's or 12's (a prefix, not a folder, match).
    await mkdir(path.join(out, '_attempts', '1', '1-cccc'), { recursive: true });
    await writeFile(path.join(out, '_attempts', '1', '1-cccc', 'c.txt'), 'one');
    await publishAttempt({ output, jobId: '11', owner: 'w1', attempt: '1-aaaa', files: [{ name: 'a.txt', bytes: 6 }], previousAttempt: null, signal: live() });
    expect(await readFile(path.join(out, 'a.txt'), 'utf8')).toBe('eleven');
    expect((await readdir(path.join(out, '_attempts'))).sort()).toEqual(['1', '12']);
    // Job 12, published next, finds its staged file where it left it.
    await publishAttempt({ output, jobId: '12', owner: 'w2', attempt: '1-bbbb', files: [{ name: 'b.txt', bytes: 6 }], previousAttempt: null, signal: live() });
    expect(await readFile(path.join(out, 'b.txt'), 'utf8')).toBe('twelve');
    await publishAttempt({ output, jobId: '1', owner: 'w3', attempt: '1-cccc', files: [{ name: 'c.txt', bytes: 3 }], previousAttempt: null, signal: live() });
    // The last job's staging gone, `_attempts/` goes too; the last marker names its own job only.
    expect((await readdir(out)).sort()).toEqual(['_SUCCESS', 'a.txt', 'b.txt', 'c.txt']);
    const marker = JSON.parse(await readFile(path.join(out, '_SUCCESS'), 'utf8')) as CommitMarker;
    expect(marker).toMatchObject({ job: '1', files: [{ name: 'c.txt', bytes: 3 }] });
  });

  it('publishes an empty output into a directory that does not exist yet', async () => {
    const out = path.join(dir, 'not-yet', 'empty');
    const published = await publishAttempt({ output: `${pathToFileURL(out).href}/`, jobId: '13', owner: 'w1', attempt: '1-none', files: [], previousAttempt: null, signal: live() });
    expect(published).toEqual([]);
    expect(await readdir(out)).toEqual(['_SUCCESS']);
    const marker = JSON.parse(await readFile(path.join(out, '_SUCCESS'), 'utf8')) as CommitMarker;
    expect(marker).toMatchObject({ job: '13', attempt: '1-none', files: [] });
  });

  it('refuses a job id that could name another folder', async () => {
    expect(() => stagingPrefix('file:///tmp/out/', '../7', '1-a')).toThrow(/cannot name a staging folder/);
    const err = await rejection(
      publishAttempt({ output: `${pathToFileURL(path.join(dir, 'out-bad-id')).href}/`, jobId: '', owner: 'w', attempt: '1-a', files: [], previousAttempt: null, signal: live() }),
    );
    expect(err.code).toBe('ERR_CONFIG');
  });
});

describe('publishAttempt on s3:// (test object server)', () => {
  it('copies the staged objects to their names, deletes the job’s staging, writes _SUCCESS last', async () => {
    server.createBucket('out');
    server.putObject('out', 'job/_attempts/9/1-dead/a.txt', Buffer.from('dead'));
    server.putObject('out', 'job/_SUCCESS', Buffer.from(JSON.stringify({ attempt: '1-dead' })));
    server.putObject('out', 'job/_attempts/9/2-win/a.txt', Buffer.from('win'));
    server.putObject('out', 'job/_attempts/9/2-win/dir/b c.txt', Buffer.from('win-b'));
    server.putObject('out', 'other-job/a.txt', Buffer.from('untouched'));
    // Another job given the same output prefix, still staging: its files stay.
    server.putObject('out', 'job/_attempts/90/1-other/c.txt', Buffer.from('other'));
    server.clearRequests();
    const published = await publishAttempt({
      output: 's3://out/job/',
      jobId: '9',
      owner: 'w2',
      attempt: '2-win',
      files: [
        { name: 'a.txt', bytes: 3 },
        { name: 'dir/b c.txt', bytes: 5 },
      ],
      previousAttempt: '1-dead',
      signal: live(),
      clients,
    });
    expect(published.map((p) => p.url)).toEqual(['s3://out/job/a.txt', 's3://out/job/dir/b c.txt']);
    expect(server.listKeys('out').sort()).toEqual(['job/_SUCCESS', 'job/_attempts/90/1-other/c.txt', 'job/a.txt', 'job/dir/b c.txt', 'other-job/a.txt']);
    expect(server.objectBytes('out', 'job/a.txt').toString()).toBe('win');
    expect(server.objectBytes('out', 'job/dir/b c.txt').toString()).toBe('win-b');
    expect(server.objectBytes('out', 'other-job/a.txt').toString()).toBe('untouched');
    const marker = JSON.parse(server.objectBytes('out', 'job/_SUCCESS').toString()) as CommitMarker;
    expect(marker).toMatchObject({ job: '9', attempt: '2-win', files: [{ name: 'a.txt', bytes: 3 }, { name: 'dir/b c.txt', bytes: 5 }] });
    // The marker is the last write.
    const writes = server.requests.filter((r) => r.method === 'PUT');
    expect(writes.at(-1)?.key).toBe('job/_SUCCESS');
  });

  it('publishes nothing and deletes nothing once its signal has aborted', async () => {
    server.createBucket('fenced');
    server.putObject('fenced', 'job/a.txt', Buffer.from('first'));
    server.putObject('fenced', 'job/_SUCCESS', Buffer.from(JSON.stringify({ attempt: '1-first' })));
    server.putObject('fenced', 'job/_attempts/21/2-late/a.txt', Buffer.from('late'));
    server.clearRequests();
    const fenced = new AbortController();
    fenced.abort(new RoboflowError('ERR_LEASE_LOST', 'lease can no longer be valid'));
    const err = await rejection(
      publishAttempt({
        output: 's3://fenced/job/',
        jobId: '21',
        owner: 'w1',
        attempt: '2-late',
        files: [{ name: 'a.txt', bytes: 4 }],
        previousAttempt: '1-first',
        signal: fenced.signal,
        clients,
      }),
    );
    expect(err.code).toBe('ERR_LEASE_LOST');
    expect(server.requests.filter((r) => r.bucket === 'fenced')).toEqual([]);
    expect(server.objectBytes('fenced', 'job/_SUCCESS').toString()).toBe(JSON.stringify({ attempt: '1-first' }));
    expect(server.objectBytes('fenced', 'job/a.txt').toString()).toBe('first');
  });

  it('publishes an empty output: only the marker, listing no files', async () => {
    server.createBucket('empty');
    const published = await publishAttempt({ output: 's3://empty/job/', jobId: '22', owner: 'w1', attempt: '1-none', files: [], previousAttempt: null, signal: live(), clients });
    expect(published).toEqual([]);
    expect(server.listKeys('empty')).toEqual(['job/_SUCCESS']);
    expect(JSON.parse(server.objectBytes('empty', 'job/_SUCCESS').toString())).toMatchObject({ job: '22', files: [] });
  });
});
