/**
 * `roboflow download` against Ceph RGW (Pacific): what a real S3 implementation sends for
 * single-PUT and multipart objects, odd sizes and odd keys, a replaced object and a killed CLI.
 */
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { HeadObjectCommand, PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { partialPaths, readResumeState } from '../../src/prefetch/resume-state.js';
import { StorageClients } from '../../src/storage/index.js';
import { rejection } from '../helpers.js';
import {
  content,
  freshBucket,
  KiB,
  md5,
  MiB,
  putMultipart,
  putObject,
  RGW_ENDPOINT,
  RGW_ENV,
  runCli,
  sha256,
  sha256File,
  startCli,
  testClient,
  until,
} from './rgw.js';
import { ThrottleProxy } from './throttle-proxy.js';

interface DownloadJson {
  readonly bytes: number;
  readonly etag?: string;
  readonly verified: readonly string[];
  readonly resumedBytes: number;
  readonly restarts: number;
}

let s3: S3Client;
let bucket: { name: string; remove: () => Promise<void> };
let dir: string;

beforeAll(async () => {
  s3 = testClient();
  bucket = await freshBucket(s3, 'download');
});
afterAll(async () => {
  await bucket?.remove();
  s3?.destroy();
});
beforeEach(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'roboflow-interop-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** `roboflow download s3://<bucket>/<key>` straight to RGW; the parsed JSON line, after checking the exit. */
async function download(key: string, dest: string, extra: readonly string[] = [], endpoint = RGW_ENDPOINT): Promise<DownloadJson> {
  const r = await runCli(['download', `s3://${bucket.name}/${key}`, dest, '--endpoint', endpoint, '--json', ...extra], dir);
  expect(r.stderr).toBe('');
  expect(r.code).toBe(0);
  return JSON.parse(r.stdout) as DownloadJson;
}

describe('roboflow download from Ceph RGW', () => {
  it('verifies a single-PUT object against its MD5 ETag', async () => {
    const body = content(3 * MiB + 5);
    const etag = await putObject(s3, bucket.name, 'single.bin', body);
    expect(etag).toBe(`"${md5(body)}"`);
    const out = await download('single.bin', 'single.bin', ['--chunk-size', '1MiB', '--connections', '4']);
    expect(out).toMatchObject({ bytes: body.length, etag, verified: ['size', 'md5'], resumedBytes: 0, restarts: 0 });
    expect(await sha256File(path.join(dir, 'single.bin'))).toBe(sha256(body));
  });

  it('checks only the size of a multipart object, whose "…-N" ETag is no MD5 of the content', async () => {
    // Parts of 5 MiB, 5 MiB and 1000 bytes: part edges fall inside the 1 MiB download chunks' plan.
    const body = content(10 * MiB + 1000);
    await putMultipart(s3, bucket.name, 'multi.bin', body, 5 * MiB);
    const head = await s3.send(new HeadObjectCommand({ Bucket: bucket.name, Key: 'multi.bin' }));
    expect(head.ETag).toMatch(/^"[0-9a-f]{32}-3"$/);
    const out = await download('multi.bin', 'multi.bin', ['--chunk-size', '1MiB', '--connections', '4']);
    // Taken for an MD5, the ETag would have failed the download with ERR_CHECKSUM_MISMATCH.
    expect(out).toMatchObject({ bytes: body.length, etag: head.ETag, verified: ['size'] });
    expect(await sha256File(path.join(dir, 'multi.bin'))).toBe(sha256(body));
  });

  it.each([
    ['one byte short of a chunk', 64 * KiB - 1],
    ['exactly one chunk', 64 * KiB],
    ['one byte past a chunk', 64 * KiB + 1],
    ['exactly three chunks', 3 * 64 * KiB],
    ['one byte past three chunks', 3 * 64 * KiB + 1],
  ])('downloads an object %s long (%i bytes) in 64 KiB chunks', async (_what, size) => {
    const body = content(size);
    const key = `edge/${size}.bin`;
    await putObject(s3, bucket.name, key, body);
    const out = await download(key, 'edge.bin', ['--chunk-size', '64KiB', '--connections', '3']);
    expect(out).toMatchObject({ bytes: size, verified: ['size', 'md5'] });
    expect(await sha256File(path.join(dir, 'edge.bin'))).toBe(sha256(body));
  });

  it('downloads an empty object as an empty file', async () => {
    const etag = await putObject(s3, bucket.name, 'empty.bin', Buffer.alloc(0));
    expect(etag).toBe('"d41d8cd98f00b204e9800998ecf8427e"');
    const out = await download('empty.bin', 'empty.bin');
    expect(out).toMatchObject({ bytes: 0, verified: ['size', 'md5'] });
    expect((await stat(path.join(dir, 'empty.bin'))).size).toBe(0);
  });

  it('downloads a 1-byte object', async () => {
    await putObject(s3, bucket.name, 'one.bin', Buffer.from('x'));
    const out = await download('one.bin', 'one.bin', ['--chunk-size', '64KiB']);
    expect(out).toMatchObject({ bytes: 1, verified: ['size', 'md5'] });
    expect(await readFile(path.join(dir, 'one.bin'), 'utf8')).toBe('x');
  });

  it.each([
    ['spaces', 'with spaces/a b  c.bin'],
    ['unicode', 'ünïcödé/日本語 データ.bin'],
    ['a plus sign', 'plus/a+b=c.bin'],
    ['all of them, a literal %2F, ? and #', 'mixed/ a+b %2F ü?x=1#frag.bin'],
  ])('downloads a key with %s verbatim', async (_what, key) => {
    const body = content(100 * KiB + 7);
    await putObject(s3, bucket.name, key, body);
    const out = await download(key, 'key.bin', ['--chunk-size', '64KiB']);
    expect(out).toMatchObject({ bytes: body.length, verified: ['size', 'md5'] });
    expect(await sha256File(path.join(dir, 'key.bin'))).toBe(sha256(body));
  });

  it('Pacific keeps no x-amz-checksum-*: it accepts a wrong CRC32, returns none, and roboflow verifies the MD5 ETag instead', async () => {
    const body = content(2 * MiB);
    // AWS refuses this PUT (BadDigest); Pacific ignores the header and stores nothing of it.
    await s3.send(new PutObjectCommand({ Bucket: bucket.name, Key: 'crc.bin', Body: body, ChecksumCRC32: 'AAAAAA==' }));
    const head = await s3.send(new HeadObjectCommand({ Bucket: bucket.name, Key: 'crc.bin', ChecksumMode: 'ENABLED' }));
    expect(head.ChecksumCRC32).toBeUndefined();
    expect(head.ChecksumType).toBeUndefined();
    const out = await download('crc.bin', 'crc.bin', ['--chunk-size', '1MiB']);
    expect(out.verified).toEqual(['size', 'md5']);
    expect(await sha256File(path.join(dir, 'crc.bin'))).toBe(sha256(body));
  });

  it('a ranged read pinned with If-Match to a replaced version fails with ERR_SOURCE_CHANGED (412)', async () => {
    await putObject(s3, bucket.name, 'pinned.bin', content(256 * KiB));
    const clients = new StorageClients({ endpoint: RGW_ENDPOINT, env: RGW_ENV });
    try {
      const src = clients.open(`s3://${bucket.name}/pinned.bin`);
      const before = await src.stat();
      expect(before.etag).toMatch(/^"[0-9a-f]{32}"$/);
      await putObject(s3, bucket.name, 'pinned.bin', content(256 * KiB));
      const err = await rejection(src.read({ start: 0, end: 1000 }, { ifMatch: before.etag! }));
      expect(err.code).toBe('ERR_SOURCE_CHANGED');
      expect(err.status).toBe(412);
      expect(err.message).toContain('PreconditionFailed');
    } finally {
      await clients.close();
    }
  });

  it('an object replaced mid-download gives the complete new version or ERR_SOURCE_CHANGED, never a mix', async () => {
    const size = 8 * MiB;
    const old = content(size);
    const fresh = content(size);
    await putObject(s3, bucket.name, 'replaced.bin', old);
    // 2 connections at 4 MB/s each: about a second for the object, so the replacement below
    // lands while ranges of the old version are still to be asked for.
    const proxy = await ThrottleProxy.start(RGW_ENDPOINT, 4_000_000);
    try {
      const run = startCli(
        ['download', `s3://${bucket.name}/replaced.bin`, 'replaced.bin', '--endpoint', proxy.endpoint, '--json', '--chunk-size', '1MiB', '--connections', '2'],
        dir,
      );
      await until('the first MiB of the old version', () => proxy.bytesDown >= MiB);
      proxy.pause();
      const bytesBefore = proxy.bytesDown;
      await putObject(s3, bucket.name, 'replaced.bin', fresh);
      proxy.resume();
      const r = await run.done;
      // The replacement came before the old version was through.
      expect(bytesBefore).toBeLessThan(size);
      const dest = path.join(dir, 'replaced.bin');
      if (r.code === 0) {
        const out = JSON.parse(r.stdout) as DownloadJson;
        expect(out.restarts).toBe(1);
        expect(out.etag).toBe(`"${md5(fresh)}"`);
        expect(await sha256File(dest)).toBe(sha256(fresh));
      } else {
        expect(r.code).toBe(1);
        expect(r.stderr).toMatch(/\[ERR_SOURCE_CHANGED\]\n$/);
        expect(existsSync(dest)).toBe(false);
      }
    } finally {
      await proxy.close();
    }
  });

  it('resumes after SIGKILL of the CLI, fetching only what the state file did not record', async () => {
    const size = 24 * MiB;
    const body = content(size);
    await putObject(s3, bucket.name, 'killed.bin', body);
    // 4 connections at 2 MB/s each: about 3 s for the object, so the kill lands mid-download.
    const proxy = await ThrottleProxy.start(RGW_ENDPOINT, 2_000_000);
    const dest = path.join(dir, 'killed.bin');
    const args = ['download', `s3://${bucket.name}/killed.bin`, 'killed.bin', '--endpoint', proxy.endpoint, '--json', '--chunk-size', '1MiB', '--connections', '4'];
    try {
      const first = startCli(args, dir);
      // Stopped while its state is read, so that no state write replaces the one checked.
      await until('a state file recording two whole chunks', async () => {
        const state = await readResumeState(partialPaths(dest).state);
        if ((state?.completed.size ?? 0) < 2) return false;
        first.child.kill('SIGSTOP');
        const again = await readResumeState(partialPaths(dest).state);
        if ((again?.completed.size ?? 0) >= 2) return true;
        first.child.kill('SIGCONT');
        return false;
      });
      first.child.kill('SIGKILL');
      const r1 = await first.done;
      expect(r1.signal).toBe('SIGKILL');
      expect(existsSync(dest)).toBe(false);
      const servedFirst = proxy.bytesDown;
      expect(servedFirst).toBeLessThan(size);

      proxy.resetCount();
      proxy.setRate(undefined);
      const r2 = await runCli(args, dir);
      expect(r2.stderr).toBe('');
      expect(r2.code).toBe(0);
      const out = JSON.parse(r2.stdout) as DownloadJson;
      expect(out.resumedBytes).toBeGreaterThanOrEqual(2 * MiB);
      expect(out.verified).toEqual(['size', 'md5']);
      expect(await sha256File(dest)).toBe(sha256(body));
      // The rerun fetched the bytes that were not recorded, plus response headers (a few hundred
      // bytes per request), not the whole object again.
      expect(proxy.bytesDown).toBeGreaterThanOrEqual(size - out.resumedBytes);
      expect(proxy.bytesDown).toBeLessThan(size - out.resumedBytes + 64 * KiB);
      expect(existsSync(partialPaths(dest).state)).toBe(false);
    } finally {
      await proxy.close();
    }
  });
});
