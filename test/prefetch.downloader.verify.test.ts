import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, open, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import zlib from 'node:zlib';
import fc from 'fast-check';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { RoboflowError } from '../src/errors.js';
import { crc32c, crc32Combine, nativeCrc, nativeCrcModule, portableCrc } from '../src/prefetch/crc.js';
import {
  cheapestChecksum,
  compareChecksums,
  crc32OfRange,
  createOrderedHasher,
  hashFile,
  InOrderHasher,
  SegmentCrc32Hasher,
  WorkerHasher,
} from '../src/prefetch/verify.js';
import { describeFull } from './tier.js';

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'roboflow-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** Bit-at-a-time CRC-32C, the definition the table-driven version must agree with. */
function crc32cReference(buf: Uint8Array): number {
  let c = 0xffffffff;
  for (const byte of buf) {
    c ^= byte;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
  }
  return (c ^ 0xffffffff) >>> 0;
}

const implementations = [portableCrc, ...(nativeCrc ? [nativeCrc] : [])];

describe.each(implementations.map((impl) => [impl.name, impl] as const))('crc32c (%s)', (_name, impl) => {
  it('matches the published check value and test vectors', () => {
    expect(impl.crc32c(Buffer.from('123456789'))).toBe(0xe3069283);
    expect(impl.crc32c(Buffer.alloc(0))).toBe(0);
    // RFC 3720 B.4: 32 bytes of zeros, of 0xff.
    expect(impl.crc32c(Buffer.alloc(32, 0))).toBe(0x8a9136aa);
    expect(impl.crc32c(Buffer.alloc(32, 0xff))).toBe(0x62a8ab43);
  });

  it('agrees with the bitwise definition and continues across splits', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 300 }), fc.nat(), (bytes, cut) => {
        const at = bytes.length === 0 ? 0 : cut % (bytes.length + 1);
        expect(impl.crc32c(bytes)).toBe(crc32cReference(bytes));
        expect(impl.crc32c(bytes.subarray(at), impl.crc32c(bytes.subarray(0, at)))).toBe(impl.crc32c(bytes));
      }),
    );
  });
});

describe.each(implementations.map((impl) => [impl.name, impl] as const))('crc32 (%s)', (_name, impl) => {
  it('agrees with zlib and continues across splits, on shared memory too', () => {
    expect(impl.crc32(Buffer.from('123456789'))).toBe(0xcbf43926);
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 300 }), fc.nat(), (bytes, cut) => {
        const at = bytes.length === 0 ? 0 : cut % (bytes.length + 1);
        const shared = new Uint8Array(new SharedArrayBuffer(bytes.length + 3), 3);
        shared.set(bytes);
        expect(impl.crc32(shared)).toBe(zlib.crc32(bytes));
        expect(impl.crc32(bytes.subarray(at), impl.crc32(bytes.subarray(0, at)))).toBe(zlib.crc32(bytes));
      }),
    );
  });
});

describe('native CRCs', () => {
  it('load on the platforms the package ships binaries for', () => {
    // The CI machines are linux x64 (glibc): losing the binary there would silently cost
    // ~0.4 CPU s per GB of CRC-32 and ~3 of CRC-32C.
    if (process.platform === 'linux' && process.arch === 'x64') {
      expect(nativeCrc?.name).toBe('native');
      expect(nativeCrcModule).toMatch(/@node-rs[\\/]crc32/);
    }
    expect(crc32c).toBe((nativeCrc ?? portableCrc).crc32c);
  });
});

