import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  bytesIn,
  ChunkSet,
  chunkCount,
  missingRanges,
  RangeScheduler,
  shouldRequestAhead,
  splitRanges,
} from '../src/prefetch/ranges.js';

/** A chunk size and an object size of at most ~2,000 chunks (edge sizes around multiples included). */
const planArb = fc
  .tuple(fc.integer({ min: 1, max: 1_000_000 }), fc.integer({ min: 0, max: 600 }), fc.integer({ min: -1, max: 1 }))
  .map(([chunk, n, delta]) => [Math.max(0, chunk * n + delta), chunk] as const);

describe('splitRanges', () => {
  it('covers every byte exactly once, in order, only the last range shorter', () => {
    fc.assert(
      fc.property(planArb, ([size, chunk]) => {
        const ranges = splitRanges(size, chunk);
        expect(ranges.length).toBe(chunkCount(size, chunk));
        let next = 0;
        ranges.forEach((r, i) => {
          expect(r.index).toBe(i);
          expect(r.start).toBe(next);
          expect(r.end).toBeGreaterThan(r.start);
          const len = r.end - r.start;
          if (i < ranges.length - 1) expect(len).toBe(chunk);
          else expect(len).toBeLessThanOrEqual(chunk);
          next = r.end;
        });
        expect(next).toBe(size);
      }),
    );
  });

  it('gives no range for an empty object and one for an object smaller than a chunk', () => {
    expect(splitRanges(0, 8)).toEqual([]);
    expect(splitRanges(7, 8)).toEqual([{ index: 0, start: 0, end: 7 }]);
    expect(splitRanges(8, 8)).toEqual([{ index: 0, start: 0, end: 8 }]);
    expect(splitRanges(9, 8)).toEqual([
      { index: 0, start: 0, end: 8 },
      { index: 1, start: 8, end: 9 },
    ]);
  });

  it('rejects nonsense plans', () => {
    expect(() => splitRanges(-1, 8)).toThrow(RangeError);
    expect(() => splitRanges(10, 0)).toThrow(RangeError);
    expect(() => splitRanges(10, 1.5)).toThrow(RangeError);
  });
});

describe('missingRanges', () => {
  const withDoneArb = planArb.chain(([size, chunk]) =>
      fc.tuple(
        fc.constant(size),
        fc.constant(chunk),
        fc.array(fc.boolean(), { minLength: chunkCount(size, chunk), maxLength: chunkCount(size, chunk) }),
      ),
    );

  it('with the completed ranges, covers every byte exactly once', () => {
    fc.assert(
      fc.property(withDoneArb, ([size, chunk, done]) => {
        const set = new ChunkSet(done.length);
        done.forEach((d, i) => d && set.add(i));
        const missing = missingRanges(size, chunk, set);
        // Missing ranges are in order, none of them completed.
        for (let i = 1; i < missing.length; i++) expect(missing[i]!.start).toBeGreaterThan(missing[i - 1]!.start);
        for (const r of missing) expect(set.has(r.index)).toBe(false);
        // Missing plus completed tile [0, size) exactly.
        const all = [...missing, ...splitRanges(size, chunk).filter((r) => set.has(r.index))].sort((a, b) => a.start - b.start);
        let next = 0;
        for (const r of all) {
          expect(r.start).toBe(next);
          next = r.end;
        }
        expect(next).toBe(size);
        expect(bytesIn(set, size, chunk) + missing.reduce((n, r) => n + r.end - r.start, 0)).toBe(size);
      }),
    );
  });

  it('refuses a completed set made for another plan', () => {
    expect(() => missingRanges(100, 10, new ChunkSet(9))).toThrow(RangeError);
  });
});

describe('ChunkSet', () => {
  it('round-trips through base64 and rejects bitmaps of another plan', () => {
    fc.assert(
      fc.property(fc.array(fc.boolean(), { maxLength: 300 }), (bits) => {
        const set = new ChunkSet(bits.length);
        bits.forEach((b, i) => b && set.add(i));
        const back = ChunkSet.fromBase64(set.toBase64(), bits.length);
        expect(back).toBeDefined();
        expect([...back!]).toEqual([...set]);
        expect(back!.size).toBe(bits.filter(Boolean).length);
      }),
    );
    const set = new ChunkSet(10);
    set.add(9);
    expect(ChunkSet.fromBase64(set.toBase64(), 9)).toBeUndefined(); // bit 9 is past the end
    expect(ChunkSet.fromBase64(set.toBase64(), 20)).toBeUndefined(); // wrong length
    expect(ChunkSet.fromBase64('not base64!', 10)).toBeUndefined();
  });

  it('finds the first missing chunk', () => {
    const set = new ChunkSet(5);
    expect(set.firstMissing()).toBe(0);
    set.add(0);
    set.add(1);
    set.add(3);
    expect(set.firstMissing()).toBe(2);
    set.add(2);
    set.add(4);
    expect(set.firstMissing()).toBe(5);
    expect(() => set.add(5)).toThrow(RangeError);
  });
});

describe('RangeScheduler', () => {
  it('hands ranges out in ascending order and puts a returned range back in order', () => {
    const s = new RangeScheduler(splitRanges(50, 10).reverse());
    const a = s.take()!;
    const b = s.take()!;
    expect([a.index, b.index]).toEqual([0, 1]);
    s.giveBack(a);
    expect(s.take()!.index).toBe(0);
    expect(s.take()!.index).toBe(2);
    s.giveBack(b);
    expect([s.take()!.index, s.take()!.index, s.take()!.index]).toEqual([1, 3, 4]);
    expect(s.take()).toBeUndefined();
  });
});

describe('shouldRequestAhead', () => {
  it('asks when the rest of the body takes less than `factor` latencies', () => {
    // 25 MB/s, 20 ms latency: 2 latencies = 40 ms = 1 MB.
    expect(shouldRequestAhead(1_100_000, 25e6, 20)).toBe(false);
    expect(shouldRequestAhead(900_000, 25e6, 20)).toBe(true);
    expect(shouldRequestAhead(100, 0, 20)).toBe(false); // no rate observed yet
  });
});
