import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { beforeAll, describe, expect, it } from 'vitest';
import { scenarioNames } from '../chaos/index.js';
import { Checks, markdownTable, type ScenarioReport } from '../chaos/report.js';
import { deriveSeed, Rng } from '../chaos/seed.js';
import { TOOL_SCRIPTS } from './support/package-root.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const main = path.join(here, '..', TOOL_SCRIPTS.chaosMain);

function report(over: Partial<ScenarioReport>): ScenarioReport {
  return { name: 'x', seed: 1, short: true, runs: 1, faultsInjected: 0, jobsCompleted: 0, jobsDead: 0, bytesRefetched: 0, outcome: 'pass', seconds: 1, details: { checks: [] }, ...over };
}

describe('chaos seeds', () => {
  it('derive the same schedule from the same seed, and different ones per label', () => {
    expect(deriveSeed(42, 'faults/reset')).toBe(deriveSeed(42, 'faults/reset'));
    expect(deriveSeed(42, 'faults/reset')).not.toBe(deriveSeed(42, 'faults/stall'));
    expect(deriveSeed(42, 'faults/reset')).not.toBe(deriveSeed(43, 'faults/reset'));
    const a = new Rng(7);
    const b = new Rng(7);
    const draws = (r: Rng) => [r.int(1, 100), r.between(0, 1), r.pick(['x', 'y', 'z']), ...r.shuffle([1, 2, 3, 4, 5])];
    expect(draws(a)).toEqual(draws(b));
    expect(draws(new Rng(8))).not.toEqual(draws(new Rng(7)));
  });

  it('draw integers within their bounds', () => {
    const r = new Rng(3);
    for (let i = 0; i < 1000; i++) {
      const v = r.int(5, 9);
      expect(v).toBeGreaterThanOrEqual(5);
      expect(v).toBeLessThanOrEqual(9);
    }
  });
});

describe('chaos report', () => {
  it('prints one Markdown row per scenario with the agreed columns', () => {
    const table = markdownTable([
      report({ name: 'faults', runs: 1, faultsInjected: 14, jobsCompleted: 12, bytesRefetched: 1.5 * 1024 * 1024 }),
      report({ name: 'disk-full', outcome: 'skip', details: { checks: [], skipReason: 'no tmpfs' } }),
    ]);
    const lines = table.split('\n');
    expect(lines[0]).toBe('| scenario | runs | faults injected | jobs completed | jobs dead | bytes re-fetched | outcome |');
    expect(lines[2]).toBe('| faults | 1 | 14 | 12 | 0 | 1.5 MiB | pass |');
    expect(lines[3]).toBe('| disk-full | 1 | 0 | 0 | 0 | 0 KiB | skip (no tmpfs) |');
  });

  it('collects checks and their failures', () => {
    const c = new Checks();
    expect(c.check('a', true, 'fine')).toBe(true);
    expect(c.check('b', false, 'broken')).toBe(false);
    expect(c.failures.map((f) => f.name)).toEqual(['b']);
  });
});

describe('chaos main', () => {
  beforeAll(() => {
    if (!existsSync(main)) throw new Error('build/ is missing: run `npm run build && npm run build:tools` (npm test does) before this test');
  });

  it('lists the scenarios in --help and refuses unknown ones with exit code 2', () => {
    const help = spawnSync(process.execPath, [main, '--help'], { encoding: 'utf8' });
    expect(help.status).toBe(0);
    for (const name of scenarioNames()) expect(help.stdout).toContain(name);
    const bad = spawnSync(process.execPath, [main, '--only', 'no-such-scenario'], { encoding: 'utf8' });
    expect(bad.status).toBe(2);
    expect(bad.stderr).toContain('unknown scenario "no-such-scenario"');
  });
});
