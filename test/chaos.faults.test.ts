import { describe, expect, it } from 'vitest';
import { runFaultsScenario } from '../chaos/scenario-faults.js';

describe('chaos: faults (short form)', () => {
  it('survives resets, truncations and stalls on 5 % of ranges with byte-identical results', async () => {
    const lines: string[] = [];
    const report = await runFaultsScenario({ seed: 1234, short: true, log: (m) => lines.push(m) });
    expect(report.details.checks.filter((c) => !c.ok), lines.join('\n')).toEqual([]);
    expect(report.outcome).toBe('pass');
    // Every fault is transient: all jobs complete, none dies, and faults did hit.
    expect(report.jobsCompleted).toBe(6);
    expect(report.jobsDead).toBe(0);
    expect(report.faultsInjected).toBeGreaterThan(0);
    expect(report.details['faultSchedule']).toHaveLength(3);
  }, 180_000);
});
