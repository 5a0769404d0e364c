/**
 * What the interop suite shares: the Ceph RADOS Gateway it runs against (started by
 * `npm run test:interop`, see scripts/rgw/), an S3 client for setting objects up and reading them
 * back, the CLI, and a throttling TCP proxy (`throttle-proxy.ts`) for the tests that must catch a
 * download in the middle.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { fileURLToPath } from 'node:url';
import {
  CompleteMultipartUploadCommand,
  CreateBucketCommand,
  CreateMultipartUploadCommand,
  DeleteBucketCommand,
  DeleteObjectsCommand,
  GetObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
  UploadPartCommand,
} from '@aws-sdk/client-s3';

export const RGW_ENDPOINT = process.env['ROBOFLOW_RGW_ENDPOINT'] ?? 'http://127.0.0.1:7480';
/** The user scripts/rgw/start.sh creates. */
export const RGW_ACCESS_KEY = process.env['ROBOFLOW_RGW_ACCESS_KEY'] ?? 'roboflowtest';
export const RGW_SECRET_KEY = process.env['ROBOFLOW_RGW_SECRET_KEY'] ?? 'roboflowtestsecret123';
/** The environment a roboflow process (or `StorageOptions.env`) needs to reach RGW. */
export const RGW_ENV = { AWS_ACCESS_KEY_ID: RGW_ACCESS_KEY, AWS_SECRET_ACCESS_KEY: RGW_SECRET_KEY, AWS_REGION: 'us-east-1' } as const;

export const KiB = 1024;
export const MiB = 1024 * KiB;

// Built by `npm run test:interop` (its pre-script builds).
export const MAIN = fileURLToPath(new URL('../../dist/bin/roboflow.js', import.meta.url));

/**
 * An SDK client for the test's own setup and checks. Checksums only when required: Pacific does
 * not understand the SDK's default aws-chunked uploads with trailing checksums (it answers 411 to
 * a chunked body, and stores the framing as object data when a Content-Length comes along).
 */
export function testClient(secretAccessKey = RGW_SECRET_KEY, endpoint = RGW_ENDPOINT): S3Client {
  return new S3Client({
    endpoint,
    region: 'us-east-1',
    forcePathStyle: true,
    credentials: { accessKeyId: RGW_ACCESS_KEY, secretAccessKey },
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
    maxAttempts: 1,
  });
}

/**
 * A bucket of its own for one test file, created now; `remove()` deletes it with everything in
 * it. Fails with a hint when RGW does not answer, rather than skipping.
 */
export async function freshBucket(s3: S3Client, label: string): Promise<{ name: string; remove: () => Promise<void> }> {
  const name = `roboflow-${label}-${randomBytes(4).toString('hex')}`;
  try {
    await s3.send(new CreateBucketCommand({ Bucket: name }));
  } catch (err) {
    throw new Error(
      `cannot create a bucket on the RADOS Gateway at ${RGW_ENDPOINT} (${(err as Error).name}: ${(err as Error).message}); ` +
        'run the suite with `npm run test:interop`, which starts one (scripts/rgw/start.sh)',
      { cause: err },
    );
  }
  return {
    name,
    async remove() {
      for (;;) {
        const page = await s3.send(new ListObjectsV2Command({ Bucket: name }));
        const keys = (page.Contents ?? []).map((o) => ({ Key: o.Key! }));
        if (keys.length === 0) break;
        await s3.send(new DeleteObjectsCommand({ Bucket: name, Delete: { Objects: keys } }));
      }
      await s3.send(new DeleteBucketCommand({ Bucket: name }));
    },
  };
}

export function md5(b: Buffer): string {
  return createHash('md5').update(b).digest('hex');
}

export function sha256(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex');
}

export async function sha256File(file: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(file)) h.update(chunk as Buffer);
  return h.digest('hex');
}

/** Random bytes; different on every run, so nothing passes by matching a stale object. */
export function content(size: number): Buffer {
  return randomBytes(size);
}

/** One PUT of `body`; returns the ETag RGW gave. */
export async function putObject(s3: S3Client, bucket: string, key: string, body: Buffer): Promise<string> {
  const out = await s3.send(new PutObjectCommand({ Bucket: bucket, Key: key, Body: body }));
  return out.ETag!;
}

/** A multipart upload of `body` in parts of `partSize` (the last one shorter). */
export async function putMultipart(s3: S3Client, bucket: string, key: string, body: Buffer, partSize: number): Promise<void> {
  const { UploadId } = await s3.send(new CreateMultipartUploadCommand({ Bucket: bucket, Key: key }));
  const parts: { PartNumber: number; ETag: string }[] = [];
  for (let start = 0, n = 1; start < body.length; start += partSize, n++) {
    const out = await s3.send(
      new UploadPartCommand({ Bucket: bucket, Key: key, UploadId, PartNumber: n, Body: body.subarray(start, start + partSize) }),
    );
    parts.push({ PartNumber: n, ETag: out.ETag! });
  }
  await s3.send(new CompleteMultipartUploadCommand({ Bucket: bucket, Key: key, UploadId, MultipartUpload: { Parts: parts } }));
}

/** The stored bytes of an object, read back in full. */
export async function getBytes(s3: S3Client, bucket: string, key: string): Promise<Buffer> {
  const out = await s3.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
  return Buffer.from(await out.Body!.transformToByteArray());
}

export interface Run {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stdout: string;
  readonly stderr: string;
}

/** The CLI as a child process with the RGW credentials (plus `env`), in `cwd`. */
export function startCli(
  args: readonly string[],
  cwd: string,
  env: NodeJS.ProcessEnv = {},
): { child: ChildProcess; done: Promise<Run> } {
  const child = spawn(process.execPath, [MAIN, ...args], { cwd, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...RGW_ENV, ...env } });
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (b: Buffer) => (stdout += b.toString()));
  child.stderr!.on('data', (b: Buffer) => (stderr += b.toString()));
  const done = new Promise<Run>((resolve) => {
    child.once('close', (code, signal) => resolve({ code, signal, stdout, stderr }));
  });
  return { child, done };
}

export function runCli(args: readonly string[], cwd: string, env: NodeJS.ProcessEnv = {}): Promise<Run> {
  return startCli(args, cwd, env).done;
}

export async function until(what: string, check: () => boolean | Promise<boolean>, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}
