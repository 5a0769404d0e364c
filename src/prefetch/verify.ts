/**
 * Whole-object checksums of a download. MD5, SHA-1 and CRC32 can only be computed in byte order,
 * while ranges complete out of order; `InOrderHasher` therefore follows the completed prefix of
 * the temp file, reading it back from the page cache in blocks as it grows, so hashing overlaps
 * the download and finishes shortly after the last byte instead of re-reading the whole file.
 */

import { createHash, type Hash } from 'node:crypto';
import type { FileHandle } from 'node:fs/promises';
import { open } from 'node:fs/promises';
import { Worker } from 'node:worker_threads';
import { RoboflowError } from '../errors.js';
import type { ByteRange, Checksum, ChecksumAlgorithm } from '../types.js';
import { crc32, crc32c, crc32Combine, nativeCrcModule, THREAD_CRC_SOURCE } from './crc.js';

/** Block read back per step: large enough to amortise the read call, small enough to interleave. */
const HASH_BLOCK_BYTES = 2 * 1024 * 1024;

/** An incremental digest with one interface over the crypto hashes and the two CRCs. */
interface Digest {
  update(buf: Uint8Array): void;
  hex(): string;
}

/** A CRC as its digest is written: eight lower-case hex digits. */
function crcHex(crc: number): string {
  return (crc >>> 0).toString(16).padStart(8, '0');
}

function crcDigest(step: (buf: Uint8Array, crc: number) => number): Digest {
  let crc = 0;
  return {
    update(buf) {
      crc = step(buf, crc);
    },
    hex: () => crcHex(crc),
  };
}

function newDigest(algorithm: ChecksumAlgorithm): Digest {
  switch (algorithm) {
    case 'md5':
    case 'sha1':
    case 'sha256': {
      const h: Hash = createHash(algorithm);
      return { update: (buf) => void h.update(buf), hex: () => h.digest('hex') };
    }
    case 'crc32':
      return crcDigest(crc32);
    case 'crc32c':
      return crcDigest(crc32c);
    default: {
      const _exhaustive: never = algorithm;
      throw new Error(`unknown checksum algorithm ${String(_exhaustive)}`);
    }
  }
}

/**
 * The store's checksums from cheapest to dearest to verify, measured on the benchmark machines
 * (2 cores, Node 20, CPU s per GB on one core): CRC32 0.07 native, 0.43 zlib; CRC32C 0.09 native,
 * 3.0 in JavaScript; SHA-1 0.69, SHA-256 0.74, MD5 1.5–1.76 (`crc.ts` says which CRCs are
 * native). Any one of them catches what a transfer corrupts; verifying a second one as well
 * doubles the cost and catches nothing more.
 */
export const CHECKSUM_PREFERENCE: readonly ChecksumAlgorithm[] =
  nativeCrcModule !== undefined ? ['crc32', 'crc32c', 'sha1', 'sha256', 'md5'] : ['crc32', 'sha1', 'sha256', 'md5', 'crc32c'];

/** The one checksum of `offered` worth verifying: the cheapest (see `CHECKSUM_PREFERENCE`). */
export function cheapestChecksum(offered: readonly Checksum[]): Checksum[] {
  for (const algorithm of CHECKSUM_PREFERENCE) {
    const found = offered.find((c) => c.algorithm === algorithm);
    if (found) return [found];
  }
  return [];
}

/** Hashes a file in byte order while its completed prefix grows. */
export interface OrderedHasher {
  /** True when there is nothing to compute. */
  readonly idle: boolean;
  readonly bytesHashed: number;
  /** The first `bytes` bytes of the file are written and may be hashed. */
  advanceTo(bytes: number): void;
  /** Hashes up to `size` bytes and returns the digests (lower-case hex) by algorithm. */
  finish(size: number): Promise<Map<ChecksumAlgorithm, string>>;
  /** Stops hashing and waits until the file is no longer read, so it can be closed. */
  stop(): Promise<void>;
}

/**
 * Hashing runs on a worker thread from this size on: MD5 costs about 2.4 CPU-s per GiB, which on
 * the event loop would compete with the network for one core (measured over S3 with its ETag's
 * MD5). Below it, a thread's start-up (tens of ms) is not worth it.
 */
