/**
 * What every chaos scenario shares: the run frame (`runScenario`: time bound, cleanup, checks,
 * report), temp directories, a log captured in memory, observers of the diagnostics channels,
 * and the final verdict on the job queue (`verifyJobs`): every job done exactly once in effect
 * with the bytes of one whole object version, or dead with its error.
 */

import { mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { pathToFileURL } from 'node:url';
import { channels } from '../src/diagnostics.js';
import { abortError, type ErrorCode, RoboflowError, toRoboflowError } from '../src/errors.js';
import { openQueue } from '../src/jobs/index.js';
import { createLogger, type Logger } from '../src/log.js';
import { CHECKSUM_FILE, runChecksum, type ChecksumResult } from '../src/processors/index.js';
import { ObjectServer, type ObjectServerOptions } from '../test/support/object-server.js';
import type { FailOptions, JobQueue, JobRecord, JobSpec, JobStatus, Processor, SubmitOptions, SubmitOutcome } from '../src/types.js';
import type { Worker, WorkerSettings, WorkerSummary } from '../src/worker.js';
import { Checks, SkipScenario, type ScenarioOptions, type ScenarioReport } from './report.js';
import { deriveSeed, Rng } from './seed.js';

export const KiB = 1024;
export const MiB = 1024 * KiB;

/** Hard bounds of one scenario; the targets are ~30 s (short) and 3 min (full). */
const TIME_BOUND_MS = { short: 150_000, full: 300_000 } as const;

// ---------------------------------------------------------------------------------------------
// Cleanup
// ---------------------------------------------------------------------------------------------

/** Undo steps, run in reverse order; a failing step does not stop the ones after it. */
export class Cleanup {
  readonly #steps: { readonly what: string; readonly fn: () => unknown }[] = [];

  defer(what: string, fn: () => unknown): void {
    this.#steps.push({ what, fn });
  }

  /** Runs every step once; returns what went wrong, one line per failed step. */
  async run(): Promise<string[]> {
    const problems: string[] = [];
    while (this.#steps.length > 0) {
      const step = this.#steps.pop();
      if (!step) break;
      try {
        await step.fn();
      } catch (err) {
        problems.push(`${step.what}: ${(err as Error).message}`);
      }
    }
    return problems;
  }
}

// ---------------------------------------------------------------------------------------------
// The run frame
// ---------------------------------------------------------------------------------------------

/** Counters a scenario fills in as it goes, so a run that breaks off still reports them. */
export interface Counts {
  runs: number;
  faultsInjected: number;
  jobsCompleted: number;
  jobsDead: number;
  bytesRefetched: number;
}

export class ScenarioContext {
  readonly name: string;
  readonly seed: number;
  readonly short: boolean;
  readonly rng: Rng;
  readonly checks = new Checks();
  readonly cleanup = new Cleanup();
  readonly counts: Counts = { runs: 0, faultsInjected: 0, jobsCompleted: 0, jobsDead: 0, bytesRefetched: 0 };
  readonly details: Record<string, unknown> = {};
  /** Aborted when the scenario's time bound has passed; long waits listen to it. */
  readonly deadline: AbortSignal;
  readonly #log: ScenarioOptions['log'];

  constructor(name: string, opts: ScenarioOptions, deadline: AbortSignal) {
    this.name = name;
    this.seed = opts.seed;
    this.short = opts.short;
    this.rng = new Rng(deriveSeed(opts.seed, name));
    this.deadline = deadline;
    this.#log = opts.log;
  }

  log(message: string): void {
    this.#log(`[${this.name}] ${message}`);
  }

  /** A fresh temp directory, removed when the scenario ends. */
  async tempDir(label: string): Promise<string> {
    const dir = await mkdtemp(path.join(os.tmpdir(), `roboflow-chaos-${this.name}-${label}-`));
    this.cleanup.defer(`remove ${dir}`, () => rm(dir, { recursive: true, force: true }));
    return dir;
  }

  /** Waits `ms`, or less when the time bound passes (then throws `ERR_ABORTED`). */
  async pause(ms: number): Promise<void> {
    try {
      await sleep(ms, undefined, { signal: this.deadline });
    } catch {
      throw abortError(this.deadline, `scenario ${this.name}`);
    }
  }

  /**
   * Polls `condition` every `everyMs` until it holds. Throws `ERR_TIMEOUT` naming `what` when the
   * time bound passes, `ERR_ABORTED` when `signal` aborts.
   */
  async waitFor(what: string, condition: () => boolean | Promise<boolean>, everyMs = 10, signal?: AbortSignal): Promise<void> {
    while (!(await condition())) {
      if (this.deadline.aborted) throw new RoboflowError('ERR_TIMEOUT', `scenario ${this.name}: gave up waiting for ${what}`);
      if (signal?.aborted) throw abortError(signal, `waiting for ${what}`);
      await sleep(everyMs);
    }
  }
}

/**
 * Runs a scenario body inside the frame: a time bound (the body's waits end when it passes),
 * cleanup in reverse order whatever happens, and a report whose outcome is `pass` only when every
 * check held, the body ran to its end and everything was cleaned up.
 */
export async function runScenario(
  name: string,
  opts: ScenarioOptions,
  body: (ctx: ScenarioContext) => Promise<void>,
): Promise<ScenarioReport> {
  const started = performance.now();
  const boundMs = opts.short ? TIME_BOUND_MS.short : TIME_BOUND_MS.full;
  const timer = new AbortController();
  const boundTimer = setTimeout(
    () => timer.abort(new RoboflowError('ERR_TIMEOUT', `scenario ${name} exceeded its time bound of ${boundMs / 1000} s`)),
    boundMs,
  );
  const ctx = new ScenarioContext(name, opts, timer.signal);
  ctx.log(`seed ${opts.seed} (${opts.short ? 'short' : 'full'} form)`);
  let skipReason: string | undefined;
  try {
    await body(ctx);
  } catch (err) {
    if (err instanceof SkipScenario) {
      skipReason = err.message;
      ctx.log(`skipped: ${err.message}`);
    } else {
      const e = toRoboflowError(err);
      ctx.checks.check('the scenario ran to its end', false, `${e.code}: ${e.message}`);
      ctx.log(`broke off: ${e.code}: ${e.message}`);
    }
  } finally {
    clearTimeout(boundTimer);
    const problems = await ctx.cleanup.run();
    ctx.checks.check('everything it started was cleaned up', problems.length === 0, problems.length === 0 ? 'all cleanup steps succeeded' : problems.join('; '));
  }
  const seconds = Math.round((performance.now() - started) / 100) / 10;
  ctx.checks.check('it finished within its time bound', !timer.signal.aborted, `${seconds} s of at most ${boundMs / 1000} s`);
  const failed = ctx.checks.failures.length > 0;
  const outcome = skipReason !== undefined && !failed ? 'skip' : failed ? 'fail' : 'pass';
  ctx.log(`${outcome} in ${seconds} s`);
  return {
    name,
    seed: opts.seed,
    short: opts.short,
    ...ctx.counts,
    outcome,
    seconds,
    details: { ...ctx.details, checks: ctx.checks.list, ...(skipReason !== undefined ? { skipReason } : {}) },
  };
}

// ---------------------------------------------------------------------------------------------
// Logs
// ---------------------------------------------------------------------------------------------

export interface LogLine {
  readonly level: string;
  readonly msg: string;
  /** ms since the epoch. */
  readonly time: number;
  readonly fields: Record<string, unknown>;
}

/** A project logger (redaction included) whose JSON lines are kept in memory. */
export function capturedLogger(level: 'debug' | 'info' = 'debug'): { logger: Logger; lines: LogLine[] } {
  const lines: LogLine[] = [];
  const sink = new Writable({
    write(chunk: Buffer | string, _enc, done) {
      for (const text of String(chunk).split('\n')) {
        if (text.trim() === '') continue;
        try {
          const o = JSON.parse(text) as Record<string, unknown>;
          lines.push({ level: String(o['level']), msg: String(o['msg'] ?? ''), time: Date.parse(String(o['time'])) || Date.now(), fields: o });
        } catch {
          lines.push({ level: 'unparsed', msg: text, time: Date.now(), fields: {} });
        }
      }
      done();
    },
  });
  return { logger: createLogger({ level, pretty: false, destination: sink }), lines };
}

// ---------------------------------------------------------------------------------------------
// Observing the library
// ---------------------------------------------------------------------------------------------

/** What the diagnostics channels told about one run, per job and per URL. */
export class ChannelObserver {
  /** Prefetch failures: job id → error codes, in order. */
  readonly prefetchErrors = new Map<string, ErrorCode[]>();
  /** Download passes started: URL → resumed bytes of each pass (a restart is a second pass). */
  readonly downloadStarts = new Map<string, number[]>();
  /** Job outcomes reported by workers: job id → outcomes. */
  readonly outcomes = new Map<string, string[]>();
  /** Range retries by error code. */
  readonly retries = new Map<ErrorCode, number>();
  readonly #unsubscribe: (() => void)[] = [];

  constructor() {
    this.#unsubscribe.push(
      channels.prefetchError.subscribe((e) => push(this.prefetchErrors, e.jobId, e.code)),
      channels.downloadStart.subscribe((e) => push(this.downloadStarts, e.url, e.resumedBytes)),
      channels.jobFinished.subscribe((e) => push(this.outcomes, e.jobId, e.outcome)),
      channels.rangeRetry.subscribe((e) => this.retries.set(e.code, (this.retries.get(e.code) ?? 0) + 1)),
    );
  }

  /** How often the workers reported job `jobId` done. */
  doneReports(jobId: string): number {
    return (this.outcomes.get(jobId) ?? []).filter((o) => o === 'done').length;
  }

  /** What `verifyJobs` needs from in-process workers that all lived to report their jobs. */
  observations(): VerifyObservations {
    return {
      doneReports: (id) => this.doneReports(id),
      allReportsSeen: true,
      codes: (id) => this.prefetchErrors.get(id) ?? [],
    };
  }

  get retryCount(): number {
    let n = 0;
    for (const v of this.retries.values()) n += v;
    return n;
  }

  stop(): void {
    for (const u of this.#unsubscribe.splice(0)) u();
  }
}

/** A channel observer that stops observing when the scenario ends. */
export function observeChannels(ctx: ScenarioContext, what = 'stop observing'): ChannelObserver {
  const observer = new ChannelObserver();
  ctx.cleanup.defer(what, () => observer.stop());
  return observer;
}

function push<K, V>(map: Map<K, V[]>, key: K, value: V): void {
  const list = map.get(key);
  if (list) list.push(value);
  else map.set(key, [value]);
}

/** The built-in `checksum` processor after an abortable pause: gives a kill or a restart time to land. */
export function slowChecksum(delayMs: number, onStart?: (jobId: string) => void): Processor {
  return {
    name: 'checksum',
    async run(ctx) {
      onStart?.(ctx.job.id);
      try {
        await sleep(delayMs, undefined, { signal: ctx.signal });
      } catch {
        throw abortError(ctx.signal, `job ${ctx.job.id}: checksum`);
      }
      return runChecksum(ctx);
    },
  };
}

/**
 * A job queue that counts `claim()` calls and their failures and passes everything on to the
 * real queue: how often a worker knocks on a queue that is down is the measure of backoff.
 */
export class CountingQueue implements JobQueue {
  /** Every claim: when, whether it failed, whether it returned a job. */
  readonly claims: { readonly at: number; readonly ok: boolean; readonly got: boolean }[] = [];
  readonly #inner: JobQueue;

  constructor(inner: JobQueue) {
    this.#inner = inner;
  }

  async claim(owner: string, leaseMs: number): Promise<JobRecord | null> {
    try {
      const job = await this.#inner.claim(owner, leaseMs);
      this.claims.push({ at: Date.now(), ok: true, got: job !== null });
      return job;
    } catch (err) {
      this.claims.push({ at: Date.now(), ok: false, got: false });
      throw err;
    }
  }

  submit(spec: JobSpec, opts?: SubmitOptions): Promise<JobRecord> {
    return this.#inner.submit(spec, opts);
  }
  submitMany(specs: readonly JobSpec[], opts?: SubmitOptions): Promise<SubmitOutcome[]> {
    return this.#inner.submitMany(specs, opts);
  }
  heartbeat(id: string, owner: string, leaseMs: number): Promise<void> {
    return this.#inner.heartbeat(id, owner, leaseMs);
  }
  start(id: string, owner: string, leaseMs: number): Promise<JobRecord> {
    return this.#inner.start(id, owner, leaseMs);
  }
  commit(id: string, owner: string, attempt: string, leaseMs: number): Promise<JobRecord> {
    return this.#inner.commit(id, owner, attempt, leaseMs);
  }
  complete(id: string, owner: string, result: unknown): Promise<JobRecord> {
    return this.#inner.complete(id, owner, result);
  }
  fail(id: string, owner: string, error: string, opts: FailOptions): Promise<JobRecord> {
    return this.#inner.fail(id, owner, error, opts);
  }
  release(id: string, owner: string): Promise<void> {
    return this.#inner.release(id, owner);
  }
  retry(id: string): Promise<JobRecord> {
    return this.#inner.retry(id);
  }
  get(id: string): Promise<JobRecord | null> {
    return this.#inner.get(id);
  }
  list(filter?: { status?: JobStatus; limit?: number }): Promise<JobRecord[]> {
    return this.#inner.list(filter);
  }
  counts(): Promise<Record<JobStatus, number>> {
    return this.#inner.counts();
  }
  close(): Promise<void> {
    return this.#inner.close();
  }
}

// ---------------------------------------------------------------------------------------------
// Objects, workers, faults
// ---------------------------------------------------------------------------------------------

export interface ChaosObject {
  readonly bucket: string;
  readonly key: string;
  readonly url: string;
  readonly size: number;
  /** Hex SHA-256 of the whole object, from the server. */
  readonly sha256: string;
}

/** Starts an object server on a free port, closed when the scenario ends. */
export async function startObjectServer(ctx: ScenarioContext, opts: ObjectServerOptions = {}, what = 'the object server'): Promise<ObjectServer> {
  const server = await ObjectServer.start(opts);
  ctx.cleanup.defer(`close ${what}`, () => server.close());
  return server;
}

/** The URL of the SQLite job queue a scenario keeps in `dir`. */
export function localQueueUrl(dir: string): string {
  return `sqlite://${path.join(dir, 'queue.db')}`;
}

/** Opens the SQLite job queue in `dir`, closed when the scenario ends. */
export async function openLocalQueue(ctx: ScenarioContext, dir: string, what = 'the job queue'): Promise<JobQueue> {
  const queue = await openQueue(localQueueUrl(dir));
  ctx.cleanup.defer(`close ${what}`, () => queue.close());
  return queue;
}

/**
 * Puts `count` generated objects into the `recordings` bucket: object `i` is named `key(i)`, has
 * `size(i)` bytes (asked in order, so seeded draws stay in order) and content seeded by `seedLabel(i)`.
 */
export async function putRecordings(
  ctx: ScenarioContext,
  server: ObjectServer,
  spec: { count: number; key: (i: number) => string; size: (i: number) => number; seedLabel: (i: number) => string },
): Promise<ChaosObject[]> {
  const objects: ChaosObject[] = [];
  for (let i = 0; i < spec.count; i++) {
    objects.push(await putGenerated(server, 'recordings', spec.key(i), spec.size(i), deriveSeed(ctx.seed, spec.seedLabel(i))));
  }
  return objects;
}

/** Puts a generated object (content named by size and seed) and learns its SHA-256. */
export async function putGenerated(server: ObjectServer, bucket: string, key: string, size: number, seed: number): Promise<ChaosObject> {
  server.putObject(bucket, key, { generated: { size, seed } });
  return { bucket, key, url: server.httpUrl(bucket, key), size, sha256: await server.objectSha256(bucket, key) };
}

/** Worker settings for the scenarios: small leases, quick polls, quick retries. */
export function chaosWorkerConfig(bufferDir: string, overrides: Partial<WorkerSettings> = {}): Partial<WorkerSettings> {
  return {
    slots: 2,
    downloadConnections: 4,
    chunkSize: 1 * MiB,
    bufferDir,
    bufferBudgetBytes: 1024 * MiB,
    leaseMs: 10_000,
    heartbeatMs: 1_000,
    pollIntervalMs: 50,
    jobRetryBaseDelayMs: 50,
    jobRetryMaxDelayMs: 500,
    rangeMaxAttempts: 6,
    retryBaseDelayMs: 50,
    retryMaxDelayMs: 1_000,
    stallTimeoutMs: 1_000,
    progressIntervalMs: 250,
    ...overrides,
  };
}

/**
 * Runs an in-process worker until it drains; when the scenario's time bound passes first, the
 * worker is destroyed so the scenario can still clean up and report.
 */
export async function runWorkerBounded(ctx: ScenarioContext, worker: Worker, signal?: AbortSignal): Promise<WorkerSummary> {
  const onDeadline = () => void worker.destroy();
  ctx.deadline.addEventListener('abort', onDeadline, { once: true });
  ctx.counts.runs++;
  try {
    return await worker.run(signal);
  } finally {
    ctx.deadline.removeEventListener('abort', onDeadline);
  }
}

/** Requests the server answered with an injected fault or a throttle. */
export function serverFaults(server: ObjectServer): number {
  return server.requests.filter((r) => r.fault !== undefined || r.throttled === true).length;
}

/** Bytes served beyond one copy of each object (a replaced object counts its last size). */
export function bytesRefetched(server: ObjectServer, objects: readonly { bucket: string; key: string; size: number }[]): number {
  let extra = 0;
  const seen = new Set<string>();
  for (const o of objects) {
    const id = `${o.bucket}/${o.key}`;
    if (seen.has(id)) continue;
    seen.add(id);
    extra += Math.max(0, server.bytesServed(o.bucket, o.key) - o.size);
  }
  return extra;
}

/** Checks that `dir` holds no file any more, listing at most `listAtMost` of those it still holds. */
export async function checkNothingLeft(ctx: ScenarioContext, name: string, dir: string, listAtMost = Infinity): Promise<void> {
  const leftovers = await listFiles(dir);
  ctx.checks.check(name, leftovers.length === 0, leftovers.slice(0, listAtMost).join(', ') || 'empty');
}

/** Every regular file under `dir`, as paths relative to it. */
export async function listFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (d: string): Promise<void> => {
    let entries;
    try {
      entries = await readdir(d, { withFileTypes: true });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw err;
    }
    for (const e of entries) {
      const full = path.join(d, e.name);
      if (e.isDirectory()) await walk(full);
      else out.push(path.relative(dir, full));
    }
  };
  await walk(dir);
  return out.sort();
}

