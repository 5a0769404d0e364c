import { randomBytes } from 'node:crypto';
import { mkdtemp, open, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { RoboflowError } from '../src/errors.js';
import { sharedBuffer, WriterThread } from '../src/prefetch/writer-thread.js';
import { rejection } from './helpers.js';

describe('WriterThread', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'roboflow-writer-thread-'));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('writes shared and unshared batches, given out of order and at once, at their positions', async () => {
    const file = path.join(dir, 'out');
    const size = 1_000_003;
    const data = randomBytes(size);
    const fh = await open(file, 'w+');
    try {
      await fh.truncate(size);
      // Pieces of 4,096 bytes: every batch takes many writes, and most end mid-buffer.
      const writer = new WriterThread(fh.fd, (err) => err as Error, 4096);
      const cuts = [0, 1, 70_000, 70_001, 333_333, 600_000, 999_999, size];
      const writes: Promise<unknown>[] = [];
      for (let i = cuts.length - 2; i >= 0; i--) {
        const start = cuts[i] as number;
        const end = cuts[i + 1] as number;
        const bytes = data.subarray(start, end);
        if (i % 2 === 0) {
          // A lane's buffer: shared memory, crossing without a copy.
          const shared = sharedBuffer(end - start + 17).subarray(17);
          bytes.copy(shared);
          writes.push(writer.write([shared], end - start, start));
        } else {
          // A stream's buffers: copied into shared memory first, several in flight at once.
          const mid = start + Math.floor((end - start) / 3);
          writes.push(writer.write([data.subarray(start, mid), data.subarray(mid, end)], end - start, start));
        }
      }
      await Promise.all(writes);
      await writer.close();
    } finally {
      await fh.close();
    }
    expect((await readFile(file)).equals(data)).toBe(true);
  });

  it('computes each batch’s CRC-32 on the thread when asked, from the bytes it writes', async () => {
    const { crc32 } = await import('node:zlib');
    const fh = await open(path.join(dir, 'crc'), 'w+');
    const data = randomBytes(300_001);
    const plain = new WriterThread(fh.fd, (err) => err as Error);
    const summing = new WriterThread(fh.fd, (err) => err as Error, 4096, true);
    try {
      expect(await plain.write([data], data.length, 0)).toBeUndefined();
      const shared = sharedBuffer(data.length);
      data.copy(shared);
      expect(await summing.write([shared.subarray(0, 1000), shared.subarray(1000)], data.length, 0)).toBe(crc32(data));
      expect(await summing.write([data.subarray(5)], data.length - 5, 5)).toBe(crc32(data.subarray(5)));
    } finally {
      await Promise.all([plain.close(), summing.close()]);
      await fh.close();
    }
  });

  it('maps a failed write to the caller’s error, and the next batch still runs', async () => {
    const file = path.join(dir, 'read-only');
    await (await open(file, 'w+')).close();
    const ro = await open(file, 'r');
    const writer = new WriterThread(ro.fd, (err) => new RoboflowError('ERR_IO', `could not write: ${(err as Error).message}`));
    try {
      const err = await rejection(writer.write([sharedBuffer(100_000)], 100_000, 0));
      expect(err.code).toBe('ERR_IO');
      expect(err.message).toMatch(/EBADF/);
      // The error crosses with its code, which the caller maps on (ENOSPC → ERR_NO_SPACE).
      const seen: unknown[] = [];
      const probing = new WriterThread(ro.fd, (e) => (seen.push(e), e as Error));
      await expect(probing.write([Buffer.alloc(1)], 1, 0)).rejects.toThrow(/EBADF/);
      await probing.close();
      expect((seen[0] as NodeJS.ErrnoException).code).toBe('EBADF');
      expect((seen[0] as NodeJS.ErrnoException).syscall).toBe('write');
      // A failed batch does not wedge the thread.
      expect((await rejection(writer.write([Buffer.alloc(1)], 1, 0))).code).toBe('ERR_IO');
    } finally {
      await writer.close();
      await ro.close();
    }
  });

  it('close() waits for pending writes, is idempotent, and refuses writes after it', async () => {
    const file = path.join(dir, 'closing');
    const fh = await open(file, 'w+');
    const size = 8 * 1024 * 1024;
    const data = randomBytes(size);
    try {
      const writer = new WriterThread(fh.fd, (err) => err as Error);
      const shared = sharedBuffer(size);
      data.copy(shared);
      let written = false;
      const write = writer.write([shared], size, 0).then(() => {
        written = true;
      });
      const first = writer.close();
      expect(writer.close()).toBe(first);
      await first;
      expect(written).toBe(true);
      await write;
      const late = await rejection(writer.write([Buffer.alloc(1)], 1, 0));
      expect(late.code).toBe('ERR_ABORTED');
    } finally {
      await fh.close();
    }
    expect((await readFile(file)).equals(data)).toBe(true);
  });

  it('refuses a batch whose buffers do not add up to its length, and a piece size that is not positive', async () => {
    const fh = await open(path.join(dir, 'x'), 'w+');
    const writer = new WriterThread(fh.fd, (err) => err as Error);
    try {
      await expect(writer.write([Buffer.alloc(3)], 4, 0)).rejects.toThrow(/4 bytes was given 3/);
      expect(() => new WriterThread(fh.fd, (err) => err as Error, 0)).toThrow(/piece size/);
    } finally {
      await writer.close();
      await fh.close();
    }
  });
});