export const HASH_WORKER_MIN_BYTES = 64 * 1024 * 1024;
/** What a thread computes natively; CRC-32C only with the native CRCs (else it is ours, in
 * JavaScript, and stays on the main thread). */
const WORKER_ALGORITHMS: ReadonlySet<ChecksumAlgorithm> = new Set<ChecksumAlgorithm>(
  nativeCrcModule !== undefined ? ['md5', 'sha1', 'sha256', 'crc32', 'crc32c'] : ['md5', 'sha1', 'sha256', 'crc32'],
);

/**
 * The hasher for a download: on a worker thread for large files when every algorithm is native,
 * else on the event loop.
 */
export function createOrderedHasher(opts: {
  readonly fh: FileHandle;
  readonly path: string;
  readonly size: number;
  readonly algorithms: readonly ChecksumAlgorithm[];
}): OrderedHasher {
  const algorithms = [...new Set(opts.algorithms)];
  if (opts.size >= HASH_WORKER_MIN_BYTES && algorithms.length > 0 && algorithms.every((a) => WORKER_ALGORITHMS.has(a))) {
    return new WorkerHasher(opts.path, opts.size, algorithms);
  }
  return new InOrderHasher(opts.fh, algorithms);
}

/**
 * Hashes a file in byte order as its completed prefix grows, on the event loop. `advanceTo(n)`
 * says the first `n` bytes are written; a background loop reads and hashes up to there. One loop
 * runs at a time and one block buffer is reused, so memory stays at one block whatever the size.
 */
export class InOrderHasher implements OrderedHasher {
  private readonly digests: Map<ChecksumAlgorithm, Digest>;
  private hashed = 0;
  private target = 0;
  private loop: Promise<void> | undefined;
  private failure: unknown;
  private stopped = false;
  private buffer: Buffer | undefined;

  constructor(
    private readonly fh: FileHandle,
    algorithms: Iterable<ChecksumAlgorithm>,
  ) {
    this.digests = new Map([...new Set(algorithms)].map((a) => [a, newDigest(a)]));
  }

  /** True when there is nothing to compute. */
  get idle(): boolean {
    return this.digests.size === 0;
  }

  get bytesHashed(): number {
    return this.hashed;
  }

  /** The first `bytes` bytes of the file are written and may be hashed. */
  advanceTo(bytes: number): void {
    if (this.idle || bytes <= this.target) return;
    this.target = bytes;
    this.loop ??= this.run().finally(() => {
      this.loop = undefined;
    });
  }

  private async run(): Promise<void> {
    try {
      while (!this.stopped && this.hashed < this.target) {
        const want = Math.min(HASH_BLOCK_BYTES, this.target - this.hashed);
        this.buffer ??= Buffer.allocUnsafe(HASH_BLOCK_BYTES);
        const { bytesRead } = await this.fh.read(this.buffer, 0, want, this.hashed);
        if (bytesRead <= 0) throw new RoboflowError('ERR_IO', `temp file ended at ${this.hashed} bytes while hashing`);
        const block = this.buffer.subarray(0, bytesRead);
        for (const d of this.digests.values()) d.update(block);
        this.hashed += bytesRead;
      }
    } catch (err) {
      this.failure ??= err;
      this.stopped = true;
    }
  }

  /** Hashes up to `size` bytes and returns the digests (lower-case hex) by algorithm. */
  async finish(size: number): Promise<Map<ChecksumAlgorithm, string>> {
    this.advanceTo(size);
    while (this.loop) await this.loop;
    if (this.failure !== undefined) throw this.failure;
    if (this.hashed !== size && !this.idle) {
      throw new RoboflowError('ERR_IO', `hashed ${this.hashed} bytes, expected ${size}`);
    }
    return new Map([...this.digests].map(([a, d]) => [a, d.hex()]));
  }

  /** Stops the loop after its current block and waits for it, so the file can be closed. */
  async stop(): Promise<void> {
    this.stopped = true;
    while (this.loop) await this.loop;
  }
}

