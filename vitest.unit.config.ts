import { defineConfig, mergeConfig } from 'vitest/config';
import base from './vitest.config.js';

/**
 * The fast tier, `npm run test:unit`: the tests that need no build, no PostgreSQL and no
 * minutes, for the edit-test loop. `npm test` (vitest.config.ts) stays the whole suite and is
 * what CI runs. Parts of files that need a build or PostgreSQL are marked in the files
 * themselves (test/tier.ts); whole files that do are left out here.
 */
export default mergeConfig(
  base,
  defineConfig({
    test: {
      exclude: [
        // The chaos scenarios: real worker processes, SIGKILLs, a PostgreSQL cluster.
        'test/chaos.*.test.ts',
        // PostgreSQL.
        'test/security.postgres.test.ts',
        'test/jobs.postgres.test.ts',
        'test/prefetch.wakeups.test.ts',
        // The compiled `roboflow` and library (dist/) in child processes.
        'test/cli.download.test.ts',
        'test/cli.demo.test.ts',
        'test/jobs.cli.test.ts',
        'test/jobs.processes.test.ts',
        'test/worker.processes.test.ts',
        'test/bench.phases.test.ts',
        'test/prefetch.crc-fallback.test.ts',
        // Objects of hundreds of MiB.
        'test/prefetch.downloader.large.test.ts',
        'node_modules/**',
      ],
      // Test files share a worker process and its loaded modules (the AWS SDK alone takes a
      // second to load), which cuts the CPU time of this tier by about 40 %. The full suite keeps
      // every file in a process of its own, so state one file leaves behind cannot hide there.
      isolate: false,
      env: { ROBOFLOW_TEST_TIER: 'unit' },
      setupFiles: ['test/setup-unit.ts'],
    },
  }),
);
