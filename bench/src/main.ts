#!/usr/bin/env node
/**
 * `npm run bench`: runs the scenarios, writes the raw results to bench/results/, then
 * regenerates BENCHMARKS.md and bench/*.svg from every results file there.
 *
 * Scenarios: `download` (roboflow against peers, capped and uncapped), `memory` (peak RSS against
 * object size), `sweep` (connections × chunk size under the cap), `prefetch` (prefetch against
 * sequential processing) and `resume` (bytes re-fetched after SIGKILL).
 */

import { setMaxListeners } from 'node:events';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { canDropCaches, machineInfo, pageReportedKiB } from './machine.js';
import { runCommand, runMeasured, TIME_BINARY } from './measure.js';
import { parseBenchArgs, planFor, USAGE, type BenchOptions } from './options.js';
import { allPlots, renderPlots } from './plots.js';
import { evaluateGoals, generateMarkdown, type Picked } from './report.js';
import type { BaselineRun, BenchResults, ProfileSummary, ScenarioName, ToolInfo } from './results.js';
import { loadAllResults, pickLatest, RESULTS_SCHEMA, saveResults } from './results.js';
import type { BenchContext } from './runner.js';
import { runDownloadScenario } from './scenario-download.js';
import { runMemoryScenario } from './scenario-memory.js';
import { runPrefetchScenario } from './scenario-prefetch.js';
import { queuePlan, runQueueScenario } from './scenario-queue.js';
import { runResumeScenario } from './scenario-resume.js';
import { runSweepScenario } from './scenario-sweep.js';
import { downloadTools, findExecutable, resolveTools } from './tools.js';
import { packageRoot, TOOL_SCRIPTS } from '../../test/support/package-root.js';

const ROOT = packageRoot(import.meta.url);
const RESULTS_DIR = path.join(ROOT, 'bench', 'results');
const PLOTS_DIR = path.join(ROOT, 'bench');
const REPORT_FILE = path.join(ROOT, 'BENCHMARKS.md');

function log(message: string): void {
  process.stdout.write(`${message}\n`);
}

/** Regenerates BENCHMARKS.md and the plots from every results file. */
async function writeReport(): Promise<Picked> {
  const all = await loadAllResults(RESULTS_DIR, (m) => log(`warning: ${m}`));
  const picked: Picked = {};
  for (const [name, entry] of Object.entries(pickLatest(all))) {
    if (entry) picked[name as ScenarioName] = { file: path.relative(ROOT, entry.file), results: entry.results };
  }
  const byScenario: Partial<Record<ScenarioName, BenchResults>> = {};
  for (const [name, entry] of Object.entries(picked)) if (entry) byScenario[name as ScenarioName] = entry.results;
  const specs = allPlots(byScenario);
  let plots: { file: string; title: string }[] = [];
  try {
    const written = await renderPlots(specs, PLOTS_DIR);
    plots = specs.filter((s) => written.includes(path.join(PLOTS_DIR, s.file))).map((s) => ({ file: `bench/${s.file}`, title: s.title }));
  } catch (err) {
    // vega is a development dependency: without it the report still has every table.
    log(`warning: plots not rendered (${(err as Error).message}); is vega installed (npm ci)?`);
  }
  await writeFile(REPORT_FILE, generateMarkdown({ picked, plots }));
  log(`wrote ${path.relative(process.cwd(), REPORT_FILE) || REPORT_FILE} and ${plots.length} plots`);
  return picked;
}

function printGoals(picked: Picked): void {
  log('\nGoals:');
  for (const g of evaluateGoals(picked)) {
    const mark = g.met === null ? 'n/a ' : g.met ? 'MET ' : 'MISS';
    log(`  [${mark}] ${g.description}\n         measured ${g.measured}; target ${g.target}`);
  }
}

