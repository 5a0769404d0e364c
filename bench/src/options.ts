/**
 * Flags of `npm run bench -- ...` and the plan they lead to: which scenarios run, with which
 * object sizes, connections and repetitions. Pure, so the plan of a full run and of `--quick`
 * can be checked without running either.
 */

import { tmpdir } from 'node:os';
import { parseArgs } from 'node:util';
import { parseSize } from '../../src/units.js';
import type { ScenarioName } from './results.js';
import { SCENARIO_NAMES } from './results.js';

const MiB = 2 ** 20;
const GiB = 2 ** 30;

export const USAGE = `usage: npm run bench -- [options]

Runs roboflow and its peers side by side and writes bench/results/<date>.json, BENCHMARKS.md
and bench/*.svg. Peers are installed only by \`bash bench/setup\`; missing ones are reported.

  --scenario LIST    download,memory,sweep,prefetch,resume,queue (default: all); repeatable
  --condition LIST   capped,uncapped for the download scenario (default: both)
  --tools LIST       only these tools in the download scenario (ids: roboflow,
                     roboflow-no-checksum, roboflow-process, roboflow-1,
                     sdk-getobject, curl, axel, aria2c, rclone, rclone-ignore-checksum,
                     rclone-ignore-checksum-sync, aws-s3-cp)
  --size SIZE        object size for download, sweep and resume (default 1GiB; sweep 512MiB)
  --memory-sizes L   object sizes of the memory scenario (default 256MiB,1GiB,4GiB)
  --repeat N         repetitions per configuration; medians are reported (default 3)
  --quick            smaller objects and 1 repetition, for a fast look (not representative)
  --no-profile       skip the extra roboflow download per condition under node --cpu-prof
                     whose summary (where its CPU time went) goes into the report
  --tmp DIR          where downloads are written (default: the OS temp directory)
  --drop-caches      drop the page cache after every run (root only), so every program
                     starts cold, read from disk; by default only the output goes (deleting
                     it drops its pages) and programs start warm, as in a pipeline
  --seed N           seed of the random kill points of the resume scenario (default 1)
  --report-only      measure nothing; regenerate BENCHMARKS.md and plots from bench/results
  -h, --help         this text
`;

export interface BenchOptions {
  readonly scenarios: readonly ScenarioName[];
  readonly conditions: readonly ('capped' | 'uncapped')[];
  readonly tools: readonly string[] | null;
  readonly size: number | null;
  readonly memorySizes: readonly number[] | null;
  readonly repeat: number;
  readonly quick: boolean;
  readonly profile: boolean;
  readonly tmp: string;
  readonly seed: number;
  readonly reportOnly: boolean;
  readonly dropCaches: boolean;
  readonly help: boolean;
}

function list(values: readonly string[] | undefined): string[] {
  return (values ?? []).flatMap((v) => v.split(',')).map((v) => v.trim()).filter((v) => v !== '');
}

