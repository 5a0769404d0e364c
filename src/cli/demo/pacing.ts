/**
 * Sending a response body at a capped rate, as a remote store's link does: the demo's file server
 * paces its responses with it, and so does the test object server.
 *
 * Each response has a token bucket of its own, sent in slices; a connection sends one response at
 * a time, so the cap is also per connection.
 */

import type { ServerResponse } from 'node:http';

/** Uncapped responses are written in slices this big: large enough that per-write overhead is
 * small next to the copy, small enough to keep memory per connection bounded. */
export const FAST_SLICE = 256 * 1024;
/** Capped responses use smaller slices so pacing is smooth (~100 slices per second). */
const MIN_PACED_SLICE = 1024;
const MAX_PACED_SLICE = 256 * 1024;
/** A response may bank this much of its own sending time as credit. Timers fire late on a busy
 * machine; without some credit every late wake-up would be lost and the effective rate fall far
 * below the cap. 50 ms keeps bursts short next to any transfer worth capping. Credit is never
 * carried from one response to the next: idle time before a response (its first-byte latency, a
 * socket opened early and left waiting) is not banked, as a real store's link banks nothing. */
const PACE_BURST_SECONDS = 0.05;

/** Resolves after `ms` or as soon as `signal` aborts (never rejects); `Infinity` waits for the
 * signal only. */
export function sleep(ms: number, signal: AbortSignal): Promise<void> {
  if (signal.aborted) return Promise.resolve();
  return new Promise((resolve) => {
    let timer: NodeJS.Timeout | undefined;
    const done = (): void => {
      if (timer !== undefined) clearTimeout(timer);
      signal.removeEventListener('abort', done);
      resolve();
    };
    if (Number.isFinite(ms)) timer = setTimeout(done, Math.max(0, ms));
    signal.addEventListener('abort', done, { once: true });
  });
}

/** Waits for 'drain' or for the response to go away, whichever comes first. */
export function drained(res: ServerResponse, signal: AbortSignal): Promise<void> {
  if (signal.aborted) return Promise.resolve();
  return new Promise((resolve) => {
    const done = (): void => {
      res.off('drain', done);
      signal.removeEventListener('abort', done);
      resolve();
    };
    res.on('drain', done);
    signal.addEventListener('abort', done, { once: true });
  });
}

/** Token bucket of one response body; the debt form (tokens may go negative) paces exactly. */
export interface TokenBucket {
  tokens: number;
  last: number;
}

/** Takes `len` tokens from a response's bucket, sleeping off any debt. A new bucket holds one
 * slice, so the first slice goes at once and the rest at `rate`. */
export async function pace(b: TokenBucket, len: number, rate: number, signal: AbortSignal): Promise<void> {
  const now = performance.now();
  const burst = Math.max(pacedSlice(rate), rate * PACE_BURST_SECONDS);
  b.tokens = Math.min(burst, b.tokens + ((now - b.last) / 1000) * rate);
  b.last = now;
  b.tokens -= len;
  if (b.tokens < 0) await sleep((-b.tokens / rate) * 1000, signal);
}

export function pacedSlice(rate: number): number {
  return Math.max(MIN_PACED_SLICE, Math.min(MAX_PACED_SLICE, Math.floor(rate / 100)));
}
