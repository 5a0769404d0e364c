import { describe, expect, it } from 'vitest';
import type { ToolRun } from '../bench/src/results.js';
import { compareTo, cpuSecondsPerGB, mbPerSecond, median, prefetchBound, ratio, refetchedPerKill, summarise } from '../bench/src/stats.js';

function run(tool: string, wall: number, opts: Partial<{ user: number; sys: number; rssKiB: number; exit: number | null; sha: boolean; bytes: number }> = {}): ToolRun {
  return {
    tool,
    repetition: 1,
    bytes: opts.bytes ?? 1e9,
    measurement: {
      wallSeconds: wall,
      userSeconds: opts.user ?? 1,
      sysSeconds: opts.sys ?? 0.5,
      maxRssKiB: opts.rssKiB ?? 51200,
      exitCode: opts.exit === undefined ? 0 : opts.exit,
      signal: null,
    },
    sha256Ok: opts.sha ?? true,
  };
}

describe('median', () => {
  it('takes the middle value, or the mean of the middle two', () => {
    expect(median([3, 1, 2])).toBe(2);
    expect(median([4, 1, 3, 2])).toBe(2.5);
    expect(median([7])).toBe(7);
  });
  it('ignores values that are not finite and is NaN for none', () => {
    expect(median([Number.NaN, 5, Number.POSITIVE_INFINITY, 1, 3])).toBe(3);
    expect(median([])).toBeNaN();
    expect(median([Number.NaN])).toBeNaN();
  });
});

describe('rates and ratios', () => {
  it('computes MB/s with MB = 10^6 and CPU seconds per GB with GB = 10^9', () => {
    expect(mbPerSecond(400e6, 2)).toBe(200);
    expect(mbPerSecond(1, 0)).toBeNaN();
    expect(cpuSecondsPerGB({ userSeconds: 1.5, sysSeconds: 0.5 }, 2e9)).toBe(1);
    expect(cpuSecondsPerGB({ userSeconds: 1, sysSeconds: 0 }, 0)).toBeNaN();
  });
  it('ratio is NaN when either side is missing or the reference is zero', () => {
    expect(ratio(3, 2)).toBe(1.5);
    expect(ratio(3, 0)).toBeNaN();
    expect(ratio(Number.NaN, 2)).toBeNaN();
  });
  it('prefetch bound is D + N·max(D, P)', () => {
    expect(prefetchBound(8, 1, 1)).toBe(9);
    expect(prefetchBound(8, 1, 2)).toBe(17);
    expect(prefetchBound(8, 2, 1)).toBe(18);
  });
  it('re-fetched bytes per kill never go negative', () => {
    expect(refetchedPerKill(1300, 1000, 3)).toBe(100);
    expect(refetchedPerKill(990, 1000, 2)).toBe(0);
    expect(refetchedPerKill(1300, 1000, 0)).toBeNaN();
  });
});

describe('summarise', () => {
  it('takes medians over the correct runs only, and keeps the first failure', () => {
    const runs = [run('x', 2), run('x', 4), run('x', 1, { sha: false }), run('x', 3, { exit: 1 })];
    const s = summarise('x', runs);
    expect(s.runs).toBe(4);
    expect(s.ok).toBe(2);
    expect(s.wallSeconds).toBe(3);
    expect(s.mbPerSecond).toBe(median([500, 250]));
    expect(s.sha256Ok).toBe(false);
    expect(s.error).toMatch(/SHA-256/);
    expect(s.peakRssMiB).toBe(50);
    expect(s.cpuSecondsPerGB).toBe(1.5);
  });
  it('a tool whose every run failed has no throughput, so it cannot look fast', () => {
    const s = summarise('x', [run('x', 0.1, { exit: 2 })]);
    expect(s.mbPerSecond).toBeNaN();
    expect(s.error).toBe('exit code 2');
  });
  it('compares against the reference: > 1 means more of the quantity', () => {
    const ref = summarise('roboflow', [run('roboflow', 2, { user: 1, sys: 0, rssKiB: 102400 })]);
    const peer = compareTo(ref, summarise('curl', [run('curl', 4, { user: 0.5, sys: 0, rssKiB: 10240 })]));
    expect(peer.throughputRatio).toBe(0.5);
    expect(peer.cpuRatio).toBe(0.5);
    expect(peer.rssRatio).toBe(0.1);
    expect(compareTo(undefined, peer).throughputRatio).toBeNaN();
  });
});