describe('InOrderHasher', () => {
  it('hashes a file in order as its prefix grows, equal to hashing it at once', async () => {
    const data = randomBytes(5 * 1024 * 1024 + 17);
    const file = path.join(dir, 'f');
    await writeFile(file, data);
    const fh = await open(file, 'r');
    try {
      const hasher = new InOrderHasher(fh, ['md5', 'sha1', 'sha256', 'crc32', 'crc32c']);
      for (const at of [10, 1_000_000, 999, 3_000_000, 3_000_001]) hasher.advanceTo(at);
      const got = await hasher.finish(data.length);
      expect(got.get('md5')).toBe(createHash('md5').update(data).digest('hex'));
      expect(got.get('sha1')).toBe(createHash('sha1').update(data).digest('hex'));
      expect(got.get('sha256')).toBe(createHash('sha256').update(data).digest('hex'));
      expect(got.get('crc32')).toBe(zlib.crc32(data).toString(16).padStart(8, '0'));
      expect(got.get('crc32c')).toBe(crc32c(data).toString(16).padStart(8, '0'));
      expect(hasher.bytesHashed).toBe(data.length);
    } finally {
      await fh.close();
    }
  });

  it('fails when the file is shorter than promised', async () => {
    const file = path.join(dir, 'short');
    await writeFile(file, 'abc');
    const fh = await open(file, 'r');
    try {
      await expect(new InOrderHasher(fh, ['sha256']).finish(10)).rejects.toMatchObject({ code: 'ERR_IO' });
    } finally {
      await fh.close();
    }
  });

  it('hashFile covers the empty file', async () => {
    const file = path.join(dir, 'empty');
    await writeFile(file, '');
    expect((await hashFile(file, ['sha256'])).get('sha256')).toBe(createHash('sha256').digest('hex'));
  });
});

describe('WorkerHasher', () => {
  it('hashes on a worker thread as the prefix grows, equal to hashing at once', async () => {
    const data = randomBytes(6 * 1024 * 1024 + 5);
    const file = path.join(dir, 'w');
    await writeFile(file, data);
    const hasher = new WorkerHasher(file, data.length, ['md5', 'sha256', 'crc32']);
    try {
      for (const at of [1, 4_000_000, 10, 6_000_000]) {
        hasher.advanceTo(at);
        await new Promise((r) => setTimeout(r, 5));
      }
      const got = await hasher.finish(data.length);
      expect(got.get('md5')).toBe(createHash('md5').update(data).digest('hex'));
      expect(got.get('sha256')).toBe(createHash('sha256').update(data).digest('hex'));
      expect(got.get('crc32')).toBe(zlib.crc32(data).toString(16).padStart(8, '0'));
      expect(hasher.bytesHashed).toBe(data.length);
    } finally {
      await hasher.stop();
    }
  });

  it('stops while waiting for more of the file, and reports a file shorter than promised', async () => {
    const file = path.join(dir, 'w');
    await writeFile(file, Buffer.alloc(1000, 1));
    const waiting = new WorkerHasher(file, 1000, ['sha1']);
    waiting.advanceTo(500);
    await waiting.stop(); // resolves only once the thread has exited
    await expect(waiting.finish(1000)).rejects.toMatchObject({ code: 'ERR_IO' });

    const short = new WorkerHasher(file, 5000, ['sha1']);
    try {
      await expect(short.finish(5000)).rejects.toThrow(/ended at 1000 bytes/);
    } finally {
      await short.stop();
    }
  });

  it('is chosen for large files with native algorithms only', async () => {
    const file = path.join(dir, 'c');
    await writeFile(file, 'x');
    const fh = await open(file, 'r');
    try {
      const big = 1024 * 1024 * 1024;
      const a = createOrderedHasher({ fh, path: file, size: big, algorithms: ['md5'] });
      const b = createOrderedHasher({ fh, path: file, size: big, algorithms: ['md5', 'crc32c'] });
      const c = createOrderedHasher({ fh, path: file, size: 1, algorithms: ['md5'] });
      expect(a).toBeInstanceOf(WorkerHasher);
      // CRC-32C runs on a thread only where it is native.
      expect(b).toBeInstanceOf(nativeCrcModule !== undefined ? WorkerHasher : InOrderHasher);
      expect(c).toBeInstanceOf(InOrderHasher);
      await Promise.all([a.stop(), b.stop(), c.stop()]);
    } finally {
      await fh.close();
    }
  });
});

