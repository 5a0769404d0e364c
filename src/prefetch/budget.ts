/**
 * The byte budget of the buffer directory. Every prefetch slot reserves its job's total input
 * size before it starts downloading, so N slots of 4 GB recordings cannot fill the disk between
 * them: when the next reservation would exceed the budget, that slot waits until another one
 * hands its bytes back.
 *
 * Two ways to set the limit:
 * - a fixed number of bytes (`limitBytes`): reservations never sum above it;
 * - `null`: the free space of the buffer file system minus `reserveBytes`, measured by `statfs`
 *   each time a reservation is considered. Bytes already reserved are subtracted from that free
 *   space even when part of them is written, so the estimate errs on the side of waiting: a
 *   slot may wait while the disk still had room, but never runs it out of room.
 *
 * A reservation larger than the whole budget can never be granted; it fails at once with
 * `ERR_NO_SPACE`, marked retryable because another worker (with a larger buffer) may take the
 * job — its attempts still bound how often that is tried. Waiters are served first come, first
 * served: a large job is not starved by a stream of small ones behind it.
 */

import { statfs } from 'node:fs/promises';
import path from 'node:path';
import { abortError, RoboflowError, toRoboflowError } from '../errors.js';

export interface ByteBudgetOptions {
  /**
   * Most bytes reserved at once. null = free space of `dir` minus `reserveBytes`, measured when
   * a reservation is considered. (Default: none — the caller passes it)
   */
  readonly limitBytes: number | null;
  /** The buffer directory whose file system is measured when `limitBytes` is null. */
  readonly dir: string;
  /** Free space left untouched when `limitBytes` is null. Ignored otherwise. */
  readonly reserveBytes: number;
}

/** Hands reserved bytes back. Calling it more than once has no further effect. */
export type ReleaseBytes = () => void;

interface Waiter {
  readonly bytes: number;
  readonly resolve: (release: ReleaseBytes) => void;
  readonly reject: (err: unknown) => void;
  readonly cleanup: () => void;
}

function formatBytes(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${unit === 0 ? value : value.toFixed(1)} ${units[unit]}`;
}

/** Free bytes for an unprivileged user on the file system holding `dir` (or its nearest existing parent). */
async function freeBytes(dir: string): Promise<number> {
  let current = path.resolve(dir);
  for (;;) {
    try {
      const s = await statfs(current);
      return s.bavail * s.bsize;
    } catch (err) {
      const parent = path.dirname(current);
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT' || parent === current) {
        throw toRoboflowError(err, 'ERR_IO', current);
      }
      current = parent;
    }
  }
}

export class ByteBudget {
  readonly #limit: number | null;
  readonly #dir: string;
  readonly #reserve: number;
  #held = 0;
  readonly #waiters: Waiter[] = [];
  /** A grant pass is running; releases during it ask for one more pass. */
  #pumping = false;
  #pumpAgain = false;

  constructor(opts: ByteBudgetOptions) {
    if (opts.limitBytes !== null && (!Number.isSafeInteger(opts.limitBytes) || opts.limitBytes < 0)) {
      throw new RoboflowError('ERR_CONFIG', `buffer budget must be a whole number of bytes >= 0, got ${opts.limitBytes}`);
    }
    this.#limit = opts.limitBytes;
    this.#dir = opts.dir;
    this.#reserve = Math.max(0, opts.reserveBytes);
  }

  /** Bytes reserved and not yet released. */
  get heldBytes(): number {
    return this.#held;
  }

  /** Reservations waiting for room, and the bytes they ask for. */
  get waiting(): { readonly count: number; readonly bytes: number } {
    return { count: this.#waiters.length, bytes: this.#waiters.reduce((n, w) => n + w.bytes, 0) };
  }

  /**
   * Reserves `bytes`; resolves with the function that hands them back once they fit. Rejects
   * with `ERR_NO_SPACE` when they can never fit, or with the signal's abort error.
   */
  acquire(bytes: number, signal?: AbortSignal): Promise<ReleaseBytes> {
    if (!Number.isSafeInteger(bytes) || bytes < 0) {
      return Promise.reject(new RangeError(`bytes to reserve must be a whole number >= 0, got ${bytes}`));
    }
    if (signal?.aborted) return Promise.reject(abortError(signal, 'waiting for buffer space'));
    if (this.#limit !== null && bytes > this.#limit) return Promise.reject(this.#tooBig(bytes, this.#limit));
    return new Promise<ReleaseBytes>((resolve, reject) => {
      const onAbort = () => {
        const i = this.#waiters.indexOf(waiter);
        if (i >= 0) this.#waiters.splice(i, 1);
        reject(abortError(signal, 'waiting for buffer space'));
        // The head may have changed: whoever is next might fit.
        this.#pump();
      };
      const waiter: Waiter = {
        bytes,
        resolve,
        reject,
        cleanup: () => signal?.removeEventListener('abort', onAbort),
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      this.#waiters.push(waiter);
      this.#pump();
    });
  }

  #tooBig(bytes: number, capacity: number): RoboflowError {
    const what =
      this.#limit !== null
        ? `the buffer budget is ${formatBytes(this.#limit)}`
        : `the buffer directory ${this.#dir} has ${formatBytes(Math.max(0, capacity))} free beyond the ${formatBytes(this.#reserve)} reserve`;
    return new RoboflowError(
      'ERR_NO_SPACE',
      `a job needs ${formatBytes(bytes)} of buffer space but ${what}; raise the buffer budget, free disk space, or let a worker with a larger buffer take it`,
      // Another worker may have the room; the job's attempts bound how often this is tried.
      { retryable: true },
    );
  }

  #release(bytes: number): ReleaseBytes {
    let done = false;
    return () => {
      if (done) return;
      done = true;
      this.#held -= bytes;
      this.#pump();
    };
  }

  /** Grants waiters from the head of the line while they fit. */
  #pump(): void {
    if (this.#pumping) {
      this.#pumpAgain = true;
      return;
    }
    this.#pumping = true;
    void this.#grant().finally(() => {
      this.#pumping = false;
      if (this.#pumpAgain) {
        this.#pumpAgain = false;
        this.#pump();
      }
    });
  }

  async #grant(): Promise<void> {
    for (;;) {
      const head = this.#waiters[0];
      if (!head) return;
      let available: number;
      let capacity: number;
      if (this.#limit !== null) {
        capacity = this.#limit;
        available = this.#limit - this.#held;
      } else {
        let free: number;
        try {
          free = await freeBytes(this.#dir);
        } catch (err) {
          this.#settle(head, err);
          continue;
        }
        capacity = free - this.#reserve + this.#held;
        available = free - this.#reserve - this.#held;
        // The waiter may have been aborted while statfs ran.
        if (this.#waiters[0] !== head) continue;
      }
      if (head.bytes <= available) {
        this.#held += head.bytes;
        this.#settle(head, null);
        continue;
      }
      // Nothing is held that could come back: waiting would be forever.
      if (this.#held === 0) {
        this.#settle(head, this.#tooBig(head.bytes, capacity));
        continue;
      }
      return;
    }
  }

  #settle(waiter: Waiter, err: unknown): void {
    const i = this.#waiters.indexOf(waiter);
    if (i >= 0) this.#waiters.splice(i, 1);
    waiter.cleanup();
    if (err === null) waiter.resolve(this.#release(waiter.bytes));
    else waiter.reject(err);
  }
}
