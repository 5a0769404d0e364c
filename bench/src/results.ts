/**
 * The raw results of one benchmark run, as committed under `bench/results/`, and the parsers for
 * what the measured tools print. BENCHMARKS.md is generated from these files only, so the report
 * can be regenerated (`--report-only`) without measuring again.
 */

import type { QueueScenario } from './scenario-queue.js';
import { mkdir, readdir, readFile, rename, writeFile } from 'node:fs/promises';
import path from 'node:path';

/** Bumped when the layout changes; the report skips files of another version. */
export const RESULTS_SCHEMA = 1;

/** What `/usr/bin/time` and the bench's own clock say about one child process. */
export interface Measurement {
  /** Measured by the bench around the child (monotonic clock), not by `time`'s 10 ms `%e`. */
  readonly wallSeconds: number;
  readonly userSeconds: number;
  readonly sysSeconds: number;
  /** Peak resident set size of the process (`%M`). */
  readonly maxRssKiB: number;
  readonly exitCode: number | null;
  readonly signal: string | null;
}

/** One repetition of one tool in one configuration. */
export interface ToolRun {
  readonly tool: string;
  readonly repetition: number;
  readonly bytes: number;
  readonly measurement: Measurement;
  /** The output file's SHA-256 equals the object's. */
  readonly sha256Ok: boolean;
  readonly error?: string;
  /** What the tool itself reported (roboflow's `--json` line), kept for the record. */
  readonly reported?: Readonly<Record<string, unknown>>;
}

/** A tool as found on this machine. */
export interface ToolInfo {
  readonly id: string;
  readonly label: string;
  /** Absolute path of the executable, or what was looked for when it is missing. */
  readonly binary: string;
  readonly version: string | null;
  readonly available: boolean;
  /** Why it is missing or unusable. */
  readonly reason?: string;
  /** The command line, with `<url>` and `<dest>` for the parts that change per run. */
  readonly command: string;
}

export interface MachineInfo {
  readonly nproc: number;
  readonly memoryBytes: number;
  readonly cpuModel: string;
  readonly node: string;
  readonly kernel: string;
  readonly platform: string;
  /** Whether the bench could drop the page cache between runs (`/proc/sys/vm/drop_caches`). */
  readonly dropCaches: boolean;
  /**
   * Whether the kernel returns free memory to its host (free page reporting): freeing a run's
   * output hands ~0.6 GB back in waves over ~6 s, and the bench waits for them to end before the
   * next run (absent in results from before this was recorded).
   */
  readonly pageReporting?: boolean;
  /** File system the downloads were written to (`df` source and type). */
  readonly downloadDir: string;
  /** CPU seconds per GB for MD5 and SHA-256 in Node on one core: what verifying costs here. */
  readonly md5SecondsPerGB?: number;
  readonly sha256SecondsPerGB?: number;
}

/** An empty Node.js process (`node -e 0`) under GNU time: the floor under roboflow's figures. */
export interface BaselineRun {
  readonly wallSeconds: number;
  readonly cpuSeconds: number;
  readonly maxRssKiB: number;
}

/** 16 plain curls, each fetching 1/16 of the object to /dev/null at once: what the server alone
 * can deliver, the ceiling of every tool. */
export interface ServerAloneResult {
  readonly connections: number;
  readonly bytes: number;
  readonly runs: readonly { readonly wallSeconds: number; readonly cpuSeconds: number; readonly ok: boolean }[];
}

/**
 * `dd` writing the object's size of zeros in 32 KiB blocks into the download directory, then
 * `fdatasync`: how fast this disk takes bytes durably, the ceiling of every download that, like
 * roboflow's, returns only once its file is on disk.
 */
export interface DiskAloneResult {
  readonly bytes: number;
  readonly blockBytes: number;
  readonly runs: readonly { readonly wallSeconds: number; readonly cpuSeconds: number; readonly ok: boolean }[];
}

export interface DownloadCondition {
  readonly id: 'capped' | 'uncapped';
  /** Per-connection cap in bytes per second; null when uncapped. */
  readonly ratePerConnection: number | null;
  readonly latencyMs: number;
  readonly objectSize: number;
  /** Object size used by single-stream tools in this condition (smaller when capped). */
  readonly singleStreamObjectSize: number;
  readonly runs: readonly ToolRun[];
  readonly serverAlone?: ServerAloneResult;
  readonly diskAlone?: DiskAloneResult;
  /** Every tool on a tiny object: what one run costs before the first byte matters. */
  readonly startup?: { readonly objectSize: number; readonly runs: readonly ToolRun[] };
  /** Where the time of roboflow's runs goes, phase by phase (`phases.ts`). */
  readonly timelines?: readonly PhaseTimeline[];
}

