/**
 * The worker: the loop of the design (docs/design.md)
 *
 *     for (;;) { job = await prefetch.nextReady(); await process(job); prefetch.notifyComplete(); }
 *
 * with the upload of job k overlapped with the processing of job k+1.
 *
 * One job's way through the worker
 * --------------------------------
 * 1. `nextReady()` hands out a job whose inputs are on disk; its attempt starts there. The time
 *    spent waiting in it is *input wait* — the I/O prefetch did not hide.
 * 2. The processor runs with the inputs and a fresh output directory `<bufferDir>/<jobId>/out`.
 * 3. *Finishing*, in the background: the output directory is staged under the attempt's own
 *    prefix of `job.output` (if set), the job queue authorises this attempt to publish
 *    (`commit`), the staged files are published with `_SUCCESS` last (src/storage/commit.ts),
 *    the job is completed (or failed, released) in the job queue, and only then does the prefetch
 *    queue get `notifyComplete()`, which deletes the job's directory — so no file is deleted
 *    while it is still being uploaded. Meanwhile the loop already waits for, and processes, job
 *    k+1. At most one finishing runs at a time: before job k+1 finishes, job k's finishing is
 *    awaited, so jobs complete in the order they were processed and a slow store cannot pile up
 *    uploads. The price is that job k's slot (and its disk space) is freed only after its
 *    upload, which the byte budget accounts for.
 *
 * Leases: the prefetch queue renews every held job's lease and fences a job off by itself once
 * its lease can no longer be trusted (src/lease.ts): the job's `leaseLost` signal aborts its
 * processor, upload and publishing, and nothing is committed or completed for it.
 *
 * Outcomes: `done`; `retried` / `dead` after `fail()` (retryable per the error, backoff from
 * `backoffDelay` over the job retry delays); `released` when the job was cancelled by shutdown;
 * `lease_lost` when another worker took the job meanwhile (nothing is written then).
 *
 * Shutdown (the `signal` given to `run()`): claiming stops and prefetched jobs that were not
 * started go back to pending with attempts unchanged, at once. With `shutdown: 'finish'` the job
 * being processed is finished (processing, upload, complete); with `'cancel'` its processor and
 * upload are aborted and it is released. `run()` resolves when everything is closed. `destroy()`
 * aborts at once and hands nothing back (leases expire).
 *
 * Security (SECURITY.md): the worker holds a `SecurityPolicy` (from `WorkerOptions.policy`, else
 * compiled from the allowlist settings) and its processor rules (`processors`, `execCommand`,
 * `allowJobCommands`). Every claimed job is judged before anything is fetched or written for it;
 * a refused job goes dead with `ERR_POLICY_DENIED` and no request is made. The job is judged
 * again when its attempt starts (the record may have changed since the claim), the output prefix
 * once more before the upload, and the storage clients it builds resolve names through the
 * policy's `lookup`, so no connection reaches an address the policy refuses. The job and output
 * directories are checked to be real directories, not links, before anything is deleted in or
 * uploaded from them.
 *
 * The buffer directory belongs to one worker process: `<bufferDir>/.roboflow-worker.lock` makes a
 * second worker on the same directory fail at start with `ERR_CONFIG` (job directories are named
 * by job id, so two workers would delete or resume each other's files after a lost lease).
 *
 * The library never installs signal handlers and never imports a metrics library: it publishes
 * `workerWait`, `workerBusy` and `jobFinished` on the diagnostics channels.
 */

import { randomUUID } from 'node:crypto';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import pino, { type Logger } from 'pino';
import { DEFAULTS } from './defaults.js';
import { channels, type JobOutcome } from './diagnostics.js';
import { abortError, backoffDelay, isJobRetryable, RoboflowError, toRoboflowError } from './errors.js';
import { ByteBudget } from './prefetch/budget.js';
import { ConcurrencyLimiter, hostLanes } from './prefetch/concurrency.js';
import { ParallelDownloader } from './prefetch/downloader.js';
import { PrefetchQueue, type PrefetchedJob, type PrefetchStats } from './prefetch/queue.js';
import { checkRealDirectory } from './paths.js';
import { checkProcessorAllowed, execTemplateFor, getProcessor, parseExecCommand, type ProcessorOptions } from './processors/index.js';
import { redactText } from './redact.js';
import { compilePolicy, type SecurityPolicy } from './security/policy.js';
import { StorageClients } from './storage/index.js';
import { newAttemptName, publishAttempt, stagingPrefix } from './storage/commit.js';
import { uploadDirectory } from './storage/upload.js';
import type { Durability, JobQueue, JobRecord, JobStatus, Processor, StorageOptions } from './types.js';

