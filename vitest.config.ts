import { configDefaults, defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // test/interop/ runs against a real Ceph RADOS Gateway: `npm run test:interop`.
    exclude: [...configDefaults.exclude, 'test/interop/**'],
    // Tests start real servers, real PostgreSQL schemas and child processes; two cores do
    // not profit from more than two files at once and timing-sensitive tests suffer.
    maxWorkers: 2,
    minWorkers: 1,
    testTimeout: 60_000,
    hookTimeout: 60_000,
    teardownTimeout: 20_000,
  },
});
