import { describe, expect, it } from 'vitest';
import { runPostgresScenario } from '../chaos/scenario-postgres.js';

describe('chaos: postgres (short form, private cluster)', () => {
  it('reconnects after a restart, loses and doubles no job, and backs off while the database is down', async (t) => {
    const lines: string[] = [];
    const report = await runPostgresScenario({ seed: 1234, short: true, log: (m) => lines.push(m) });
    if (report.outcome === 'skip') t.skip(report.details.skipReason);
    expect(report.details.checks.filter((c) => !c.ok), lines.join('\n')).toEqual([]);
    expect(report.outcome).toBe('pass');
    // Six jobs across the restart, one after the outage.
    expect(report.jobsCompleted).toBe(7);
    expect(report.jobsDead).toBe(0);
    const outage = report.details['outage'] as { failedClaims: number };
    expect(outage.failedClaims).toBeGreaterThanOrEqual(1);
    expect(outage.failedClaims).toBeLessThanOrEqual(10);
  }, 180_000);
});
