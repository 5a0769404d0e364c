#!/usr/bin/env node
/**
 * `npm run chaos` (`node build/chaos/main.js [--seed N] [--only name[,name]] [--short]`): runs the
 * chaos scenarios one after another, prints a Markdown table (scenario, runs, faults injected,
 * jobs completed, jobs dead, bytes re-fetched, outcome) and writes every report, checks included,
 * to `bench/results/chaos.json`. Progress goes to stderr, the table to stdout. Exits 1 when a
 * scenario failed, 2 on a usage error.
 *
 * Without `--seed` the seed is random and printed; running again with it repeats the fault
 * schedule.
 */

import { mkdir, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { failureLines, markdownTable, SCENARIOS, scenarioNames } from './index.js';
import type { ScenarioReport } from './report.js';
import { randomSeed } from './seed.js';
import { packageRoot } from '../test/support/package-root.js';

const ROOT = packageRoot(import.meta.url);
const RESULTS_FILE = path.join(ROOT, 'bench', 'results', 'chaos.json');

const USAGE = `usage: node build/chaos/main.js [--seed N] [--only name[,name...]] [--short]

  --seed N     seed of every random choice (default: random, printed)
  --only names run only these scenarios (repeatable or comma-separated)
  --short      the short forms (a few seconds each, as npm test runs them)

scenarios:
${SCENARIOS.map((s) => `  ${s.name.padEnd(12)} ${s.description}`).join('\n')}
`;

interface Args {
  readonly seed: number;
  readonly only: readonly string[];
  readonly short: boolean;
}

class UsageError extends Error {}

function parseArgs(argv: readonly string[]): Args | 'help' {
  let seed: number | undefined;
  const only: string[] = [];
  let short = false;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] as string;
    const [flag, inline] = arg.startsWith('--') && arg.includes('=') ? [arg.slice(0, arg.indexOf('=')), arg.slice(arg.indexOf('=') + 1)] : [arg, undefined];
    const value = (): string => {
      const v = inline ?? argv[++i];
      if (v === undefined) throw new UsageError(`${flag} needs a value`);
      return v;
    };
    switch (flag) {
      case '--seed': {
        const v = value();
        if (!/^\d{1,10}$/.test(v) || Number(v) > 0xffffffff) throw new UsageError(`--seed must be a whole number from 0 to ${0xffffffff}, got ${JSON.stringify(v)}`);
        seed = Number(v);
        break;
      }
      case '--only':
        for (const name of value().split(',')) {
          const n = name.trim();
          if (n === '') continue;
          if (!scenarioNames().includes(n)) throw new UsageError(`unknown scenario ${JSON.stringify(n)}; known: ${scenarioNames().join(', ')}`);
          only.push(n);
        }
        break;
      case '--short':
        short = true;
        break;
      case '--help':
      case '-h':
        return 'help';
      default:
        throw new UsageError(`unknown argument ${JSON.stringify(arg)}`);
    }
  }
  return { seed: seed ?? randomSeed(), only, short };
}

async function main(argv: readonly string[]): Promise<number> {
  let args: Args | 'help';
  try {
    args = parseArgs(argv);
  } catch (err) {
    if (!(err instanceof UsageError)) throw err;
    process.stderr.write(`chaos: ${err.message}\n\n${USAGE}`);
    return 2;
  }
  if (args === 'help') {
    process.stdout.write(USAGE);
    return 0;
  }
  const { seed, short, only } = args;
  const chosen = SCENARIOS.filter((s) => only.length === 0 || only.includes(s.name));
  const log = (m: string) => process.stderr.write(`${new Date().toISOString().slice(11, 23)} ${m}\n`);
  log(`chaos: seed ${seed}, ${short ? 'short' : 'full'} forms of ${chosen.map((s) => s.name).join(', ')}`);
  const startedAt = new Date();
  const reports: ScenarioReport[] = [];
  for (const s of chosen) {
    reports.push(await s.run({ seed, short, log }));
  }
  const table = markdownTable(reports);
  process.stdout.write(`\nChaos run, seed ${seed} (${short ? 'short' : 'full'} forms):\n\n${table}\n`);
  const failures = failureLines(reports);
  if (failures.length > 0) process.stdout.write(`\nFailed checks:\n${failures.map((f) => `- ${f}`).join('\n')}\n`);
  await mkdir(path.dirname(RESULTS_FILE), { recursive: true });
  await writeFile(
    RESULTS_FILE,
    `${JSON.stringify(
      {
        schema: 1,
        startedAt: startedAt.toISOString(),
        seed,
        short,
        repeat: `node build/chaos/main.js --seed ${seed}${short ? ' --short' : ''}${only.length > 0 ? ` --only ${only.join(',')}` : ''}`,
        machine: { node: process.version, cpus: os.cpus().length, loadAverage: os.loadavg().map((l) => Math.round(l * 100) / 100) },
        table,
        reports,
      },
      null,
      2,
    )}\n`,
  );
  log(`wrote ${path.relative(process.cwd(), RESULTS_FILE) || RESULTS_FILE}`);
  return reports.some((r) => r.outcome === 'fail') ? 1 : 0;
}

// The AWS SDK warns on every start that its releases after January 2027 need Node 22; the
// version used here is pinned, and the warning would sit in the middle of the progress lines.
process.env['AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED'] ??= 'true';
main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    process.stderr.write(`chaos: ${(err as Error).stack ?? String(err)}\n`);
    process.exitCode = 1;
  },
);
