import { describe, expect, it } from 'vitest';
import { runPartitionScenario } from '../chaos/scenario-partition.js';

describe('chaos: partition (short form, private cluster, worker processes from dist/)', () => {
  it('a worker cut off from the queue stops its job within lease + margin and publishes nothing; the winner publishes', async (t) => {
    const lines: string[] = [];
    const report = await runPartitionScenario({ seed: 1234, short: true, log: (m) => lines.push(m) });
    if (report.outcome === 'skip') t.skip(report.details.skipReason);
    expect(report.details.checks.filter((c) => !c.ok), lines.join('\n')).toEqual([]);
    expect(report.outcome).toBe('pass');
    // One job per output kind (file://, s3://), plus the prefetched one of the file:// round.
    expect(report.jobsCompleted).toBe(3);
    expect(report.jobsDead).toBe(0);
  }, 240_000);
});
