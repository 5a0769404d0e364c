/**
 * Fast tier only (vitest.unit.config.ts): property tests try 20 cases instead of fast-check's
 * 100, unless a test asks for a number itself. The full suite runs them all.
 */
import fc from 'fast-check';

fc.configureGlobal({ numRuns: 20 });