/**
 * When each phase of one roboflow download began, in ms since its process started
 * (`phase-hook.ts`): Node.js booted and the hook loaded (`loaded`), the CLI loaded and the
 * object's stat returned (`stat`), the first and last write batches were on the file
 * (`firstBatch`, `lastBatch`), the download resolved after verification and rename (`done`),
 * the process exited (`exit`).
 */
export interface PhaseMarks {
  readonly loaded: number;
  readonly stat: number;
  readonly firstBatch: number;
  readonly lastBatch: number;
  readonly done: number;
  readonly exit: number;
}

/** The phases of a roboflow tool's runs in one condition: medians over the runs that completed. */
export interface PhaseTimeline {
  readonly tool: string;
  readonly bytes: number;
  readonly runs: number;
  readonly marks: PhaseMarks;
}

export interface DownloadScenario {
  readonly conditions: readonly DownloadCondition[];
}

export interface MemoryScenario {
  readonly connections: number;
  readonly chunkSize: number;
  readonly points: readonly { readonly size: number; readonly runs: readonly ToolRun[] }[];
}

export interface SweepScenario {
  readonly ratePerConnection: number;
  readonly latencyMs: number;
  readonly objectSize: number;
  readonly cells: readonly {
    readonly connections: number;
    readonly chunkSize: number;
    readonly runs: readonly ToolRun[];
  }[];
}

/** One prefetch case: sequential and prefetched runs of the same jobs. */
export interface PrefetchCase {
  readonly id: string;
  /** `D≈P`, `D<P`, `D>P`. */
  readonly relation: string;
  /** `cpu` (checksum of the input) or `wait` (sleeps, uses no CPU). */
  readonly processor: string;
  readonly jobs: number;
  readonly objectSize: number;
  readonly ratePerConnection: number;
  readonly connections: number;
  readonly runs: readonly PrefetchRun[];
}

export interface PrefetchRun {
  readonly repetition: number;
  /** Median download time of one job, measured alone (D). */
  readonly downloadSeconds: number;
  /** Median processing time of one job, measured alone (P). */
  readonly processSeconds: number;
  readonly sequentialSeconds: number;
  readonly prefetchSeconds: number;
  /** Share of the prefetched run the processor spent waiting for inputs. */
  readonly inputWaitShare: number;
  readonly ok: boolean;
  readonly error?: string;
}

/**
 * One slot sweep: the same jobs through workers with 0, 1, 2, 3 prefetch slots, under a
 * per-connection cap, optionally with a host-wide limit on range transfers.
 */
export interface SlotSweepCase {
  readonly id: string;
  /** `D≈P`, `D<P`, `D>P`. */
  readonly relation: string;
  /** The prefetching runs' host-wide limit (`maxHostConnections`); null = none. */
  readonly maxHostConnections: number | null;
  readonly jobs: number;
  readonly objectSize: number;
  readonly chunkSize: number;
  readonly ratePerConnection: number;
  readonly latencyMs: number;
  readonly connections: number;
  readonly runs: readonly SlotSweepRun[];
}

export interface SlotSweepRun {
  readonly repetition: number;
  readonly slots: number;
  readonly wallSeconds: number;
  /** From the worker's start until the first job was handed to the processor. */
  readonly firstReadySeconds: number;
  /** D and P of this repetition, measured alone in its 0-slot run. */
  readonly downloadSeconds: number;
  readonly processSeconds: number;
  /** D + (N−1)·max(D,P) + P of this repetition. */
  readonly boundSeconds: number;
  readonly ok: boolean;
  readonly error?: string;
}

export interface PrefetchScenario {
  readonly source: string;
  readonly cases: readonly PrefetchCase[];
  /** Wall time against the number of slots (absent in results from before it was measured). */
  readonly slotSweeps?: readonly SlotSweepCase[];
  readonly slotSweepSource?: string;
  /** Set when the scenario could not run; the report says why. */
  readonly skipped?: string;
}

/** One killed attempt of a resume trial. */
export interface KilledAttempt {
  /** Bytes the server sent to this attempt before the kill. */
  readonly sentBytes: number;
  /** Bytes the state file listed as durable before and after this attempt. */
  readonly durableBefore: number;
  readonly durableAfter: number;
}