/** The configuration keys the worker reads; `Config` from `src/config.ts` has all of them. */
export interface WorkerSettings {
  readonly slots: number;
  readonly downloadConnections: number;
  /** Range transfers across all downloads; null = every slot at full speed. */
  readonly maxHostConnections: number | null;
  readonly chunkSize: number;
  readonly bufferDir: string;
  readonly bufferBudgetBytes: number | null;
  readonly bufferReserveBytes: number;
  readonly durability: Durability;
  readonly rangeMaxAttempts: number;
  readonly retryBaseDelayMs: number;
  readonly retryMaxDelayMs: number;
  readonly stallTimeoutMs: number;
  readonly lowSpeedLimitBytes: number;
  readonly lowSpeedTimeMs: number | null;
  readonly progressIntervalMs: number;
  readonly leaseMs: number;
  readonly heartbeatMs: number;
  readonly jobRetryBaseDelayMs: number;
  readonly jobRetryMaxDelayMs: number;
  readonly pollIntervalMs: number;
  /** Poll interval when the queue wakes idle workers itself (`JobQueue.onWork`). */
  readonly fallbackPollIntervalMs: number;
  /** Time limit of one exec run (unless `processorOptions.timeoutMs` says otherwise). */
  readonly execTimeoutMs: number;
  readonly execKillGraceMs: number;
  /** Source allowlist; with the two below, what the default policy is compiled from. */
  readonly allowSources: readonly string[];
  readonly allowOutputs: readonly string[];
  readonly allowPrivateRanges: readonly string[];
  /** Processor names this worker runs; empty runs every one. */
  readonly processors: readonly string[];
  /** The operator's exec command line; null lets jobs bring theirs (if `allowJobCommands`). */
  readonly execCommand: string | null;
  /** Whether exec jobs may run their own command; null: only while `allowSources` is empty. */
  readonly allowJobCommands: boolean | null;
}

export type ShutdownMode = 'finish' | 'cancel';

export interface WorkerOptions {
  readonly queue: JobQueue;
  /** Any subset; missing keys come from `DEFAULTS`. A `Config` fits as it is. */
  readonly config?: Partial<WorkerSettings>;
  /**
   * Operator options for the built-in processors (exec time limit, passed environment, command).
   * Options left out come from the settings (`execTimeoutMs`, `execKillGraceMs`, `execCommand`,
   * `allowJobCommands`).
   */
  readonly processorOptions?: ProcessorOptions;
  /**
   * What jobs may read, write and connect to. (Default: compiled from `allowSources`,
   * `allowOutputs` and `allowPrivateRanges` of the settings; with none of them set, every job
   * passes, as on a single machine.) When `clients` is given too, build them with
   * `policy.storageOptions()`, or connections skip the address check.
   */
  readonly policy?: SecurityPolicy;
  /** Processors by name, looked up before the built-in ones (custom pipelines, the demo). */
  readonly processors?: Readonly<Record<string, Processor>>;
  /** Shared storage clients; when given, the worker leaves them open. */
  readonly clients?: StorageClients;
  /** How to build storage clients when `clients` is not given. */
  readonly storage?: StorageOptions;
  readonly log?: Logger;
  /** Stop once the job queue has no unfinished job left. (Default: false) */
  readonly drain?: boolean;
  /** What happens to the job being processed when `run()`'s signal aborts. (Default: `finish`) */
  readonly shutdown?: ShutdownMode;
  /** Lease owner name. (Default: `<hostname>/<pid>/<random>`) */
  readonly owner?: string;
  /** Keep the partial downloads of jobs handed back at shutdown, for a resume. (Default: false) */
  readonly keepPartial?: boolean;
  /** Called once per job handed to a processor, when it has finished. */
  readonly onJob?: (report: JobReport) => void;
}

/** What the worker stores as a job's result. */
export interface WorkerJobResult {
  /** What the processor returned. */
  readonly processorResult: unknown;
  /** Files published under `job.output`. */
  readonly uploaded: readonly { readonly name: string; readonly url: string; readonly bytes: number }[];
  /** The attempt whose output was published (README "Output commit protocol"); null without an output. */
  readonly attempt: string | null;
  /** The lease owner that completed the job. */
  readonly worker: string;
  readonly bytes: number;
  readonly downloadSeconds: number;
  readonly processSeconds: number;
  readonly uploadSeconds: number;
}

