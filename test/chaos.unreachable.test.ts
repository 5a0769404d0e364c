import { describe, expect, it } from 'vitest';
import { runUnreachableScenario } from '../chaos/scenario-unreachable.js';

describe('chaos: unreachable (short form)', () => {
  it('backs off while the store is gone, completes once it is back, and fails fast on a closed queue port', async () => {
    const lines: string[] = [];
    const report = await runUnreachableScenario({ seed: 1234, short: true, log: (m) => lines.push(m) });
    expect(report.details.checks.filter((c) => !c.ok), lines.join('\n')).toEqual([]);
    expect(report.outcome).toBe('pass');
    expect(report.jobsCompleted).toBe(3);
    expect(report.jobsDead).toBe(0);
    const down = report.details['storeDown'] as { jobsClaimed: number; rangeRetries: number };
    expect(down.jobsClaimed).toBeLessThanOrEqual(3 * 6);
    expect(down.rangeRetries).toBeLessThanOrEqual(60);
    expect(String((report.details['queuePortClosed'] as { error: string }).error)).toMatch(/^ERR_QUEUE/);
  }, 180_000);
});
