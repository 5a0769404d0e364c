/**
 * The prefetch queue: while the worker processes job k, jobs k+1 … k+N are claimed and their
 * inputs downloaded, so the next job's I/O is already done when the processor asks for it.
 *
 * Data flow
 * ---------
 * A *filler* claims jobs from the job queue, one claim per free slot at once, until N slots hold a job that
 * is not yet being processed (N = `config.slots`; with N = 0 a job is claimed only when the
 * worker asks for one, which is the sequential baseline). Each claimed job gets a slot and is
 * judged by the worker's policy first (`policy.checkJob`): a refused job fails at once, before a
 * single request or file is made for it. Otherwise the slot sizes the job's inputs, reserves
 * that many bytes of the buffer budget — granted in claim order, like the jobs are handed out:
 * its place in the budget's line is taken at the claim, before sizing — and downloads every input to
 * `<bufferDir>/<jobId>/<n>-<name>` (the job directory checked to be a real one, not a link).
 * `nextReady()` hands out the earliest-claimed slot whose
 * download finished and starts the job's attempt in the job queue; `notifyComplete()` frees that
 * slot, deletes the job's files and hands its bytes back, and the filler claims the next job.
 *
 * Slot states (changed only in `#setSlotState`)
 * ----------------------------------------------
 * - `claiming`: a claim is in flight (no job yet), or the job is claimed and its inputs are
 *   being sized, or the slot waits for buffer budget — a slot waiting for bytes stays here, and
 *   `slotInfo()` shows `waitingForBytes`.
 * - `downloading`: bytes are reserved; inputs are being downloaded.
 * - `ready`: every input is on disk; waiting for the worker.
 * - `active`: handed to the worker; the job's attempt has started. Back to `ready` only when the
 *   job queue could not start the attempt for a transient reason (a database restart): the
 *   files and the lease are kept and `nextReady()` starts it again after a backoff.
 * - `failed`: the download failed; the failure is being reported to the job queue.
 * - `released`: the queue is closing; the job is being handed back (attempts unchanged).
 * - freed (no state): the slot is gone; its files are deleted and its bytes handed back.
 *
 *     claiming ─► downloading ─► ready ◄─► active ─► freed
 *        │  │          │  │        │
 *        │  └──► failed ◄┘  │        │          failed ─► freed
 *        └────────────► released ◄┘          released ─► freed
 *   (claiming, downloading and ready are also freed directly when the lease is lost)
 *
 * Queue modes (changed only in `#setMode`): `idle` → `running` → `closing` → `closed`, and
 * `destroyed` from any of them.
 *
 * Leases and attempts
 * -------------------
 * Claiming is not an attempt: a job's attempt starts (`JobQueue.start`) when it is handed to the
 * processor. If the job queue cannot start it for a moment, the job keeps its slot, files and
 * lease, and the start is tried again with backoff: dropping it would mean downloading it all
 * again once its lease expired. One heartbeat timer renews the lease of every job a slot holds.
 * A job whose lease was lost (someone else claimed it after it expired) is dropped: its download
 * is aborted and it is never handed out; an active job's `leaseLost` signal is aborted so the
 * worker can stop.
 * Self-fencing: each slot keeps the monotonic time until which its lease is surely valid — when
 * the last confirmed renewal (claim, start or heartbeat) was *sent*, plus the lease, minus the
 * safety margin (`src/lease.ts`). A timer fires at that deadline; if no newer renewal has been
 * confirmed by then, the job is lost for this worker at once, exactly as if another worker had
 * taken it: a prefetched job is dropped (its download aborted, its partial files kept so that a
 * later claim on this machine resumes them) and an active job's `leaseLost` signal aborts, which
 * stops its processor and its upload. A failed renewal is logged as a warning with the time
 * left; the job queue's own query time limit keeps a renewal from hanging past the next one.
 * A download that fails is never handed out either; since no attempt would ever be spent on it,
 * the failure is recorded as one (`start` then `fail`), so a job whose input is missing goes dead
 * after `maxAttempts` instead of bouncing between workers forever.
 *
 * Shutdown
 * --------
 * Every background promise (claims, downloads, heartbeats, failure reports, deletions) is counted.
 * `close()` stops claiming, aborts downloads, releases every job not yet started (attempts
 * unchanged), keeps renewing the leases of active jobs until the worker has called
 * `notifyComplete()` for each, then waits for all background work; `destroy()` aborts everything
 * without handing jobs back (their leases expire) and waits only for the aborted work to settle.
 */

import { rm } from 'node:fs/promises';
import path from 'node:path';
import pino, { type Logger } from 'pino';
import { DEFAULTS } from '../defaults.js';
import { channels, type SlotStateName } from '../diagnostics.js';
import { abortError, backoffDelay, isJobRetryable, RoboflowError, toRoboflowError } from '../errors.js';
import { ensureJobDirectory, jobDirectory, safeLocalName } from '../paths.js';
import { redactText } from '../redact.js';
import type { StorageClients } from '../storage/index.js';
import type { JobQueue, JobRecord, PrefetchConfig, PrefetchStatus, ReadyJob } from '../types.js';
import { leaseSafetyMarginMs, leaseTrustMs } from '../lease.js';
import type { ByteBudget, ReleaseBytes } from './budget.js';
import type { ConcurrencyLimiter, Reservation } from './concurrency.js';
import type { ParallelDownloader } from './downloader.js';

export { safeLocalName } from '../paths.js';

export type SlotState = SlotStateName;
export type QueueMode = 'idle' | 'running' | 'closing' | 'closed' | 'destroyed';