/** One job's way through the worker. */
export interface JobReport {
  readonly jobId: string;
  readonly outcome: JobOutcome;
  /** The job's status after this attempt, as far as this worker knows. */
  readonly status: JobStatus;
  readonly attempt: number;
  readonly bytes: number;
  /**
   * Seconds its inputs took to download (in the background, mostly), from the first range
   * transfer the download got: waiting for buffer space, or for transfers a job needed sooner
   * held under a host-wide limit, is not counted.
   */
  readonly downloadSeconds: number;
  /** Seconds the worker waited in `nextReady()` before it got this job. */
  readonly waitSeconds: number;
  readonly processSeconds: number;
  readonly uploadSeconds: number;
  /** Why it did not complete, when it did not. */
  readonly error?: string;
}

export interface WorkerSummary {
  /** Jobs handed to a processor. */
  readonly jobs: number;
  readonly done: number;
  /** Failed and to be retried. */
  readonly failed: number;
  readonly dead: number;
  /** Handed back at shutdown after their attempt started. */
  readonly released: number;
  readonly leaseLost: number;
  /** Downloads that failed (those jobs never reached a processor). */
  readonly downloadFailures: number;
  readonly bytes: number;
  /** Seconds spent waiting for inputs (in `nextReady()` calls that returned a job). */
  readonly inputWaitSeconds: number;
  /** Seconds of processing plus upload, summed over jobs. */
  readonly busySeconds: number;
  readonly wallSeconds: number;
}

type WorkerState = 'new' | 'running' | 'stopping' | 'stopped';

/** Outcome of the processing step. */
type Processed =
  | { readonly ok: true; readonly result: unknown; readonly seconds: number; readonly outDir: string }
  | { readonly ok: false; readonly error: RoboflowError; readonly seconds: number; readonly outDir: string };

/** Attempts of a job-queue call that failed with `ERR_QUEUE` (database briefly away). */
const QUEUE_CALL_ATTEMPTS = 5;

function resolveSettings(config: Partial<WorkerSettings> | undefined): WorkerSettings {
  const pick = <K extends keyof WorkerSettings>(k: K): WorkerSettings[K] =>
    (config?.[k] ?? DEFAULTS[k]) as WorkerSettings[K];
  return {
    slots: pick('slots'),
    downloadConnections: pick('downloadConnections'),
    maxHostConnections: config?.maxHostConnections === undefined ? DEFAULTS.maxHostConnections : config.maxHostConnections,
    chunkSize: pick('chunkSize'),
    bufferDir: pick('bufferDir'),
    bufferBudgetBytes: config?.bufferBudgetBytes === undefined ? DEFAULTS.bufferBudgetBytes : config.bufferBudgetBytes,
    bufferReserveBytes: pick('bufferReserveBytes'),
    durability: pick('durability'),
    rangeMaxAttempts: pick('rangeMaxAttempts'),
    retryBaseDelayMs: pick('retryBaseDelayMs'),
    retryMaxDelayMs: pick('retryMaxDelayMs'),
    stallTimeoutMs: pick('stallTimeoutMs'),
    lowSpeedLimitBytes: pick('lowSpeedLimitBytes'),
    lowSpeedTimeMs: config?.lowSpeedTimeMs === undefined ? DEFAULTS.lowSpeedTimeMs : config.lowSpeedTimeMs,
    progressIntervalMs: pick('progressIntervalMs'),
    leaseMs: pick('leaseMs'),
    heartbeatMs: pick('heartbeatMs'),
    jobRetryBaseDelayMs: pick('jobRetryBaseDelayMs'),
    jobRetryMaxDelayMs: pick('jobRetryMaxDelayMs'),
    pollIntervalMs: pick('pollIntervalMs'),
    fallbackPollIntervalMs: pick('fallbackPollIntervalMs'),
    execTimeoutMs: pick('execTimeoutMs'),
    execKillGraceMs: pick('execKillGraceMs'),
    allowSources: pick('allowSources'),
    allowOutputs: pick('allowOutputs'),
    allowPrivateRanges: pick('allowPrivateRanges'),
    processors: pick('processors'),
    execCommand: pick('execCommand'),
    allowJobCommands: pick('allowJobCommands'),
  };
}

/** How exec jobs get their command on this worker, for the start-up log. */
type ExecMode = 'operator command' | 'job commands' | 'refused';

/** A lease owner name unique per worker: readable host and pid, random so a restart differs. */
export function defaultOwner(): string {
  return `${os.hostname()}/${process.pid}/${randomUUID().slice(0, 8)}`;
}