/** Parses the bench's flags; throws an Error naming the flag on a bad value. */
export function parseBenchArgs(argv: readonly string[]): BenchOptions {
  const { values } = parseArgs({
    args: [...argv],
    options: {
      scenario: { type: 'string', multiple: true },
      condition: { type: 'string', multiple: true },
      tools: { type: 'string', multiple: true },
      size: { type: 'string' },
      'memory-sizes': { type: 'string' },
      repeat: { type: 'string' },
      quick: { type: 'boolean', default: false },
      'no-profile': { type: 'boolean', default: false },
      tmp: { type: 'string' },
      seed: { type: 'string' },
      'report-only': { type: 'boolean', default: false },
      'drop-caches': { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
    allowPositionals: false,
  });
  const scenarios = list(values.scenario);
  for (const s of scenarios) {
    if (!SCENARIO_NAMES.includes(s as ScenarioName)) throw new Error(`--scenario ${s}: expected one of ${SCENARIO_NAMES.join(', ')}`);
  }
  const conditions = list(values.condition);
  for (const c of conditions) if (c !== 'capped' && c !== 'uncapped') throw new Error(`--condition ${c}: expected capped or uncapped`);
  const quick = values.quick ?? false;
  let repeat = quick ? 1 : 3;
  if (values.repeat !== undefined) {
    repeat = Number(values.repeat);
    if (!Number.isInteger(repeat) || repeat < 1 || repeat > 50) throw new Error(`--repeat ${values.repeat}: expected a whole number from 1 to 50`);
  }
  const seed = values.seed === undefined ? 1 : Number(values.seed);
  if (!Number.isSafeInteger(seed)) throw new Error(`--seed ${values.seed}: expected an integer`);
  const size = values.size === undefined ? null : parseSize(values.size, '--size');
  if (size !== null && size < MiB) throw new Error('--size must be at least 1MiB');
  const memorySizes = values['memory-sizes'] === undefined ? null : list([values['memory-sizes']]).map((s) => parseSize(s, '--memory-sizes'));
  const tools = values.tools === undefined ? null : list(values.tools);
  return {
    scenarios: scenarios.length > 0 ? (scenarios as ScenarioName[]) : [...SCENARIO_NAMES],
    conditions: conditions.length > 0 ? (conditions as ('capped' | 'uncapped')[]) : ['capped', 'uncapped'],
    tools,
    size,
    memorySizes,
    repeat,
    quick,
    profile: !(values['no-profile'] ?? false),
    tmp: values.tmp ?? tmpdir(),
    seed,
    reportOnly: values['report-only'] ?? false,
    dropCaches: values['drop-caches'] ?? false,
    help: values.help ?? false,
  };
}

/** Per-connection cap and first-byte latency of the capped conditions (S3-like). */
export const CAP_BYTES_PER_SEC = 25e6;
export const CAP_LATENCY_MS = 20;

export interface BenchPlan {
  readonly download: { objectSize: number; singleStreamSize: number; ratePerConnection: number; latencyMs: number };
  readonly memory: { sizes: readonly number[] };
  readonly sweep: { objectSize: number; ratePerConnection: number; latencyMs: number; connections: readonly number[]; chunkMiB: readonly number[] };
  readonly prefetch: {
    jobs: number;
    objectSize: number;
    connections: number;
    ratePerConnection: number;
    latencyMs: number;
    /** The slot sweep: 0–3 slots under a low per-connection cap, where slots taking turns shows. */
    slotSweep: { jobs: number; objectSize: number; chunkSize: number; connections: number; ratePerConnection: number; latencyMs: number; slots: readonly number[] };
  };
  readonly resume: {
    objectSize: number;
    ratePerConnection: number;
    latencyMs: number;
    connections: readonly number[];
    chunkMiB: readonly number[];
    kills: number;
  };
}

/**
 * Sizes of a full run fit ~30 minutes on 2 cores: single-stream tools get a 256 MiB object under
 * the cap (a capped connection moves 1 GiB in 43 s), the sweep uses 512 MiB so its
 * 1-connection cells take ~20 s each.
 */
export function planFor(opts: BenchOptions): BenchPlan {
  const q = opts.quick;
  const size = opts.size;
  const downloadSize = size ?? (q ? 256 * MiB : GiB);
  return {
    download: {
      objectSize: downloadSize,
      singleStreamSize: Math.min(downloadSize, q ? 64 * MiB : 256 * MiB),
      ratePerConnection: CAP_BYTES_PER_SEC,
      latencyMs: CAP_LATENCY_MS,
    },
    memory: { sizes: opts.memorySizes ?? (q ? [64 * MiB, 256 * MiB, GiB] : [256 * MiB, GiB, 4 * GiB]) },
    sweep: {
      objectSize: size ?? (q ? 128 * MiB : 512 * MiB),
      ratePerConnection: CAP_BYTES_PER_SEC,
      latencyMs: CAP_LATENCY_MS,
      connections: [1, 4, 8, 16, 32],
      chunkMiB: [4, 8, 16],
    },
    // 4 connections × 25 MB/s and 32 MiB (four 8 MiB chunks, one per lane): D ≈ 0.4 s, so the
    // six cases × two runs of 8 jobs take about a minute per repetition.
    prefetch: {
      jobs: 8,
      objectSize: q ? 16 * MiB : 32 * MiB,
      connections: 4,
      ratePerConnection: CAP_BYTES_PER_SEC,
      latencyMs: CAP_LATENCY_MS,
      // The setting, smaller: 4 connections at 4 MB/s each and 4 MiB chunks, so a
      // download is bound by the per-connection cap (D ≈ 1 s for 16 MiB), not by this machine's
      // CPU, and two slots that shared one download's connections would take twice as long.
      slotSweep: { jobs: 6, objectSize: q ? 8 * MiB : 16 * MiB, chunkSize: 2 * MiB, connections: 4, ratePerConnection: 4e6, latencyMs: CAP_LATENCY_MS, slots: [0, 1, 2, 3] },
    },
    resume: {
      objectSize: size ?? (q ? 256 * MiB : GiB),
      ratePerConnection: CAP_BYTES_PER_SEC,
      latencyMs: CAP_LATENCY_MS,
      connections: [4, 16],
      chunkMiB: [4, 8, 16],
      kills: q ? 2 : 3,
    },
  };
}
