/**
 * Deterministic generated object content for tests, benchmarks and the demo.
 *
 * A generated object is named by `(size, seed)` and never exists in memory as a whole: any slice
 * `[start, end)` is computed on demand. Each aligned 8-byte word is a hash of the seed and the
 * word's index, so a slice is the same bytes wherever it is cut from (a range downloader that
 * reassembles slices gets exactly the bytes a single read would give) and a misplaced byte
 * changes the SHA-256.
 */

import { createHash } from 'node:crypto';
import { endianness } from 'node:os';

const WORD = 8;
const TWO_32 = 0x1_0000_0000;
/** Slice length used when hashing a whole generated object: big enough to amortise calls,
 * small enough that one slice never holds the event loop for long (~1-2 ms). */
const DIGEST_SLICE = 1 << 20;
const LITTLE_ENDIAN = endianness() === 'LE';

/** murmur3's 32-bit finaliser: a cheap bijective mixer with good avalanche. */
function fmix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** Per-(seed, high half of the word index) key; word indices above 2^32 (objects > 32 GiB) only
 * change this key, so the inner loop stays 32-bit. */
function wordKey(seed: number, wordHi: number): number {
  const seedLo = seed >>> 0;
  const seedHi = Math.floor(seed / TWO_32) >>> 0;
  return fmix32(seedLo ^ fmix32(seedHi + 0x9e3779b9) ^ Math.imul(wordHi + 1, 0x27d4eb2f));
}

function checkArgs(seed: number, start: number, end: number): void {
  if (!Number.isSafeInteger(seed)) throw new RangeError(`generated content seed must be a safe integer, got ${seed}`);
  if (!Number.isSafeInteger(start) || !Number.isSafeInteger(end) || start < 0 || end < start) {
    throw new RangeError(`generated content range [${start}, ${end}) is not a valid byte range`);
  }
}

/**
 * The bytes `[start, end)` of the generated object with this seed. Position-dependent and
 * deterministic: `generatedContent(s, 0, 100).subarray(10, 20)` equals `generatedContent(s, 10, 20)`.
 * Fast (a typed-array loop, well over 1 GB/s) so a server can stream gigabytes from it.
 */
export function generatedContent(seed: number, start: number, end: number): Buffer {
  checkArgs(seed, start, end);
  if (end === start) return Buffer.alloc(0);
  const firstWord = Math.floor(start / WORD);
  const lastWord = Math.ceil(end / WORD); // exclusive
  const words = lastWord - firstWord;
  const out = Buffer.allocUnsafeSlow(words * WORD);
  fillWords(seed, firstWord, words, out);
  const skip = start - firstWord * WORD;
  return out.subarray(skip, skip + (end - start));
}

function fillWords(seed: number, firstWord: number, words: number, out: Buffer): void {
  let hi = Math.floor(firstWord / TWO_32);
  let lo = firstWord - hi * TWO_32;
  let key = wordKey(seed, hi);
  if (LITTLE_ENDIAN) {
    const u32 = new Uint32Array(out.buffer, out.byteOffset, words * 2);
    for (let i = 0; i < words; i++) {
      const a = fmix32(Math.imul(lo, 0x9e3779b1) ^ key);
      u32[2 * i] = a;
      u32[2 * i + 1] = fmix32(a ^ 0x6a09e667 ^ Math.imul(key, 0x2545f491));
      if (++lo === TWO_32) {
        lo = 0;
        key = wordKey(seed, ++hi);
      }
    }
    return;
  }
  for (let i = 0; i < words; i++) {
    const a = fmix32(Math.imul(lo, 0x9e3779b1) ^ key);
    out.writeUInt32LE(a, 8 * i);
    out.writeUInt32LE(fmix32(a ^ 0x6a09e667 ^ Math.imul(key, 0x2545f491)), 8 * i + 4);
    if (++lo === TWO_32) {
      lo = 0;
      key = wordKey(seed, ++hi);
    }
  }
}

/** Digests of whole generated objects are costly (~2 s/GiB) and asked for repeatedly by
 * tests and servers in one process, so they are kept by `(algorithm, size, seed)`. */
const digestCache = new Map<string, Promise<string>>();
const syncDigestCache = new Map<string, string>();

/**
 * Hex digest of the whole generated object `(size, seed)`, computed slice by slice (constant
 * memory) and yielding to the event loop between slices so a server keeps serving meanwhile.
 */
export function generatedDigest(algorithm: 'md5' | 'sha256', size: number, seed: number): Promise<string> {
  checkArgs(seed, 0, size);
  const cacheKey = `${algorithm}:${size}:${seed}`;
  const known = syncDigestCache.get(cacheKey);
  if (known !== undefined) return Promise.resolve(known);
  let pending = digestCache.get(cacheKey);
  if (pending === undefined) {
    pending = (async () => {
      const hash = createHash(algorithm);
      for (let pos = 0; pos < size; pos += DIGEST_SLICE) {
        hash.update(generatedContent(seed, pos, Math.min(size, pos + DIGEST_SLICE)));
        await new Promise<void>((resolve) => setImmediate(resolve));
      }
      const hex = hash.digest('hex');
      syncDigestCache.set(cacheKey, hex);
      return hex;
    })();
    digestCache.set(cacheKey, pending);
  }
  return pending;
}

/** Synchronous `generatedDigest`: blocks the event loop for the whole object (use for small
 * objects, or when an API must answer synchronously). */
export function generatedDigestSync(algorithm: 'md5' | 'sha256', size: number, seed: number): string {
  checkArgs(seed, 0, size);
  const cacheKey = `${algorithm}:${size}:${seed}`;
  const known = syncDigestCache.get(cacheKey);
  if (known !== undefined) return known;
  const hash = createHash(algorithm);
  for (let pos = 0; pos < size; pos += DIGEST_SLICE) {
    hash.update(generatedContent(seed, pos, Math.min(size, pos + DIGEST_SLICE)));
  }
  const hex = hash.digest('hex');
  syncDigestCache.set(cacheKey, hex);
  return hex;
}

/** Hex SHA-256 of the whole generated object `(size, seed)`, for asserting downloads. */
export function generatedSha256(size: number, seed: number): Promise<string> {
  return generatedDigest('sha256', size, seed);
}

/** mulberry32: a tiny seeded generator of numbers in [0, 1), for choices that must repeat with
 * their seed (sensor noise in sample episodes, fault schedules, kill points). */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
