import { describe, expect, it } from 'vitest';
import { runThrottleScenario, type ThrottleRun } from '../chaos/scenario-throttle.js';
import { ConcurrencyLimiter } from '../src/prefetch/concurrency.js';

describe('chaos: throttle (short form)', () => {
  it('rides out 503 storms and converges near the store limit with the adaptive limiter', async () => {
    const lines: string[] = [];
    const report = await runThrottleScenario({ seed: 1234, short: true, log: (m) => lines.push(m) });
    const throttle = report.details['throttle'] as { K: number; objects: number; adaptive: ThrottleRun; fixed: ThrottleRun };
    // Both runs end byte-identical, whatever their speed (times are reported, not asserted).
    expect(throttle.adaptive.identical).toBe(throttle.objects);
    expect(throttle.fixed.identical).toBe(throttle.objects);
    // The adaptive limiter comes down to K with time to spare and stays within K + 2.
    const detail = `${lines.join('\n')}\n${JSON.stringify(throttle.adaptive.limitChanges)}`;
    expect(throttle.adaptive.convergedAtMs, detail).not.toBeNull();
    expect(throttle.adaptive.observedAfterConvergenceMs, detail).toBeGreaterThanOrEqual(1_000);
    expect(throttle.adaptive.peakActiveAfterConvergence, detail).toBeLessThanOrEqual(throttle.K + 2);
    expect(throttle.adaptive.peakLimitAfterConvergence, detail).toBeLessThanOrEqual(throttle.K + 2);
    expect(report.details.checks.filter((c) => !c.ok), detail).toEqual([]);
    expect(report.outcome).toBe('pass');
    expect(report.jobsDead).toBe(0);
  }, 180_000);

  // Why the limit overshoots: while throttles are ignored (they are counted once per
  // decreaseIntervalMs), completions keep raising the limit, so it climbs back above what the
  // store allows before it may be lowered again.
  it('does not raise the limit again while it still ignores throttles after a decrease', () => {
    const limiter = new ConcurrencyLimiter({ max: 16, decreaseIntervalMs: 60_000 });
    for (let i = 0; i < 8; i++) limiter.noteServing(1);
    limiter.onThrottle();
    expect(limiter.limit).toBe(8);
    for (let i = 0; i < 40; i++) limiter.onSuccess();
    limiter.onThrottle();
    expect(limiter.limit).toBeLessThanOrEqual(8);
  });
});
