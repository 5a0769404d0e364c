import { describe, expect, it } from 'vitest';
import { runReplaceScenario } from '../chaos/scenario-replace.js';

describe('chaos: replace (short form)', () => {
  it('delivers a replaced object whole after a restart, or fails with ERR_SOURCE_CHANGED, never a mix', async () => {
    const lines: string[] = [];
    const report = await runReplaceScenario({ seed: 1234, short: true, log: (m) => lines.push(m) });
    expect(report.details.checks.filter((c) => !c.ok), lines.join('\n')).toEqual([]);
    expect(report.outcome).toBe('pass');
    // Four jobs: unchanged, replaced (same size), replaced twice (dead), replaced (new size).
    expect(report.jobsCompleted).toBe(3);
    expect(report.jobsDead).toBe(1);
    const passes = report.details['downloadPasses'] as Record<string, number>;
    expect(passes['replaced-0.mcap']).toBe(1);
    expect(passes['replaced-1.mcap']).toBeGreaterThanOrEqual(2);
    expect(passes['replaced-3.mcap']).toBeGreaterThanOrEqual(2);
  }, 180_000);
});
