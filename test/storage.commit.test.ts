// The publishing step of the output commit protocol (src/storage/commit.ts), on real files and on
// the test object server: staged files move to their names, every attempt's staging goes, and
// `_SUCCESS` is written last, naming the winning attempt.
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
  it('moves the staged files into place, removes every staging, writes _SUCCESS last; a fenced attempt’s marker is replaced', async () => {
    const out = path.join(dir, 'out-file');
    const output = `${pathToFileURL(out).href}/`;
    expect(stagingPrefix(output, '2-win')).toBe(pathToFileURL(path.join(out, '_attempts', '2-win')).href);
    // What an earlier authorised attempt left when it lost its lease midway through publishing.
    await mkdir(path.join(out, '_attempts', '1-dead'), { recursive: true });
    await writeFile(path.join(out, '_attempts', '1-dead', 'a.txt'), 'dead');
    await writeFile(path.join(out, 'stray.txt'), 'dead');
    await writeFile(path.join(out, '_SUCCESS'), JSON.stringify({ attempt: '1-dead' }));
    await mkdir(path.join(out, '_attempts', '2-win', 'sub'), { recursive: true });
    await writeFile(path.join(out, '_attempts', '2-win', 'a.txt'), 'win');
    await writeFile(path.join(out, '_attempts', '2-win', 'sub', 'b.txt'), 'win-b');
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

  it('publishes nothing once its signal has aborted (the lease can no longer be trusted)', async () => {
    const out = path.join(dir, 'out-fenced');
    await mkdir(path.join(out, '_attempts', '1-late'), { recursive: true });
    await writeFile(path.join(out, '_attempts', '1-late', 'a.txt'), 'late');
    const fenced = new AbortController();
    fenced.abort(new RoboflowError('ERR_LEASE_LOST', 'lease can no longer be valid'));
    const err = await rejection(
      publishAttempt({ output: `${pathToFileURL(out).href}/`, jobId: '8', owner: 'w1', attempt: '1-late', files: [{ name: 'a.txt', bytes: 4 }], previousAttempt: null, signal: fenced.signal }),
    );
    expect(err).toBeInstanceOf(RoboflowError);
    expect(await readdir(out)).toEqual(['_attempts']);
  });
});

describe('publishAttempt on s3:// (test object server)', () => {
  it('copies the staged objects to their names, deletes all staging, writes _SUCCESS last', async () => {
    server.createBucket('out');
    server.putObject('out', 'job/_attempts/1-dead/a.txt', Buffer.from('dead'));
    server.putObject('out', 'job/_SUCCESS', Buffer.from(JSON.stringify({ attempt: '1-dead' })));
    server.putObject('out', 'job/_attempts/2-win/a.txt', Buffer.from('win'));
    server.putObject('out', 'job/_attempts/2-win/dir/b c.txt', Buffer.from('win-b'));
    server.putObject('out', 'other-job/a.txt', Buffer.from('untouched'));
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
    expect(server.listKeys('out').sort()).toEqual(['job/_SUCCESS', 'job/a.txt', 'job/dir/b c.txt', 'other-job/a.txt']);
    expect(server.objectBytes('out', 'job/a.txt').toString()).toBe('win');
    expect(server.objectBytes('out', 'job/dir/b c.txt').toString()).toBe('win-b');
    expect(server.objectBytes('out', 'other-job/a.txt').toString()).toBe('untouched');
    const marker = JSON.parse(server.objectBytes('out', 'job/_SUCCESS').toString()) as CommitMarker;
    expect(marker).toMatchObject({ job: '9', attempt: '2-win', files: [{ name: 'a.txt', bytes: 3 }, { name: 'dir/b c.txt', bytes: 5 }] });
    // The marker is the last write.
    const writes = server.requests.filter((r) => r.method === 'PUT');
    expect(writes.at(-1)?.key).toBe('job/_SUCCESS');
  });
});