export interface PrefetchQueueOptions {
  readonly queue: JobQueue;
  /** Downloads inputs; the prefetch queue never closes it (the caller owns it). */
  readonly downloader: ParallelDownloader;
  readonly config: PrefetchConfig;
  /** Lease owner name written to the job queue; unique per worker process. */
  readonly owner: string;
  /** Lease length for claims, starts and heartbeats. (Default: 60 s) */
  readonly leaseMs?: number;
  /** Heartbeat interval; keep it well under `leaseMs`. (Default: 20 s) */
  readonly heartbeatMs?: number;
  /** How often to ask an empty job queue again. (Default: 1 s) */
  readonly pollIntervalMs?: number;
  /**
   * How often to ask again instead when the job queue wakes this one on new work
   * (`JobQueue.onWork`, PostgreSQL): only lost workers' expired leases go unannounced.
   * (Default: `pollIntervalMs`)
   */
  readonly fallbackPollIntervalMs?: number;
  /**
   * Return null from `nextReady()` once the job queue has no unfinished job left (nothing
   * pending, claimed or running, ours included) and no slot holds a job, instead of polling on.
   * Waiting for claimed and running jobs means a job that is retried, or whose worker died and
   * whose lease expires, is still picked up before the worker exits. (Default: false)
   */
  readonly drain?: boolean;
  /** Buffer byte budget shared by the slots; none = no limit. */
  readonly budget?: ByteBudget;
  /**
   * Sizes inputs whose job does not state their size (one `stat()` per input). Without it,
   * every input must carry `size`, or the budget is not applied to it.
   */
  readonly clients?: StorageClients;
  /** Backoff of a job whose download failed, before it is claimable again. */
  readonly jobRetry?: { readonly baseDelayMs: number; readonly maxDelayMs: number };
  /**
   * Keep the partial files of jobs released at `close()`, so a later claim of the same job on
   * this machine resumes them. Otherwise they are deleted. (Default: false)
   */
  readonly keepPartial?: boolean;
  /**
   * Judges every claimed job before anything is sized, connected to or written for it (the
   * worker passes its security policy plus its processor rules). A job it throws for fails at
   * once with that error: `ERR_POLICY_DENIED` is not retryable, so the job goes dead with the
   * reason in `last_error`, and no request for it is ever made. (Default: every job passes)
   */
  readonly policy?: { checkJob(job: JobRecord): void };
  /**
   * The downloader's shared limiter on range transfers (`ParallelDownloaderOptions.limiter`).
   * Each slot's download runs at its claim order as priority; given the limiter, a slot also
   * reserves its lanes from the moment its buffer bytes are granted, so a later job whose
   * download got going first does not take them, and starts its download only once every
   * earlier job's has its first lane. (Default: priorities only)
   */
  readonly limiter?: ConcurrencyLimiter;
  readonly log?: Logger;
}

/** A job handed to the worker by `nextReady()`. */
export interface PrefetchedJob extends ReadyJob {
  /** The job's directory in the buffer; the worker may put its output directory inside. */
  readonly dir: string;
  /** Aborted when this worker lost the job's lease: finishing it would be wasted work. */
  readonly leaseLost: AbortSignal;
}

/** A snapshot of one slot, for status displays and tests. */
export interface SlotInfo {
  readonly slot: number;
  readonly state: SlotState;
  readonly jobId: string | null;
  /** Bytes this slot waits for in the buffer budget; 0 when it is not waiting. */
  readonly waitingForBytes: number;
}

export interface PrefetchStats {
  /** Jobs claimed. */
  readonly claimed: number;
  /** Jobs whose inputs were downloaded. */
  readonly downloaded: number;
  /** Downloads that failed and were reported to the job queue. */
  readonly downloadFailures: number;
  /** Jobs handed back at close. */
  readonly released: number;
  /** Jobs dropped because their lease was lost. */
  readonly leaseLost: number;
  readonly bytes: number;
}

interface Slot {
  /** Position shown in events: the lowest number no other live slot uses. */
  readonly id: number;
  state: SlotState | null;
  job: JobRecord | null;
  /** Claim order. */
  seq: number;
  /** Aborts this slot's sizing, budget wait and downloads. */
  readonly abort: AbortController;
  readonly lost: AbortController;
  /** The slot's background download work; settled means no file is being written for it. */
  task: Promise<void>;
  inputPaths: string[];
  bytes: number;
  downloadSeconds: number;
  waitingForBytes: number;
  releaseBytes: ReleaseBytes | null;
  reason: string | null;
  /** `#free` has begun: no more heartbeats, no second free. */
  freeing: boolean;
  /** Consecutive `start()` calls that failed transiently; sets the backoff and the log level. */
  startFailures: number;
  /** `performance.now()` before which `nextReady()` does not try to start this job again. */
  startRetryAt: number;
  /**
   * `performance.now()` until which the lease is surely valid: the send time of the last confirmed
   * renewal plus the lease less the safety margin. 0 before the claim returned.
   */
  leaseValidUntil: number;
  /** Fires at `leaseValidUntil` to fence the job off unless a renewal has moved it. */
  fenceTimer: NodeJS.Timeout | null;
  /**
   * Resolves once this slot's download has its first lane (or has ended): later slots start
   * theirs only then (`#afterEarlierStarted`). Null without a shared limiter.
   */
  lanesStarted: Promise<void> | null;
}

type Target = SlotState | 'freed';

/** `Promise.withResolvers` arrived in Node 22; this is its Node 20 form. */
function deferred(): { promise: Promise<void>; resolve: () => void } {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => {
    resolve = r;
  });
  return { promise, resolve };
}

export class PrefetchQueue {
  readonly #queue: JobQueue;
  readonly #downloader: ParallelDownloader;
  readonly #config: PrefetchConfig;
  readonly #owner: string;
  readonly #leaseMs: number;
  readonly #heartbeatMs: number;
  readonly #pollIntervalMs: number;
  readonly #fallbackPollIntervalMs: number;
  readonly #drain: boolean;
  readonly #budget: ByteBudget | undefined;
  readonly #clients: StorageClients | undefined;
  readonly #jobRetry: { readonly baseDelayMs: number; readonly maxDelayMs: number };
  /** Backoff of claims and starts while the job queue is unreachable. */
  readonly #queueRetry: { readonly baseDelayMs: number; readonly maxDelayMs: number };
  readonly #keepPartial: boolean;
  readonly #policy: { checkJob(job: JobRecord): void } | undefined;
  readonly #limiter: ConcurrencyLimiter | undefined;
  readonly #log: Logger;

