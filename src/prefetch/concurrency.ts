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
 * A permit is one range transfer (a lane holds it while its body streams). Waiters are served
 * first come, first served.
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

interface Waiter {
  resolve: (release: Release) => void;
  reject: (err: unknown) => void;
  signal: AbortSignal | undefined;
  onAbort: (() => void) | undefined;
}

export class ConcurrencyLimiter {
  readonly max: number;
  readonly min: number;
  private readonly decreaseIntervalMs: number;
  private current: number;
  private inFlight = 0;
  private bodies = 0;
  /** Most bodies streaming at once since the last decrease: what the store showed it serves. */
  private peakBodies = 0;
  private lastDecrease = -Infinity;
  private readonly waiters: Waiter[] = [];

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

  /** Permits that may be held at once now. */
  get limit(): number {
    return Math.floor(this.current);
  }

  /** Permits held now. */
  get active(): number {
    return this.inFlight;
  }

  /** Permit holders whose response body is streaming (the store accepted their request). */
  get serving(): number {
    return this.bodies;
  }

  /** Whether the limit can move at all (`min` < `max`); a fixed limit is just a semaphore. */
  get adaptive(): boolean {
    return this.min < this.max;
  }

  /** The limit is below `max`: the store throttled and the limit has not grown back yet. */
  get throttled(): boolean {
    return this.current < this.max;
  }

  /**
   * A permit holder's response came (`+1`) or its body ended (`-1`): the count tells a throttle
   * how many requests the store was serving. Returns nothing; callers pair the two.
   */
  noteServing(delta: 1 | -1): void {
    this.bodies = Math.max(0, this.bodies + delta);
    this.peakBodies = Math.max(this.peakBodies, this.bodies);
  }

  /** Callers waiting for a permit. */
  get waiting(): number {
    return this.waiters.length;
  }

  /**
   * Whether a holder should give its permit back at the next range boundary: more permits are
   * held than the limit allows (it was lowered), or others are waiting and turns must be fair.
   */
  get shouldYield(): boolean {
    return this.inFlight > this.limit || this.waiters.length > 0;
  }

  /** Waits for a permit. Rejects with the signal's reason (`ERR_ABORTED`) if it aborts first. */
  acquire(signal?: AbortSignal): Promise<Release> {
    if (signal?.aborted) return Promise.reject(abortError(signal, 'waiting for a download slot'));
    if (this.waiters.length === 0 && this.inFlight < this.limit) return Promise.resolve(this.grant());
    return new Promise<Release>((resolve, reject) => {
      const waiter: Waiter = { resolve, reject, signal, onAbort: undefined };
      if (signal) {
        waiter.onAbort = () => {
          const i = this.waiters.indexOf(waiter);
          if (i >= 0) this.waiters.splice(i, 1);
          reject(abortError(signal, 'waiting for a download slot'));
        };
        signal.addEventListener('abort', waiter.onAbort, { once: true });
      }
      this.waiters.push(waiter);
    });
  }

  /**
   * The store asked us to slow down: lower the limit to the requests it was serving, between a
   * tenth and a half lower (see above); once per `decreaseIntervalMs`.
   */
  onThrottle(): void {
    const now = performance.now();
    if (now - this.lastDecrease < this.decreaseIntervalMs) return;
    this.lastDecrease = now;
    // The peak since the last decrease, not the count right now: at a range boundary the store
    // may still count a response whose last byte we have read, so the instant count is often
    // one or two short of what the store serves.
    const target = Math.min(this.current * MAX_DECREASE_FACTOR, Math.max(this.peakBodies, this.current * MIN_DECREASE_FACTOR));
    this.peakBodies = this.bodies;
    this.setLimit(Math.max(this.min, target));
  }

  /** A range completed: additive increase, about +1 per `limit` completions. */
  onSuccess(): void {
    if (this.current >= this.max) return;
    // Successes of requests sent before the last decrease say nothing about the new limit;
    // growing during the window in which throttles are ignored overshoots the store's limit.
    if (performance.now() - this.lastDecrease < this.decreaseIntervalMs) return;
    this.setLimit(Math.min(this.max, this.current + 1 / this.current));
  }

  private setLimit(value: number): void {
    const before = this.limit;
    this.current = value;
    if (this.limit !== before) {
      channels.concurrency.publish({ limit: this.limit });
      this.drain();
    }
  }

  private grant(): Release {
    this.inFlight++;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.inFlight--;
      this.drain();
    };
  }

  private drain(): void {
    while (this.waiters.length > 0 && this.inFlight < this.limit) {
      const w = this.waiters.shift() as Waiter;
      if (w.signal && w.onAbort) w.signal.removeEventListener('abort', w.onAbort);
      w.resolve(this.grant());
    }
  }
}
