import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { copyFile, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { RoboflowError } from '../src/errors.js';
import { CHECKSUM_FILE, checksumProcessor, sha256File, sha256sumLine } from '../src/processors/checksum.js';
import type { JobRecord } from '../src/types.js';

const execFileAsync = promisify(execFile);
const SHA256SUM = ['/usr/bin/sha256sum', '/bin/sha256sum'].find((p) => existsSync(p));

function makeJob(urls: string[]): JobRecord {
  const now = new Date();
  return {
    id: 'job-sum',
    key: 'job-sum',
    priority: 0,
    inputs: urls.map((url) => ({ url })),
    output: null,
    processor: 'checksum',
    args: {},
    status: 'running',
    attempts: 1,
    maxAttempts: 3,
    leaseOwner: 'w1',
    leaseExpiresAt: now,
    lastError: null,
    result: null,
    commitAttempt: null,
    runAt: now,
    createdAt: now,
    updatedAt: now,
  };
}

let dir: string;
let outputDir: string;

beforeEach(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'roboflow-'));
  outputDir = path.join(dir, 'out');
  await mkdir(outputDir);
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('checksum processor', () => {
  it('hashes every input like node:crypto over the whole file and writes sha256sum format', async () => {
    // Empty, small, and larger than several read chunks with an odd tail.
    const sizes = [0, 1000, 9 * 1024 * 1024 + 7];
    const paths: string[] = [];
    const contents: Buffer[] = [];
    for (const [i, size] of sizes.entries()) {
      const p = path.join(dir, `local-${i}.bin`);
      const content = randomBytes(size);
      await writeFile(p, content);
      paths.push(p);
      contents.push(content);
    }
    const urls = ['s3://bucket/run7/empty.bin', 'https://h.example/x/ep%201.mcap?X-Amz-Signature=secret', 'file:///data/big.mcap'];
    const result = (await checksumProcessor.run({
      job: makeJob(urls),
      inputPaths: paths,
      outputDir,
      signal: new AbortController().signal,
    })) as { files: { name: string; bytes: number; sha256: string }[] };

    const expected = contents.map((c, i) => ({
      name: ['empty.bin', 'ep 1.mcap', 'big.mcap'][i],
      bytes: c.length,
      sha256: createHash('sha256').update(c).digest('hex'),
    }));
    expect(result.files).toEqual(expected);
    const text = await readFile(path.join(outputDir, CHECKSUM_FILE), 'utf8');
    expect(text).toBe(expected.map((e) => `${e.sha256}  ${e.name}\n`).join(''));
    expect(text).not.toContain('secret');
  });

  it.skipIf(SHA256SUM === undefined)('writes a file that sha256sum -c verifies, escaped names included', async () => {
    const names = ['plain.bin', 'back\\slash.bin', 'new\nline.bin'];
    const paths: string[] = [];
    for (const name of names) {
      const p = path.join(dir, `in-${paths.length}`);
      await writeFile(p, randomBytes(4096));
      paths.push(p);
      await copyFile(p, path.join(outputDir, name));
    }
    const urls = names.map((n) => `file:///d/${encodeURIComponent(n)}`);
    await checksumProcessor.run({ job: makeJob(urls), inputPaths: paths, outputDir, signal: new AbortController().signal });
    const { stdout } = await execFileAsync(SHA256SUM!, ['-c', CHECKSUM_FILE], { cwd: outputDir });
    expect(stdout.match(/: OK$/gm)).toHaveLength(3);

    // A changed file is caught by the same check.
    await writeFile(path.join(outputDir, 'plain.bin'), 'changed');
    await expect(execFileAsync(SHA256SUM!, ['-c', CHECKSUM_FILE], { cwd: outputDir })).rejects.toMatchObject({ code: 1 });
  });

  it('escapes names the way GNU sha256sum does', () => {
    const h = 'ab'.repeat(32);
    expect(sha256sumLine(h, 'a.bin')).toBe(`${h}  a.bin\n`);
    expect(sha256sumLine(h, 'a\\b\nc')).toBe(`\\${h}  a\\\\b\\nc\n`);
  });

  it('stops with ERR_ABORTED when the signal fires, and reports a missing input as ERR_IO', async () => {
    const big = path.join(dir, 'big.bin');
    await writeFile(big, randomBytes(32 * 1024 * 1024));
    const ac = new AbortController();
    const pending = sha256File(big, { signal: ac.signal });
    ac.abort();
    await expect(pending).rejects.toMatchObject({ code: 'ERR_ABORTED' });

    const err = await checksumProcessor
      .run({
        job: makeJob(['s3://b/missing.bin']),
        inputPaths: [path.join(dir, 'missing.bin')],
        outputDir,
        signal: new AbortController().signal,
      })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(RoboflowError);
    expect((err as RoboflowError).code).toBe('ERR_IO');
    expect((err as RoboflowError).message).toContain('missing.bin');
    expect((err as RoboflowError).message).toContain('job-sum');
  });
});