/** The commit under measurement, read with plain git queries (nothing is changed). */
async function revision(): Promise<{ commit: string; dirtyFiles: number } | undefined> {
  const head = await runCommand('git', ['-C', ROOT, 'rev-parse', '--short', 'HEAD'], { timeoutMs: 10_000 });
  if (head.exitCode !== 0) return undefined;
  const status = await runCommand('git', ['-C', ROOT, 'status', '--porcelain'], { timeoutMs: 30_000 });
  return { commit: head.stdout.trim(), dirtyFiles: status.stdout.split('\n').filter((l) => l.trim() !== '').length };
}

async function nodeBaseline(ctx: BenchContext): Promise<BaselineRun[]> {
  const out: BaselineRun[] = [];
  for (let i = 0; i < ctx.repeat; i++) {
    const r = await runMeasured(process.execPath, ['-e', '0'], path.join(ctx.scratch, `baseline-${i}.txt`), { timeoutMs: 30_000 });
    out.push({ wallSeconds: r.measurement.wallSeconds, cpuSeconds: r.measurement.userSeconds + r.measurement.sysSeconds, maxRssKiB: r.measurement.maxRssKiB });
  }
  return out;
}

function missingBuild(): string[] {
  const need = [TOOL_SCRIPTS.objectServer, TOOL_SCRIPTS.sdkGetObject];
  return need.filter((f) => !existsSync(path.join(ROOT, f)));
}

