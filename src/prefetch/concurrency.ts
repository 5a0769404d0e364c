/**
 * Adaptive limit on range transfers in flight, AIMD as in TCP congestion control: a store that
 * answers "slow down" (`ERR_THROTTLED`: 429, 503 SlowDown) lowers the limit, each range that
 * completes raises it by `1 / limit`, so the limit grows by about one per round of ranges back
 * to `max`. One limiter may be shared by every download of a worker, so the store sees one
 * well-behaved client rather than several that each back off on their own.
 *
 * How far a throttle lowers the limit: to the most of our requests the store served at once since
 * the last decrease (bodies streaming), which is what it showed it can take — but by at least a
 * tenth and at most three quarters. A store that caps concurrent requests at K is thus found in one or two
 * steps and then probed at K + 1 and set back to K, instead of being halved to K / 2 each time,
 * which would leave a quarter of its capacity unused on average; a store that throttles for
 * another reason (request rate, a partition splitting) still sees the limit fall geometrically.
 *
 * A permit is one range transfer (a lane holds it while its body streams).
 *
 * Priority: downloads that share one limiter (a worker's prefetch slots) take views of it with
 * `withPriority(p)`; the views share the permits, the limit and its adaptation. Waiters are served
 * by priority, lowest first, and first come, first served within one priority. A holder yields
 * its permit at a range boundary only to a waiter of its own priority or a more urgent one, so the
 * job handed out next keeps every lane it can use and later jobs take what is left: when permits
 * are scarce (a host-wide limit, a throttling store) the next job is ready after about the time
 * it takes alone, not after the time all of them take together. A limiter built without a
 * priority is priority 0, and with a single priority everything is as without priorities.
 */

import { abortError } from '../errors.js';
import { channels } from '../diagnostics.js';

export interface ConcurrencyLimiterOptions {
  /** Upper bound and starting value of the limit. */
  readonly max: number;
  /** The limit never goes below this. (Default: 1) */
  readonly min?: number;
  /**
   * Two throttles closer together than this count once: the ranges in flight when the store
   * started throttling all fail at about the same time, and halving once per failure would
   * collapse the limit to `min` for one event. About one round trip of a range. (Default: 1 s)
   */
  readonly decreaseIntervalMs?: number;
}

/** A throttle lowers the limit by at least a tenth... */
const MAX_DECREASE_FACTOR = 0.9;
/** ...and by at most three quarters (a storm that lets nothing through: 16 → 4 → 1). */
const MIN_DECREASE_FACTOR = 0.25;

/** Gives the permit back. Calling it more than once has no effect. */
export type Release = () => void;

/** Permits promised to one priority (`ConcurrencyLimiter.reserve`). */
export interface Reservation {
  /** `performance.now()` when that priority first took a permit: its first lane started. */
  readonly firstGrantAt: number | null;
  /**
   * Resolves when that priority first took a permit, or when the reservation is released,
   * whichever comes first (never rejects): from then on its download has its lanes going, or
   * has ended.
   */
  readonly started: Promise<void>;
  /** Drops what is left of the promise. Idempotent. */
  release(): void;
}

interface Waiter {
  readonly priority: number;
  resolve: (release: Release) => void;
  reject: (err: unknown) => void;
  signal: AbortSignal | undefined;
  onAbort: (() => void) | undefined;
}

/** The state every view of one limiter shares. */
class LimiterCore {
  readonly max: number;
  readonly min: number;
  readonly decreaseIntervalMs: number;
  current: number;
  inFlight = 0;
  bodies = 0;
  /** Most bodies streaming at once since the last decrease: what the store showed it serves. */
  peakBodies = 0;
  lastDecrease = -Infinity;
  /** Sorted by priority, then arrival. */
  readonly waiters: Waiter[] = [];
  /** Permits promised to downloads about to ask for them, by priority (see `reserve`). */
  readonly reserved = new Map<number, { left: number; firstGrantAt: number | null; onStart: () => void }>();

  constructor(opts: ConcurrencyLimiterOptions) {
    const max = Math.floor(opts.max);
    const min = Math.floor(opts.min ?? 1);
    if (!(max >= 1)) throw new RangeError(`concurrency max must be at least 1, got ${opts.max}`);
    if (!(min >= 1 && min <= max)) throw new RangeError(`concurrency min must be in [1, ${max}], got ${opts.min}`);
    this.max = max;
    this.min = min;
    this.decreaseIntervalMs = opts.decreaseIntervalMs ?? 1_000;
    this.current = max;
  }