export class Worker {
  readonly owner: string;
  readonly #queue: JobQueue;
  readonly #settings: WorkerSettings;
  readonly #opts: WorkerOptions;
  readonly #log: Logger;
  readonly #shutdown: ShutdownMode;
  readonly #policy: SecurityPolicy;
  /** Exec options with the operator's command and the job-command switch resolved. */
  readonly #execOptions: ProcessorOptions;
  /** Whether `allowJobCommands` was decided from the policy rather than set. */
  readonly #jobCommandsAutomatic: boolean;
  #state: WorkerState = 'new';
  /** Aborts processing and uploads: on `cancel` shutdown and on `destroy()`. */
  readonly #cancel = new AbortController();
  #prefetch: PrefetchQueue | null = null;
  #clients: StorageClients | null = null;
  #downloader: ParallelDownloader | null = null;
  #counts = { jobs: 0, done: 0, failed: 0, dead: 0, released: 0, leaseLost: 0, bytes: 0 };
  #inputWait = 0;
  #busy = 0;

  constructor(opts: WorkerOptions) {
    this.#opts = opts;
    this.#queue = opts.queue;
    this.#settings = resolveSettings(opts.config);
    this.#log = opts.log ?? pino({ level: 'silent' });
    this.#shutdown = opts.shutdown ?? 'finish';
    this.owner = opts.owner ?? defaultOwner();
    const s = this.#settings;
    this.#policy =
      opts.policy ??
      compilePolicy({ allowSources: s.allowSources, allowOutputs: s.allowOutputs, allowPrivateRanges: s.allowPrivateRanges });
    const base = opts.processorOptions ?? {};
    const command = base.command ?? (s.execCommand !== null ? parseExecCommand(s.execCommand) : undefined);
    const setting = base.allowJobCommands ?? s.allowJobCommands;
    this.#jobCommandsAutomatic = setting === null;
    this.#execOptions = {
      ...base,
      timeoutMs: base.timeoutMs ?? s.execTimeoutMs,
      killGraceMs: base.killGraceMs ?? s.execKillGraceMs,
      ...(command !== undefined ? { command } : {}),
      // A worker that restricts sources serves submitters it does not fully trust: running the
      // programs they name would undo every other restriction.
      allowJobCommands: setting ?? this.#policy.sources.allowsAll,
    };
  }

  /** The policy this worker enforces. */
  get policy(): SecurityPolicy {
    return this.#policy;
  }

  /**
   * Throws `ERR_POLICY_DENIED` unless this worker may run `job`: its inputs and output are allowed,
   * it runs the job's processor, and an exec job's command is one it may run.
   */
  checkJob(job: Pick<JobRecord, 'id' | 'inputs' | 'output' | 'processor' | 'args'>): void {
    this.#policy.checkJob(job);
    checkProcessorAllowed(job, this.#settings.processors);
    if (job.processor === 'exec' && this.#opts.processors?.['exec'] === undefined) execTemplateFor(job, this.#execOptions);
  }

  #execMode(): ExecMode {
    if (this.#execOptions.command !== undefined) return 'operator command';
    return this.#execOptions.allowJobCommands === false ? 'refused' : 'job commands';
  }

  /** The policy, once, at start: what is allowed, and a warning while any source is. */
  #logPolicy(clients: StorageClients): void {
    const summary = this.#policy.summary();
    const s = this.#settings;
    this.#log.info(
      {
        policy: summary,
        processors: s.processors.length === 0 ? 'all' : [...s.processors],
        exec: this.#execMode(),
        ...(s.execCommand !== null && this.#opts.processorOptions?.command === undefined ? { execCommand: redactText(s.execCommand) } : {}),
      },
      'security policy',
    );
    if (this.#policy.sources.allowsAll) {
      this.#log.warn(
        { outputs: summary.outputs === 'any' ? 'any' : 'restricted', jobCommands: this.#execOptions.allowJobCommands !== false },
        'any source URL is accepted: a job can make this worker read any file its user can read and any host it can ' +
          'reach; on a shared queue set --allow-source and --allow-output (see SECURITY.md)',
      );
    }
    if (this.#jobCommandsAutomatic && this.#execOptions.allowJobCommands === false && this.#execOptions.command === undefined) {
      this.#log.info(
        'exec jobs that bring their own command are refused because a source allowlist is set; give the worker a ' +
          'command with --exec-command, or allow job commands with --allow-job-commands',
      );
    }
    if (this.#policy.addresses.enforced && !clients.checksAddresses) {
      this.#log.warn(
        'the storage clients given to this worker do not resolve names through the policy, so private addresses are ' +
          'not refused at connect time; build them with policy.storageOptions()',
      );
    }
  }

  get state(): WorkerState {
    return this.#state;
  }

  /** The prefetch queue of the running worker (for status displays), or null. */
  get prefetch(): PrefetchQueue | null {
    return this.#prefetch;
  }

  #setState(to: WorkerState): void {
    const from = this.#state;
    let ok: boolean;
    switch (to) {
      case 'new':
        ok = false;
        break;
      case 'running':
        ok = from === 'new';
        break;
      case 'stopping':
        ok = from === 'running';
        break;
      case 'stopped':
        ok = from === 'running' || from === 'stopping';
        break;
      default: {
        const _exhaustive: never = to;
        throw new Error(`unknown worker state ${String(_exhaustive)}`);
      }
    }
    if (!ok) throw new RoboflowError('ERR_CONFIG', `worker cannot go from ${from} to ${to}; a Worker runs once`);
    this.#state = to;
  }

  /**
   * Claims, downloads and processes jobs until `signal` aborts (or, with `drain`, the queue has
   * no work left). Resolves with the summary once everything is closed.
   */
  async run(signal?: AbortSignal): Promise<WorkerSummary> {
    this.#setState('running');
    const s = this.#settings;
    const started = performance.now();
    let unlock: () => Promise<void>;
    try {
      unlock = await lockBufferDir(s.bufferDir, this.owner);
    } catch (err) {
      this.#setState('stopped');
      throw err;
    }
    const lanes = hostLanes(s);
    const limiter = new ConcurrencyLimiter({ max: lanes.transfers });
    const clients =
      this.#opts.clients ??
      new StorageClients({ maxConnections: lanes.sockets, ...(this.#opts.storage ?? {}), ...this.#policy.storageOptions() });
    this.#logPolicy(clients);
    this.#clients = clients;
    const downloader = new ParallelDownloader({
      connections: s.downloadConnections,
      chunkSize: s.chunkSize,
      stallTimeoutMs: s.stallTimeoutMs,
      lowSpeedLimitBytes: s.lowSpeedLimitBytes,
      lowSpeedTimeMs: s.lowSpeedTimeMs,
      progressIntervalMs: s.progressIntervalMs,
      retry: { maxAttempts: s.rangeMaxAttempts, baseDelayMs: s.retryBaseDelayMs, maxDelayMs: s.retryMaxDelayMs },
      durability: s.durability,
      clients,
      // One limiter for every slot's lanes: the prefetch queue gives each download its claim
      // order as priority, so when transfers are scarce (the host-wide limit, a throttling
      // store) the job handed out next gets them first.
      limiter,
    });
    this.#downloader = downloader;
    const prefetch = new PrefetchQueue({
      queue: this.#queue,
      downloader,
      config: {
        slots: s.slots,
        downloadConnections: s.downloadConnections,
        chunkSize: s.chunkSize,
        bufferDir: s.bufferDir,
        bufferBudgetBytes: s.bufferBudgetBytes,
      },
      owner: this.owner,
      leaseMs: s.leaseMs,
      heartbeatMs: s.heartbeatMs,
      pollIntervalMs: s.pollIntervalMs,
      fallbackPollIntervalMs: s.fallbackPollIntervalMs,
      drain: this.#opts.drain ?? false,
      budget: new ByteBudget({ limitBytes: s.bufferBudgetBytes, dir: s.bufferDir, reserveBytes: s.bufferReserveBytes }),
      clients,
      jobRetry: { baseDelayMs: s.jobRetryBaseDelayMs, maxDelayMs: s.jobRetryMaxDelayMs },
      keepPartial: this.#opts.keepPartial ?? false,
      policy: { checkJob: (job) => this.checkJob(job) },
      limiter,
      log: this.#log,
    });
    this.#prefetch = prefetch;

    let closing: Promise<void> | null = null;
    const stop = () => {
      if (this.#state !== 'running') return;
      this.#setState('stopping');
      this.#log.info({ shutdown: this.#shutdown }, 'stopping: no new jobs; prefetched jobs go back to the queue');
      closing = prefetch.close().catch((err: unknown) => {
        this.#log.error({ err: toRoboflowError(err) }, 'closing the prefetch queue failed');
      });
      if (this.#shutdown === 'cancel') {
        this.#cancel.abort(new RoboflowError('ERR_ABORTED', 'the worker is shutting down and cancels the job in progress'));
      }
    };
    if (signal?.aborted) stop();
    signal?.addEventListener('abort', stop, { once: true });
    this.#log.info(
      { owner: this.owner, slots: s.slots, connections: s.downloadConnections, maxHostConnections: s.maxHostConnections, bufferDir: s.bufferDir, drain: this.#opts.drain ?? false },
      'worker started',
    );

    let finishing: Promise<void> = Promise.resolve();
    let failed = false;
    try {
      for (;;) {
        const waitStart = performance.now();
        const ready = await prefetch.nextReady();
        const waitSeconds = (performance.now() - waitStart) / 1000;
        if (!ready) break;
        this.#inputWait += waitSeconds;
        channels.workerWait.publish({ seconds: waitSeconds });
        this.#counts.jobs++;
        const processed = await this.#process(ready);
        // Job k's upload ran while job k+1 was processed; completions stay in order.
        await finishing;
        finishing = this.#finish(ready, processed, waitSeconds);
      }
    } catch (err) {
      failed = true;
      this.#log.error({ err: toRoboflowError(err) }, 'worker loop failed; aborting');
      throw err;
    } finally {
      signal?.removeEventListener('abort', stop);
      await finishing;
      if (failed) await prefetch.destroy();
      await (closing ?? prefetch.close());
      await downloader.close();
      if (!this.#opts.clients) await clients.close();
      await unlock();
      if (this.#state !== 'stopped') this.#setState('stopped');
    }
    const summary = this.#summary(prefetch.stats(), (performance.now() - started) / 1000);
    this.#log.info(summary, 'worker stopped');
    return summary;
  }

  /**
   * Aborts processing, uploads and downloads at once; jobs are not handed back (their leases
   * expire) and partial downloads stay for a resume. `run()` then resolves soon. Idempotent.
   */
  async destroy(): Promise<void> {
    if (!this.#cancel.signal.aborted) this.#cancel.abort(new RoboflowError('ERR_ABORTED', 'the worker was destroyed'));
    await Promise.all([this.#prefetch?.destroy(), this.#downloader?.destroy()]);
  }

  #summary(stats: PrefetchStats, wallSeconds: number): WorkerSummary {
    return {
      ...this.#counts,
      downloadFailures: stats.downloadFailures,
      inputWaitSeconds: round3(this.#inputWait),
      busySeconds: round3(this.#busy),
      wallSeconds: round3(wallSeconds),
    };
  }

  #processorFor(name: string): Processor {
    return this.#opts.processors?.[name] ?? getProcessor(name, this.#execOptions);
  }

  /** Runs the processor; never throws (a failure is an outcome). */
  async #process(ready: PrefetchedJob): Promise<Processed> {
    const { job } = ready;
    const log = this.#log.child({ jobId: job.id });
    const outDir = path.join(ready.dir, 'out');
    const started = performance.now();
    const seconds = () => (performance.now() - started) / 1000;
    const signal = AbortSignal.any([this.#cancel.signal, ready.leaseLost]);
    log.info({ processor: job.processor, attempt: job.attempts, bytes: ready.bytes, downloadSeconds: round3(ready.downloadSeconds) }, 'processing');
    try {
      // The record is the one `start` returned; it may differ from the claimed one.
      this.checkJob(job);
      // Not a link planted since the download: `rm` below would delete wherever it leads.
      await checkRealDirectory(ready.dir, `the directory of job ${job.id}`);
      await rm(outDir, { recursive: true, force: true });
      await mkdir(outDir);
      const processor = this.#processorFor(job.processor);
      const result = await processor.run({ job, inputPaths: ready.inputPaths, outputDir: outDir, signal });
      return { ok: true, result, seconds: seconds(), outDir };
    } catch (err) {
      return { ok: false, error: toRoboflowError(err, 'ERR_PROCESSOR'), seconds: seconds(), outDir };
    }
  }

  /** Uploads, records the outcome in the job queue, frees the slot. Never rejects. */
  async #finish(ready: PrefetchedJob, processed: Processed, waitSeconds: number): Promise<void> {
    const { job } = ready;
    const log = this.#log.child({ jobId: job.id });
    let error: RoboflowError | null = processed.ok ? null : processed.error;
    let uploaded: { readonly name: string; readonly url: string; readonly bytes: number }[] = [];
    let attempt: string | null = null;
    let uploadSeconds = 0;
    let outcome: JobOutcome;
    let status: JobStatus;
    try {
      if (processed.ok && job.output !== null) {
        const uploadStart = performance.now();
        try {
          const signal = AbortSignal.any([this.#cancel.signal, ready.leaseLost]);
          // Once more, right before writing: this is the step the output allowlist protects.
          this.#policy.checkJob({ id: job.id, inputs: [], output: job.output });
          await checkRealDirectory(ready.dir, `the directory of job ${job.id}`);
          // Staged under this attempt's own prefix; published only once the queue authorises it.
          attempt = newAttemptName(job.attempts);
          // uploadDirectory refuses an output directory that is a link, and skips links in it.
          const staged = await uploadDirectory(processed.outDir, stagingPrefix(job.output, job.id, attempt), {
            signal,
            ...(this.#clients ? { clients: this.#clients } : {}),
          });
          const committing = attempt;
          await this.#queueCall(
            () => this.#queue.commit(job.id, this.owner, committing, this.#settings.leaseMs),
            'commit',
            log,
            ready.leaseLost,
          );
          // The lease may have run out while the commit was on its way: publish nothing then.
          if (signal.aborted) throw abortError(signal, `publishing the output of job ${job.id}`);
          uploaded = await publishAttempt({
            output: job.output,
            jobId: job.id,
            owner: this.owner,
            attempt,
            files: staged.map((f) => ({ name: f.name, bytes: f.bytes })),
            previousAttempt: job.commitAttempt,
            signal,
            ...(this.#clients ? { clients: this.#clients } : {}),
          });
        } catch (err) {
          error = toRoboflowError(err, 'ERR_UPLOAD');
        }
        uploadSeconds = (performance.now() - uploadStart) / 1000;
      }
      ({ outcome, status } = await this.#record(ready, processed, error, uploaded, attempt, uploadSeconds, log));
    } catch (err) {
      // #record handles every queue answer; anything else is a bug worth seeing, not a crash.
      log.error({ err: toRoboflowError(err) }, 'could not record the outcome of the job');
      outcome = 'retried';
      status = 'running';
    }
    await this.#prefetch?.notifyComplete(job.id);

    const busy = processed.seconds + uploadSeconds;
    this.#busy += busy;
    channels.workerBusy.publish({ seconds: busy });
    channels.jobFinished.publish({ jobId: job.id, outcome, seconds: busy, status });
    switch (outcome) {
      case 'done':
        this.#counts.done++;
        this.#counts.bytes += ready.bytes;
        break;
      case 'retried':
        this.#counts.failed++;
        break;
      case 'dead':
        this.#counts.dead++;
        break;
      case 'released':
        this.#counts.released++;
        break;
      case 'lease_lost':
        this.#counts.leaseLost++;
        break;
      default: {
        const _exhaustive: never = outcome;
        throw new Error(`unknown outcome ${String(_exhaustive)}`);
      }
    }
    try {
      this.#opts.onJob?.({
        jobId: job.id,
        outcome,
        status,
        attempt: job.attempts,
        bytes: ready.bytes,
        downloadSeconds: round3(ready.downloadSeconds),
        waitSeconds: round3(waitSeconds),
        processSeconds: round3(processed.seconds),
        uploadSeconds: round3(uploadSeconds),
        ...(error ? { error: redactText(error.message) } : {}),
      });
    } catch (err) {
      log.warn({ err: toRoboflowError(err) }, 'onJob callback threw');
    }
  }

  async #record(
    ready: PrefetchedJob,
    processed: Processed,
    error: RoboflowError | null,
    uploaded: readonly { readonly name: string; readonly url: string; readonly bytes: number }[],
    attempt: string | null,
    uploadSeconds: number,
    log: Logger,
  ): Promise<{ outcome: JobOutcome; status: JobStatus }> {
    const { job } = ready;
    if (ready.leaseLost.aborted || error?.code === 'ERR_LEASE_LOST') {
      log.warn('lease lost: another worker holds the job now; its result is not recorded here');
      return { outcome: 'lease_lost', status: 'running' };
    }
    if (error && this.#cancel.signal.aborted) {
      try {
        await this.#queueCall(() => this.#queue.release(job.id, this.owner), 'release', log);
        log.info({ attempt: job.attempts }, 'job cancelled by shutdown and released');
        return { outcome: 'released', status: 'pending' };
      } catch (err) {
        return this.#recordFailed(err, 'release', log);
      }
    }
    if (error) {
      const backoffMs = backoffDelay(Math.max(1, job.attempts), error, {
        baseDelayMs: this.#settings.jobRetryBaseDelayMs,
        maxDelayMs: this.#settings.jobRetryMaxDelayMs,
      });
      const message = redactText(error.message);
      try {
        const after = await this.#queueCall(
          () => this.#queue.fail(job.id, this.owner, message, { retryable: isJobRetryable(error), backoffMs }),
          'fail',
          log,
        );
        const dead = after.status === 'dead';
        log.warn(
          {
            err: error,
            attempt: after.attempts,
            maxAttempts: after.maxAttempts,
            ...(dead ? {} : { retryInMs: Math.round(backoffMs) }),
          },
          dead ? 'job failed; it is dead' : 'job failed; it will be retried',
        );
        return { outcome: dead ? 'dead' : 'retried', status: after.status };
      } catch (err) {
        return this.#recordFailed(err, 'fail', log);
      }
    }
    const result: WorkerJobResult = {
      processorResult: processed.ok ? processed.result : null,
      uploaded: uploaded.map((u) => ({ name: u.name, url: u.url, bytes: u.bytes })),
      attempt,
      worker: this.owner,
      bytes: ready.bytes,
      downloadSeconds: round3(ready.downloadSeconds),
      processSeconds: round3(processed.seconds),
      uploadSeconds: round3(uploadSeconds),
    };
    try {
      // Never after the lease stopped being trusted: another worker may hold the job by then.
      await this.#queueCall(() => this.#queue.complete(job.id, this.owner, result), 'complete', log, ready.leaseLost);
      log.info(
        { processSeconds: result.processSeconds, uploadSeconds: result.uploadSeconds, uploaded: uploaded.length },
        'job done',
      );
      return { outcome: 'done', status: 'done' };
    } catch (err) {
      return this.#recordFailed(err, 'complete', log);
    }
  }

  #recordFailed(err: unknown, what: string, log: Logger): { outcome: JobOutcome; status: JobStatus } {
    const e = toRoboflowError(err, 'ERR_QUEUE');
    if (e.code === 'ERR_LEASE_LOST') {
      log.warn({ op: what }, 'lease lost: another worker holds the job now; its result is not recorded here');
      return { outcome: 'lease_lost', status: 'running' };
    }
    log.error({ op: what, err: e }, 'could not record the job in the queue; it runs again when its lease expires');
    return { outcome: 'retried', status: 'running' };
  }

  /**
   * A job-queue call, retried with backoff while the database is unreachable (`ERR_QUEUE`). With
   * `leaseLost`, the call is not made, nor made again, once that signal has aborted: the job's
   * lease can no longer be trusted, and it fails with the signal's `ERR_LEASE_LOST`.
   */
  async #queueCall<T>(call: () => Promise<T>, what: string, log: Logger, leaseLost?: AbortSignal): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      if (leaseLost?.aborted) throw toRoboflowError(leaseLost.reason, 'ERR_LEASE_LOST');
      try {
        return await call();
      } catch (err) {
        const e = toRoboflowError(err, 'ERR_QUEUE');
        if (e.code !== 'ERR_QUEUE' || attempt >= QUEUE_CALL_ATTEMPTS) throw e;
        const wait = backoffDelay(attempt, e, { baseDelayMs: 500, maxDelayMs: 15_000 });
        log.warn({ op: what, attempt, waitMs: Math.round(wait), err: e }, 'job queue unreachable; retrying');
        await new Promise<void>((resolve) => {
          const done = () => {
            clearTimeout(timer);
            leaseLost?.removeEventListener('abort', done);
            resolve();
          };
          const timer = setTimeout(done, wait);
          leaseLost?.addEventListener('abort', done, { once: true });
        });
      }
    }
  }
}

/** Marks a buffer directory as used by one worker process. */
const LOCK_FILE = '.roboflow-worker.lock';

/**
 * Claims the buffer directory for this process. Job directories are named by job id, so two
 * workers sharing one buffer directory would, after a lost lease, delete or resume each other's
 * files. A lock left by a process that no longer runs (on this host) is taken over.
 */
async function lockBufferDir(bufferDir: string, owner: string): Promise<() => Promise<void>> {
  await mkdir(bufferDir, { recursive: true });
  const lockPath = path.join(bufferDir, LOCK_FILE);
  const mine = JSON.stringify({ pid: process.pid, hostname: os.hostname(), owner });
  for (let attempt = 0; ; attempt++) {
    try {
      await writeFile(lockPath, mine, { flag: 'wx' });
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST' || attempt > 0) throw toRoboflowError(err, 'ERR_IO', lockPath);
    }
    let holder: { pid?: unknown; hostname?: unknown } = {};
    try {
      holder = JSON.parse(await readFile(lockPath, 'utf8')) as typeof holder;
    } catch {
      // Unreadable or half-written: whoever wrote it is not a running worker's complete lock.
    }
    const sameHost = holder.hostname === os.hostname();
    if (typeof holder.pid === 'number' && (!sameHost || processAlive(holder.pid))) {
      throw new RoboflowError(
        'ERR_CONFIG',
        `buffer directory ${bufferDir} is in use by the worker with pid ${holder.pid} on ${String(holder.hostname)}; ` +
          `give each worker its own --buffer-dir (or delete ${lockPath} if that worker is gone)`,
      );
    }
    await rm(lockPath, { force: true });
  }
  return async () => {
    try {
      if ((await readFile(lockPath, 'utf8')) === mine) await rm(lockPath, { force: true });
    } catch {
      // Already gone.
    }
  };
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    // EPERM: it exists but belongs to someone else.
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function round3(x: number): number {
  return Math.round(x * 1000) / 1000;
}