  #mode: QueueMode = 'idle';
  readonly #slots: Slot[] = [];
  #seq = 0;
  /** Claims (each with the drain check after an empty one) in flight. */
  #claims = 0;
  /** Claims that found the queue empty and have not yet set the poll timer: no new claim meanwhile. */
  #emptyClaims = 0;
  /** Set while the filler waits: after an empty claim (poll) or a queue error (backoff). */
  #claimTimer: NodeJS.Timeout | null = null;
  /** Why the filler waits: an empty queue (`poll`) or a failing one (`backoff`). */
  #claimTimerKind: 'poll' | 'backoff' = 'poll';
  /** In drain mode: the last claim found nothing and the job queue had no unfinished job. */
  #drained = false;
  /** Consecutive failed claims; the first is logged, the rest only counted. */
  #queueErrorStreak = 0;
  /** Ends the job queue's wake-up subscription; null when it offers none (or not running). */
  #unsubscribeWork: (() => void) | null = null;
  /** Wake-ups heard; a claim that started before one and found nothing asks again at once. */
  #wakeups = 0;
  #heartbeatTimer: NodeJS.Timeout | null = null;
  #heartbeating = false;
  #heartbeatErrorStreak = 0;
  /** `nextReady()` calls waiting; with 0 slots each one asks the filler for a job. */
  #consumers = 0;
  readonly #background = new Set<Promise<unknown>>();
  #change = deferred();
  #closePromise: Promise<void> | null = null;
  #destroyPromise: Promise<void> | null = null;
  #stats = { claimed: 0, downloaded: 0, downloadFailures: 0, released: 0, leaseLost: 0, bytes: 0 };

