/**
 * The package's surface is a decision, not whatever `src/index.ts` happens to re-export: these
 * are its values, each one documented in the README's "Use as a library" section. Internals stay
 * importable from their own modules (tests do so) without becoming part of the package.
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import * as api from '../src/index.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

/** Every value the package exports. Adding one means documenting it in the README too. */
const PUBLIC = [
  // Objects
  'ParallelDownloader',
  'StorageClients',
  'openSource',
  'uploadFile',
  'uploadDirectory',
  // Jobs
  'openQueue',
  'queryTimeoutFor',
  'SUCCESS_MARKER',
  'SqliteJobQueue',
  'PostgresJobQueue',
  'PrefetchQueue',
  'Worker',
  'getProcessor',
  'processorNames',
  // Errors
  'RoboflowError',
  'RETRY_TABLE',
  'isRoboflowError',
  'isJobRetryable',
  'toRoboflowError',
  // Configuration
  'loadConfig',
  'prefetchConfigFrom',
  'storageOptionsFrom',
  'policyFromConfig',
  'compilePolicy',
  'DEFAULTS',
  // Observing
  'channels',
  'Metrics',
  'METRICS',
  'createLogger',
];

/** The README section that documents the library, up to the next top-level heading. */
function librarySection(): string {
  const readme = readFileSync(path.join(ROOT, 'README.md'), 'utf8');
  const start = readme.indexOf('\n## Use as a library\n');
  expect(start).toBeGreaterThan(0);
  const end = readme.indexOf('\n## ', start + 1);
  return readme.slice(start, end === -1 ? undefined : end);
}

function sourceFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true, recursive: true })
    .filter((e) => e.isFile() && /\.(ts|mts|mjs|js)$/.test(e.name))
    .map((e) => path.join(e.parentPath, e.name));
}

describe('the public API', () => {
  it('exports exactly the documented values', () => {
    expect(Object.keys(api).sort()).toEqual([...PUBLIC].sort());
  });

  it('keeps the internals out', () => {
    for (const internal of ['ConcurrencyLimiter', 'ByteBudget', 'partialPaths', 'removePartial', 'backoffDelay', 'parseObjectUrl', 'Http1Pool']) {
      expect(Object.keys(api), internal).not.toContain(internal);
    }
  });

  it('names every export in the README section "Use as a library"', () => {
    const section = librarySection();
    const missing = PUBLIC.filter((name) => !section.includes(`\`${name}\``));
    expect(missing).toEqual([]);
  });

  it('is not what the code inside imports: src/, the tests and the tools use the modules themselves', () => {
    // Importing the entry point from inside makes cycles and lets internals lean on the surface.
    // This file is the one exception: it is the test of the surface.
    const entry = path.join(ROOT, 'src/index.ts');
    const self = fileURLToPath(import.meta.url);
    const offenders: string[] = [];
    const dirs = ['src', 'test', 'bench', 'chaos', 'scripts'].map((d) => path.join(ROOT, d)).filter((d) => existsSync(d));
    for (const file of dirs.flatMap(sourceFiles)) {
      if (file === self) continue;
      const text = readFileSync(file, 'utf8');
      for (const m of text.matchAll(/\bfrom\s+'(\.[^']*)'|\bimport\(\s*'(\.[^']*)'\s*\)/g)) {
        const spec = m[1] ?? m[2] ?? '';
        const target = path.resolve(path.dirname(file), spec).replace(/\.js$/, '.ts');
        if (target === entry) offenders.push(path.relative(ROOT, file));
      }
    }
    expect(offenders).toEqual([]);
  });
});