export interface ResumeTrial {
  readonly repetition: number;
  readonly kills: number;
  readonly attempts: readonly KilledAttempt[];
  /** Everything the server sent for the object over all attempts, the final one included. */
  readonly bytesServed: number;
  /** Bytes the final, uninterrupted attempt found already on disk (roboflow's `resumedBytes`). */
  readonly resumedBytes: number | null;
  readonly sha256Ok: boolean;
  readonly error?: string;
}

export interface ResumeScenario {
  readonly objectSize: number;
  readonly ratePerConnection: number;
  readonly latencyMs: number;
  readonly configs: readonly {
    readonly connections: number;
    readonly chunkSize: number;
    readonly trials: readonly ResumeTrial[];
  }[];
}

/** A CPU profile of roboflow's download, reduced to where the time went. */
export interface ProfileSummary {
  readonly condition: string;
  readonly totalMs: number;
  readonly top: readonly { readonly name: string; readonly where: string; readonly selfMs: number; readonly share: number }[];
}

export interface BenchResults {
  readonly schema: typeof RESULTS_SCHEMA;
  readonly startedAt: string;
  readonly finishedAt: string;
  readonly quick: boolean;
  readonly repeat: number;
  /** How this run was started, e.g. `npm run bench -- --scenario download`. */
  readonly command: string;
  readonly machine: MachineInfo;
  readonly tools: readonly ToolInfo[];
  readonly scenarios: {
    readonly download?: DownloadScenario;
    readonly memory?: MemoryScenario;
    readonly sweep?: SweepScenario;
    readonly prefetch?: PrefetchScenario;
    readonly resume?: ResumeScenario;
    readonly queue?: QueueScenario;
  };
  readonly profiles?: readonly ProfileSummary[];
  readonly nodeBaseline?: readonly BaselineRun[];
  /** The git commit measured and how many files differed from it (`git status --porcelain`). */
  readonly revision?: { readonly commit: string; readonly dirtyFiles: number };
  /** 1, 5 and 15 minute load averages when the run started and ended: other work on the machine
   * makes every figure noisier, and this says how much there was. */
  readonly load?: { readonly atStart: readonly number[]; readonly atEnd: readonly number[] };
  /** Things a reader must know about this run (what was skipped, what could not be controlled). */
  readonly notes: readonly string[];
}

export type ScenarioName = keyof BenchResults['scenarios'];
export const SCENARIO_NAMES: readonly ScenarioName[] = ['download', 'memory', 'sweep', 'prefetch', 'resume', 'queue'];

// ---------------------------------------------------------------------------------------------
// Parsers of what the measured tools print
// ---------------------------------------------------------------------------------------------

/** The format given to `/usr/bin/time -f`: elapsed, user, system seconds and peak RSS in KiB. */
export const TIME_FORMAT = '%e %U %S %M';

export interface TimeOutput {
  readonly elapsedSeconds: number;
  readonly userSeconds: number;
  readonly sysSeconds: number;
  readonly maxRssKiB: number;
  /** From `Command exited with non-zero status N`; 0 when `time` reported no failure. */
  readonly exitCode: number | null;
  /** From `Command terminated by signal N`. */
  readonly signal: number | null;
}

/**
 * Parses what GNU time writes with `-o FILE -f '%e %U %S %M'`: the four numbers on the last line,
 * preceded by a status line when the command failed or was killed. Returns null when there is no
 * line of four numbers (the command could not be started).
 */
export function parseTimeOutput(text: string): TimeOutput | null {
  const lines = text.split(/\r?\n/).map((l) => l.trim()).filter((l) => l !== '');
  let exitCode: number | null = 0;
  let signal: number | null = null;
  let numbers: number[] | null = null;
  for (const line of lines) {
    const exited = /^Command exited with non-zero status (\d+)$/.exec(line);
    if (exited) {
      exitCode = Number(exited[1]);
      continue;
    }
    const killed = /^Command terminated by signal (\d+)$/.exec(line);
    if (killed) {
      signal = Number(killed[1]);
      exitCode = null;
      continue;
    }
    const m = /^(\d+(?:\.\d+)?) (\d+(?:\.\d+)?) (\d+(?:\.\d+)?) (\d+)$/.exec(line);
    if (m) numbers = [Number(m[1]), Number(m[2]), Number(m[3]), Number(m[4])];
  }
  if (numbers === null) return null;
  const [elapsedSeconds, userSeconds, sysSeconds, maxRssKiB] = numbers as [number, number, number, number];
  return { elapsedSeconds, userSeconds, sysSeconds, maxRssKiB, exitCode, signal };
}