  constructor(opts: PrefetchQueueOptions) {
    const { config } = opts;
    if (!Number.isSafeInteger(config.slots) || config.slots < 0) {
      throw new RoboflowError('ERR_CONFIG', `prefetch slots must be a whole number >= 0, got ${config.slots}`);
    }
    this.#queue = opts.queue;
    this.#downloader = opts.downloader;
    this.#config = config;
    this.#owner = opts.owner;
    this.#leaseMs = opts.leaseMs ?? DEFAULTS.leaseMs;
    this.#heartbeatMs = opts.heartbeatMs ?? DEFAULTS.heartbeatMs;
    this.#pollIntervalMs = opts.pollIntervalMs ?? DEFAULTS.pollIntervalMs;
    this.#fallbackPollIntervalMs = opts.fallbackPollIntervalMs ?? this.#pollIntervalMs;
    if (this.#heartbeatMs <= 0 || this.#heartbeatMs >= leaseTrustMs(this.#leaseMs)) {
      throw new RoboflowError(
        'ERR_CONFIG',
        `heartbeat interval (${this.#heartbeatMs} ms) must be above 0 and below the lease (${this.#leaseMs} ms) less its safety margin (${leaseSafetyMarginMs(this.#leaseMs)} ms), or the worker gives up its jobs between heartbeats`,
      );
    }
    this.#drain = opts.drain ?? false;
    this.#budget = opts.budget;
    this.#clients = opts.clients;
    this.#jobRetry = opts.jobRetry ?? {
      baseDelayMs: DEFAULTS.jobRetryBaseDelayMs,
      maxDelayMs: DEFAULTS.jobRetryMaxDelayMs,
    };
    // A database that is down gains nothing from being asked every poll.
    this.#queueRetry = { baseDelayMs: Math.max(this.#pollIntervalMs, 250), maxDelayMs: 15_000 };
    this.#keepPartial = opts.keepPartial ?? false;
    this.#policy = opts.policy;
    this.#limiter = opts.limiter;
    this.#log = opts.log ?? pino({ level: 'silent' });
  }

  get mode(): QueueMode {
    return this.#mode;
  }

  /** The design's view (docs/design.md): one status per slot that holds a job not yet handed to the worker. */
  statuses(): { readonly slot: number; readonly jobId: string; readonly status: PrefetchStatus }[] {
    const out: { slot: number; jobId: string; status: PrefetchStatus }[] = [];
    for (const s of this.#ordered()) {
      if (!s.job) continue;
      switch (s.state) {
        case 'claiming':
        case 'downloading':
          out.push({ slot: s.id, jobId: s.job.id, status: { kind: 'downloading' } });
          break;
        case 'ready':
          out.push({ slot: s.id, jobId: s.job.id, status: { kind: 'ready' } });
          break;
        case 'failed':
          out.push({ slot: s.id, jobId: s.job.id, status: { kind: 'failed', reason: s.reason ?? 'unknown' } });
          break;
        case 'active':
        case 'released':
        case null:
          break;
        default: {
          const _exhaustive: never = s.state;
          throw new Error(`unknown slot state ${String(_exhaustive)}`);
        }
      }
    }
    return out;
  }

  /** Every live slot, in claim order. */
  slotInfo(): SlotInfo[] {
    return this.#ordered().flatMap((s) =>
      s.state === null ? [] : [{ slot: s.id, state: s.state, jobId: s.job?.id ?? null, waitingForBytes: s.waitingForBytes }],
    );
  }

  stats(): PrefetchStats {
    return { ...this.#stats };
  }

  /** Starts claiming and downloading. Called by the first `nextReady()`; calling it again does nothing. */
  start(): void {
    if (this.#mode !== 'idle') return;
    this.#setMode('running');
  }

  /**
   * The earliest-claimed job, once its inputs are on disk; waits while it downloads and,
   * when the job queue is empty, polls it. The job's attempt is started before it is returned; a
   * start that fails transiently is tried again after a backoff, with the files kept.
   * Returns null once the queue is closing or destroyed, and in drain mode once there is no work left.
   */
  async nextReady(signal?: AbortSignal): Promise<PrefetchedJob | null> {
    this.start();
    for (;;) {
      if (this.#mode !== 'running') return null;
      if (signal?.aborted) throw abortError(signal, 'waiting for the next prefetched job');
      // Strictly in claim order: the queue's order is the order jobs were meant to run in. A
      // failed slot has left the line already, so the one behind it moves up.
      const slot = this.#ordered().find(
        (s) =>
          s.job !== null &&
          !s.freeing &&
          !s.lost.signal.aborted &&
          (s.state === 'claiming' || s.state === 'downloading' || s.state === 'ready'),
      );
      const startInMs = slot?.state === 'ready' ? Math.max(0, slot.startRetryAt - performance.now()) : undefined;
      if (slot && startInMs === 0) {
        // Not counted as waiting while it starts: with 0 slots, that would claim one job too many.
        const job = await this.#activate(slot);
        if (job) return job;
        continue;
      }
      if (this.#drain && this.#drained && this.#claims === 0 && this.#waitingSlots().length === 0) return null;
      this.#consumers++;
      try {
        this.#fill();
        // close(), destroy() and a lost lease all notify, so they end a start's backoff early too.
        await this.#nextChange(signal, startInMs);
      } finally {
        this.#consumers--;
      }
    }
  }

  /**
   * The worker is done with a job (completed, failed, released — whatever the outcome): frees its
   * slot, deletes its files, hands its bytes back and lets the filler claim the next job. Without
   * `jobId`, the job handed out first. Never rejects; resolves when the files are gone.
   */
  notifyComplete(jobId?: string): Promise<void> {
    const active = this.#ordered().filter((s) => s.state === 'active' && !s.freeing);
    const slot = jobId === undefined ? active[0] : active.find((s) => s.job?.id === jobId);
    if (!slot) {
      this.#log.warn({ jobId }, 'notifyComplete for a job that is not being processed; ignored');
      return Promise.resolve();
    }
    return this.#track(this.#free(slot, false));
  }

  /**
   * Stops claiming, aborts downloads, hands every job not yet started back to the job queue
   * (attempts unchanged) and waits until the worker has called `notifyComplete()` for every job
   * it holds and all background work has finished. Idempotent.
   */
  close(): Promise<void> {
    this.#closePromise ??= this.#close();
    return this.#closePromise;
  }

  /**
   * Aborts everything at once: downloads, claims, heartbeats. Jobs are not handed back (their
   * leases expire); partial files stay for a resume. Resolves when the aborted work has settled.
   * Idempotent; also ends a pending `close()`.
   */
  destroy(): Promise<void> {
    this.#destroyPromise ??= this.#destroy();
    return this.#destroyPromise;
  }

  // -------------------------------------------------------------------------------------------
  // State
  // -------------------------------------------------------------------------------------------

  #setMode(to: QueueMode): void {
    const from = this.#mode;
    let ok: boolean;
    switch (to) {
      case 'idle':
        ok = false;
        break;
      case 'running':
        ok = from === 'idle';
        break;
      case 'closing':
        ok = from === 'idle' || from === 'running';
        break;
      case 'closed':
        ok = from === 'closing';
        break;
      case 'destroyed':
        ok = from !== 'destroyed';
        break;
      default: {
        const _exhaustive: never = to;
        throw new Error(`unknown queue mode ${String(_exhaustive)}`);
      }
    }
    if (!ok) throw new Error(`prefetch queue cannot go from ${from} to ${to}`);
    this.#mode = to;
    switch (to) {
      case 'running':
        this.#heartbeatTimer = setInterval(() => this.#heartbeatTick(), this.#heartbeatMs);
        this.#unsubscribeWork = this.#queue.onWork?.(() => this.#onWork()) ?? null;
        this.#fill();
        break;
      case 'closing':
        this.#stopWakeups();
        this.#clearClaimTimer();
        break;
      case 'closed':
      case 'destroyed':
        this.#stopWakeups();
        this.#clearClaimTimer();
        if (this.#heartbeatTimer) clearInterval(this.#heartbeatTimer);
        this.#heartbeatTimer = null;
        break;
      case 'idle':
        break;
      default: {
        const _exhaustive: never = to;
        throw new Error(`unknown queue mode ${String(_exhaustive)}`);
      }
    }
    this.#notify();
  }

  /** The only place a slot's state changes. */
  #setSlotState(slot: Slot, to: Target): void {
    const from = slot.state;
    let ok: boolean;
    switch (to) {
      case 'claiming':
        ok = from === null && !this.#slots.includes(slot);
        break;
      case 'downloading':
        ok = from === 'claiming' && slot.job !== null;
        break;
      case 'ready':
        // Back from `active` only before the attempt started: a started job's record is `running`,
        // and handing it out again would run it twice.
        ok = from === 'downloading' || (from === 'active' && slot.job !== null && slot.job.status !== 'running');
        break;
      case 'active':
        ok = from === 'ready';
        break;
      case 'failed':
        ok = (from === 'claiming' || from === 'downloading') && slot.job !== null;
        break;
      case 'released':
        ok = (from === 'claiming' || from === 'downloading' || from === 'ready') && slot.job !== null;
        break;
      case 'freed':
        ok = from !== null;
        break;
      default: {
        const _exhaustive: never = to;
        throw new Error(`unknown slot state ${String(_exhaustive)}`);
      }
    }
    if (!ok) {
      throw new Error(`prefetch slot ${slot.id} (job ${slot.job?.id ?? 'none'}) cannot go from ${from ?? 'new'} to ${to}`);
    }
    if (to === 'claiming') this.#slots.push(slot);
    if (to === 'freed') {
      this.#slots.splice(this.#slots.indexOf(slot), 1);
      slot.state = null;
    } else {
      slot.state = to;
    }
    channels.slotTransition.publish({
      slot: slot.id,
      jobId: slot.job?.id ?? null,
      from,
      to: to === 'freed' ? null : to,
    });
    this.#notify();
  }

  #ordered(): Slot[] {
    return [...this.#slots].sort((a, b) => a.seq - b.seq);
  }

  /** Slots that hold, or are about to hold, a job not yet handed to the worker. */
  #waitingSlots(): Slot[] {
    return this.#slots.filter((s) => s.state === 'claiming' || s.state === 'downloading' || s.state === 'ready');
  }

  #notify(): void {
    const { resolve } = this.#change;
    this.#change = deferred();
    resolve();
  }

  /** Resolves at the next change, or once `timeoutMs` has passed; rejects when `signal` aborts. */
  #nextChange(signal?: AbortSignal, timeoutMs?: number): Promise<void> {
    const change = this.#change.promise;
    if (!signal && timeoutMs === undefined) return change;
    return new Promise<void>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const onAbort = () => {
        clearTimeout(timer);
        reject(abortError(signal, 'waiting for the next prefetched job'));
      };
      const done = () => {
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
        resolve();
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      if (timeoutMs !== undefined) timer = setTimeout(done, Math.max(0, timeoutMs));
      void change.then(done);
    });
  }

  #track<T>(p: Promise<T>): Promise<T> {
    this.#background.add(p);
    const forget = () => this.#background.delete(p);
    p.then(forget, forget);
    return p;
  }

  async #settled(): Promise<void> {
    while (this.#background.size > 0) await Promise.allSettled([...this.#background]);
  }

  // -------------------------------------------------------------------------------------------
  // Claiming
  // -------------------------------------------------------------------------------------------

  /**
   * Claims a job for every free slot, all at once: at start, and whenever a slot frees, no slot
   * waits for another's claim (nor for a poll) while the job queue has work.
   */
  #fill(): void {
    for (;;) {
      if (this.#mode !== 'running' || this.#claimTimer || this.#emptyClaims > 0) return;
      // A job that cannot get buffer space yet is better left to another worker than claimed.
      if (this.#slots.some((s) => s.waitingForBytes > 0)) return;
      const want = Math.max(this.#config.slots, this.#consumers > 0 ? 1 : 0);
      // Claims in flight hold a slot in state `claiming`, so they count here.
      if (this.#waitingSlots().length >= want) return;
      this.#claims++;
      void this.#track(this.#claimOne()).finally(() => {
        this.#claims--;
        this.#notify();
        this.#fill();
      });
    }
  }

  #newSlot(): Slot {
    const used = new Set(this.#slots.map((s) => s.id));
    let id = 0;
    while (used.has(id)) id++;
    return {
      id,
      state: null,
      job: null,
      seq: Number.MAX_SAFE_INTEGER,
      abort: new AbortController(),
      lost: new AbortController(),
      task: Promise.resolve(),
      inputPaths: [],
      bytes: 0,
      downloadSeconds: 0,
      waitingForBytes: 0,
      releaseBytes: null,
      reason: null,
      freeing: false,
      startFailures: 0,
      startRetryAt: 0,
      leaseValidUntil: 0,
      fenceTimer: null,
      lanesStarted: null,
    };
  }

  /** The job queue says work arrived: an idle filler claims now instead of at its next poll. */
  #onWork(): void {
    this.#wakeups++;
    if (this.#claimTimer !== null && this.#claimTimerKind === 'poll') {
      this.#clearClaimTimer();
      this.#fill();
    }
  }

  #stopWakeups(): void {
    this.#unsubscribeWork?.();
    this.#unsubscribeWork = null;
  }

  async #claimOne(): Promise<void> {
    const wakeupsBefore = this.#wakeups;
    const slot = this.#newSlot();
    this.#setSlotState(slot, 'claiming');
    let job: JobRecord | null;
    const sentAt = performance.now();
    try {
      job = await this.#queue.claim(this.#owner, this.#leaseMs);
    } catch (err) {
      this.#setSlotState(slot, 'freed');
      this.#claimFailed(toRoboflowError(err, 'ERR_QUEUE'));
      return;
    }
    if (this.#queueErrorStreak > 0) {
      this.#log.info({ failedClaims: this.#queueErrorStreak }, 'job queue reachable again');
      this.#queueErrorStreak = 0;
    }
    if (!job) {
      this.#emptyClaims++;
      try {
        this.#setSlotState(slot, 'freed');
        if (this.#drain) await this.#checkDrained();
        // A wake-up during the claim may announce a job the claim's query did not see yet.
        const woken = this.#wakeups !== wakeupsBefore;
        // A draining worker waits for others' running jobs, which end unannounced: it keeps polling.
        const quiet = this.#unsubscribeWork !== null && !this.#drain;
        this.#waitThenFill(woken ? 0 : quiet ? this.#fallbackPollIntervalMs : this.#pollIntervalMs, 'poll');
      } finally {
        this.#emptyClaims--;
      }
      return;
    }
    this.#drained = false;
    this.#stats.claimed++;
    slot.job = job;
    slot.seq = ++this.#seq;
    this.#renewed(slot, sentAt);
    this.#log.debug({ jobId: job.id, slot: slot.id }, 'claimed job for prefetch');
    if (this.#mode !== 'running') {
      // Closed while the claim was in flight: the job goes straight back.
      void this.#track(this.#releaseSlot(slot));
      return;
    }
    slot.task = this.#track(this.#download(slot));
  }

  async #checkDrained(): Promise<void> {
    try {
      const counts = await this.#queue.counts();
      this.#drained = counts.pending + counts.claimed + counts.running === 0;
    } catch (err) {
      this.#log.warn({ err: toRoboflowError(err, 'ERR_QUEUE') }, 'could not count jobs; will ask again');
      this.#drained = false;
    }
  }

  #claimFailed(err: RoboflowError): void {
    this.#queueErrorStreak++;
    const wait = backoffDelay(this.#queueErrorStreak, err, this.#queueRetry);
    if (this.#queueErrorStreak === 1) {
      this.#log.warn({ err }, 'cannot claim jobs; retrying with backoff');
    } else {
      this.#log.debug({ code: err.code, attempt: this.#queueErrorStreak, waitMs: Math.round(wait) }, 'claim failed again');
    }
    this.#waitThenFill(wait, 'backoff');
  }

  #waitThenFill(ms: number, kind: 'poll' | 'backoff'): void {
    if (this.#mode !== 'running') return;
    this.#clearClaimTimer();
    this.#claimTimerKind = kind;
    this.#claimTimer = setTimeout(() => {
      this.#claimTimer = null;
      this.#fill();
    }, ms);
  }

  #clearClaimTimer(): void {
    if (this.#claimTimer) clearTimeout(this.#claimTimer);
    this.#claimTimer = null;
  }

  // -------------------------------------------------------------------------------------------
  // Downloading
  // -------------------------------------------------------------------------------------------

  async #inputSizes(job: JobRecord, signal: AbortSignal): Promise<number[]> {
    return Promise.all(
      job.inputs.map(async (input) => {
        if (input.size !== undefined) return input.size;
        if (!this.#clients) return 0;
        const source = this.#clients.open(input.url);
        try {
          return (await source.stat({ signal })).size;
        } finally {
          await source.close();
        }
      }),
    );
  }

  /**
   * Waits until every job claimed before this one has its first lane running (or its download
   * ended). Permits are not what is scarce here (the reservations order those); the start of a
   * download is: sizing, a stat request, a job directory and a temp file created and sized, the
   * lanes' first requests. Started side by side, the slots' start-ups share the event loop, the
   * file system and the store with the job needed next; one after the other, a later job's
   * start-up runs while the earlier one streams, and is itself delayed by one start-up at most.
   * (On a loaded machine the bench saw the first job ready later the more slots there were,
   * 1.30 s with 2 slots and 1.55 s with 3 for D ≈ 1.1 s; on a quiet one both orders stayed
   * within the noise of D, so this is the order guaranteed, not a measured gain.) Once started,
   * every slot downloads at full speed.
   */
  async #afterEarlierStarted(slot: Slot, signal: AbortSignal): Promise<void> {
    const earlier = this.#slots.flatMap((s) => (s !== slot && s.seq < slot.seq && s.lanesStarted !== null ? [s.lanesStarted] : []));
    if (earlier.length === 0) return;
    if (signal.aborted) throw abortError(signal, 'waiting for the jobs needed sooner to start downloading');
    await new Promise<void>((resolve, reject) => {
      const onAbort = () => reject(abortError(signal, 'waiting for the jobs needed sooner to start downloading'));
      signal.addEventListener('abort', onAbort, { once: true });
      void Promise.all(earlier).then(() => {
        signal.removeEventListener('abort', onAbort);
        resolve();
      });
    });
  }

  async #download(slot: Slot): Promise<void> {
    const job = slot.job;
    if (!job) return;
    const signal = slot.abort.signal;
    const log = this.#log.child({ jobId: job.id });
    const started = performance.now();
    // Claimed in order, served buffer bytes in order: the place in the budget's line is taken now,
    // before sizing, so a later job whose size is declared cannot take bytes this one needs (it
    // would be ready but never handed out, and this one would wait for its bytes for good).
    const turn = this.#budget?.turn(slot.seq);
    // Later slots start once this one has its first lane or has ended (`#afterEarlierStarted`).
    const lanes = this.#limiter ? deferred() : null;
    slot.lanesStarted = lanes?.promise ?? null;
    let reservation: Reservation | undefined;
    try {
      // First of all: a refused job must not cost a single request or file.
      this.#policy?.checkJob(job);
      // The same job may come back to this worker (retried after a failure) while its previous
      // slot still deletes the job directory; the new download waits for that to finish.
      while (this.#slots.some((s) => s !== slot && s.job?.id === job.id)) {
        await this.#nextChange(signal);
      }
      await this.#afterEarlierStarted(slot, signal);
      const sizes = await this.#inputSizes(job, signal);
      const total = sizes.reduce((a, b) => a + b, 0);
      if (this.#budget && turn) {
        slot.waitingForBytes = total;
        // This slot's own place still counts as sizing until it asks.
        const { heldBytes, sizing, waiting } = this.#budget;
        if (heldBytes > 0 || sizing > 1 || waiting.count > 0) log.debug({ bytes: total }, 'waiting for buffer budget');
        this.#notify();
        try {
          slot.releaseBytes = await turn.acquire(total, signal);
        } finally {
          slot.waitingForBytes = 0;
        }
      }
      // Lanes are promised only with the bytes in hand: a job still waiting for buffer space
      // holds nothing another download could use. Reserved in claim order all the same, since
      // bytes are: no later job takes these lanes before this one asks for them.
      reservation = this.#limiter?.reserve(slot.seq, this.#config.downloadConnections);
      if (reservation && lanes) void reservation.started.then(lanes.resolve);
      this.#setSlotState(slot, 'downloading');
      // Claims pause while a slot waits for bytes; this one got them.
      this.#fill();
      const dir = await ensureJobDirectory(this.#config.bufferDir, job.id);
      const paths: string[] = [];
      for (const [i, input] of job.inputs.entries()) {
        const dest = path.join(dir, safeLocalName(input.url, i));
        const result = await this.#downloader.download(input.url, dest, {
          signal,
          keepPartial: true,
          // Claim order: the job handed out next gets scarce transfers first.
          priority: slot.seq,
          ...(input.size !== undefined ? { expectedSize: input.size } : {}),
          ...(input.checksum !== undefined ? { expectedChecksum: input.checksum } : {}),
        });
        paths.push(dest);
        slot.bytes += result.bytes;
      }
      slot.inputPaths = paths;
      // From the first lane the download got: waiting for buffer space, or for lanes that a job
      // needed sooner holds (a host-wide limit), is not download time.
      slot.downloadSeconds = (performance.now() - (reservation?.firstGrantAt ?? started)) / 1000;
      this.#stats.downloaded++;
      this.#stats.bytes += slot.bytes;
      log.debug({ bytes: slot.bytes, seconds: slot.downloadSeconds }, 'inputs downloaded');
      this.#setSlotState(slot, 'ready');
    } catch (err) {
      // Aborted by close(), destroy() or a lost lease: whoever aborted cleans up.
      if (signal.aborted) return;
      const e = toRoboflowError(err, 'ERR_IO');
      // The jobs behind this one need not wait for the failure to be recorded.
      turn?.leave();
      reservation?.release();
      lanes?.resolve();
      slot.reason = `${e.code}: ${e.message}`;
      this.#setSlotState(slot, 'failed');
      await this.#reportFailure(slot, e, log);
      await this.#free(slot, false);
    } finally {
      // A job that failed, was aborted or refused before its bytes were granted gives up its
      // place, so the jobs behind it get theirs.
      turn?.leave();
      reservation?.release();
      lanes?.resolve();
    }
  }

  /** Records a failed download as a spent attempt, so a job that cannot be downloaded goes dead. */
  async #reportFailure(slot: Slot, err: RoboflowError, log: Logger): Promise<void> {
    const job = slot.job;
    if (!job) return;
    this.#stats.downloadFailures++;
    channels.prefetchError.publish({ jobId: job.id, code: err.code });
    try {
      const started = await this.#queue.start(job.id, this.#owner, this.#leaseMs);
      const backoffMs = backoffDelay(started.attempts, err, this.#jobRetry);
      const refused = err.code === 'ERR_POLICY_DENIED';
      const what = refused ? 'refused by this worker' : 'download failed';
      const after = await this.#queue.fail(job.id, this.#owner, redactText(`${what}: ${err.message}`), {
        retryable: isJobRetryable(err),
        backoffMs,
      });
      log.warn(
        {
          err,
          attempts: after.attempts,
          status: after.status,
          ...(after.status === 'pending' ? { retryInMs: Math.round(backoffMs) } : {}),
        },
        after.status === 'dead' ? `${what}; job is dead` : `${what}; job will be retried`,
      );
    } catch (reportErr) {
      const e = toRoboflowError(reportErr, 'ERR_QUEUE');
      log.warn(
        { err, error: e },
        e.code === 'ERR_LEASE_LOST'
          ? 'download failed, and the lease was lost meanwhile'
          : 'download failed and could not be recorded; the job returns when its lease expires',
      );
    }
  }

  // -------------------------------------------------------------------------------------------
  // Handing out and freeing
  // -------------------------------------------------------------------------------------------

  async #activate(slot: Slot): Promise<PrefetchedJob | null> {
    const job = slot.job;
    if (!job) return null;
    this.#setSlotState(slot, 'active');
    // The slot no longer counts as ahead: the next job starts downloading now.
    this.#fill();
    let started: JobRecord;
    const sentAt = performance.now();
    try {
      started = await this.#queue.start(job.id, this.#owner, this.#leaseMs);
    } catch (err) {
      const e = toRoboflowError(err, 'ERR_QUEUE');
      // Downloading the inputs again costs far more than waiting for the job queue to come back.
      if (e.retryable && !slot.lost.signal.aborted) {
        this.#startFailed(slot, e);
        return null;
      }
      this.#log.warn(
        { jobId: job.id, err: e },
        e.code === 'ERR_LEASE_LOST'
          ? 'lease lost before processing started; dropping the job'
          : 'could not start the job; dropping it (it returns when its lease expires)',
      );
      if (e.code === 'ERR_LEASE_LOST') this.#stats.leaseLost++;
      await this.#track(this.#free(slot, false));
      return null;
    }
    if (slot.startFailures > 0) {
      this.#log.info({ jobId: job.id, failedStarts: slot.startFailures }, 'job started; the job queue is reachable again');
    }
    slot.job = started;
    this.#renewed(slot, sentAt);
    // Fenced while the start was in flight: the worker must not begin a job it no longer holds.
    if (slot.lost.signal.aborted) {
      await this.#track(this.#free(slot, false));
      return null;
    }
    return {
      job: started,
      inputPaths: slot.inputPaths,
      downloadSeconds: slot.downloadSeconds,
      bytes: slot.bytes,
      dir: jobDirectory(this.#config.bufferDir, job.id),
      leaseLost: slot.lost.signal,
    };
  }

  /** Puts a job whose attempt could not start back in line, files and lease kept, until its backoff ends. */
  #startFailed(slot: Slot, err: RoboflowError): void {
    slot.startFailures++;
    const wait = backoffDelay(slot.startFailures, err, this.#queueRetry);
    slot.startRetryAt = performance.now() + wait;
    const jobId = slot.job?.id;
    if (slot.startFailures === 1) {
      this.#log.warn({ jobId, err }, 'could not start the job; keeping its files and retrying with backoff');
    } else {
      this.#log.debug({ jobId, code: err.code, attempt: slot.startFailures, waitMs: Math.round(wait) }, 'job start failed again');
    }
    // As `ready` the job is heartbeated, dropped if its lease is lost and handed back by close().
    this.#setSlotState(slot, 'ready');
    // close() handed back the ready slots before this one returned and now waits only for active ones.
    if (this.#mode === 'closing') void this.#track(this.#releaseSlot(slot));
  }

  /** Deletes the slot's files (unless kept), hands its bytes back and removes the slot. */
  async #free(slot: Slot, keepFiles: boolean): Promise<void> {
    if (slot.freeing) return;
    slot.freeing = true;
    this.#clearFence(slot);
    const job = slot.job;
    if (job && !keepFiles) {
      try {
        await rm(jobDirectory(this.#config.bufferDir, job.id), { recursive: true, force: true });
      } catch (err) {
        this.#log.warn({ jobId: job.id, err: toRoboflowError(err) }, 'could not delete the job directory');
      }
    }
    slot.releaseBytes?.();
    slot.releaseBytes = null;
    if (slot.state !== null) this.#setSlotState(slot, 'freed');
    // A drain waits for the last unfinished job; one just finished, so look now, not a poll later.
    if (this.#drain && this.#claimTimer && this.#claimTimerKind === 'poll') this.#clearClaimTimer();
    this.#fill();
  }

  /** Hands a job that was not started back to the job queue, attempts unchanged. */
  async #releaseSlot(slot: Slot): Promise<void> {
    const job = slot.job;
    if (!job) return;
    this.#setSlotState(slot, 'released');
    slot.abort.abort(new RoboflowError('ERR_CLOSED', `prefetch of job ${job.id} stopped: the worker is shutting down`));
    await slot.task;
    try {
      await this.#queue.release(job.id, this.#owner);
      this.#stats.released++;
      this.#log.debug({ jobId: job.id }, 'released prefetched job');
    } catch (err) {
      const e = toRoboflowError(err, 'ERR_QUEUE');
      this.#log.warn({ jobId: job.id, err: e }, 'could not release the job; it returns when its lease expires');
    }
    await this.#free(slot, this.#keepPartial);
  }

  // -------------------------------------------------------------------------------------------
  // Leases
  // -------------------------------------------------------------------------------------------

  #heartbeatTick(): void {
    if (this.#heartbeating) return;
    // A fenced job is not renewed: it was given up, and renewing it would only keep the job from
    // the worker that takes it over.
    const held = this.#slots.filter(
      (s) =>
        s.job !== null &&
        !s.freeing &&
        !s.lost.signal.aborted &&
        (s.state === 'claiming' || s.state === 'downloading' || s.state === 'ready' || s.state === 'active'),
    );
    if (held.length === 0) return;
    this.#heartbeating = true;
    void this.#track(
      Promise.all(held.map((s) => this.#heartbeat(s))).then((results) => {
        const failure = results.find((r) => r !== null);
        if (failure) {
          // Each failed renewal has been logged with the time its job has left.
          this.#heartbeatErrorStreak++;
        } else if (this.#heartbeatErrorStreak > 0) {
          this.#log.info({ failedTicks: this.#heartbeatErrorStreak }, 'lease heartbeats work again');
          this.#heartbeatErrorStreak = 0;
        }
      }),
    ).finally(() => {
      this.#heartbeating = false;
    });
  }

  /** Renews one lease; returns the error when the job queue could not be reached. */
  async #heartbeat(slot: Slot): Promise<RoboflowError | null> {
    const job = slot.job;
    if (!job) return null;
    const sentAt = performance.now();
    try {
      await this.#queue.heartbeat(job.id, this.#owner, this.#leaseMs);
      this.#renewed(slot, sentAt);
      return null;
    } catch (err) {
      const e = toRoboflowError(err, 'ERR_QUEUE');
      // The slot may have been freed meanwhile (the job completed): nothing is lost then.
      if (slot.freeing || slot.state === null || slot.state === 'released' || slot.state === 'failed') return null;
      if (e.code === 'ERR_LEASE_LOST' || e.code === 'ERR_JOB_NOT_FOUND') {
        await this.#leaseLost(slot, e, false);
        return null;
      }
      if (!slot.lost.signal.aborted) {
        const leftMs = Math.max(0, Math.round(slot.leaseValidUntil - performance.now()));
        this.#log.warn(
          { jobId: job.id, err: e, leaseLeftMs: leftMs, state: slot.state },
          `lease renewal failed; the job is given up in ${leftMs} ms unless a renewal gets through`,
        );
      }
      return e;
    }
  }

  /** A renewal sent at `sentAt` was confirmed: the lease surely holds until then + lease − margin. */
  #renewed(slot: Slot, sentAt: number): void {
    if (slot.freeing || slot.lost.signal.aborted) return;
    const until = sentAt + leaseTrustMs(this.#leaseMs);
    if (until <= slot.leaseValidUntil) return;
    slot.leaseValidUntil = until;
    this.#armFence(slot);
  }

  #armFence(slot: Slot): void {
    this.#clearFence(slot);
    slot.fenceTimer = setTimeout(() => {
      slot.fenceTimer = null;
      this.#checkFence(slot);
    }, Math.max(0, slot.leaseValidUntil - performance.now()));
  }

  #clearFence(slot: Slot): void {
    if (slot.fenceTimer) clearTimeout(slot.fenceTimer);
    slot.fenceTimer = null;
  }

  /** At the deadline: the lease can no longer be trusted, so the job is lost for this worker. */
  #checkFence(slot: Slot): void {
    const job = slot.job;
    if (!job || slot.freeing || slot.lost.signal.aborted || slot.state === null) return;
    // A timer may fire a little early; a renewal confirmed meanwhile re-armed it already.
    if (performance.now() < slot.leaseValidUntil) {
      this.#armFence(slot);
      return;
    }
    const err = new RoboflowError(
      'ERR_LEASE_LOST',
      `job ${job.id}: no lease renewal confirmed for ${leaseTrustMs(this.#leaseMs)} ms (lease ${this.#leaseMs} ms less a ` +
        `${leaseSafetyMarginMs(this.#leaseMs)} ms safety margin), so the lease may have expired and another worker may hold ` +
        'the job; this worker stops working on it and publishes nothing for it',
    );
    void this.#track(this.#leaseLost(slot, err, true));
  }

  /**
   * The job is no longer this worker's: refused by the queue, or `fenced` by the local deadline.
   * A fenced prefetched job keeps its partial files, for a resume if it comes back here.
   */
  async #leaseLost(slot: Slot, err: RoboflowError, fenced: boolean): Promise<void> {
    const job = slot.job;
    if (!job || slot.lost.signal.aborted) return;
    this.#stats.leaseLost++;
    this.#clearFence(slot);
    slot.lost.abort(err);
    const log = this.#log.child({ jobId: job.id });
    const state = slot.state;
    switch (state) {
      case 'active':
        log.warn(
          { err },
          fenced
            ? 'lease can no longer be valid; stopping the job: processor stopped, upload aborted, nothing published or completed'
            : 'lease lost while the job is being processed; another worker may hold it now',
        );
        return;
      case 'claiming':
      case 'downloading':
      case 'ready':
        log.warn(
          { err, state },
          fenced
            ? 'lease can no longer be valid; dropping the prefetched job, its partial files kept for a resume'
            : 'lease lost; dropping the prefetched job without processing it',
        );
        slot.abort.abort(err);
        await slot.task;
        // close() may have taken the slot meanwhile; then it releases and frees it.
        if (slot.state === 'claiming' || slot.state === 'downloading' || slot.state === 'ready') {
          await this.#free(slot, fenced);
        }
        return;
      case 'failed':
      case 'released':
      case null:
        return;
      default: {
        const _exhaustive: never = state;
        throw new Error(`unknown slot state ${String(_exhaustive)}`);
      }
    }
  }

  // -------------------------------------------------------------------------------------------
  // Shutdown
  // -------------------------------------------------------------------------------------------

  async #close(): Promise<void> {
    if (this.#mode === 'destroyed') return this.destroy();
    this.#setMode('closing');
    await Promise.all(this.#waitingSlots().map((s) => this.#track(this.#releaseSlot(s))));
    // A claim still in flight releases its job itself; the active jobs are the worker's.
    while (this.#mode === 'closing' && (this.#claims > 0 || this.#slots.some((s) => s.state === 'active'))) {
      await this.#nextChange();
    }
    await this.#settled();
    if (this.#mode === 'closing') this.#setMode('closed');
  }

  async #destroy(): Promise<void> {
    if (this.#mode === 'closed') return;
    this.#setMode('destroyed');
    const err = new RoboflowError('ERR_ABORTED', 'the prefetch queue was destroyed');
    for (const s of this.#slots) {
      this.#clearFence(s);
      s.abort.abort(err);
    }
    await this.#settled();
  }
}
