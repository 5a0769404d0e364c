import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { ChunkPlan, ChunkSet, MIN_TAIL_CHUNK_BYTES, RangeScheduler, shouldRequestAhead } from '../src/prefetch/ranges.js';

const MiB = 1024 * 1024;

/** A chunk size and an object size of at most ~2,000 chunks (edge sizes around multiples included). */
const sizesArb = fc
  .tuple(fc.integer({ min: 1, max: 1_000_000 }), fc.integer({ min: 0, max: 600 }), fc.integer({ min: -1, max: 1 }))
  .map(([chunk, n, delta]) => [Math.max(0, chunk * n + delta), chunk] as const);

/** Any valid plan: uniform, or a tail of smaller chunks from some chunk boundary on. */
const planArb = sizesArb.chain(([size, chunk]) =>
  fc
    // Tail chunks of at least 1/16 of a chunk: at most ~10,000 chunks in all.
    .tuple(fc.integer({ min: 0, max: Math.floor(size / chunk) }), fc.integer({ min: Math.ceil(chunk / 16), max: chunk }))
    .map(([bulk, tailChunk]) => new ChunkPlan(size, chunk, bulk * chunk, tailChunk)),
);

/** Plans as a download makes them: chunk sizes of 1–64 MiB, 1–64 connections. */
const downloadPlanArb = fc
  .tuple(fc.integer({ min: 0, max: 4096 * MiB }), fc.integer({ min: 1, max: 64 }), fc.integer({ min: 1, max: 64 }))
  .map(([size, chunkMiB, connections]) => ({ plan: ChunkPlan.forDownload(size, chunkMiB * MiB, connections), connections }));

