/**
 * The two test tiers. `npm test` runs everything; it is what CI runs (.ci/run). `npm run
 * test:unit` (vitest.unit.config.ts) is the fast tier for editing: it sets
 * ROBOFLOW_TEST_TIER=unit and needs no build, no PostgreSQL and no minutes. Files that need one
 * of those as a whole are left out by that config; in a file that mixes both kinds, the parts
 * that need them are declared with these, and show as skipped in the fast tier.
 */
import { describe, it } from 'vitest';

/** False in the fast tier. */
export const FULL_TIER = process.env.ROBOFLOW_TEST_TIER !== 'unit';

/**
 * A group of tests that runs the compiled package (dist/) in child processes, needs PostgreSQL,
 * or moves objects of 64 MiB and more.
 */
export function describeFull(name: string, fn: () => void): void {
  describe.runIf(FULL_TIER)(name, fn);
}

/** One such test. */
export function itFull(name: string, fn: () => Promise<void> | void, timeout?: number): void {
  it.runIf(FULL_TIER)(name, fn, timeout);
}