describe('compareChecksums', () => {
  const actual = new Map([
    ['md5', 'aa'],
    ['sha256', 'bb'],
  ] as const);

  it('lists each matching algorithm once, case-insensitively', () => {
    expect(
      compareChecksums('s3://b/k', [
        { algorithm: 'md5', hex: 'AA' },
        { algorithm: 'sha256', hex: 'bb' },
        { algorithm: 'md5', hex: 'aa' },
      ], actual),
    ).toEqual(['md5', 'sha256']);
  });

  it('throws ERR_CHECKSUM_MISMATCH naming the URL, algorithm and both values', () => {
    let err: unknown;
    try {
      compareChecksums('s3://b/k', [{ algorithm: 'sha256', hex: 'cc' }], actual);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(RoboflowError);
    expect((err as RoboflowError).code).toBe('ERR_CHECKSUM_MISMATCH');
    expect((err as RoboflowError).message).toMatch(/s3:\/\/b\/k.*sha256.*cc.*bb/);
  });
});

describeFull('WorkerHasher in a process with nothing else to wait for', () => {
  it('settles finish() and stop() before the event loop empties', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'roboflow-hasher-'));
    try {
      const size = 8 * 1024 * 1024;
      const fixture = new URL('./fixtures/hasher-exit.mjs', import.meta.url);
      for (let i = 0; i < 3; i++) {
        const out = await new Promise<string>((resolve, reject) => {
          execFile(process.execPath, [fixture.pathname, path.join(dir, `f${i}`), String(size)], (err, stdout) =>
            err ? reject(err) : resolve(stdout),
          );
        });
        expect(out.trim()).toBe(createHash('md5').update(Buffer.alloc(size, 7)).digest('hex'));
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('cheapestChecksum', () => {
  it('keeps one checksum of those offered, the cheapest to compute', () => {
    const md5 = { algorithm: 'md5', hex: 'aa' } as const;
    const sha256 = { algorithm: 'sha256', hex: 'bb' } as const;
    const crc32 = { algorithm: 'crc32', hex: 'cc' } as const;
    const crc32cSum = { algorithm: 'crc32c', hex: 'dd' } as const;
    expect(cheapestChecksum([md5, sha256, crc32cSum, crc32])).toEqual([crc32]);
    expect(cheapestChecksum([md5, sha256])).toEqual([sha256]);
    // CRC-32C is cheap only where it is native.
    expect(cheapestChecksum([crc32cSum, md5])).toEqual([nativeCrcModule !== undefined ? crc32cSum : md5]);
    expect(cheapestChecksum([crc32cSum, crc32])).toEqual([crc32]);
    expect(cheapestChecksum([crc32cSum])).toEqual([crc32cSum]);
    expect(cheapestChecksum([])).toEqual([]);
  });
});

describe('crc32Combine', () => {
  it('gives the CRC-32 of the concatenation from the two CRCs and the second length', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 300 }), fc.uint8Array({ maxLength: 300 }), (a, b) => {
        const whole = zlib.crc32(Buffer.concat([a, b]));
        expect(crc32Combine(zlib.crc32(a), zlib.crc32(b), b.length)).toBe(whole);
      }),
    );
  });

  it('is right for lengths of many bits (multi-MiB segments)', () => {
    const whole = randomBytes(3 * 1024 * 1024 + 4099);
    for (const cut of [1, 65_537, 2 * 1024 * 1024 + 3]) {
      const a = whole.subarray(0, cut);
      const b = whole.subarray(cut);
      expect(crc32Combine(zlib.crc32(a), zlib.crc32(b), b.length)).toBe(zlib.crc32(whole));
    }
    expect(crc32Combine(0x12345678, 0, 0)).toBe(0x12345678);
  });

  it('is associative at lengths past 2^32, where halving by shifts would go wrong', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 2 ** 32 - 1 }),
        fc.integer({ min: 0, max: 2 ** 32 - 1 }),
        fc.integer({ min: 0, max: 2 ** 32 - 1 }),
        fc.integer({ min: 2 ** 31, max: 2 ** 40 }),
        fc.integer({ min: 2 ** 31, max: 2 ** 40 }),
        (x, y, z, n1, n2) => {
          expect(crc32Combine(crc32Combine(x, y, n1), z, n2)).toBe(crc32Combine(x, crc32Combine(y, z, n2), n1 + n2));
        },
      ),
      { numRuns: 50 },
    );
  });

  it('refuses a length that is not a non-negative integer', () => {
    expect(() => crc32Combine(1, 2, -1)).toThrow(/non-negative integer/);
    expect(() => crc32Combine(1, 2, 1.5)).toThrow(/non-negative integer/);
  });
});

