import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import { createRequire } from 'node:module';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { CreateBucketCommand, S3Client } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { channels, type UploadDoneEvent } from '../src/diagnostics.js';
import { StorageClients } from '../src/storage/index.js';
import { uploadDirectory, uploadFile } from '../src/storage/upload.js';
import { ObjectServer } from './support/object-server.js';
import { readAll, rejection } from './helpers.js';

const MiB = 1024 * 1024;
const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');



/** Reads a whole object back through a source, in 4 MiB ranges. */
async function readBack(clients: StorageClients, url: string): Promise<Buffer> {
  const src = clients.open(url);
  try {
    const st = await src.stat();
    const parts: Buffer[] = [];
    for (let start = 0; start < st.size; start += 4 * MiB) {
      const { body } = await src.read({ start, end: Math.min(st.size, start + 4 * MiB) }, { ifMatch: st.etag! });
      parts.push(await readAll(body));
    }
    return Buffer.concat(parts);
  } finally {
    await src.close();
  }
}

const KEY_ID = 'AKIAUPLOADTEST';
const SECRET = 'upload-secret';

describe('uploads to S3', () => {
  let tmp: string;
  let big: string;
  let bigData: Buffer;

  beforeAll(async () => {
    tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'roboflow-'));
    bigData = randomBytes(12 * MiB + 123);
    big = path.join(tmp, 'big.bin');
    await fs.writeFile(big, bigData);
  });

  afterAll(async () => {
    await fs.rm(tmp, { recursive: true, force: true });
  });

  describe('object server', () => {
    let server: ObjectServer;
    let clients: StorageClients;

    beforeAll(async () => {
      server = await ObjectServer.start({ credentials: { accessKeyId: KEY_ID, secretAccessKey: SECRET } });
      clients = new StorageClients({ endpoint: server.endpoint, env: { AWS_ACCESS_KEY_ID: KEY_ID, AWS_SECRET_ACCESS_KEY: SECRET } });
    });

    afterAll(async () => {
      await clients.close();
      await server.close();
    });

    beforeEach(() => {
      server.clearFaults();
      server.clearRequests();
    });

    it('uploads 12 MiB in 8 MiB parts and reads it back intact', async () => {
      const events: UploadDoneEvent[] = [];
      const unsubscribe = channels.uploadDone.subscribe((e) => events.push(e));
      try {
        const result = await uploadFile(big, 's3://out/runs/big.bin', { clients, contentType: 'application/octet-stream' });
        expect(result).toMatchObject({ bytes: bigData.length, url: 's3://out/runs/big.bin' });
        expect(result.seconds).toBeGreaterThan(0);
      } finally {
        unsubscribe();
      }
      expect(events).toEqual([expect.objectContaining({ bytes: bigData.length })]);
      const ops = server.requests.map((r) => r.operation);
      expect(ops.filter((o) => o === 'CreateMultipartUpload')).toHaveLength(1);
      expect(ops.filter((o) => o === 'UploadPart')).toHaveLength(2);
      expect(ops.filter((o) => o === 'CompleteMultipartUpload')).toHaveLength(1);
      expect(await server.objectSha256('out', 'runs/big.bin')).toBe(sha256(bigData));
      expect(sha256(await readBack(clients, 's3://out/runs/big.bin'))).toBe(sha256(bigData));
    });

    it('uploads a small file in one PUT', async () => {
      const small = path.join(tmp, 'small.json');
      await fs.writeFile(small, '{"ok":true}');
      await uploadFile(small, 's3://out/small.json', { clients, contentType: 'application/json' });
      expect(server.requests.map((r) => r.operation)).toEqual(['PutObject']);
      expect(server.objectBytes('out', 'small.json').toString()).toBe('{"ok":true}');
    });

    it('fails permanently on access denied and retryably on server errors', async () => {
      const small = path.join(tmp, 'small2.bin');
      await fs.writeFile(small, randomBytes(1000));
      server.addFault({ fault: { kind: 'status', status: 403 }, match: { method: 'PUT' } });
      const denied = await rejection(uploadFile(small, 's3://out/denied.bin', { clients }));
      expect(denied.code).toBe('ERR_ACCESS_DENIED');
      expect(denied.message).toContain('s3://out/denied.bin');
      expect(denied.retryable).toBe(false);

      server.addFault({ fault: { kind: 'status', status: 500 }, match: { method: 'PUT' }, times: 100 });
      const failed = await rejection(uploadFile(small, 's3://out/failed.bin', { clients }));
      expect(failed.code).toBe('ERR_UPLOAD');
      expect(failed.retryable).toBe(true);
      expect(failed.message).toContain('s3://out/failed.bin');
      expect(server.hasObject('out', 'failed.bin')).toBe(false);
    });

    it('recovers from one failed part through the SDK retry', async () => {
      server.addFault({ fault: { kind: 'status', status: 500 }, match: { method: 'PUT' }, skip: 1, times: 1 });
      await uploadFile(big, 's3://out/retried.bin', { clients });
      expect(await server.objectSha256('out', 'retried.bin')).toBe(sha256(bigData));
    });

    it('does not start an upload whose signal is already aborted', async () => {
      const ac = new AbortController();
      ac.abort();
      expect((await rejection(uploadFile(big, 's3://out/aborted.bin', { clients, signal: ac.signal }))).code).toBe('ERR_ABORTED');
      expect(server.requests).toHaveLength(0);
    });

    it('aborts a multipart upload in flight and leaves no object', async () => {
      server.setFirstByteLatency(0);
      const ac = new AbortController();
      const p = rejection(uploadFile(big, 's3://out/cancelled.bin', { clients, signal: ac.signal }));
      // Abort once the upload has started sending parts.
      while (!server.requests.some((r) => r.operation === 'UploadPart')) await new Promise((r) => setTimeout(r, 5));
      ac.abort();
      expect((await p).code).toBe('ERR_ABORTED');
      expect(server.hasObject('out', 'cancelled.bin')).toBe(false);
    });

    it('uploads a directory tree under a prefix, skipping symbolic links', async () => {
      const dir = path.join(tmp, 'outputs');
      await fs.mkdir(path.join(dir, 'nested/deeper'), { recursive: true });
      await fs.writeFile(path.join(dir, 'summary.json'), '{}');
      await fs.writeFile(path.join(dir, 'nested/a.txt'), 'a');
      await fs.writeFile(path.join(dir, 'nested/deeper/b.bin'), randomBytes(2048));
      await fs.symlink('/etc/hostname', path.join(dir, 'link'));
      const events: UploadDoneEvent[] = [];
      const unsubscribe = channels.uploadDone.subscribe((e) => events.push(e));
      let results;
      try {
        results = await uploadDirectory(dir, 's3://out/job-7', { clients });
      } finally {
        unsubscribe();
      }
      expect(results.map((r) => [r.name, r.url, r.bytes])).toEqual([
        ['nested/a.txt', 's3://out/job-7/nested/a.txt', 1],
        ['nested/deeper/b.bin', 's3://out/job-7/nested/deeper/b.bin', 2048],
        ['summary.json', 's3://out/job-7/summary.json', 2],
      ]);
      expect(events.map((e) => e.bytes).sort((a, b) => a - b)).toEqual([1, 2, 2048]);
      expect(server.listKeys('out').filter((k) => k.startsWith('job-7/'))).toEqual([
        'job-7/nested/a.txt',
        'job-7/nested/deeper/b.bin',
        'job-7/summary.json',
      ]);
    });

    it('stops a directory upload at the first failure', async () => {
      const dir = path.join(tmp, 'failing');
      await fs.mkdir(dir, { recursive: true });
      for (let i = 0; i < 6; i++) await fs.writeFile(path.join(dir, `f${i}.txt`), String(i));
      server.addFault({ fault: { kind: 'status', status: 403 }, match: { method: 'PUT', key: 'fail/f0.txt' } });
      const err = await rejection(uploadDirectory(dir, 's3://out/fail/', { clients }));
      expect(err.code).toBe('ERR_ACCESS_DENIED');
      expect(err.message).toContain('s3://out/fail/f0.txt');
    });
  });

  describe('s3rver', () => {
    interface S3rverInstance {
      run(): Promise<AddressInfo>;
      close(): Promise<void>;
    }
    let s3rver: S3rverInstance;
    let dir: string;
    let clients: StorageClients;

    beforeAll(async () => {
      dir = await fs.mkdtemp(path.join(os.tmpdir(), 'roboflow-'));
      const S3rver = createRequire(import.meta.url)('s3rver') as new (o: Record<string, unknown>) => S3rverInstance;
      s3rver = new S3rver({ port: 0, address: '127.0.0.1', silent: true, directory: dir });
      const { port } = await s3rver.run();
      const endpoint = `http://127.0.0.1:${port}`;
      const sdk = new S3Client({
        endpoint,
        region: 'us-east-1',
        forcePathStyle: true,
        credentials: { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' },
        requestChecksumCalculation: 'WHEN_REQUIRED',
      });
      try {
        await sdk.send(new CreateBucketCommand({ Bucket: 'results' }));
      } finally {
        sdk.destroy();
      }
      clients = new StorageClients({ endpoint, env: { AWS_ACCESS_KEY_ID: 'S3RVER', AWS_SECRET_ACCESS_KEY: 'S3RVER' } });
    });

    afterAll(async () => {
      await clients?.close();
      await s3rver?.close();
      await fs.rm(dir, { recursive: true, force: true });
    });

    it('uploads 12 MiB multipart; the object has exactly the file bytes', async () => {
      const result = await uploadFile(big, 's3://results/a/big.bin', { clients });
      expect(result.bytes).toBe(bigData.length);
      const back = await readBack(clients, 's3://results/a/big.bin');
      expect(back.length).toBe(bigData.length);
      expect(sha256(back)).toBe(sha256(bigData));
      const st = await clients.open('s3://results/a/big.bin').stat();
      expect(st.size).toBe(bigData.length);
      // Whatever checksum the source vouches for must hold for the bytes.
      for (const c of st.checksums) expect(c.hex).toBe(createHash(c.algorithm).update(back).digest('hex'));
    });
  });
});

