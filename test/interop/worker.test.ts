/**
 * The worker against Ceph RGW: inputs read from it (as `s3://` and as presigned `http://` URLs),
 * outputs uploaded to it and read back. Pacific stores the aws-chunked framing of an upload with
 * trailing checksums as object data when a Content-Length comes with it, and answers 200: only
 * the bytes read back tell a clean upload from a corrupted one.
 */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { Readable } from 'node:stream';
import { GetObjectCommand, HeadObjectCommand, ListObjectsV2Command, PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { getSignedUrl } from '@aws-sdk/s3-request-presigner';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { openQueue } from '../../src/jobs/index.js';
import { CHECKSUM_FILE } from '../../src/processors/index.js';
import { SUCCESS_MARKER, type CommitMarker } from '../../src/storage/commit.js';
import { StorageClients } from '../../src/storage/index.js';
import { uploadFile } from '../../src/storage/upload.js';
import type { JobQueue, JobSpec } from '../../src/types.js';
import { Worker, type WorkerSummary } from '../../src/worker.js';
import { content, freshBucket, getBytes, KiB, md5, MiB, putObject, RGW_ENDPOINT, RGW_ENV, sha256, testClient } from './rgw.js';

let s3: S3Client;
let bucket: { name: string; remove: () => Promise<void> };
let dir: string;
let queue: JobQueue;

beforeAll(async () => {
  s3 = testClient();
  bucket = await freshBucket(s3, 'worker');
});
afterAll(async () => {
  await bucket?.remove();
  s3?.destroy();
});
beforeEach(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'roboflow-interop-'));
  queue = await openQueue(`sqlite://${path.join(dir, 'queue.db')}`);
});
afterEach(async () => {
  await queue.close();
  await rm(dir, { recursive: true, force: true });
});

/** Runs a draining worker over the queue with RGW as the S3 endpoint. */
function runWorker(env: Record<string, string> = RGW_ENV): Promise<WorkerSummary> {
  return new Worker({
    queue,
    drain: true,
    owner: 'interop',
    storage: { endpoint: RGW_ENDPOINT, region: 'us-east-1', forcePathStyle: true, env },
    config: {
      slots: 1,
      downloadConnections: 4,
      chunkSize: MiB,
      bufferDir: path.join(dir, 'buffer'),
      pollIntervalMs: 20,
    },
  }).run();
}

/** A job that copies its one input into its output directory as `copy.bin`. */
function copyJob(input: string, output: string): JobSpec {
  return { inputs: [{ url: input }], processor: 'exec', args: { command: ['cp', '{input}', '{output}/copy.bin'] }, output, maxAttempts: 1 };
}

async function expectStoredAs(key: string, body: Buffer, etag: RegExp): Promise<void> {
  const head = await s3.send(new HeadObjectCommand({ Bucket: bucket.name, Key: key }));
  // aws-chunked framing stored as data would make the object longer than what was sent.
  expect(head.ContentLength).toBe(body.length);
  expect(head.ETag).toMatch(etag);
  const back = await getBytes(s3, bucket.name, key);
  expect(back.length).toBe(body.length);
  expect(sha256(back)).toBe(sha256(body));
}

