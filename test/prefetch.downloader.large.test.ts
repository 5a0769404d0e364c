import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RoboflowError } from '../src/errors.js';
import { ParallelDownloader } from '../src/prefetch/downloader.js';
import { ChunkPlan } from '../src/prefetch/ranges.js';
import { partialPaths, readResumeState } from '../src/prefetch/resume-state.js';
import { ObjectServer } from './support/object-server.js';

const MiB = 1024 * 1024;
// Not a multiple of the chunk size, so the last range is short.
const SIZE = 300 * MiB + 12_345;
const S3_ENV = { AWS_ACCESS_KEY_ID: 'test', AWS_SECRET_ACCESS_KEY: 'test', AWS_REGION: 'us-east-1' };

let server: ObjectServer;
let dir: string;
let sha: string;

beforeAll(async () => {
  server = await ObjectServer.start();
  server.putObject('big', 'rec.mcap', { generated: { size: SIZE, seed: 42 } });
  sha = await server.objectSha256('big', 'rec.mcap');
  dir = await mkdtemp(path.join(os.tmpdir(), 'roboflow-'));
}, 120_000);
afterAll(async () => {
  await server.close();
  await rm(dir, { recursive: true, force: true });
});

async function sha256File(file: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(file, { highWaterMark: 4 * MiB })) h.update(chunk as Buffer);
  return h.digest('hex');
}

describe('a ~300 MiB object, 8 MiB chunks, 16 connections', () => {
  it.each(['http', 's3'] as const)('arrives byte-identical over %s', async (scheme) => {
    const d = new ParallelDownloader({
      connections: 16,
      chunkSize: 8 * MiB,
      storage: { endpoint: server.endpoint, env: S3_ENV },
    });
    const dest = path.join(dir, `rec-${scheme}.mcap`);
    try {
      const url = scheme === 'http' ? server.httpUrl('big', 'rec.mcap') : server.s3Url('big', 'rec.mcap');
      // Buffers held by this process (the test server's included) while the download runs.
      let peak = 0;
      const sampler = setInterval(() => (peak = Math.max(peak, process.memoryUsage().arrayBuffers)), 5);
      let result;
      try {
        result = await d.download(url, dest);
      } finally {
        clearInterval(sampler);
      }
      // 16 lanes × (2 MiB write batch + stream buffers), plus garbage not yet collected: far
      // below the object size, which is what holding whole ranges or the object would cost.
      expect(peak).toBeLessThan(128 * MiB);
      expect(result.bytes).toBe(SIZE);
      expect(result.retries).toBe(0);
      // Over S3 the ETag's MD5 was verified too, hashed in order while the ranges arrived.
      if (scheme === 's3') expect(result.verified).toEqual(['size', 'md5']);
      expect(await sha256File(dest)).toBe(sha);
      // One request per chunk of the plan: 22 of 8 MiB, then the last round of 16 chunks as 2 MiB
      // chunks (124 MiB + 12,345 bytes: 63).
      const gets = server.requests.filter((r) => r.method === 'GET');
      const plan = ChunkPlan.forDownload(SIZE, 8 * MiB, 16);
      expect(plan.tailStart).toBe(22 * 8 * MiB);
      expect(gets.length).toBe(22 + 63);
      expect(gets.map((r) => [r.range!.start, r.range!.end]).sort((a, b) => a[0]! - b[0]!)).toEqual(plan.ranges().map((r) => [r.start, r.end]));
      server.clearRequests();
    } finally {
      await d.close();
      await rm(dest, { force: true });
    }
  }, 180_000);
});

describe('in-order verification of a large object (hashing thread)', () => {
  it('hashes from the first byte after a resume, and verifies the MD5', async () => {
    const storage = { endpoint: server.endpoint, env: S3_ENV };
    const dest = path.join(dir, 'resumed.mcap');
    const ac = new AbortController();
    const first = new ParallelDownloader({ connections: 8, chunkSize: 8 * MiB, storage });
    server.setRateLimit(8 * MiB);
    try {
      const running = first.download(server.s3Url('big', 'rec.mcap'), dest, { signal: ac.signal });
      for (;;) {
        const st = await readResumeState(partialPaths(dest).state);
        if (st && st.completed.size >= 4) break;
        await new Promise((r) => setTimeout(r, 20));
      }
      ac.abort();
      await expect(running).rejects.toMatchObject({ code: 'ERR_ABORTED' });
    } finally {
      server.setRateLimit(undefined);
      await first.close();
    }
    const second = new ParallelDownloader({ connections: 16, chunkSize: 8 * MiB, storage });
    try {
      const result = await second.download(server.s3Url('big', 'rec.mcap'), dest);
      expect(result.resumedBytes).toBeGreaterThanOrEqual(4 * 8 * MiB);
      expect(result.verified).toEqual(['size', 'md5']);
      expect(await sha256File(dest)).toBe(sha);
    } finally {
      await second.close();
      await rm(dest, { force: true });
    }
  }, 180_000);

  it('rejects a wrong checksum and removes the partial download', async () => {
    const d = new ParallelDownloader({ connections: 16, chunkSize: 8 * MiB });
    const dest = path.join(dir, 'wrong.mcap');
    try {
      const err = await d
        .download(server.httpUrl('big', 'rec.mcap'), dest, { expectedChecksum: { algorithm: 'sha256', hex: 'ab'.repeat(32) } })
        .then(
          () => undefined,
          (e: unknown) => e,
        );
      expect(err).toBeInstanceOf(RoboflowError);
      expect((err as RoboflowError).code).toBe('ERR_CHECKSUM_MISMATCH');
      expect((err as RoboflowError).message).toContain(`got ${sha}`);
      for (const gone of [dest, partialPaths(dest).temp, partialPaths(dest).state]) await expect(stat(gone)).rejects.toThrow();
    } finally {
      await d.close();
    }
  }, 180_000);
});