describe('ChunkPlan', () => {
  it('covers every byte exactly once, in order; chunks are chunkSize before the tail and tailChunkSize in it, only the last shorter', () => {
    fc.assert(
      fc.property(planArb, (plan) => {
        const ranges = plan.ranges();
        expect(ranges.length).toBe(plan.count);
        let next = 0;
        ranges.forEach((r, i) => {
          expect(r.index).toBe(i);
          expect(r.start).toBe(next);
          expect(r.end).toBeGreaterThan(r.start);
          const len = r.end - r.start;
          const nominal = r.start < plan.tailStart ? plan.chunkSize : plan.tailChunkSize;
          if (i < ranges.length - 1) expect(len).toBe(nominal);
          else expect(len).toBeLessThanOrEqual(nominal);
          next = r.end;
        });
        expect(next).toBe(plan.size);
        expect(plan.bytesIn(new ChunkSet(plan.count))).toBe(0);
      }),
    );
  });

  it('cuts only the last round of a download into quarter-size chunks, never below 1 MiB, and leaves one-round objects alone', () => {
    fc.assert(
      fc.property(downloadPlanArb, ({ plan, connections }) => {
        const uniform = ChunkPlan.uniform(plan.size, plan.chunkSize);
        if (uniform.count <= connections || plan.chunkSize <= MIN_TAIL_CHUNK_BYTES) {
          expect(plan.isUniform).toBe(true);
        }
        if (plan.isUniform) {
          expect(plan.ranges()).toEqual(uniform.ranges());
          return;
        }
        expect(uniform.count).toBeGreaterThan(connections);
        expect(plan.tailChunkSize).toBe(Math.max(MIN_TAIL_CHUNK_BYTES, Math.floor(plan.chunkSize / 4)));
        // The tail is what the last round of uniform chunks would have covered.
        expect(plan.tailStart).toBe((uniform.count - connections) * plan.chunkSize);
        expect(plan.size - plan.tailStart).toBeLessThanOrEqual(connections * plan.chunkSize);
        expect(plan.ranges().slice(0, plan.tailStart / plan.chunkSize)).toEqual(uniform.ranges().slice(0, plan.tailStart / plan.chunkSize));
      }),
    );
  });

  it('examples: 1 GiB in 16 × 8 MiB ends in 64 chunks of 2 MiB; smaller objects keep whole chunks', () => {
    const plan = ChunkPlan.forDownload(1024 * MiB, 8 * MiB, 16);
    expect(plan.tailStart).toBe(896 * MiB);
    expect(plan.count).toBe(112 + 64);
    expect(plan.range(111)).toEqual({ index: 111, start: 888 * MiB, end: 896 * MiB });
    expect(plan.range(112)).toEqual({ index: 112, start: 896 * MiB, end: 898 * MiB });
    expect(plan.range(175)).toEqual({ index: 175, start: 1022 * MiB, end: 1024 * MiB });
    expect(ChunkPlan.forDownload(128 * MiB, 8 * MiB, 16).isUniform).toBe(true);
    expect(ChunkPlan.forDownload(7, 8 * MiB, 16).ranges()).toEqual([{ index: 0, start: 0, end: 7 }]);
    expect(ChunkPlan.forDownload(0, 8 * MiB, 16).count).toBe(0);
    // 2 MiB chunks: tail chunks of 1 MiB (a half: never below 1 MiB); 1 MiB chunks: no tail.
    expect(ChunkPlan.forDownload(100 * MiB, 2 * MiB, 4).tailChunkSize).toBe(MiB);
    expect(ChunkPlan.forDownload(100 * MiB, MiB, 4).isUniform).toBe(true);
  });

  it('gives no range for an empty object and one for an object smaller than a chunk', () => {
    expect(ChunkPlan.uniform(0, 8).ranges()).toEqual([]);
    expect(ChunkPlan.uniform(7, 8).ranges()).toEqual([{ index: 0, start: 0, end: 7 }]);
    expect(ChunkPlan.uniform(8, 8).ranges()).toEqual([{ index: 0, start: 0, end: 8 }]);
    expect(ChunkPlan.uniform(9, 8).ranges()).toEqual([
      { index: 0, start: 0, end: 8 },
      { index: 1, start: 8, end: 9 },
    ]);
    expect(new ChunkPlan(20, 8, 16, 3).ranges()).toEqual([
      { index: 0, start: 0, end: 8 },
      { index: 1, start: 8, end: 16 },
      { index: 2, start: 16, end: 19 },
      { index: 3, start: 19, end: 20 },
    ]);
  });

  it('rejects nonsense plans and indexes', () => {
    expect(() => ChunkPlan.uniform(-1, 8)).toThrow(RangeError);
    expect(() => ChunkPlan.uniform(10, 0)).toThrow(RangeError);
    expect(() => ChunkPlan.uniform(10, 1.5)).toThrow(RangeError);
    expect(() => new ChunkPlan(100, 8, 12, 4)).toThrow(/multiple of the chunk size/);
    expect(() => new ChunkPlan(100, 8, 104, 4)).toThrow(/within the object/);
    expect(() => new ChunkPlan(100, 8, 8, 9)).toThrow(/exceeds the chunk size/);
    expect(() => new ChunkPlan(100, 8, 8, 0)).toThrow(RangeError);
    expect(() => ChunkPlan.forDownload(100, 8, 0)).toThrow(RangeError);
    expect(() => ChunkPlan.uniform(10, 8).range(2)).toThrow(RangeError);
  });

  describe('missing', () => {
    const withDoneArb = planArb.chain((plan) =>
      fc.tuple(fc.constant(plan), fc.array(fc.boolean(), { minLength: plan.count, maxLength: plan.count })),
    );

    it('with the completed ranges, covers every byte exactly once', () => {
      fc.assert(
        fc.property(withDoneArb, ([plan, done]) => {
          const set = new ChunkSet(done.length);
          done.forEach((d, i) => d && set.add(i));
          const missing = plan.missing(set);
          // Missing ranges are in order, none of them completed.
          for (let i = 1; i < missing.length; i++) expect(missing[i]!.start).toBeGreaterThan(missing[i - 1]!.start);
          for (const r of missing) expect(set.has(r.index)).toBe(false);
          // Missing plus completed tile [0, size) exactly.
          const all = [...missing, ...plan.ranges().filter((r) => set.has(r.index))].sort((a, b) => a.start - b.start);
          let next = 0;
          for (const r of all) {
            expect(r.start).toBe(next);
            next = r.end;
          }
          expect(next).toBe(plan.size);
          expect(plan.bytesIn(set) + missing.reduce((n, r) => n + r.end - r.start, 0)).toBe(plan.size);
        }),
      );
    });

    it('refuses a completed set made for another plan', () => {
      expect(() => ChunkPlan.uniform(100, 10).missing(new ChunkSet(9))).toThrow(RangeError);
      expect(() => new ChunkPlan(100, 10, 50, 5).bytesIn(new ChunkSet(10))).toThrow(RangeError);
    });
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
    const s = new RangeScheduler(ChunkPlan.uniform(50, 10).ranges().reverse());
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
