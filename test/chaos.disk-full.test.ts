import { describe, expect, it } from 'vitest';
import { runDiskFullScenario } from '../chaos/scenario-disk-full.js';

describe('chaos: disk-full (short form)', () => {
  it('fails a too-big job with ERR_NO_SPACE, retries the job whose download hit a full disk, completes the rest', async (t) => {
    const lines: string[] = [];
    const report = await runDiskFullScenario({ seed: 1234, short: true, log: (m) => lines.push(m) });
    if (report.outcome === 'skip') t.skip(report.details.skipReason);
    expect(report.details.checks.filter((c) => !c.ok), lines.join('\n')).toEqual([]);
    expect(report.outcome).toBe('pass');
    // fits, too-big (dead), disk-filled (retried, then done), fits.
    expect(report.jobsCompleted).toBe(3);
    expect(report.jobsDead).toBe(1);
    expect((report.details['filler'] as { filledBytes: number }).filledBytes).toBeGreaterThan(0);
  }, 180_000);
});
