/**
 * Sizes and durations as people write them in flags and config files, and back. Both parsers
 * accept a plain number (bytes, milliseconds) so values can come from JSON or code unchanged.
 *
 * Sizes: a byte count (`8388608`) or a number with a unit, decimal (`B`, `KB`/`k`, `MB`/`m`,
 * `GB`/`g`, `TB`/`t`, `PB`: powers of 1000, as the SI says) or binary (`KiB`, `MiB`, `GiB`,
 * `TiB`, `PiB`: powers of 1024, as the IEC says). Units are case-insensitive, a space may
 * separate number and unit, fractions are allowed (`1.5GiB`) as long as they come to whole bytes.
 *
 * Durations: milliseconds (`250`), or one or more number-unit pairs (`250ms`, `30s`, `5m`,
 * `5min`, `1h`, `1d`, `1h30m`, `1.5s`), rounded to whole milliseconds.
 *
 * `formatSize`/`formatDuration` give the exact, shortest form that the parsers read back to the
 * same number (for `roboflow config`); `formatBytes` gives an approximate form for progress lines.
 */

import { RoboflowError } from './errors.js';

const SIZE_UNITS: Readonly<Record<string, number>> = {
  b: 1,
  k: 1e3,
  kb: 1e3,
  m: 1e6,
  mb: 1e6,
  g: 1e9,
  gb: 1e9,
  t: 1e12,
  tb: 1e12,
  pb: 1e15,
  kib: 2 ** 10,
  mib: 2 ** 20,
  gib: 2 ** 30,
  tib: 2 ** 40,
  pib: 2 ** 50,
};

/** What `parseSize` accepts, for messages. */
export const SIZE_SYNTAX =
  'a byte count or a number with a unit: B, KB, MB, GB, TB (×1000) or KiB, MiB, GiB, TiB (×1024), e.g. 8MiB, 8MB, 1.5GiB';

/** What `parseDuration` accepts, for messages. */
export const DURATION_SYNTAX = 'milliseconds or a number with a unit: ms, s, m, h, d, e.g. 250ms, 30s, 5m, 1h30m';

function bad(what: string, kind: string, value: unknown, hint: string): RoboflowError {
  return new RoboflowError('ERR_CONFIG', `${what}: invalid ${kind} ${JSON.stringify(value)} (${hint})`);
}

const SIZE_RE = /^(\d+(?:\.\d+)?|\.\d+)\s*([a-z]*)$/i;

/**
 * Parses a byte size: `8388608`, `8MiB`, `8MB` (10^6), `8 KiB`, `1.5GiB`, `512k`.
 * `what` names the flag or key in the error (`ERR_CONFIG`).
 */
export function parseSize(value: string | number, what = 'size'): number {
  const hint = `use ${SIZE_SYNTAX}`;
  let bytes: number;
  if (typeof value === 'number') {
    bytes = value;
  } else {
    const m = SIZE_RE.exec(value.trim());
    const unitText = (m?.[2] ?? '').toLowerCase();
    const unit = SIZE_UNITS[unitText || 'b'];
    if (!m || unit === undefined) throw bad(what, 'size', value, hint);
    bytes = Number(m[1]) * unit;
  }
  if (!Number.isFinite(bytes) || bytes < 0) throw bad(what, 'size', value, hint);
  if (!Number.isSafeInteger(bytes)) {
    const rounded = Math.round(bytes);
    // 1.1MB is 1100000.0000000002 in floating point; 0.3 bytes is not a size.
    if (Math.abs(rounded - bytes) > 1e-6 * Math.max(1, bytes) || !Number.isSafeInteger(rounded)) {
      throw bad(what, 'size', value, `it must come to a whole number of bytes below 8 PiB; ${hint}`);
    }
    bytes = rounded;
  }
  return bytes;
}

const DURATION_UNITS: Readonly<Record<string, number>> = {
  ms: 1,
  s: 1_000,
  m: 60_000,
  min: 60_000,
  h: 3_600_000,
  d: 86_400_000,
};

