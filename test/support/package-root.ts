/**
 * The package root for the tools beside `src/` (bench, chaos, test support). They run from their
 * sources under vitest and from `build/` under the npm scripts, at different depths below the
 * root, so the root is found rather than counted: the nearest folder above that holds
 * `package.json`.
 */

import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** The nearest folder at or above the module `moduleUrl` (its `import.meta.url`) that holds
 * `package.json`. */
export function packageRoot(moduleUrl: string): string {
  let dir = path.dirname(fileURLToPath(moduleUrl));
  for (;;) {
    if (existsSync(path.join(dir, 'package.json'))) return dir;
    const up = path.dirname(dir);
    if (up === dir) throw new Error(`no package.json above ${fileURLToPath(moduleUrl)}`);
    dir = up;
  }
}

/** Where the tools' build (`npm run build:tools`) puts the scripts that are run as processes of
 * their own, relative to the package root. */
export const TOOL_SCRIPTS = {
  objectServer: 'build/test/support/object-server-main.js',
  phaseHook: 'build/bench/src/phase-hook.js',
  sdkGetObject: 'build/bench/src/sdk-getobject.js',
  chaosMain: 'build/chaos/main.js',
} as const;
