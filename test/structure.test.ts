/**
 * The dependency picture of src/: the library and the CLI import nothing from the tools beside
 * them (bench/, chaos/, test/), only src/cli/ knows commander, the library does not import the
 * CLI, and no module imports itself through others (no cycles of runtime imports; `import type`
 * is erased and does not count).
 *
 * Imports are read from the source text: every `import`/`export ... from '...'` and
 * `import('...')` with a relative specifier, resolved to its .ts file.
 */

import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';

const ROOT = path.resolve(import.meta.dirname, '..');
const SRC = path.join(ROOT, 'src');

interface ModuleImport {
  /** Package name, or for a relative specifier the resolved path from the package root. */
  readonly target: string;
  readonly relative: boolean;
  readonly typeOnly: boolean;
}

function sourceFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const full = path.join(dir, e.name);
    if (e.isDirectory()) return sourceFiles(full);
    return e.name.endsWith('.ts') ? [full] : [];
  });
}

const STATIC_RE = /^\s*(import|export)\s+(type\s+)?([^'";]*?)\s*from\s*['"]([^'"]+)['"]/gm;
const BARE_RE = /^\s*import\s+['"]([^'"]+)['"]/gm;
const DYNAMIC_RE = /\bimport\(\s*['"]([^'"]+)['"]\s*\)/g;

/** Every named binding is `type X`: the statement is erased like `import type`. */
function onlyTypes(clause: string): boolean {
  const braces = /^\{([\s\S]*)\}$/.exec(clause.trim());
  if (braces === null) return false;
  const names = (braces[1] ?? '').split(',').map((n) => n.trim()).filter((n) => n !== '');
  return names.length > 0 && names.every((n) => n.startsWith('type '));
}

function importsOf(file: string): ModuleImport[] {
  const text = readFileSync(file, 'utf8');
  const out: ModuleImport[] = [];
  const add = (spec: string, typeOnly: boolean): void => {
    const target = spec.startsWith('.') ? path.relative(ROOT, path.resolve(path.dirname(file), spec)).replace(/\.js$/, '.ts') : spec;
    out.push({ target, relative: spec.startsWith('.'), typeOnly });
  };
  for (const m of text.matchAll(STATIC_RE)) add(m[4] ?? '', m[2] !== undefined || onlyTypes(m[3] ?? ''));
  for (const m of text.matchAll(BARE_RE)) add(m[1] ?? '', false);
  for (const m of text.matchAll(DYNAMIC_RE)) add(m[1] ?? '', false);
  return out;
}

const FILES = sourceFiles(SRC).map((f) => path.relative(ROOT, f)).sort();
const GRAPH = new Map(FILES.map((f) => [f, importsOf(path.join(ROOT, f))]));

describe('the dependency picture of src/', () => {
  it('reads the imports it checks (this file would pass on an empty graph otherwise)', () => {
    expect(FILES.length).toBeGreaterThan(40);
    expect(GRAPH.get('src/index.ts')?.some((i) => i.target === 'src/worker.ts')).toBe(true);
    expect(GRAPH.get('src/cli/config-flags.ts')?.some((i) => i.target === 'commander')).toBe(true);
  });

  it('imports nothing from outside src/ but packages and Node built-ins, and every relative import is a file', () => {
    const outside: string[] = [];
    for (const [file, imports] of GRAPH) {
      for (const i of imports) {
        if (i.relative && !GRAPH.has(i.target)) outside.push(`${file} -> ${i.target}`);
      }
    }
    expect(outside).toEqual([]);
  });

  it('leaves commander to src/cli/: config.ts and the core import nothing from it', () => {
    const users = [...GRAPH].filter(([, imports]) => imports.some((i) => i.target === 'commander')).map(([f]) => f);
    expect(users.length).toBeGreaterThan(0);
    expect(users.filter((f) => !f.startsWith('src/cli/'))).toEqual([]);
  });

  it('keeps the library below the CLI: nothing outside src/cli/ imports from it', () => {
    const upward = [...GRAPH].flatMap(([file, imports]) =>
      file.startsWith('src/cli/') ? [] : imports.filter((i) => i.target.startsWith('src/cli/')).map((i) => `${file} -> ${i.target}`),
    );
    expect(upward).toEqual([]);
  });

  it('has no cycles of runtime imports', () => {
    const cycles: string[] = [];
    const state = new Map<string, 'visiting' | 'done'>();
    const stack: string[] = [];
    const visit = (file: string): void => {
      state.set(file, 'visiting');
      stack.push(file);
      for (const i of GRAPH.get(file) ?? []) {
        if (i.typeOnly || !GRAPH.has(i.target)) continue;
        const s = state.get(i.target);
        if (s === 'visiting') cycles.push([...stack.slice(stack.indexOf(i.target)), i.target].join(' -> '));
        else if (s === undefined) visit(i.target);
      }
      stack.pop();
      state.set(file, 'done');
    };
    for (const f of FILES) if (!state.has(f)) visit(f);
    expect(cycles).toEqual([]);
  });
});
