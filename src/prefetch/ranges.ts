/**
 * Range splitting and scheduling for the parallel downloader.
 *
 * An object of `size` bytes is cut into chunks by a `ChunkPlan`: `chunkSize` bytes each up to
 * `tailStart`, then `tailChunkSize` bytes each (the last chunk may be shorter). Chunks are
 * identified by their index everywhere (state file, scheduler, in-order hashing), so the set of
 * completed chunks is a bitmap of `count` bits: 64 bytes for a 4 GiB object in 8 MiB chunks.
 *
 * Why a tail of smaller chunks: the lanes fetch `connections` chunks at once, so when the last
 * of them arrive the in-order hash still has up to `connections` × `chunkSize` bytes to read
 * (MD5 runs at ~0.7 GB/s on one core: 0.15 s for 16 × 8 MiB), and when the chunk count is not a
 * multiple of `connections` some lanes sit idle while others finish a whole chunk. Cutting the
 * last round into quarter-size chunks keeps every lane busy to the end and leaves only
 * `connections` × `tailChunkSize` bytes to hash after the last byte. A quarter, not less: each
 * request costs CPU (signing, parsing; ~0.7 ms through the S3 SDK), and eighths cost more CPU
 * than the shorter hash tail saved (1 GiB, 16 × 8 MiB, capped: same wall time, +0.2 CPU s).
 */

import type { ByteRange } from '../types.js';

/** One chunk of an object: its index and its byte range. */
export interface IndexedRange extends ByteRange {
  readonly index: number;
}

/** Tail chunks are this fraction of `chunkSize`... */
const TAIL_DIVISOR = 4;
/** ...but never smaller than this: a shorter range would end before the next one's first byte
 * (20–50 ms at 25–100 MB/s per connection) and leave its connection idle. */
export const MIN_TAIL_CHUNK_BYTES = 1024 * 1024;

function checkInteger(what: string, value: number, min: number): void {
  if (!Number.isSafeInteger(value) || value < min) {
    throw new RangeError(`${what} must be an integer of at least ${min}, got ${value}`);
  }
}

/** How an object is cut into chunks (see the module comment). */
export class ChunkPlan {
  readonly size: number;
  readonly chunkSize: number;
  /** Where the chunks of `tailChunkSize` begin: a multiple of `chunkSize`, at most `size`. */
  readonly tailStart: number;
  readonly tailChunkSize: number;
  readonly count: number;
  private readonly bulkCount: number;

  /** Every chunk `chunkSize` bytes (the last one may be shorter). */
  static uniform(size: number, chunkSize: number): ChunkPlan {
    return new ChunkPlan(size, chunkSize, 0, chunkSize);
  }

  /**
   * The plan of a fresh download over `connections` lanes: uniform, except that when there is
   * more than one round of chunks, the last round (`connections` chunks) is cut into chunks of
   * `chunkSize` / 4, at least `MIN_TAIL_CHUNK_BYTES`. Objects of one round or less keep
   * `chunkSize` chunks, so an object smaller than a chunk is still one request.
   */
  static forDownload(size: number, chunkSize: number, connections: number): ChunkPlan {
    checkInteger('connections', connections, 1);
    const uniform = ChunkPlan.uniform(size, chunkSize);
    const tailChunkSize = Math.max(MIN_TAIL_CHUNK_BYTES, Math.floor(chunkSize / TAIL_DIVISOR));
    if (uniform.count <= connections || tailChunkSize >= chunkSize) return uniform;
    return new ChunkPlan(size, chunkSize, (uniform.count - connections) * chunkSize, tailChunkSize);
  }

  /** Throws a RangeError when the numbers do not describe a plan (e.g. read from a damaged file). */
  constructor(size: number, chunkSize: number, tailStart: number, tailChunkSize: number) {
    checkInteger('object size', size, 0);
    checkInteger('chunk size', chunkSize, 1);
    checkInteger('tail chunk size', tailChunkSize, 1);
    checkInteger('tail start', tailStart, 0);
    if (tailChunkSize > chunkSize) throw new RangeError(`tail chunk size ${tailChunkSize} exceeds the chunk size ${chunkSize}`);
    if (tailStart % chunkSize !== 0 || tailStart > size) {
      throw new RangeError(`tail start ${tailStart} is not a multiple of the chunk size ${chunkSize} within the object (${size} bytes)`);
    }
    this.size = size;
    this.chunkSize = chunkSize;
    this.tailStart = tailStart;
    this.tailChunkSize = tailChunkSize;
    this.bulkCount = tailStart / chunkSize;
    this.count = this.bulkCount + Math.ceil((size - tailStart) / tailChunkSize);
  }

  /** True when every chunk is `chunkSize` bytes (but the last). */
  get isUniform(): boolean {
    return this.tailChunkSize === this.chunkSize;
  }

  /** The byte range of chunk `index`. */
  range(index: number): IndexedRange {
    if (!Number.isInteger(index) || index < 0 || index >= this.count) {
      throw new RangeError(`chunk index ${index} outside [0, ${this.count})`);
    }
    if (index < this.bulkCount) return { index, start: index * this.chunkSize, end: (index + 1) * this.chunkSize };
    const start = this.tailStart + (index - this.bulkCount) * this.tailChunkSize;
    return { index, start, end: Math.min(start + this.tailChunkSize, this.size) };
  }

  /** Every chunk, in order. */
  ranges(): IndexedRange[] {
    return Array.from({ length: this.count }, (_, i) => this.range(i));
  }

  /** The chunks still to fetch given the completed ones, in ascending order. */
  missing(completed: ChunkSet): IndexedRange[] {
    this.checkSet(completed);
    const out: IndexedRange[] = [];
    for (let i = 0; i < this.count; i++) if (!completed.has(i)) out.push(this.range(i));
    return out;
  }

  /** Bytes covered by the chunks in `set`. */
  bytesIn(set: ChunkSet): number {
    this.checkSet(set);
    let total = 0;
    for (const i of set) {
      const r = this.range(i);
      total += r.end - r.start;
    }
    return total;
  }

  private checkSet(set: ChunkSet): void {
    if (set.count !== this.count) throw new RangeError(`chunk set has ${set.count} chunks, the plan has ${this.count}`);
  }
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
