import { describe, expect, it } from 'vitest';
import { runHostileScenario } from '../chaos/scenario-hostile.js';

describe('chaos: hostile (short form)', () => {
  it('keeps hostile names inside the buffer and takes malformed replies as errors, never as data', async () => {
    const lines: string[] = [];
    const report = await runHostileScenario({ seed: 1234, short: true, log: (m) => lines.push(m) });
    expect(report.details.checks.filter((c) => !c.ok), lines.join('\n')).toEqual([]);
    expect(report.outcome).toBe('pass');
    const endings = report.details['endings'] as Record<string, string>;
    expect(endings['../ in an HTTP key']).toBe('done');
    expect(endings['../ in an S3 key']).toBe('done');
    expect(endings['NUL byte in the key']).toBe('done');
    expect(endings['Content-Range naming other bytes']).toBe('dead: ERR_BAD_RESPONSE');
    expect(endings['HTML error page with 200 on every request']).toBe('dead: ERR_BAD_RESPONSE');
    expect(endings['HTML error page with 200 on GETs']).toBe('dead: ERR_BAD_RESPONSE');
  }, 180_000);
});