async function measure(opts: BenchOptions): Promise<void> {
  const missing = missingBuild();
  if (missing.length > 0) throw new Error(`${missing.join(', ')} missing: run \`npm run build\` first (npm run bench does)`);
  if ((await findExecutable(TIME_BINARY)) === null) throw new Error(`${TIME_BINARY} (GNU time) is missing: run \`bash bench/setup\``);
  const plan = planFor(opts);
  const startedAt = new Date();
  await mkdir(opts.tmp, { recursive: true });
  const scratch = await mkdtemp(path.join(opts.tmp, 'roboflow-bench-'));
  const configDir = path.join(scratch, 'config');
  await mkdir(configDir);
  const abort = new AbortController();
  // Every child process of a run listens to this signal, and 16 curls run at once.
  setMaxListeners(64, abort.signal);
  const onSignal = (): void => {
    log('\ninterrupted: stopping after the current run and cleaning up');
    abort.abort();
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  const notes: string[] = [];
  const loadAtStart = os.loadavg();
  const dropCaches = opts.dropCaches && (await canDropCaches());
  const pageReporting = (await pageReportedKiB()) !== undefined;
  const ctx: BenchContext = {
    root: ROOT,
    scratch,
    configDir,
    repeat: opts.repeat,
    quick: opts.quick,
    dropCaches,
    pageReporting,
    signal: abort.signal,
    log,
    note: (m) => {
      if (!notes.includes(m)) notes.push(m);
      log(`note: ${m}`);
    },
  };
  if (opts.dropCaches && !dropCaches) ctx.note('The page cache could not be dropped between runs (no write access to /proc/sys/vm/drop_caches); runs were separated by `sync` only.');
  if (opts.quick) ctx.note('Quick run: smaller objects and one repetition; for a look while developing, not for conclusions.');
  const scenarios: { -readonly [K in ScenarioName]?: BenchResults['scenarios'][K] } = {};
  let tools: ToolInfo[] = [];
  let profiles: ProfileSummary[] = [];
  let baseline: BaselineRun[] = [];
  let rev: { commit: string; dirtyFiles: number } | undefined;
  try {
    log(`scratch directory: ${scratch}`);
    const machine = await machineInfo(scratch, dropCaches, pageReporting);
    log(`machine: ${machine.cpuModel}, ${machine.nproc} cores, Node ${machine.node}`);
    if (loadAtStart[0]! > 0.5 * machine.nproc) {
      ctx.note(
        `The machine was busy when the run started (load average ${loadAtStart.map((l) => l.toFixed(2)).join(', ')} on ${machine.nproc} cores): other processes competed for the CPU, so absolute figures are low and noisy; ratios between tools measured in turn are less affected.`,
      );
    }
    let specs = downloadTools();
    if (opts.tools) {
      const unknown = opts.tools.filter((t) => !specs.some((s) => s.id === t));
      if (unknown.length > 0) throw new Error(`--tools: unknown ${unknown.join(', ')} (known: ${specs.map((s) => s.id).join(', ')})`);
      specs = specs.filter((s) => opts.tools!.includes(s.id));
    }
    const resolved = await resolveTools(specs, ROOT, configDir, async (spec) =>
      spec.id.startsWith('roboflow') && !existsSync(path.join(ROOT, 'dist/bin/roboflow.js')) ? 'dist/bin/roboflow.js is missing (npm run build)' : null,
    );
    tools = resolved.infos;
    // Only the download scenario runs the peers; a run without it has nothing to say about them.
    if (opts.scenarios.includes('download')) {
      for (const t of tools.filter((x) => !x.available)) ctx.note(`${t.label} was not run: ${t.reason ?? 'not available'}.`);
    }
    for (const t of tools.filter((x) => x.available)) log(`tool ${t.id}: ${t.version ?? 'version unknown'}`);
    baseline = await nodeBaseline(ctx);
    rev = await revision();
    const curl = await findExecutable('curl');

    const run = async <K extends ScenarioName>(name: K, fn: () => Promise<NonNullable<BenchResults['scenarios'][K]>>): Promise<void> => {
      if (!opts.scenarios.includes(name) || abort.signal.aborted) return;
      const t0 = Date.now();
      log(`\n== ${name} ==`);
      try {
        scenarios[name] = await fn();
      } catch (err) {
        ctx.note(`Scenario ${name} failed: ${(err as Error).message}`);
      }
      log(`== ${name}: ${((Date.now() - t0) / 1000).toFixed(0)} s ==`);
    };
    await run('download', async () => {
      const r = await runDownloadScenario(ctx, resolved.resolved, curl, { ...plan.download, conditions: opts.conditions, profile: opts.profile });
      profiles = r.profiles;
      return r.scenario;
    });
    await run('memory', () => runMemoryScenario(ctx, plan.memory.sizes));
    await run('sweep', () => runSweepScenario(ctx, plan.sweep));
    await run('prefetch', () => runPrefetchScenario(ctx, plan.prefetch));
    await run('resume', () => runResumeScenario(ctx, { ...plan.resume, seed: opts.seed }));
    await run('queue', () => runQueueScenario(ctx, queuePlan(opts.quick)));

    const results: BenchResults = {
      schema: RESULTS_SCHEMA,
      startedAt: startedAt.toISOString(),
      finishedAt: new Date().toISOString(),
      quick: opts.quick,
      repeat: opts.repeat,
      command: `npm run bench${process.argv.length > 2 ? ` -- ${process.argv.slice(2).join(' ')}` : ''}`,
      machine,
      tools,
      scenarios,
      ...(profiles.length > 0 ? { profiles } : {}),
      nodeBaseline: baseline,
      ...(rev ? { revision: rev } : {}),
      load: { atStart: loadAtStart, atEnd: os.loadavg() },
      notes,
    };
    if (Object.keys(scenarios).length > 0) {
      const file = await saveResults(RESULTS_DIR, results);
      log(`\nwrote ${path.relative(process.cwd(), file)}`);
    } else {
      log('\nno scenario finished; no results written');
    }
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await rm(scratch, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  let opts: BenchOptions;
  try {
    opts = parseBenchArgs(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`bench: ${(err as Error).message}\n\n${USAGE}`);
    process.exitCode = 2;
    return;
  }
  if (opts.help) {
    process.stdout.write(USAGE);
    return;
  }
  const started = Date.now();
  if (!opts.reportOnly) await measure(opts);
  const picked = await writeReport();
  printGoals(picked);
  log(`\ntotal ${((Date.now() - started) / 1000).toFixed(0)} s`);
}

main().catch((err: unknown) => {
  process.stderr.write(`bench: ${(err as Error).message ?? String(err)}\n`);
  process.exitCode = 1;
});