describe('worker against Ceph RGW', () => {
  it('uploads a job output below one part with a single PUT, stored byte-identical', async () => {
    const body = content(300 * KiB + 3);
    await putObject(s3, bucket.name, 'in/small.bin', body);
    const job = await queue.submit(copyJob(`s3://${bucket.name}/in/small.bin`, `s3://${bucket.name}/out/small/`));
    expect(await runWorker()).toMatchObject({ jobs: 1, done: 1 });
    expect(await queue.get(job.id)).toMatchObject({ status: 'done' });
    // A single PUT's ETag is the MD5 of what was stored: the very bytes sent, no framing.
    await expectStoredAs('out/small/copy.bin', body, new RegExp(`^"${md5(body)}"$`));
  });

  it('publishes the output through a staging prefix with server-side copies: _SUCCESS last, no staging left', async () => {
    const body = content(2 * MiB + 11);
    await putObject(s3, bucket.name, 'in/commit.bin', body);
    const job = await queue.submit(copyJob(`s3://${bucket.name}/in/commit.bin`, `s3://${bucket.name}/out/commit/`));
    expect(await runWorker()).toMatchObject({ jobs: 1, done: 1 });
    const done = await queue.get(job.id);
    expect(done).toMatchObject({ status: 'done' });
    // CopyObject on RGW keeps the bytes (a copy of a single-PUT object keeps its MD5 ETag).
    await expectStoredAs('out/commit/copy.bin', body, new RegExp(`^"${md5(body)}"$`));
    const marker = JSON.parse((await getBytes(s3, bucket.name, `out/commit/${SUCCESS_MARKER}`)).toString('utf8')) as CommitMarker;
    expect(marker).toMatchObject({ version: 1, job: job.id, attempt: done!.commitAttempt, files: [{ name: 'copy.bin', bytes: body.length }] });
    const listed = await s3.send(new ListObjectsV2Command({ Bucket: bucket.name, Prefix: 'out/commit/' }));
    expect((listed.Contents ?? []).map((o) => o.Key).sort()).toEqual(['out/commit/_SUCCESS', 'out/commit/copy.bin']);
  });

  it('uploads a job output of 3 parts as a multipart upload, stored byte-identical', async () => {
    // Parts are 8 MiB: 8 + 8 + 4 MiB and 5 bytes.
    const body = content(20 * MiB + 5);
    await putObject(s3, bucket.name, 'in/big.bin', body);
    const job = await queue.submit(copyJob(`s3://${bucket.name}/in/big.bin`, `s3://${bucket.name}/out/big/`));
    expect(await runWorker()).toMatchObject({ jobs: 1, done: 1 });
    const done = await queue.get(job.id);
    expect(done).toMatchObject({ status: 'done' });
    expect((done!.result as { uploaded: { name: string; bytes: number }[] }).uploaded).toEqual([
      expect.objectContaining({ name: 'copy.bin', bytes: body.length }),
    ]);
    // Pacific's CompleteMultipartUpload reply has an empty <ETag>; HEAD has the real one.
    await expectStoredAs('out/big/copy.bin', body, /^"[0-9a-f]{32}-3"$/);
  });

  it('uploads outputs with spaces, unicode and + in their names, and an empty one', async () => {
    await putObject(s3, bucket.name, 'in/names.bin', content(10 * KiB));
    const job = await queue.submit({
      inputs: [{ url: `s3://${bucket.name}/in/names.bin` }],
      processor: 'exec',
      args: { command: ['sh', '-c', 'mkdir -p "$1/sub dir" && printf a+b > "$1/sub dir/a b+ü.txt" && : > "$1/empty.bin"', 'sh', '{output}'] },
      output: `s3://${bucket.name}/out/names/`,
      maxAttempts: 1,
    });
    expect(await runWorker()).toMatchObject({ jobs: 1, done: 1 });
    expect(await queue.get(job.id)).toMatchObject({ status: 'done' });
    await expectStoredAs('out/names/sub dir/a b+ü.txt', Buffer.from('a+b'), new RegExp(`^"${md5(Buffer.from('a+b'))}"$`));
    await expectStoredAs('out/names/empty.bin', Buffer.alloc(0), /^"d41d8cd98f00b204e9800998ecf8427e"$/);
  });

  it("Pacific refuses the SDK's default upload (aws-chunked, trailing CRC32) with 411; roboflow's upload sends a plain body", async () => {
    const body = content(2 * MiB + 1);
    const defaults = new S3Client({
      endpoint: RGW_ENDPOINT,
      region: 'us-east-1',
      forcePathStyle: true,
      credentials: { accessKeyId: RGW_ENV.AWS_ACCESS_KEY_ID, secretAccessKey: RGW_ENV.AWS_SECRET_ACCESS_KEY },
      maxAttempts: 1,
      // The refusal is the point here; the SDK need not print it too.
      logger: { debug: () => undefined, info: () => undefined, warn: () => undefined, error: () => undefined },
    });
    try {
      const refused = await defaults
        .send(new PutObjectCommand({ Bucket: bucket.name, Key: 'plain/sdk.bin', Body: Readable.from([body]), ContentLength: body.length }))
        .then(
          () => undefined,
          (err: unknown) => err as { name?: string; $metadata?: { httpStatusCode?: number } },
        );
      expect(refused?.name).toBe('MissingContentLength');
      expect(refused?.$metadata?.httpStatusCode).toBe(411);
    } finally {
      defaults.destroy();
    }
    const file = path.join(dir, 'plain.bin');
    await writeFile(file, body);
    const clients = new StorageClients({ endpoint: RGW_ENDPOINT, env: RGW_ENV });
    try {
      const up = await uploadFile(file, `s3://${bucket.name}/plain/roboflow.bin`, { clients });
      expect(up.bytes).toBe(body.length);
    } finally {
      await clients.close();
    }
    await expectStoredAs('plain/roboflow.bin', body, new RegExp(`^"${md5(body)}"$`));
  });

  it('takes presigned URLs (http://…?X-Amz-…) as job inputs', async () => {
    const a = content(1 * MiB + 17);
    const b = content(5 * KiB);
    await putObject(s3, bucket.name, 'presigned/a.bin', a);
    await putObject(s3, bucket.name, 'presigned/b c+ü.bin', b);
    const sign = (key: string) => getSignedUrl(s3, new GetObjectCommand({ Bucket: bucket.name, Key: key }), { expiresIn: 600 });
    const urls = [await sign('presigned/a.bin'), await sign('presigned/b c+ü.bin')];
    for (const url of urls) expect(url).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/.*\?.*X-Amz-Signature=/);
    const outDir = path.join(dir, 'results');
    const job = await queue.submit({ inputs: urls.map((url) => ({ url })), processor: 'checksum', output: pathToFileURL(outDir).href + '/' });
    // No S3 credentials at all: the signatures in the URLs are the only authorisation.
    expect(await runWorker({})).toMatchObject({ jobs: 1, done: 1 });
    expect(await queue.get(job.id)).toMatchObject({ status: 'done' });
    const listed = await readFile(path.join(outDir, CHECKSUM_FILE), 'utf8');
    expect(listed).toContain(`${sha256(a)} `);
    expect(listed).toContain(`${sha256(b)} `);
  });

  it('fails a job whose output bucket is missing with NoSuchBucket, naming it', async () => {
    await putObject(s3, bucket.name, 'in/orphan.bin', content(10 * KiB));
    const missing = `roboflow-no-such-bucket-${Date.now()}`;
    const job = await queue.submit(copyJob(`s3://${bucket.name}/in/orphan.bin`, `s3://${missing}/out/`));
    expect(await runWorker()).toMatchObject({ jobs: 1, done: 0, dead: 1 });
    const dead = await queue.get(job.id);
    expect(dead).toMatchObject({ status: 'dead' });
    expect(dead!.lastError).toMatch(/NoSuchBucket \(HTTP 404\) — the bucket does not exist/);
    // The attempt stages its output under `<output>/_attempts/<job id>/<attempt>/` before publishing it.
    expect(dead!.lastError).toMatch(new RegExp(`s3://${missing}/out/_attempts/${job.id}/[^/]+/copy\\.bin`));
    expect(dead!.lastError).not.toMatch(/Unknown/);
  });
});