describe('uploads to files', () => {
  let tmp: string;

  beforeAll(async () => {
    tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'roboflow-'));
  });

  afterAll(async () => {
    await fs.rm(tmp, { recursive: true, force: true });
  });

  it('copies through a temp file and renames, creating the directory', async () => {
    const src = path.join(tmp, 'src.bin');
    const data = randomBytes(3 * MiB + 5);
    await fs.writeFile(src, data);
    const destDir = path.join(tmp, 'out', 'job 1');
    const url = pathToFileURL(path.join(destDir, 'result.bin')).href;
    const result = await uploadFile(src, url, {});
    expect(result).toMatchObject({ bytes: data.length, url });
    expect((await fs.readFile(path.join(destDir, 'result.bin'))).equals(data)).toBe(true);
    expect(await fs.readdir(destDir)).toEqual(['result.bin']);
  });

  it('replaces an existing file whole and leaves it untouched when aborted', async () => {
    const src = path.join(tmp, 'new.txt');
    const dest = path.join(tmp, 'dest.txt');
    await fs.writeFile(src, 'new content');
    await fs.writeFile(dest, 'old content');
    const ac = new AbortController();
    ac.abort();
    expect((await rejection(uploadFile(src, dest, { signal: ac.signal }))).code).toBe('ERR_ABORTED');
    expect(await fs.readFile(dest, 'utf8')).toBe('old content');
    await uploadFile(src, dest);
    expect(await fs.readFile(dest, 'utf8')).toBe('new content');
    expect((await fs.readdir(tmp)).filter((n) => n.includes('roboflow-upload'))).toEqual([]);
  });

  it('uploads a directory to a plain-path prefix', async () => {
    const dir = path.join(tmp, 'tree');
    await fs.mkdir(path.join(dir, 'x'), { recursive: true });
    await fs.writeFile(path.join(dir, 'x', 'y.txt'), 'y');
    const out = path.join(tmp, 'published');
    const results = await uploadDirectory(dir, out);
    expect(results.map((r) => r.url)).toEqual([path.join(out, 'x', 'y.txt')]);
    expect(await fs.readFile(path.join(out, 'x', 'y.txt'), 'utf8')).toBe('y');
  });

  it('refuses HTTP destinations and missing local files', async () => {
    const src = path.join(tmp, 'some.txt');
    await fs.writeFile(src, 's');
    expect((await rejection(uploadFile(src, 'https://example.com/upload/some.txt'))).code).toBe('ERR_UNSUPPORTED_SCHEME');
    const missing = await rejection(uploadFile(path.join(tmp, 'nope.txt'), path.join(tmp, 'x.txt')));
    expect(missing.code).toBe('ERR_NOT_FOUND');
  });
});
