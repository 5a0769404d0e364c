/**
 * The README's TypeScript examples compile against the package, as its reference tables are
 * checked against the code (docs.readme.test.ts). Every ```ts block is one module, type-checked
 * with the project's compiler options and `roboflow-distributed` resolved to `src/index.ts`, the
 * file the package's types entry (`dist/index.d.ts`) is compiled from. An example that imports a
 * name the package does not export, or calls an API the way it cannot be called, fails here with
 * the README line it is on. A deliberately broken example is checked in the same program, so the
 * check is seen to fail where it should.
 */
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { beforeAll, describe, expect, it } from 'vitest';

const README = new URL('../README.md', import.meta.url);
const CHECKER = fileURLToPath(new URL('./fixtures/typecheck.mjs', import.meta.url));
const PACKAGE = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as {
  name: string;
  exports: Record<string, { types?: string }>;
};
const BUILD = JSON.parse(readFileSync(new URL('../tsconfig.build.json', import.meta.url), 'utf8')) as {
  compilerOptions: { rootDir?: string; outDir?: string };
};

interface Example {
  /** README line of the block's first code line. */
  readonly line: number;
  readonly code: string;
}

interface Problem {
  readonly name: string;
  /** 1-based, within the checked file. */
  readonly line: number;
  readonly code: number;
  readonly text: string;
}

/** The ```ts (or ```typescript) blocks of a Markdown text, in order. */
function typeScriptBlocks(markdown: string): Example[] {
  const lines = markdown.split('\n');
  const out: Example[] = [];
  for (let i = 0; i < lines.length; i++) {
    if (!/^```(ts|typescript)\s*$/.test(lines[i] ?? '')) continue;
    const start = i + 1;
    let end = start;
    while (end < lines.length && !/^```\s*$/.test(lines[end] ?? '')) end++;
    out.push({ line: start + 1, code: lines.slice(start, end).join('\n') });
    i = end;
  }
  return out;
}

/** Runs the type checker (test/fixtures/typecheck.mjs) over `files` in one program. */
function typeCheck(files: readonly { name: string; code: string }[]): Promise<Problem[]> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CHECKER], { stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
    child.on('error', reject);
    child.on('close', (code) => {
      if (code !== 0) reject(new Error(`the type checker exited with ${code}: ${err}`));
      else resolve(JSON.parse(out) as Problem[]);
    });
    child.stdin.end(JSON.stringify({ files }));
  });
}

/** Uses an option of the wrong type, a result field that does not exist, and an internal. */
const BROKEN = [
  "import { ParallelDownloader } from 'roboflow-distributed';",
  "const downloader = new ParallelDownloader({ connections: '16' });",
  "const result = await downloader.download('s3://bucket/key', './key');",
  'console.log(result.megabytes);',
  "import { ByteBudget } from 'roboflow-distributed';",
  'console.log(ByteBudget);',
].join('\n');

describe('README TypeScript examples', () => {
  const examples = typeScriptBlocks(readFileSync(README, 'utf8'));
  const name = (i: number) => `readme-example-${i + 1}.ts`;
  let problems: Problem[] = [];

  beforeAll(async () => {
    problems = await typeCheck([...examples.map((e, i) => ({ name: name(i), code: e.code })), { name: 'broken-example.ts', code: BROKEN }]);
  }, 180_000);

  it('import from the package by its name; its types are compiled from src/index.ts', () => {
    expect(examples.length).toBeGreaterThanOrEqual(4);
    for (const e of examples) expect(e.code, `README.md:${e.line}`).toContain(`from '${PACKAGE.name}'`);
    expect(PACKAGE.exports['.']?.types).toBe('./dist/index.d.ts');
    expect(BUILD.compilerOptions).toMatchObject({ rootDir: 'src', outDir: 'dist' });
  });

  it('compile against the package', () => {
    const inReadme = examples.flatMap((e, i) =>
      problems.filter((p) => p.name === name(i)).map((p) => `README.md:${e.line + p.line - 1}: TS${p.code}: ${p.text}`),
    );
    expect(inReadme).toEqual([]);
  });

  it('would fail on an example that misuses the API', () => {
    const broken = problems.filter((p) => p.name === 'broken-example.ts').map((p) => `${p.line}: TS${p.code}`);
    expect(broken).toEqual(expect.arrayContaining(['2: TS2322', '4: TS2339', '5: TS2305']));
  });
});