/** Block size of `crc32OfRange`: big enough that a read costs little next to its CRC, small
 * enough to keep the event loop responsive (~0.4 ms of CRC per block). */
const RANGE_CRC_BLOCK_BYTES = 1024 * 1024;

/** The CRC-32 of `bytes` bytes of `fh` from `position`, read in blocks with one reused buffer. */
export async function crc32OfRange(fh: FileHandle, position: number, bytes: number): Promise<number> {
  const block = Buffer.allocUnsafe(Math.min(RANGE_CRC_BLOCK_BYTES, Math.max(1, bytes)));
  let crc = 0;
  let at = 0;
  while (at < bytes) {
    const want = Math.min(block.length, bytes - at);
    const { bytesRead } = await fh.read(block, 0, want, position + at);
    if (bytesRead === 0) {
      throw new RoboflowError('ERR_IO', `temp file ended at ${position + at} bytes while computing the CRC-32 up to ${position + bytes}`);
    }
    crc = crc32(block.subarray(0, bytesRead), crc);
    at += bytesRead;
  }
  return crc;
}

/**
 * The CRC-32 of a download from the CRCs of its write batches, which the writer thread computes
 * on the bytes it writes while they are hot in the cache (`WriterThread` with `crc32`), combined
 * in file order at the end: what this run wrote is not read back. Used when CRC-32 is the only
 * checksum to verify.
 *
 * What the batches leave uncovered (the bytes a resumed download had before this run) is read
 * from the file by `readRange`, when given: a resume from 10 % reads those 10 %, not everything,
 * in the background from the start when the caller names them (`readAhead`), else at the end. If
 * batches overlap, or there are gaps and no `readRange`, the whole file is read back by the
 * hasher `readBack` makes instead, so a gap can never pass as verified.
 */
export class SegmentCrc32Hasher implements OrderedHasher {
  readonly idle = false;
  private readonly segments: { readonly position: number; readonly bytes: number; readonly crc: number }[] = [];
  /** Bytes the segments hold: written by this run, read ahead, or read from a gap. */
  private covered = 0;
  private fallback: OrderedHasher | undefined;
  /** `readAhead`'s background reading; settles without rejecting (its error is kept). */
  private reading: Promise<void> | undefined;
  private readFailure: unknown;
  private stopped = false;

  constructor(
    private readonly readBack: () => OrderedHasher,
    private readonly readRange?: (position: number, bytes: number) => Promise<number>,
  ) {}

  get bytesHashed(): number {
    return this.fallback?.bytesHashed ?? this.covered;
  }

  /** `bytes` bytes at `position` were written, and their CRC-32 is `crc`. */
  add(position: number, bytes: number, crc: number): void {
    if (bytes === 0) return;
    this.segments.push({ position, bytes, crc });
    this.covered += bytes;
  }

  advanceTo(): void {
    // Nothing to read as the prefix grows: the segments arrive with the writes.
  }

  /**
   * Starts reading `ranges` (bytes the file already holds, which no batch of this run will
   * write: a resumed download's durable chunks) in the background, so that `finish()` does not
   * read them after the last byte arrives. Needs `readRange`; call at most once.
   */
  readAhead(ranges: readonly ByteRange[]): void {
    const readRange = this.readRange;
    if (readRange === undefined || this.reading !== undefined) throw new Error('readAhead needs readRange and runs once');
    this.reading = (async () => {
      for (const r of ranges) {
        if (this.stopped) return;
        this.add(r.start, r.end - r.start, await readRange(r.start, r.end - r.start));
      }
    })().catch((err: unknown) => {
      this.readFailure = err;
    });
  }

  async finish(size: number): Promise<Map<ChecksumAlgorithm, string>> {
    await this.reading;
    if (this.readFailure !== undefined) throw this.readFailure;
    const crc = await this.combined(size);
    if (crc !== undefined) return new Map([['crc32', crcHex(crc)]]);
    this.fallback ??= this.readBack();
    return this.fallback.finish(size);
  }