  get limit(): number {
    return Math.floor(this.current);
  }

  /** Permits promised to priorities more urgent than `priority`. */
  reservedBefore(priority: number): number {
    let n = 0;
    for (const [p, r] of this.reserved) if (p < priority) n += r.left;
    return n;
  }

  /** Whether a caller of `priority` may take a permit now, waiters aside. */
  canGrant(priority: number): boolean {
    return this.inFlight + this.reservedBefore(priority) < this.limit;
  }

  /** A download of `priority` took a permit: one promised permit fewer. */
  consumeReservation(priority: number): void {
    const r = this.reserved.get(priority);
    if (r === undefined) return;
    if (r.firstGrantAt === null) {
      r.firstGrantAt = performance.now();
      r.onStart();
    }
    r.left = Math.max(0, r.left - 1);
  }

  /** Someone of `priority` or more urgent waits. */
  waitingAtOrBefore(priority: number): boolean {
    // Sorted: the first waiter is the most urgent one.
    const first = this.waiters[0];
    return first !== undefined && first.priority <= priority;
  }

  enqueue(waiter: Waiter): void {
    // After every waiter of the same or a more urgent priority: FIFO within a priority.
    let i = this.waiters.length;
    while (i > 0 && this.waiters[i - 1]!.priority > waiter.priority) i--;
    this.waiters.splice(i, 0, waiter);
  }

  setLimit(value: number): void {
    const before = this.limit;
    this.current = value;
    if (this.limit !== before) {
      channels.concurrency.publish({ limit: this.limit });
      this.drain();
    }
  }

  grant(): Release {
    this.inFlight++;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.inFlight--;
      this.drain();
    };
  }

  drain(): void {
    // In priority order; a waiter held back by more urgent reservations holds back the ones after it.
    while (this.waiters.length > 0 && this.canGrant(this.waiters[0]!.priority)) {
      const w = this.waiters.shift() as Waiter;
      if (w.signal && w.onAbort) w.signal.removeEventListener('abort', w.onAbort);
      this.consumeReservation(w.priority);
      w.resolve(this.grant());
    }
  }
}

export class ConcurrencyLimiter {
  /** Not readonly: `withPriority()` points a new view at this one's core. */
  private core: LimiterCore;
  private priority = 0;

  constructor(opts: ConcurrencyLimiterOptions) {
    this.core = new LimiterCore(opts);
  }

  /**
   * A view of this limiter whose `acquire()` and `shouldYield` act at `priority` (lower is more
   * urgent); permits, limit and adaptation stay shared. The prefetch queue gives each download
   * its job's claim order, so the job handed out next gets lanes first.
   */
  withPriority(priority: number): ConcurrencyLimiter {
    if (!Number.isFinite(priority)) throw new RangeError(`priority must be a finite number, got ${priority}`);
    const view = new ConcurrencyLimiter({ max: this.core.max, min: this.core.min });
    view.core = this.core;
    view.priority = priority;
    return view;
  }

  /** Upper bound and starting value of the limit. */
  get max(): number {
    return this.core.max;
  }

  /** The limit never goes below this. */
  get min(): number {
    return this.core.min;
  }

  /** Permits that may be held at once now. */
  get limit(): number {
    return this.core.limit;
  }

  /** Permits held now (by every view). */
  get active(): number {
    return this.core.inFlight;
  }

  /** Permit holders whose response body is streaming (the store accepted their request). */
  get serving(): number {
    return this.core.bodies;
  }

  /** Whether the limit can move at all (`min` < `max`); a fixed limit is just a semaphore. */
  get adaptive(): boolean {
    return this.core.min < this.core.max;
  }

  /** The limit is below `max`: the store throttled and the limit has not grown back yet. */
  get throttled(): boolean {
    return this.core.current < this.core.max;
  }

  /**
   * A permit holder's response came (`+1`) or its body ended (`-1`): the count tells a throttle
   * how many requests the store was serving. Returns nothing; callers pair the two.
   */
  noteServing(delta: 1 | -1): void {
    const c = this.core;
    c.bodies = Math.max(0, c.bodies + delta);
    c.peakBodies = Math.max(c.peakBodies, c.bodies);
  }

  /** Callers waiting for a permit (at any priority). */
  get waiting(): number {
    return this.core.waiters.length;
  }

