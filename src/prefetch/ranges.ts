/**
 * Range splitting and scheduling for the parallel downloader.
 *
 * An object of `size` bytes is cut into chunks of `chunkSize` bytes; chunk `i` is the range
 * `[i · chunkSize, min((i + 1) · chunkSize, size))`. Ranges are identified by that index
 * everywhere (state file, scheduler, in-order hashing), so the set of completed ranges is a
 * bitmap of `ceil(size / chunkSize)` bits: 64 bytes for a 4 GiB object in 8 MiB chunks.
 */

import type { ByteRange } from '../types.js';

/** One chunk of an object: its index and its byte range. */
export interface IndexedRange extends ByteRange {
  readonly index: number;
}

function checkPlan(size: number, chunkSize: number): void {
  if (!Number.isSafeInteger(size) || size < 0) {
    throw new RangeError(`object size must be a non-negative integer, got ${size}`);
  }
  if (!Number.isSafeInteger(chunkSize) || chunkSize <= 0) {
    throw new RangeError(`chunk size must be a positive integer, got ${chunkSize}`);
  }
}

/** Number of chunks an object of `size` bytes is cut into (0 for an empty object). */
export function chunkCount(size: number, chunkSize: number): number {
  checkPlan(size, chunkSize);
  return Math.ceil(size / chunkSize);
}

/** The byte range of chunk `index`. */
export function chunkRange(index: number, size: number, chunkSize: number): IndexedRange {
  const start = index * chunkSize;
  return { index, start, end: Math.min(start + chunkSize, size) };
}

/** Cuts `[0, size)` into consecutive chunks, in order; the last one may be shorter. */
export function splitRanges(size: number, chunkSize: number): IndexedRange[] {
  const n = chunkCount(size, chunkSize);
  const out: IndexedRange[] = [];
  for (let i = 0; i < n; i++) out.push(chunkRange(i, size, chunkSize));
  return out;
}

/**
 * A fixed-size set of chunk indexes, stored as a bitmap so it serialises compactly (base64) into
 * the state file.
 */
export class ChunkSet {
  readonly count: number;
  private readonly bits: Uint8Array;
  private members = 0;

  constructor(count: number) {
    if (!Number.isSafeInteger(count) || count < 0) throw new RangeError(`bad chunk count ${count}`);
    this.count = count;
    this.bits = new Uint8Array(Math.ceil(count / 8));
  }

  /** Rebuilds a set from `toBase64()`; undefined when the text does not describe `count` chunks. */
  static fromBase64(text: string, count: number): ChunkSet | undefined {
    const set = new ChunkSet(count);
    const bytes = Buffer.from(text, 'base64');
    if (bytes.length !== set.bits.length || bytes.toString('base64') !== text) return undefined;
    for (let i = 0; i < count; i++) {
      if (((bytes[i >> 3] ?? 0) >> (i & 7)) & 1) set.add(i);
    }
    // Bits past `count` would mean the file was written for another plan.
    for (let i = count; i < bytes.length * 8; i++) {
      if (((bytes[i >> 3] ?? 0) >> (i & 7)) & 1) return undefined;
    }
    return set;
  }

  get size(): number {
    return this.members;
  }

  has(index: number): boolean {
    return index >= 0 && index < this.count && (((this.bits[index >> 3] ?? 0) >> (index & 7)) & 1) === 1;
  }

  add(index: number): void {
    if (!Number.isInteger(index) || index < 0 || index >= this.count) {
      throw new RangeError(`chunk index ${index} outside [0, ${this.count})`);
    }
    if (this.has(index)) return;
    this.bits[index >> 3] = (this.bits[index >> 3] ?? 0) | (1 << (index & 7));
    this.members++;
  }

  clone(): ChunkSet {
    const copy = new ChunkSet(this.count);
    copy.bits.set(this.bits);
    copy.members = this.members;
    return copy;
  }

  /** Index of the first chunk not in the set (`count` when all are). */
  firstMissing(from = 0): number {
    let i = from;
    while (i < this.count && this.has(i)) i++;
    return i;
  }

  toBase64(): string {
    return Buffer.from(this.bits).toString('base64');
  }

  *[Symbol.iterator](): IterableIterator<number> {
    for (let i = 0; i < this.count; i++) if (this.has(i)) yield i;
  }
}

/** The chunks still to fetch given the completed ones, in ascending order. */
export function missingRanges(size: number, chunkSize: number, completed: ChunkSet): IndexedRange[] {
  const n = chunkCount(size, chunkSize);
  if (completed.count !== n) {
    throw new RangeError(`completed set has ${completed.count} chunks, the plan has ${n}`);
  }
  const out: IndexedRange[] = [];
  for (let i = 0; i < n; i++) if (!completed.has(i)) out.push(chunkRange(i, size, chunkSize));
  return out;
}

/** Bytes covered by the chunks in `set`. */
export function bytesIn(set: ChunkSet, size: number, chunkSize: number): number {
  let total = 0;
  for (const i of set) {
    const r = chunkRange(i, size, chunkSize);
    total += r.end - r.start;
  }
  return total;
}

/**
 * Hands ranges to the download lanes in ascending order. Ascending order keeps the completed
 * prefix of the file growing, which the in-order checksum needs; a range a lane gives back (its
 * look-ahead was abandoned) goes back in order, so it is the next one handed out.
 */
export class RangeScheduler {
  private readonly pending: IndexedRange[];

  constructor(ranges: readonly IndexedRange[]) {
    this.pending = [...ranges].sort((a, b) => a.start - b.start);
  }

  get remaining(): number {
    return this.pending.length;
  }

  /** The next range to fetch, or undefined when every range has been handed out. */
  take(): IndexedRange | undefined {
    return this.pending.shift();
  }

  giveBack(range: IndexedRange): void {
    let i = 0;
    while (i < this.pending.length && (this.pending[i]?.start ?? Infinity) < range.start) i++;
    this.pending.splice(i, 0, range);
  }
}

/**
 * Whether a lane should request its next range now, so that the next response's first byte
 * arrives about when the current body ends. The request is sent when the current body's remaining
 * bytes will take less than `factor` first-byte latencies at the lane's observed rate; `factor`
 * above 1 covers jitter in the latency. With no rate or latency observed yet, the lane waits.
 */
export function shouldRequestAhead(
  remainingBytes: number,
  bytesPerSec: number,
  firstByteLatencyMs: number,
  factor = 2,
): boolean {
  if (!(bytesPerSec > 0) || !(firstByteLatencyMs >= 0)) return false;
  const remainingMs = (remainingBytes / bytesPerSec) * 1000;
  return remainingMs <= firstByteLatencyMs * factor;
}