/** The SHA-256 lines `checksums.sha256` holds in a local output directory, or null when absent. */
export async function readLocalChecksums(outputDir: string): Promise<string | null> {
  try {
    return await readFile(path.join(outputDir, CHECKSUM_FILE), 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
}

/** A local directory as a job's output prefix (a `file:` URL ending in `/`). */
export function localOutputUrl(dir: string): string {
  return `${pathToFileURL(dir).href}/`;
}

/** Where jobs write their outputs under `outRoot`: job `i` into `<outRoot>/job-<i>/`. */
export interface LocalJobOutputs {
  readonly dir: (index: number) => string;
  /** The output prefix to submit job `index` with. */
  readonly url: (index: number) => string;
  /** The `checksums.sha256` job `index` wrote, or null when absent. */
  readonly read: (index: number) => Promise<string | null>;
}

export function localJobOutputs(outRoot: string): LocalJobOutputs {
  const dir = (i: number) => path.join(outRoot, `job-${i}`);
  return { dir, url: (i) => localOutputUrl(dir(i)), read: (i) => readLocalChecksums(dir(i)) };
}

// ---------------------------------------------------------------------------------------------
// The verdict on the queue
// ---------------------------------------------------------------------------------------------

export interface ExpectedJob {
  readonly id: string;
  /** How the job is named in messages (its object key). */
  readonly label: string;
  /** SHA-256 of every object version whose complete bytes are a correct result. */
  readonly versions: readonly string[];
  /** How the job may end. */
  readonly may: 'done' | 'dead' | 'either';
  /** Error codes a dead job's failure must be among (as the prefetch queue or worker reported). */
  readonly deadCodes?: readonly ErrorCode[];
  /** Reads the job's `checksums.sha256` back from its output; null when it is missing. */
  readonly readOutput?: () => Promise<string | null>;
}

/**
 * What to expect of one checksum job per object (`jobs[i]` read `objects[i]`): the bytes of that
 * object, read back with `readOutput(i)`; each job must complete unless `ending(i)` says otherwise.
 */
export function expectWholeObjects(
  jobs: readonly JobRecord[],
  objects: readonly ChaosObject[],
  readOutput: (index: number) => Promise<string | null>,
  ending: (index: number) => Pick<ExpectedJob, 'may' | 'deadCodes'> = () => ({ may: 'done' }),
): ExpectedJob[] {
  return jobs.map((job, i) => ({
    id: job.id,
    label: objects[i]?.key ?? job.id,
    versions: [objects[i]?.sha256 ?? ''],
    ...ending(i),
    readOutput: () => readOutput(i),
  }));
}

export interface VerifyObservations {
  /** `done` outcomes reported per job by the workers (in-process events or child process lines). */
  readonly doneReports: (jobId: string) => number;
  /** True when every worker that completed jobs lived to report them (no kills). */
  readonly allReportsSeen: boolean;
  /** Error codes seen for a job: prefetch failures and processing failures. */
  readonly codes: (jobId: string) => readonly string[];
}

/**
 * The invariants every scenario ends with. Each job is `done` with the SHA-256 of one whole
 * version of its object (never a mix), written to its output, and reported done once — or
 * `dead` with its error. Nothing is left pending, claimed or running. The jobs completed and
 * dead are added to the scenario's counts.
 */
export async function verifyJobs(
  ctx: ScenarioContext,
  queue: JobQueue,
  jobs: readonly ExpectedJob[],
  seen: VerifyObservations,
): Promise<{ completed: number; dead: number; records: Map<string, JobRecord> }> {
  const unfinished: string[] = [];
  const wrongBytes: string[] = [];
  const wrongOutput: string[] = [];
  const twice: string[] = [];
  const deadWithout: string[] = [];
  const wrongEnd: string[] = [];
  const records = new Map<string, JobRecord>();
  let completed = 0;
  let dead = 0;
  for (const want of jobs) {
    const job = await queue.get(want.id);
    if (!job) {
      unfinished.push(`${want.label}: job ${want.id} is gone from the queue`);
      continue;
    }
    records.set(want.id, job);
    const reports = seen.doneReports(want.id);
    switch (job.status) {
      case 'done': {
        completed++;
        if (want.may === 'dead') wrongEnd.push(`${want.label} completed, but it had to fail`);
        const files = (job.result as { processorResult?: ChecksumResult } | null)?.processorResult?.files ?? [];
        const sha = files[0]?.sha256;
        if (sha === undefined || !want.versions.includes(sha)) {
          wrongBytes.push(`${want.label}: sha256 ${sha ?? '(none)'} is none of the ${want.versions.length} whole versions`);
        }
        if (want.readOutput) {
          const text = await want.readOutput();
          // `sha256sum` marks a line whose name it escaped with a leading backslash.
          if (text === null || sha === undefined || !text.replace(/^\\/, '').startsWith(`${sha}  `)) {
            wrongOutput.push(`${want.label}: output ${text === null ? 'missing' : JSON.stringify(text.slice(0, 80))} does not carry ${sha}`);
          }
        }
        if (reports > 1 || (seen.allReportsSeen && reports !== 1)) twice.push(`${want.label}: reported done ${reports} times`);
        break;
      }
      case 'dead': {
        dead++;
        if (want.may === 'done') wrongEnd.push(`${want.label} is dead (${job.lastError ?? 'no error'}), but it had to complete`);
        if (reports > 0) twice.push(`${want.label}: dead, yet reported done ${reports} times`);
        if (!job.lastError) deadWithout.push(`${want.label}: dead without an error`);
        if (want.deadCodes) {
          const codes = seen.codes(want.id);
          if (!codes.some((c) => (want.deadCodes as readonly string[]).includes(c))) {
            deadWithout.push(`${want.label}: dead with ${codes.join(', ') || 'no code'} (${job.lastError ?? ''}), expected ${want.deadCodes.join(' or ')}`);
          }
        }
        break;
      }
      case 'pending':
      case 'claimed':
      case 'running':
        unfinished.push(`${want.label}: still ${job.status} (attempts ${job.attempts}, last error ${job.lastError ?? 'none'})`);
        break;
      default: {
        const _exhaustive: never = job.status;
        throw new Error(`unknown job status ${String(_exhaustive)}`);
      }
    }
  }
  const c = ctx.checks;
  c.check('every job ended done or dead (none lost)', unfinished.length === 0, unfinished.join('; ') || `${jobs.length} jobs: ${completed} done, ${dead} dead`);
  c.check('every completed job has the bytes of one whole object version', wrongBytes.length === 0, wrongBytes.join('; ') || `${completed} sha256 results match`);
  if (jobs.some((j) => j.readOutput)) {
    c.check('every completed job wrote its output with that sha256', wrongOutput.length === 0, wrongOutput.join('; ') || `${completed} outputs read back`);
  }
  c.check('no job completed twice', twice.length === 0, twice.join('; ') || 'each completed job was reported done once');
  c.check('every dead job carries its error', deadWithout.length === 0, deadWithout.join('; ') || `${dead} dead jobs, each with its error`);
  c.check('each job ended the way it may', wrongEnd.length === 0, wrongEnd.join('; ') || 'as expected');
  ctx.counts.jobsCompleted += completed;
  ctx.counts.jobsDead += dead;
  return { completed, dead, records };
}

/** Submits one checksum job per object, output to `<outRoot>/job-<n>/`. */
export async function submitChecksumJobs(
  queue: JobQueue,
  objects: readonly ChaosObject[],
  outputPrefix: (index: number) => string | undefined,
  maxAttempts = 3,
): Promise<JobRecord[]> {
  const jobs: JobRecord[] = [];
  for (const [i, o] of objects.entries()) {
    const output = outputPrefix(i);
    jobs.push(await queue.submit({ inputs: [{ url: o.url }], processor: 'checksum', maxAttempts, ...(output !== undefined ? { output } : {}) }));
  }
  return jobs;
}

/** Runs `fn` and turns any failure into a `RoboflowError` value instead of a rejection. */
export async function settle<T>(fn: () => Promise<T>): Promise<{ ok: true; value: T } | { ok: false; error: RoboflowError }> {
  try {
    return { ok: true, value: await fn() };
  } catch (err) {
    return { ok: false, error: toRoboflowError(err) };
  }
}