/**
 * The last line of `stdout` that is a JSON object (roboflow's `--json` prints one; logs may come
 * before it). Null when there is none.
 */
export function parseLastJsonLine(stdout: string): Record<string, unknown> | null {
  const lines = stdout.split(/\r?\n/);
  for (let i = lines.length - 1; i >= 0; i--) {
    const line = lines[i]!.trim();
    if (!line.startsWith('{')) continue;
    try {
      const value: unknown = JSON.parse(line);
      if (value !== null && typeof value === 'object' && !Array.isArray(value)) return value as Record<string, unknown>;
    } catch {
      // A log line that happens to start with a brace: keep looking further up.
    }
  }
  return null;
}

/** The first line of a `--version` output that names a version, trimmed; null if none. */
export function parseVersionLine(output: string): string | null {
  for (const raw of output.split(/\r?\n/)) {
    const line = raw.trim();
    // curl and aws append every library they link; the first two words name the tool.
    if (/\d+\.\d+/.test(line)) return line.length > 60 ? line.split(/\s+/).slice(0, 2).join(' ') : line;
  }
  return null;
}

// ---------------------------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------------------------

/** `2025-11-26T02-10-00Z.json`: sortable, and valid on every file system. */
export function resultsFileName(startedAt: Date, quick: boolean): string {
  const stamp = startedAt.toISOString().replace(/\.\d+Z$/, 'Z').replace(/:/g, '-');
  return `${stamp}${quick ? '-quick' : ''}.json`;
}

/** Names `resultsFileName` produces. */
export const RESULTS_FILE_PATTERN = /^\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}Z(-quick)?\.json$/;

/** Writes atomically, so a report never reads half a file. Returns the path written. */
export async function saveResults(dir: string, results: BenchResults): Promise<string> {
  await mkdir(dir, { recursive: true });
  const file = path.join(dir, resultsFileName(new Date(results.startedAt), results.quick));
  const tmp = `${file}.tmp`;
  await writeFile(tmp, `${JSON.stringify(results, null, 2)}\n`);
  await rename(tmp, file);
  return file;
}

/** Checks the parts of a results file the report relies on; throws naming the file otherwise. */
export function parseResults(text: string, file: string): BenchResults {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new Error(`${file} is not JSON: ${(err as Error).message}`);
  }
  const v = value as Partial<BenchResults> | null;
  if (v === null || typeof v !== 'object') throw new Error(`${file} does not hold a results object`);
  if (v.schema !== RESULTS_SCHEMA) throw new Error(`${file} has results schema ${String(v.schema)}, expected ${RESULTS_SCHEMA}`);
  if (typeof v.startedAt !== 'string' || typeof v.machine !== 'object' || !Array.isArray(v.tools) || typeof v.scenarios !== 'object') {
    throw new Error(`${file} lacks startedAt, machine, tools or scenarios`);
  }
  return v as BenchResults;
}

/** Every results file in `dir`, oldest first; files of another schema are skipped with a warning. */
export async function loadAllResults(dir: string, warn: (msg: string) => void): Promise<{ file: string; results: BenchResults }[]> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch {
    return [];
  }
  const out: { file: string; results: BenchResults }[] = [];
  // Only files this bench wrote (other tools keep their own results beside them).
  for (const name of names.filter((n) => RESULTS_FILE_PATTERN.test(n)).sort()) {
    const file = path.join(dir, name);
    try {
      out.push({ file, results: parseResults(await readFile(file, 'utf8'), file) });
    } catch (err) {
      warn((err as Error).message);
    }
  }
  return out.sort((a, b) => a.results.startedAt.localeCompare(b.results.startedAt));
}

/**
 * For each scenario, the newest results that have it, preferring full runs over `--quick` ones:
 * BENCHMARKS.md always shows the best evidence there is, and says which run each part comes from.
 */
export function pickLatest(
  all: readonly { file: string; results: BenchResults }[],
): Partial<Record<ScenarioName, { file: string; results: BenchResults }>> {
  const picked: Partial<Record<ScenarioName, { file: string; results: BenchResults }>> = {};
  for (const name of SCENARIO_NAMES) {
    const having = all.filter((r) => r.results.scenarios[name] !== undefined);
    const full = having.filter((r) => !r.results.quick);
    const chosen = (full.length > 0 ? full : having).at(-1);
    if (chosen) picked[name] = chosen;
  }
  return picked;
}