describe('SegmentCrc32Hasher', () => {
  const data = randomBytes(100_000);
  const crcOf = (start: number, end: number) => zlib.crc32(data.subarray(start, end));
  const hex = (n: number) => n.toString(16).padStart(8, '0');

  it('combines segments added in any order into the CRC-32 of the whole, reading nothing', async () => {
    let readBack = 0;
    const hasher = new SegmentCrc32Hasher(() => {
      readBack++;
      throw new Error('must not read back');
    });
    for (const [start, end] of [[60_000, 100_000], [0, 1], [1, 25_000], [25_000, 25_000], [25_000, 60_000]] as const) {
      hasher.add(start, end - start, crcOf(start, end));
    }
    expect(hasher.bytesHashed).toBe(100_000);
    expect((await hasher.finish(100_000)).get('crc32')).toBe(hex(zlib.crc32(data)));
    expect(readBack).toBe(0);
  });

  it('reads only the gaps the segments leave, when it can read ranges (a resumed download)', async () => {
    await fc.assert(
      fc.asyncProperty(fc.uniqueArray(fc.integer({ min: 1, max: 99_999 }), { maxLength: 12 }), fc.array(fc.boolean(), { minLength: 13, maxLength: 13 }), async (cuts, written) => {
        const bounds = [0, ...[...cuts].sort((a, b) => a - b), 100_000];
        const reads: [number, number][] = [];
        const hasher = new SegmentCrc32Hasher(
          () => {
            throw new Error('must not read everything back');
          },
          async (position, bytes) => {
            reads.push([position, bytes]);
            return crcOf(position, position + bytes);
          },
        );
        let gaps = 0;
        for (let i = 0; i + 1 < bounds.length; i++) {
          const [start, end] = [bounds[i]!, bounds[i + 1]!];
          if (written[i]) hasher.add(start, end - start, crcOf(start, end));
          else gaps += end - start;
        }
        expect((await hasher.finish(100_000)).get('crc32')).toBe(hex(zlib.crc32(data)));
        expect(reads.reduce((n, [, b]) => n + b, 0)).toBe(gaps);
        expect(hasher.bytesHashed).toBe(100_000);
      }),
      { numRuns: 100 },
    );
  });

  it('reads the ranges it is told the file already holds in the background, and only the rest of the gaps at the end', async () => {
    const reads: [number, number][] = [];
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const hasher = new SegmentCrc32Hasher(
      () => {
        throw new Error('must not read everything back');
      },
      async (position, bytes) => {
        await gate;
        reads.push([position, bytes]);
        return crcOf(position, position + bytes);
      },
    );
    hasher.readAhead([
      { start: 0, end: 10_000 },
      { start: 30_000, end: 45_000 },
    ]);
    expect(() => hasher.readAhead([])).toThrow(/once/);
    hasher.add(10_000, 20_000, crcOf(10_000, 30_000));
    hasher.add(45_000, 50_000, crcOf(45_000, 95_000));
    release();
    const got = await hasher.finish(100_000);
    expect(got.get('crc32')).toBe(hex(zlib.crc32(data)));
    // The two named ranges first, then the one gap nobody named (the last 5000 bytes).
    expect(reads).toEqual([[0, 10_000], [30_000, 15_000], [95_000, 5_000]]);
    expect(hasher.bytesHashed).toBe(100_000);
  });

  it('reports a failed background read from finish(), and stop() waits for the reading', async () => {
    const failing = new SegmentCrc32Hasher(
      () => {
        throw new Error('must not read everything back');
      },
      async () => {
        throw new RoboflowError('ERR_IO', 'disk went away');
      },
    );
    failing.readAhead([{ start: 0, end: 10 }]);
    await expect(failing.finish(10)).rejects.toThrow(/disk went away/);
    let reading = 0;
    const slow = new SegmentCrc32Hasher(
      () => {
        throw new Error('unused');
      },
      async (position, bytes) => {
        reading++;
        await new Promise((r) => setTimeout(r, 30));
        reading--;
        return crcOf(position, position + bytes);
      },
    );
    slow.readAhead([{ start: 0, end: 10 }, { start: 10, end: 20 }]);
    await new Promise((r) => setTimeout(r, 5));
    await slow.stop();
    expect(reading).toBe(0);
  });

  it('reads everything back on an overlap even when it can read ranges', async () => {
    const file = path.join(dir, 'f');
    await writeFile(file, data);
    const fh = await open(file, 'r');
    try {
      let readBack = 0;
      const hasher = new SegmentCrc32Hasher(
        () => {
          readBack++;
          return new InOrderHasher(fh, ['crc32']);
        },
        (position, bytes) => crc32OfRange(fh, position, bytes),
      );
      for (const [start, end] of [[0, 60_000], [50_000, 90_000]] as const) hasher.add(start, end - start, crcOf(start, end));
      expect((await hasher.finish(100_000)).get('crc32')).toBe(hex(zlib.crc32(data)));
      expect(readBack).toBe(1);
      await hasher.stop();
    } finally {
      await fh.close();
    }
  });

  it('crc32OfRange gives the CRC-32 of a range of a file, and an ERR_IO error past its end', async () => {
    const file = path.join(dir, 'r');
    await writeFile(file, data);
    const fh = await open(file, 'r');
    try {
      expect(await crc32OfRange(fh, 0, 100_000)).toBe(zlib.crc32(data));
      expect(await crc32OfRange(fh, 12_345, 50_000)).toBe(crcOf(12_345, 62_345));
      expect(await crc32OfRange(fh, 7, 0)).toBe(0);
      const err = await crc32OfRange(fh, 90_000, 20_000).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(RoboflowError);
      expect((err as RoboflowError).code).toBe('ERR_IO');
      expect((err as RoboflowError).message).toMatch(/ended at 100000 bytes/);
    } finally {
      await fh.close();
    }
  });

  it.each([
    ['a gap', [[0, 40_000], [50_000, 100_000]]],
    ['an overlap', [[0, 60_000], [50_000, 100_000]]],
    ['a short end', [[0, 99_999]]],
  ] as const)('reads the file back when the segments leave %s', async (_name, segments) => {
    const file = path.join(dir, 'f');
    await writeFile(file, data);
    const fh = await open(file, 'r');
    try {
      let readBack = 0;
      const hasher = new SegmentCrc32Hasher(() => {
        readBack++;
        return new InOrderHasher(fh, ['crc32']);
      });
      for (const [start, end] of segments) hasher.add(start, end - start, crcOf(start, end));
      expect((await hasher.finish(100_000)).get('crc32')).toBe(hex(zlib.crc32(data)));
      expect(readBack).toBe(1);
      await hasher.stop();
    } finally {
      await fh.close();
    }
  });
});
