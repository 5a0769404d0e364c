/**
 * What a user reads when RGW refuses: one line naming the problem. Pacific's error bodies carry
 * an empty `<Message></Message>`, and a HEAD's error has no body at all, so the code must come
 * from somewhere else than the message.
 */
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { S3Client } from '@aws-sdk/client-s3';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { content, freshBucket, putObject, RGW_ENDPOINT, RGW_SECRET_KEY, type Run, runCli, testClient } from './rgw.js';

let s3: S3Client;
let bucket: { name: string; remove: () => Promise<void> };
let dir: string;

beforeAll(async () => {
  s3 = testClient();
  bucket = await freshBucket(s3, 'errors');
  await putObject(s3, bucket.name, 'there.bin', content(1000));
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

/** The one line of a failed download, after checking that it is one line, exit 1, nothing written. */
function oneLine(r: Run): string {
  expect(r.code).toBe(1);
  expect(r.stdout).toBe('');
  const lines = r.stderr.split('\n').filter(Boolean);
  expect(lines).toHaveLength(1);
  const line = lines[0]!;
  // Nothing left over from an empty message or an unnamed reply.
  expect(line).not.toMatch(/Unknown|undefined|null|: \(|:\s*—|: \[/);
  expect(existsSync(path.join(dir, 'out.bin'))).toBe(false);
  return line;
}

describe('errors from Ceph RGW', () => {
  it('a missing bucket: NoSuchBucket, ERR_NOT_FOUND, "the bucket does not exist"', async () => {
    const url = `s3://roboflow-no-such-bucket-${Date.now()}/there.bin`;
    const line = oneLine(await runCli(['download', url, 'out.bin', '--endpoint', RGW_ENDPOINT], dir));
    expect(line).toMatch(/^roboflow: .*NoSuchBucket \(HTTP 404\) — the bucket does not exist.* \[ERR_NOT_FOUND\]$/);
    expect(line).toContain(url);
  });

  it('a missing key: NoSuchKey, ERR_NOT_FOUND', async () => {
    const url = `s3://${bucket.name}/not/there.bin`;
    const line = oneLine(await runCli(['download', url, 'out.bin', '--endpoint', RGW_ENDPOINT], dir));
    expect(line).toMatch(/^roboflow: .*NoSuchKey \(HTTP 404\) — check the bucket and key \[ERR_NOT_FOUND\]$/);
    expect(line).toContain(url);
  });

  it('a wrong secret: SignatureDoesNotMatch, ERR_ACCESS_DENIED, the secret never shown', async () => {
    const wrong = 'not-the-secret-123';
    expect(wrong).not.toBe(RGW_SECRET_KEY);
    const url = `s3://${bucket.name}/there.bin`;
    const line = oneLine(await runCli(['download', url, 'out.bin', '--endpoint', RGW_ENDPOINT], dir, { AWS_SECRET_ACCESS_KEY: wrong }));
    expect(line).toMatch(/^roboflow: .*SignatureDoesNotMatch \(HTTP 403\) — check the credentials.* \[ERR_ACCESS_DENIED\]$/);
    expect(line).not.toContain(wrong);
  });

  it('an unknown access key: InvalidAccessKeyId, ERR_ACCESS_DENIED', async () => {
    const line = oneLine(
      await runCli(['download', `s3://${bucket.name}/there.bin`, 'out.bin', '--endpoint', RGW_ENDPOINT], dir, { AWS_ACCESS_KEY_ID: 'NOSUCHKEYID' }),
    );
    expect(line).toMatch(/^roboflow: .*InvalidAccessKeyId \(HTTP 403\) — check the credentials.* \[ERR_ACCESS_DENIED\]$/);
  });
});