  /**
   * The CRC-32 of `size` bytes from the segments in file order, gaps read with `readRange`;
   * undefined when segments overlap or run past `size`, or a gap has no `readRange`.
   */
  private async combined(size: number): Promise<number | undefined> {
    const ordered = [...this.segments].sort((a, b) => a.position - b.position);
    let at = 0;
    let crc = 0;
    const gapUpTo = async (end: number): Promise<boolean> => {
      if (end === at) return true;
      if (end < at || this.readRange === undefined) return false;
      crc = crc32Combine(crc, await this.readRange(at, end - at), end - at);
      this.covered += end - at;
      at = end;
      return true;
    };
    for (const s of ordered) {
      if (!(await gapUpTo(s.position))) return undefined;
      crc = crc32Combine(crc, s.crc, s.bytes);
      at += s.bytes;
    }
    if (at > size) return undefined;
    return (await gapUpTo(size)) ? crc : undefined;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await this.reading;
    await this.fallback?.stop();
  }
}

// Slots of the control array shared with the hashing thread.
/** Bytes the thread may hash (written by us). */
const CTL_TARGET = 0;
/** 1 asks the thread to stop (written by us). */
const CTL_STOP = 1;
/** Bytes hashed so far (written by the thread). */
const CTL_HASHED = 2;
/**
 * Bumped after every change of the target or the stop flag; the thread sleeps on it. Waiting on
 * the counter read before its checks, not on the target, means a change between the checks and
 * the wait wakes it at once instead of being lost.
 */
const CTL_SEQ = 3;

/**
 * The hashing thread's program. Plain CommonJS given as source (`eval`), so the same code runs
 * from the compiled library and under a TypeScript test runner, with no file path to resolve. It
 * waits on the shared target with `Atomics.wait` instead of receiving a message per chunk.
 */
const WORKER_SOURCE = `
'use strict';
const { workerData, parentPort } = require('node:worker_threads');
const { createHash } = require('node:crypto');
const { openSync, readSync, closeSync } = require('node:fs');
${THREAD_CRC_SOURCE}
const { path, size, algorithms, blockBytes } = workerData;
const ctl = new BigInt64Array(workerData.control);
const digests = algorithms.map((algorithm) => {
  if (algorithm === 'crc32' || algorithm === 'crc32c') {
    const step = algorithm === 'crc32' ? crc32 : crc32c;
    let c = 0;
    return { algorithm, update: (b) => { c = step(b, c); }, hex: () => c.toString(16).padStart(8, '0') };
  }
  const h = createHash(algorithm);
  return { algorithm, update: (b) => h.update(b), hex: () => h.digest('hex') };
});
let fd;
try {
  fd = openSync(path, 'r');
  const buf = Buffer.allocUnsafe(blockBytes);
  let hashed = 0;
  for (;;) {
    const seq = Atomics.load(ctl, ${CTL_SEQ});
    if (Atomics.load(ctl, ${CTL_STOP}) !== 0n) { parentPort.postMessage({ stopped: true }); break; }
    const target = Atomics.load(ctl, ${CTL_TARGET});
    if (hashed >= Number(target)) {
      if (hashed >= size) {
        parentPort.postMessage({ digests: digests.map((d) => [d.algorithm, d.hex()]) });
        break;
      }
      Atomics.wait(ctl, ${CTL_SEQ}, seq);
      continue;
    }
    const n = readSync(fd, buf, 0, Math.min(blockBytes, Number(target) - hashed), hashed);
    if (n <= 0) throw new Error('the file ended at ' + hashed + ' bytes while hashing');
    const block = buf.subarray(0, n);
    for (const d of digests) d.update(block);
    hashed += n;
    Atomics.store(ctl, ${CTL_HASHED}, BigInt(hashed));
  }
} catch (err) {
  parentPort.postMessage({ error: String((err && err.message) || err) });
} finally {
  if (fd !== undefined) closeSync(fd);
}
`;

type WorkerOutcome =
  | { readonly digests: [ChecksumAlgorithm, string][] }
  | { readonly stopped: true }
  | { readonly error: string };

/**
 * Hashes a file in byte order on a worker thread, which opens the file by path and reads the
 * prefix we publish through shared memory. The thread is unreferenced except while `finish()`
 * waits for it, so a forgotten hasher never keeps the process alive.
 */
