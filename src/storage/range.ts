/**
 * Byte ranges on the wire. Inside the code base a range is `[start, end)`; HTTP's `Range` and
 * `Content-Range` headers use inclusive ends. The conversion happens here and nowhere else.
 */

import { RoboflowError } from '../errors.js';
import { quoteServerText } from '../redact.js';
import type { ByteRange } from '../types.js';

/** Throws unless `range` is a non-empty interval of safe non-negative integers. */
export function checkRange(range: ByteRange, url: string): void {
  const { start, end } = range;
  if (!Number.isSafeInteger(start) || !Number.isSafeInteger(end) || start < 0 || end <= start) {
    throw new RoboflowError('ERR_CONFIG', `invalid byte range [${start}, ${end}) requested from ${url}: need 0 <= start < end`, {
      url,
    });
  }
}

/** The `Range` request header for `range`: `bytes=start-(end-1)`. */
export function rangeHeader(range: ByteRange): string {
  return `bytes=${range.start}-${range.end - 1}`;
}

export interface ContentRange {
  readonly start: number;
  /** Exclusive. */
  readonly end: number;
  /** Undefined when the server wrote `*`. */
  readonly total: number | undefined;
}

/** Parses `bytes a-b/total` (total may be `*`). Returns null for anything else, the 416 form included. */
export function parseContentRange(value: string | undefined): ContentRange | null {
  if (value === undefined) return null;
  const m = /^\s*bytes\s+(\d+)-(\d+)\/(\d+|\*)\s*$/i.exec(value);
  if (!m) return null;
  const start = Number(m[1]);
  const last = Number(m[2]);
  const total = m[3] === '*' ? undefined : Number(m[3]);
  if (!Number.isSafeInteger(start) || !Number.isSafeInteger(last) || last < start) return null;
  if (total !== undefined && (!Number.isSafeInteger(total) || last >= total)) return null;
  return { start, end: last + 1, total };
}

/**
 * Parses the form a 416 answer carries (`bytes`, space, star, slash, size), giving the size;
 * undefined for anything else, a size past the safe integers included (like `parseContentRange`).
 */
export function parseUnsatisfiedRange(value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const m = /^\s*bytes\s+\*\/(\d+)\s*$/i.exec(value);
  if (!m) return undefined;
  const size = Number(m[1]);
  return Number.isSafeInteger(size) ? size : undefined;
}

/**
 * Throws `ERR_BAD_RESPONSE` unless `value` names exactly `range`. Writing bytes of another range
 * at this range's offset would corrupt the file silently, so nothing less than exact is accepted.
 */
export function expectContentRange(value: string | undefined, range: ByteRange, url: string): ContentRange {
  const parsed = parseContentRange(value);
  if (!parsed || parsed.start !== range.start || parsed.end !== range.end) {
    const expected = `bytes ${range.start}-${range.end - 1}/<size>`;
    throw new RoboflowError(
      'ERR_BAD_RESPONSE',
      `${url}: the server answered a range request with Content-Range ${quoteServerText(value ?? '(none)')}, expected "${expected}"`,
      { url },
    );
  }
  return parsed;
}

/** Whether an ETag is strong (weak ones, `W/"…"`, cannot guard byte ranges). */
export function isStrongEtag(etag: string | undefined): etag is string {
  return etag !== undefined && etag !== '' && !/^W\//i.test(etag);
}
