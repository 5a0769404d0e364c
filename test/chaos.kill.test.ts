import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { beforeAll, describe, expect, it } from 'vitest';
import { runKillScenario } from '../chaos/scenario-kill.js';

const here = path.dirname(fileURLToPath(import.meta.url));

beforeAll(() => {
  if (!existsSync(path.join(here, '..', 'dist', 'worker.js'))) {
    throw new Error('dist/ is missing: run `npx tsc -p tsconfig.build.json` (npm test does) before this test');
  }
});

describe('chaos: kill (short form)', () => {
  it('completes every job exactly once across SIGKILLed and restarted worker processes', async () => {
    const lines: string[] = [];
    const report = await runKillScenario({ seed: 1234, short: true, log: (m) => lines.push(m) });
    expect(report.details.checks.filter((c) => !c.ok), lines.join('\n')).toEqual([]);
    expect(report.outcome).toBe('pass');
    expect(report.jobsCompleted).toBe(6);
    expect(report.jobsDead).toBe(0);
    // Two kills, then the worker that drains.
    expect(report.details['kills']).toHaveLength(2);
    expect(report.runs).toBe(3);
    expect(report.details['outputWrites']).toEqual(expect.arrayContaining([1]));
  }, 180_000);
});