export class WorkerHasher implements OrderedHasher {
  readonly idle = false;
  private readonly control = new BigInt64Array(new SharedArrayBuffer(4 * 8));
  private readonly worker: Worker;
  private readonly outcome: Promise<WorkerOutcome>;
  private readonly exited: Promise<void>;
  private target = 0;

  constructor(
    private readonly file: string,
    private readonly size: number,
    algorithms: readonly ChecksumAlgorithm[],
  ) {
    this.worker = new Worker(WORKER_SOURCE, {
      eval: true,
      workerData: { control: this.control.buffer, path: file, size, algorithms, blockBytes: HASH_BLOCK_BYTES, crcModule: nativeCrcModule },
    });
    this.worker.unref();
    this.outcome = new Promise<WorkerOutcome>((resolve) => {
      this.worker.once('message', (m: WorkerOutcome) => resolve(m));
      this.worker.once('error', (err) => resolve({ error: err.message }));
      this.worker.once('exit', (code) => resolve({ error: `hashing thread exited with code ${code}` }));
    });
    this.exited = new Promise((resolve) => this.worker.once('exit', () => resolve()));
  }

  get bytesHashed(): number {
    return Number(Atomics.load(this.control, CTL_HASHED));
  }

  advanceTo(bytes: number): void {
    if (bytes <= this.target) return;
    this.target = Math.min(bytes, this.size);
    Atomics.store(this.control, CTL_TARGET, BigInt(this.target));
    this.wake();
  }

  private wake(): void {
    Atomics.add(this.control, CTL_SEQ, 1n);
    Atomics.notify(this.control, CTL_SEQ);
  }

  async finish(size: number): Promise<Map<ChecksumAlgorithm, string>> {
    if (size !== this.size) throw new RoboflowError('ERR_IO', `hasher of ${this.file} was made for ${this.size} bytes, not ${size}`);
    this.advanceTo(size);
    this.worker.ref();
    try {
      const o = await this.outcome;
      if ('digests' in o) return new Map(o.digests);
      if ('error' in o) throw new RoboflowError('ERR_IO', `hashing ${this.file} failed: ${o.error}`);
      throw new RoboflowError('ERR_IO', `hashing ${this.file} was stopped`);
    } finally {
      this.worker.unref();
    }
  }

  async stop(): Promise<void> {
    Atomics.store(this.control, CTL_STOP, 1n);
    this.wake();
    // Referenced while we wait: an unreferenced thread whose exit is the only thing left to
    // happen lets the event loop empty first, and the caller's promise would never settle.
    this.worker.ref();
    try {
      await this.exited;
    } finally {
      this.worker.unref();
    }
  }
}

/**
 * Compares computed digests with the expected checksums. Returns the algorithms that matched;
 * throws `ERR_CHECKSUM_MISMATCH` naming the URL, the algorithm and both values on the first
 * difference.
 */
export function compareChecksums(
  url: string,
  expected: readonly Checksum[],
  actual: ReadonlyMap<ChecksumAlgorithm, string>,
): ChecksumAlgorithm[] {
  const verified: ChecksumAlgorithm[] = [];
  for (const want of expected) {
    const got = actual.get(want.algorithm);
    if (got === undefined) continue;
    if (got !== want.hex.toLowerCase()) {
      throw new RoboflowError(
        'ERR_CHECKSUM_MISMATCH',
        `checksum mismatch for ${url}: ${want.algorithm} expected ${want.hex.toLowerCase()}, got ${got} — the download was discarded`,
        { url },
      );
    }
    if (!verified.includes(want.algorithm)) verified.push(want.algorithm);
  }
  return verified;
}

/** Hashes a whole file with each algorithm (used by tests and by processors that checksum outputs). */
export async function hashFile(
  file: string,
  algorithms: readonly ChecksumAlgorithm[],
): Promise<Map<ChecksumAlgorithm, string>> {
  const fh = await open(file, 'r');
  try {
    const { size } = await fh.stat();
    const hasher = new InOrderHasher(fh, algorithms);
    return await hasher.finish(size);
  } finally {
    await fh.close();
  }
}