  /**
   * Whether a holder should give its permit back at the next range boundary: more permits are
   * held than the limit allows (it was lowered), or a waiter of this view's priority or a more
   * urgent one is waiting and turns must be fair. Less urgent waiters take what is left.
   */
  get shouldYield(): boolean {
    const c = this.core;
    return c.inFlight + c.reservedBefore(this.priority) > c.limit || c.waitingAtOrBefore(this.priority);
  }

  /**
   * Promises `permits` to the download of `priority` that is about to start (it is still sizing
   * its input or waiting for its first response): until it has asked for them, less urgent
   * callers do not take them, so a later job that got going first does not hold lanes the job
   * needed next must then wait for until a range ends. Each permit that priority takes redeems
   * one; `release()` the reservation when the download ends, to drop what is left. One
   * reservation per priority.
   */
  reserve(priority: number, permits: number): Reservation {
    const c = this.core;
    let onStart!: () => void;
    const started = new Promise<void>((resolve) => (onStart = resolve));
    const entry = { left: Math.max(0, Math.floor(permits)), firstGrantAt: null as number | null, onStart };
    c.reserved.set(priority, entry);
    let done = false;
    return {
      get firstGrantAt() {
        return entry.firstGrantAt;
      },
      started,
      release: () => {
        if (done) return;
        done = true;
        if (c.reserved.get(priority) === entry) c.reserved.delete(priority);
        onStart();
        c.drain();
      },
    };
  }

  /** Waits for a permit. Rejects with the signal's reason (`ERR_ABORTED`) if it aborts first. */
  acquire(signal?: AbortSignal): Promise<Release> {
    const c = this.core;
    if (signal?.aborted) return Promise.reject(abortError(signal, 'waiting for a download slot'));
    if (!c.waitingAtOrBefore(this.priority) && c.canGrant(this.priority)) {
      c.consumeReservation(this.priority);
      return Promise.resolve(c.grant());
    }
    return new Promise<Release>((resolve, reject) => {
      const waiter: Waiter = { priority: this.priority, resolve, reject, signal, onAbort: undefined };
      if (signal) {
        waiter.onAbort = () => {
          const i = c.waiters.indexOf(waiter);
          if (i >= 0) c.waiters.splice(i, 1);
          reject(abortError(signal, 'waiting for a download slot'));
        };
        signal.addEventListener('abort', waiter.onAbort, { once: true });
      }
      c.enqueue(waiter);
    });
  }

  /**
   * The store asked us to slow down: lower the limit to the requests it was serving, between a
   * tenth and three quarters lower (see above); once per `decreaseIntervalMs`.
   */
  onThrottle(): void {
    const c = this.core;
    const now = performance.now();
    if (now - c.lastDecrease < c.decreaseIntervalMs) return;
    c.lastDecrease = now;
    // The peak since the last decrease, not the count right now: at a range boundary the store
    // may still count a response whose last byte we have read, so the instant count is often
    // one or two short of what the store serves.
    const target = Math.min(c.current * MAX_DECREASE_FACTOR, Math.max(c.peakBodies, c.current * MIN_DECREASE_FACTOR));
    c.peakBodies = c.bodies;
    c.setLimit(Math.max(c.min, target));
  }

  /** A range completed: additive increase, about +1 per `limit` completions. */
  onSuccess(): void {
    const c = this.core;
    if (c.current >= c.max) return;
    // Successes of requests sent before the last decrease say nothing about the new limit;
    // growing during the window in which throttles are ignored overshoots the store's limit.
    if (performance.now() - c.lastDecrease < c.decreaseIntervalMs) return;
    c.setLimit(Math.min(c.max, c.current + 1 / c.current));
  }
}

/** How many range transfers and sockets the downloads of one worker need at most. */
export interface HostLanes {
  /** Range transfers streaming at once across every download: the shared limiter's `max`. */
  readonly transfers: number;
  /** Connections per origin: a lane may have a look-ahead request open beside its body. */
  readonly sockets: number;
}

/**
 * Every slot downloads at full speed unless the operator set a host-wide limit: `slots`
 * downloads (one with 0 slots) of `downloadConnections` lanes each, and two sockets per lane
 * (its body and its look-ahead request). With `maxHostConnections` the lanes of all downloads
 * share that many transfers, the job handed out next first (see `withPriority`).
 */
export function hostLanes(o: {
  readonly slots: number;
  readonly downloadConnections: number;
  readonly maxHostConnections: number | null;
}): HostLanes {
  const transfers = o.maxHostConnections ?? Math.max(1, o.slots) * o.downloadConnections;
  return { transfers, sockets: 2 * transfers };
}