/** Longest unit names first, so `ms` and `min` are not read as `m`. */
const DURATION_PART_RE = /(\d+(?:\.\d+)?|\.\d+)(min|ms|s|m|h|d)/y;

/**
 * Parses a duration into milliseconds: `250ms`, `30s`, `5m`, `1h`, `1h30m`, `1.5s`, or a plain
 * number of milliseconds. `what` names the flag or key in the error (`ERR_CONFIG`).
 */
export function parseDuration(value: string | number, what = 'duration'): number {
  const hint = `use ${DURATION_SYNTAX}`;
  let ms: number;
  if (typeof value === 'number') {
    ms = value;
  } else {
    const compact = value.trim().toLowerCase().replace(/\s+/g, '');
    if (/^(\d+(?:\.\d+)?|\.\d+)$/.test(compact)) {
      ms = Number(compact);
    } else {
      ms = 0;
      let end = 0;
      DURATION_PART_RE.lastIndex = 0;
      for (let m = DURATION_PART_RE.exec(compact); m !== null; m = DURATION_PART_RE.exec(compact)) {
        ms += Number(m[1]) * (DURATION_UNITS[m[2] ?? ''] ?? Number.NaN);
        end = DURATION_PART_RE.lastIndex;
      }
      if (compact === '' || end !== compact.length) throw bad(what, 'duration', value, hint);
    }
  }
  if (!Number.isFinite(ms) || ms < 0) throw bad(what, 'duration', value, hint);
  const rounded = Math.round(ms);
  if (!Number.isSafeInteger(rounded)) throw bad(what, 'duration', value, hint);
  return rounded;
}

/** Formats bytes for people: `8.0 MiB`. */
export function formatBytes(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = bytes;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return i === 0 ? `${v} B` : `${v.toFixed(1)} ${units[i]}`;
}

const BINARY_FORMAT: ReadonlyArray<readonly [string, number]> = [
  ['PiB', 2 ** 50],
  ['TiB', 2 ** 40],
  ['GiB', 2 ** 30],
  ['MiB', 2 ** 20],
  ['KiB', 2 ** 10],
];
const DECIMAL_FORMAT: ReadonlyArray<readonly [string, number]> = [
  ['PB', 1e15],
  ['TB', 1e12],
  ['GB', 1e9],
  ['MB', 1e6],
  ['KB', 1e3],
];

/**
 * The exact, shortest form of a byte count: the largest binary unit that divides it, else the
 * largest decimal unit, else bytes. `parseSize(formatSize(n)) === n` for every safe integer.
 */
export function formatSize(bytes: number): string {
  if (bytes === 0) return '0 B';
  for (const [unit, factor] of BINARY_FORMAT) if (bytes % factor === 0) return `${bytes / factor} ${unit}`;
  for (const [unit, factor] of DECIMAL_FORMAT) if (bytes % factor === 0) return `${bytes / factor} ${unit}`;
  return `${bytes} B`;
}

const DURATION_FORMAT: ReadonlyArray<readonly [string, number]> = [
  ['d', 86_400_000],
  ['h', 3_600_000],
  ['m', 60_000],
  ['s', 1_000],
  ['ms', 1],
];

/**
 * The exact form of a millisecond count (`1h30m`, `30s`, `250ms`, `1s500ms`).
 * `parseDuration(formatDuration(n)) === n` for every safe integer.
 */
export function formatDuration(ms: number): string {
  if (ms === 0) return '0ms';
  let rest = ms;
  let out = '';
  for (const [unit, factor] of DURATION_FORMAT) {
    let n = Math.floor(rest / factor);
    // Near 2^53 the division can round up to the next integer.
    if (n * factor > rest) n -= 1;
    if (n > 0) {
      out += `${n}${unit}`;
      rest -= n * factor;
    }
  }
  return out;
}
