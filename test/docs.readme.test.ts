/**
 * The README's reference tables are generated from the code (config schema, metric table); this
 * keeps them from drifting apart, and pins the set-up and test commands CI relies on.
 */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { renderConfigReference } from '../src/config/describe.js';
import { METRICS } from '../src/metric-names.js';

const readme = readFileSync(new URL('../README.md', import.meta.url), 'utf8');

describe('README', () => {
  it('carries the configuration reference exactly as the code renders it', () => {
    expect(readme).toContain(renderConfigReference().trimEnd());
  });

  it('documents every metric with its type and labels', () => {
    for (const spec of Object.values(METRICS)) {
      const row = `| \`${spec.name}\` | ${spec.type} | ${spec.labels.join(', ') || '—'} | ${spec.help} |`;
      expect(readme, spec.name).toContain(row);
    }
  });

  it('gives the two set-up commands, and CI runs its test command', () => {
    expect(readme).toMatch(/^npm ci && npm run demo\b/m);
    expect(readme).toMatch(/^npm test\b/m);
    const ci = readFileSync(new URL('../.ci/run', import.meta.url), 'utf8');
    expect(ci).toMatch(/^npm test$/m);
  });
});
