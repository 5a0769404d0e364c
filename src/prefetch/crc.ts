/**
 * The two CRCs object stores keep beside an object: CRC-32 (zlib's, ISO-HDLC) and CRC-32C
 * (Castagnoli). They are the cheapest way to verify a download, if computed well.
 *
 * Native where it loads: `@node-rs/crc32` (prebuilt for the common platforms) uses the CPU's
 * carry-less multiply for CRC-32 and its CRC32 instruction for CRC-32C. Measured on the
 * benchmark machine (Intel Xeon, Node 20, 32 KiB pieces, CPU s per GiB): CRC-32 0.07 native
 * against 0.45 with `zlib.crc32` (a table, one byte at a time); CRC-32C 0.09 native against
 * 3.0 in JavaScript. On a platform without the binary, or if it fails to load, the portable
 * versions run and give the same values, only slower.
 *
 * Threads (the writer and the hashing thread) run plain CommonJS source; they load the same
 * implementation from `nativeCrcModule` when it is set.
 */

import { createRequire } from 'node:module';
import zlib from 'node:zlib';

/** A CRC continued over `buf` from the running value `crc` (0 to start), unsigned. */
export type CrcStep = (buf: Uint8Array, crc?: number) => number;

export interface CrcImplementation {
  readonly name: 'native' | 'portable';
  readonly crc32: CrcStep;
  readonly crc32c: CrcStep;
}

// CRC-32C (Castagnoli), reflected polynomial 0x82F63B78, slice-by-8 tables.
let crc32cTables: Uint32Array[] | undefined;
function tables(): Uint32Array[] {
  if (crc32cTables) return crc32cTables;
  const t: Uint32Array[] = Array.from({ length: 8 }, () => new Uint32Array(256));
  const t0 = t[0] as Uint32Array;
  for (let i = 0; i < 256; i++) {
    let c = i;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0x82f63b78 ^ (c >>> 1) : c >>> 1;
    t0[i] = c >>> 0;
  }
  for (let i = 0; i < 256; i++) {
    let c = t0[i] as number;
    for (let s = 1; s < 8; s++) {
      c = (t0[c & 0xff] as number) ^ (c >>> 8);
      (t[s] as Uint32Array)[i] = c >>> 0;
    }
  }
  crc32cTables = t;
  return t;
}

/** Continues a CRC-32C over `buf` from the running value `crc` (0 to start), in JavaScript. */
function crc32cPortable(buf: Uint8Array, crc = 0): number {
  const [t0, t1, t2, t3, t4, t5, t6, t7] = tables() as [
    Uint32Array, Uint32Array, Uint32Array, Uint32Array,
    Uint32Array, Uint32Array, Uint32Array, Uint32Array,
  ];
  let c = ~crc >>> 0;
  let i = 0;
  const n = buf.length;
  for (; i + 8 <= n; i += 8) {
    const a = (c ^ ((buf[i] as number) | ((buf[i + 1] as number) << 8) | ((buf[i + 2] as number) << 16) | ((buf[i + 3] as number) << 24))) >>> 0;
    c =
      (t7[a & 0xff] as number) ^
      (t6[(a >>> 8) & 0xff] as number) ^
      (t5[(a >>> 16) & 0xff] as number) ^
      (t4[a >>> 24] as number) ^
      (t3[buf[i + 4] as number] as number) ^
      (t2[buf[i + 5] as number] as number) ^
      (t1[buf[i + 6] as number] as number) ^
      (t0[buf[i + 7] as number] as number);
  }
  for (; i < n; i++) c = (t0[(c ^ (buf[i] as number)) & 0xff] as number) ^ (c >>> 8);
  return ~c >>> 0;
}

/** zlib's CRC-32 and ours in JavaScript: everywhere, the same values, slower. */
export const portableCrc: CrcImplementation = {
  name: 'portable',
  crc32: (buf, crc = 0) => zlib.crc32(buf, crc),
  crc32c: crc32cPortable,
};

interface NativeModule {
  crc32(input: Uint8Array, initialState?: number | null): number;
  crc32c(input: Uint8Array, initialState?: number | null): number;
}

