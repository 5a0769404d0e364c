/**
 * The arithmetic of the benchmark: medians over repetitions, throughput and CPU per gigabyte,
 * and ratios against roboflow. Pure functions, so the figures in BENCHMARKS.md can be checked
 * by tests without running a benchmark.
 *
 * Units: MB is 10^6 bytes and GB 10^9 (as network rates are quoted); MiB is 2^20 (as memory is).
 */

import type { Measurement, ToolRun } from './results.js';

export const MB = 1e6;
export const GB = 1e9;
export const MiB = 2 ** 20;
export const GiB = 2 ** 30;

/** Median of the finite values; NaN when there is none. The mean of the middle two for even counts. */
export function median(values: readonly number[]): number {
  const sorted = values.filter((v) => Number.isFinite(v)).sort((a, b) => a - b);
  const n = sorted.length;
  if (n === 0) return Number.NaN;
  const mid = Math.floor(n / 2);
  return n % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

/** Megabytes (10^6) per second; NaN for a non-positive duration. */
export function mbPerSecond(bytes: number, seconds: number): number {
  return seconds > 0 ? bytes / MB / seconds : Number.NaN;
}

/** CPU seconds (user + system) per gigabyte (10^9) moved; NaN for zero bytes. */
export function cpuSecondsPerGB(m: Pick<Measurement, 'userSeconds' | 'sysSeconds'>, bytes: number): number {
  return bytes > 0 ? (m.userSeconds + m.sysSeconds) / (bytes / GB) : Number.NaN;
}

export function kibToMiB(kib: number): number {
  return kib / 1024;
}

/** `value / reference`; NaN when either is not a finite number or the reference is 0. */
export function ratio(value: number, reference: number): number {
  if (!Number.isFinite(value) || !Number.isFinite(reference) || reference === 0) return Number.NaN;
  return value / reference;
}

/** The medians a table shows for one tool in one condition. */
export interface RunSummary {
  readonly tool: string;
  readonly bytes: number;
  /** Repetitions attempted, and how many finished with exit code 0 and the right SHA-256. */
  readonly runs: number;
  readonly ok: number;
  readonly mbPerSecond: number;
  readonly wallSeconds: number;
  readonly cpuSecondsPerGB: number;
  readonly peakRssMiB: number;
  /** True only when every repetition produced the object's exact bytes. */
  readonly sha256Ok: boolean;
  /** The first error of a failed repetition, for the table's notes. */
  readonly error?: string;
}

/**
 * Medians over the successful repetitions of one tool. A failed repetition (non-zero exit or a
 * wrong SHA-256) is not averaged in: it is counted and its error kept, so a tool that fails
 * cannot look fast.
 */
export function summarise(tool: string, runs: readonly ToolRun[]): RunSummary {
  const good = runs.filter((r) => r.measurement.exitCode === 0 && r.sha256Ok);
  const failed = runs.find((r) => !(r.measurement.exitCode === 0 && r.sha256Ok));
  const bytes = runs[0]?.bytes ?? 0;
  return {
    tool,
    bytes,
    runs: runs.length,
    ok: good.length,
    mbPerSecond: median(good.map((r) => mbPerSecond(r.bytes, r.measurement.wallSeconds))),
    wallSeconds: median(good.map((r) => r.measurement.wallSeconds)),
    cpuSecondsPerGB: median(good.map((r) => cpuSecondsPerGB(r.measurement, r.bytes))),
    peakRssMiB: median(good.map((r) => kibToMiB(r.measurement.maxRssKiB))),
    sha256Ok: runs.length > 0 && good.length === runs.length,
    ...(failed !== undefined ? { error: failed.error ?? describeFailure(failed) } : {}),
  };
}

function describeFailure(run: ToolRun): string {
  const m = run.measurement;
  if (m.signal) return `killed by ${m.signal}`;
  if (m.exitCode !== 0) return `exit code ${m.exitCode}`;
  return 'SHA-256 of the output differs from the object';
}

/** A summary with its ratios to the reference tool (roboflow): >1 means more of that quantity. */
export interface ComparedSummary extends RunSummary {
  readonly throughputRatio: number;
  readonly cpuRatio: number;
  readonly rssRatio: number;
}

export function compareTo(reference: RunSummary | undefined, s: RunSummary): ComparedSummary {
  return {
    ...s,
    throughputRatio: ratio(s.mbPerSecond, reference?.mbPerSecond ?? Number.NaN),
    cpuRatio: ratio(s.cpuSecondsPerGB, reference?.cpuSecondsPerGB ?? Number.NaN),
    rssRatio: ratio(s.peakRssMiB, reference?.peakRssMiB ?? Number.NaN),
  };
}

/** The ideal time of N jobs with prefetch: the first download cannot be hidden, then each job
 * costs the longer of its download and its processing. */
export function prefetchBound(jobs: number, downloadSeconds: number, processSeconds: number): number {
  return downloadSeconds + jobs * Math.max(downloadSeconds, processSeconds);
}

/** Bytes fetched again per kill: everything the server sent beyond one copy of the object. */
export function refetchedPerKill(bytesServed: number, objectSize: number, kills: number): number {
  if (kills <= 0) return Number.NaN;
  return Math.max(0, bytesServed - objectSize) / kills;
}
