import { randomBytes } from 'node:crypto';
import { mkdtemp, open, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import fc from 'fast-check';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { RoboflowError } from '../src/errors.js';
import { cutPieces, FileWriter, WRITE_PIECE_BYTES } from '../src/prefetch/file-writer.js';
import { rejection } from './helpers.js';

describe('cutPieces', () => {
  it('covers the buffers byte for byte, in order, with contiguous positions and no piece over the limit', () => {
    fc.assert(
      fc.property(
        fc.array(fc.integer({ min: 0, max: 3000 }), { maxLength: 12 }),
        fc.integer({ min: 1, max: 2048 }),
        fc.integer({ min: 0, max: 1e9 }),
        (lengths, pieceBytes, position) => {
          let fill = 0;
          const bufs = lengths.map((n) => Buffer.from(Array.from({ length: n }, () => fill++ & 0xff)));
          const pieces = cutPieces(bufs, position, pieceBytes);
          const total = lengths.reduce((a, b) => a + b, 0);
          let at = position;
          for (const [i, p] of pieces.entries()) {
            expect(p.position).toBe(at);
            expect(p.bytes).toBe(p.bufs.reduce((a, b) => a + b.length, 0));
            expect(p.bytes).toBeGreaterThan(0);
            expect(p.bytes).toBeLessThanOrEqual(pieceBytes);
            // Only the last piece is short.
            if (i < pieces.length - 1) expect(p.bytes).toBe(pieceBytes);
            at += p.bytes;
          }
          expect(at - position).toBe(total);
          expect(Buffer.concat(pieces.flatMap((p) => p.bufs))).toEqual(Buffer.concat(bufs));
        },
      ),
    );
  });

  it('slices instead of copying', () => {
    const big = Buffer.alloc(10, 1);
    const [first, second] = cutPieces([big], 0, 6);
    expect(first?.bufs[0]?.buffer).toBe(big.buffer);
    expect(second?.bufs[0]?.byteOffset).toBe(big.byteOffset + 6);
  });

  it('rejects a piece size that is not positive', () => {
    expect(() => cutPieces([Buffer.alloc(1)], 0, 0)).toThrow(/piece size/);
  });
});

describe('FileWriter', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'roboflow-writer-'));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it.each([1, 2, 5])('writes batches larger than a piece, from several buffers, at their positions (%i in flight)', async (inFlight) => {
    const file = path.join(dir, 'out');
    const size = 3 * WRITE_PIECE_BYTES + 12345;
    const data = randomBytes(size);
    const fh = await open(file, 'w+');
    try {
      await fh.truncate(size);
      const writer = new FileWriter(fh, (err) => err as Error, WRITE_PIECE_BYTES, inFlight);
      // The second half first, as lanes finish out of order; the first half as a stream's
      // uneven buffers.
      const half = Math.floor(size / 2);
      const second = writer.write([data.subarray(half)], size - half, half);
      const cuts = [0, 1, 70_000, 70_001, 300_000, half];
      const first = writer.write(
        cuts.slice(1).map((end, i) => data.subarray(cuts[i], end)),
        half,
        0,
      );
      await Promise.all([second, first]);
    } finally {
      await fh.close();
    }
    expect((await readFile(file)).equals(data)).toBe(true);
  });

  it('maps a failed write to the caller’s error, and the next batch still runs', async () => {
    const file = path.join(dir, 'read-only');
    const fh = await open(file, 'w+');
    await fh.close();
    const ro = await open(file, 'r');
    try {
      const writer = new FileWriter(ro, (err) => new RoboflowError('ERR_IO', `could not write: ${(err as Error).message}`));
      const err = await rejection(writer.write([Buffer.alloc(2 * WRITE_PIECE_BYTES + 1)], 2 * WRITE_PIECE_BYTES + 1, 0));
      expect(err.code).toBe('ERR_IO');
      expect(err.message).toMatch(/EBADF/);
      // A failed batch does not wedge the queue.
      expect((await rejection(writer.write([Buffer.alloc(1)], 1, 0))).code).toBe('ERR_IO');
    } finally {
      await ro.close();
    }
  });

  it('needs at least one write in flight', async () => {
    const fh = await open(path.join(dir, 'y'), 'w+');
    try {
      expect(() => new FileWriter(fh, (err) => err as Error, WRITE_PIECE_BYTES, 0)).toThrow(/at least 1/);
    } finally {
      await fh.close();
    }
  });

  it('refuses a batch whose buffers do not add up to its length', async () => {
    const fh = await open(path.join(dir, 'x'), 'w+');
    try {
      const writer = new FileWriter(fh, (err) => err as Error);
      await expect(writer.write([Buffer.alloc(3)], 4, 0)).rejects.toThrow(/4 bytes was given 3/);
    } finally {
      await fh.close();
    }
  });
});