function loadNative(): { readonly impl: CrcImplementation; readonly path: string } | undefined {
  try {
    const require = createRequire(import.meta.url);
    const modulePath = require.resolve('@node-rs/crc32');
    const m = require(modulePath) as NativeModule;
    // A binary built for another CPU or libc loads but may compute garbage: check a known value.
    if (m.crc32(Buffer.from('123456789')) !== 0xcbf43926 || m.crc32c(Buffer.from('123456789')) !== 0xe3069283) return undefined;
    return {
      path: modulePath,
      impl: { name: 'native', crc32: (buf, crc = 0) => m.crc32(buf, crc), crc32c: (buf, crc = 0) => m.crc32c(buf, crc) },
    };
  } catch {
    return undefined;
  }
}

const native = loadNative();

/** The native implementation, when its binary loaded on this platform. */
export const nativeCrc: CrcImplementation | undefined = native?.impl;

/** What a thread `require()`s for the native implementation; undefined: use the portable one. */
export const nativeCrcModule: string | undefined = native?.path;

/** The implementation in use: native when it loaded, else portable. */
export const crcImplementation: CrcImplementation = nativeCrc ?? portableCrc;

/** Continues a CRC-32 over `buf` from the running value `crc` (0 to start). */
export const crc32: CrcStep = crcImplementation.crc32;

/** Continues a CRC-32C over `buf` from the running value `crc` (0 to start). */
export const crc32c: CrcStep = crcImplementation.crc32c;

/**
 * The CRC source a thread's program starts with: it defines `crc32` and `crc32c` from the native
 * module when `workerData.crcModule` names it, else from zlib (CRC-32C is then unavailable).
 */
export const THREAD_CRC_SOURCE = `
const crcNative = workerData.crcModule ? require(workerData.crcModule) : undefined;
const crc32 = crcNative ? (b, c) => crcNative.crc32(b, c) : require('node:zlib').crc32;
const crc32c = crcNative ? (b, c) => crcNative.crc32c(b, c) : undefined;
`;

/** CRC-32's polynomial, bit-reflected: bit 31 holds x^0, bit 0 holds x^31. */
const CRC32_POLY = 0xedb88320;

/** a(x)·b(x) modulo CRC-32's polynomial, in the reflected layout (zlib's `multmodp`). */
function multModP(a: number, b: number): number {
  if (a === 0) return 0;
  let m = 0x80000000;
  let p = 0;
  for (;;) {
    if ((a & m) !== 0) {
      p ^= b;
      if ((a & (m - 1)) === 0) break;
    }
    m >>>= 1;
    b = b & 1 ? (b >>> 1) ^ CRC32_POLY : b >>> 1;
  }
  return p >>> 0;
}

/** x^(2^k) modulo the polynomial for k = 0..31; the powers repeat with period 32 past that. */
const X2N: Uint32Array = (() => {
  const t = new Uint32Array(32);
  let p = 1 << 30; // x^1
  t[0] = p;
  for (let k = 1; k < 32; k++) t[k] = p = multModP(p, p);
  return t;
})();

/** x^(n·2^k) modulo the polynomial; `n` may pass 2^32. */
function x2nModP(n: number, k: number): number {
  let p = 0x80000000; // x^0
  while (n > 0) {
    if (n % 2 === 1) p = multModP(X2N[k & 31] as number, p);
    n = Math.floor(n / 2);
    k++;
  }
  return p;
}

/**
 * The CRC-32 of A‖B from crc(A), crc(B) and B's length, without B's bytes: zlib's
 * `crc32_combine` (Node exposes `crc32` but not this). Appending `len2` zero bytes to A is a
 * multiplication by x^(8·len2) modulo the polynomial, built from a table of x^(2^k): one
 * 32-step product per one bit of the length, a few microseconds for any length.
 */
export function crc32Combine(crc1: number, crc2: number, len2: number): number {
  if (!(Number.isSafeInteger(len2) && len2 >= 0)) throw new RangeError(`length must be a non-negative integer, got ${len2}`);
  return (multModP(x2nModP(len2, 3), crc1 >>> 0) ^ crc2) >>> 0;
}
