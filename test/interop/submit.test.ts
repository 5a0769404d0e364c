/**
 * `roboflow jobs submit --prefix s3://…` against Ceph RGW, which answers ListObjectsV2 with at
 * most 1,000 keys per page as S3 does: every object under the prefix becomes one job, and the
 * same command again adds none.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openQueue } from '../../src/jobs/index.js';
import { freshBucket, RGW_ENDPOINT, runCli, testClient } from './rgw.js';

const COUNT = 1_234;

let s3: S3Client;
let bucket: { name: string; remove: () => Promise<void> };
let dir: string;

beforeAll(async () => {
  s3 = testClient();
  bucket = await freshBucket(s3, 'submit');
  dir = await mkdtemp(path.join(os.tmpdir(), 'roboflow-interop-'));
  const keys = Array.from({ length: COUNT }, (_, i) => `runs/day ${i % 3}/ep+${String(i).padStart(5, '0')}.mcap`);
  keys.push('runs/notes.txt', 'other/ep.mcap');
  // Small objects, 16 PUTs in flight.
  for (let i = 0; i < keys.length; i += 16) {
    await Promise.all(keys.slice(i, i + 16).map((Key) => s3.send(new PutObjectCommand({ Bucket: bucket.name, Key, Body: Key }))));
  }
}, 300_000);
afterAll(async () => {
  await bucket?.remove();
  s3?.destroy();
  if (dir !== undefined) await rm(dir, { recursive: true, force: true });
}, 300_000);

describe('jobs submit --prefix against Ceph RGW', () => {
  it('submits one job per object over more than one page of 1,000 keys, and nothing the second time', async () => {
    const queueUrl = `sqlite://${path.join(dir, 'queue.db')}`;
    const args = [
      'jobs', 'submit', '--prefix', `s3://${bucket.name}/runs/`, '--match', '*.mcap',
      '--output', `s3://${bucket.name}/out/{stem}/`, '--endpoint', RGW_ENDPOINT, '--queue', queueUrl,
    ];
    const first = await runCli(args, dir);
    expect(first.stderr).toBe('');
    expect(first.code).toBe(0);
    expect(first.stdout).toBe(`${COUNT} new, 0 already queued\n`);
    const again = await runCli(args, dir);
    expect(again.code).toBe(0);
    expect(again.stdout).toBe(`0 new, ${COUNT} already queued\n`);

    const queue = await openQueue(queueUrl);
    try {
      const jobs = await queue.list({ limit: 10_000 });
      expect(jobs).toHaveLength(COUNT);
      const inputs = new Set(jobs.map((j) => j.inputs[0]?.url));
      expect(inputs.size).toBe(COUNT);
      // Keys with spaces and + come back from the listing as they were written.
      expect(inputs.has(`s3://${bucket.name}/runs/day 1/ep+00001.mcap`)).toBe(true);
      expect(inputs.has(`s3://${bucket.name}/runs/notes.txt`)).toBe(false);
      expect(jobs.find((j) => j.inputs[0]?.url.endsWith('/ep+00007.mcap'))?.output).toBe(`s3://${bucket.name}/out/ep+00007/`);
    } finally {
      await queue.close();
    }
  });
});
