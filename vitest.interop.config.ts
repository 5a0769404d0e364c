import { defineConfig } from 'vitest/config';

// The interop suite: roboflow against a real Ceph RADOS Gateway (`npm run test:interop`, which
// starts one with scripts/rgw/). Kept out of `npm test`, which needs nothing but Node and
// PostgreSQL.
export default defineConfig({
  test: {
    include: ['test/interop/*.test.ts'],
    // RGW and the OSD take most of the two cores during a transfer; one file at a time keeps
    // the throttled tests away from CPU starvation.
    fileParallelism: false,
    testTimeout: 120_000,
    hookTimeout: 60_000,
    teardownTimeout: 20_000,
  },
});
