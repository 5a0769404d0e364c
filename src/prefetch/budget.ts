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
 * job — its attempts still bound how often that is tried.
 *
 * Order: bytes are granted strictly in line order, and nobody overtakes the head of the line,
 * so a large job is not starved by a stream of small ones behind it. A prefetch slot takes its
 * place in the line (`turn(claimOrder)`) when its job is claimed, before it knows how many bytes
 * it needs (sizing may take a HEAD per input), and asks for them once it knows. Jobs are handed
 * to the worker in claim order; were bytes handed out in the order the sizes came in, a later
 * job whose size was declared could take bytes an earlier one needs, be ready, and never be
 * handed out because the earlier one waits for exactly those bytes: a hang that no timeout
 * ends. Granted in claim order, every byte held belongs to a job handed out before the one
 * waiting, so each wait ends. A place that is left (the job failed, was aborted or refused)
 * lets the line move on. `acquire()` without a turn queues behind every turn, first come,
 * first served.
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

/** A place in the budget's line, taken before the bytes it will ask for are known. */
export interface BudgetTurn {
  /**
   * Asks for `bytes` at this place in the line; resolves once every earlier place has been
   * granted or left and the bytes fit. Rejects as `ByteBudget.acquire` does, and then the place
   * is left. Once per turn.
   */
  acquire(bytes: number, signal?: AbortSignal): Promise<ReleaseBytes>;
  /** Gives the place up, unless its bytes were granted (they go back with their release). Idempotent. */
  leave(): void;
}

/** One place in the line. */
interface Entry {
  /** Line order: lower first; equal orders in arrival order. */
  readonly order: number;
  /** null while the holder still sizes what it needs: nobody behind it is served meanwhile. */
  bytes: number | null;
  resolve: (release: ReleaseBytes) => void;
  reject: (err: unknown) => void;
  cleanup: () => void;
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
  /** Places not yet granted, in line order. */
  readonly #line: Entry[] = [];
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

  /** Reservations that asked for bytes and wait for room or for their turn, and the bytes they ask for. */
  get waiting(): { readonly count: number; readonly bytes: number } {
    const asked = this.#line.filter((e) => e.bytes !== null);
    return { count: asked.length, bytes: asked.reduce((n, e) => n + (e.bytes ?? 0), 0) };
  }

  /** Places in the line whose holder has not asked for its bytes yet (still sizing). */
  get sizing(): number {
    return this.#line.filter((e) => e.bytes === null).length;
  }

  /**
   * Takes a place in the line at `order` (lower is served first; the prefetch queue passes the
   * claim order), before the bytes are known: nobody behind it is granted bytes until it has
   * asked for them and been served, or has left. Leave the place when the job ends without
   * asking (failed, aborted, refused), or the line stops there.
   */
  turn(order: number): BudgetTurn {
    if (Number.isNaN(order)) throw new RangeError('budget line order must be a number, got NaN');
    const entry: Entry = {
      order,
      bytes: null,
      resolve: () => {},
      reject: () => {},
      cleanup: () => {},
    };
    this.#enqueue(entry);
    let asked = false;
    return {
      acquire: (bytes, signal) => {
        if (asked) return Promise.reject(new Error('a budget turn asks for its bytes once'));
        asked = true;
        return this.#ask(entry, bytes, signal);
      },
      leave: () => {
        // Granted entries have left the line already; their bytes go back with their release.
        if (this.#remove(entry)) {
          entry.cleanup();
          entry.reject(new RoboflowError('ERR_ABORTED', 'left the line for buffer space'));
          this.#pump();
        }
      },
    };
  }

  /**
   * Reserves `bytes` behind every place in the line; resolves with the function that hands them
   * back once they fit. Rejects with `ERR_NO_SPACE` when they can never fit, or with the signal's
   * abort error.
   */
  acquire(bytes: number, signal?: AbortSignal): Promise<ReleaseBytes> {
    return this.turn(Infinity).acquire(bytes, signal);
  }

  #ask(entry: Entry, bytes: number, signal: AbortSignal | undefined): Promise<ReleaseBytes> {
    const refuse = (err: unknown): Promise<ReleaseBytes> => {
      if (this.#remove(entry)) this.#pump();
      return Promise.reject(err);
    };
    if (!Number.isSafeInteger(bytes) || bytes < 0) {
      return refuse(new RangeError(`bytes to reserve must be a whole number >= 0, got ${bytes}`));
    }
    if (signal?.aborted) return refuse(abortError(signal, 'waiting for buffer space'));
    if (this.#limit !== null && bytes > this.#limit) return refuse(this.#tooBig(bytes, this.#limit));
    if (!this.#line.includes(entry)) return Promise.reject(new Error('a budget turn that was left cannot ask for bytes'));
    return new Promise<ReleaseBytes>((resolve, reject) => {
      const onAbort = () => {
        if (this.#remove(entry)) {
          reject(abortError(signal, 'waiting for buffer space'));
          // The head may have changed: whoever is next might fit.
          this.#pump();
        }
      };
      entry.bytes = bytes;
      entry.resolve = resolve;
      entry.reject = reject;
      entry.cleanup = () => signal?.removeEventListener('abort', onAbort);
      signal?.addEventListener('abort', onAbort, { once: true });
      this.#pump();
    });
  }

  #enqueue(entry: Entry): void {
    // After every place of the same or a lower order: first come, first served within one order.
    let i = this.#line.length;
    while (i > 0 && this.#line[i - 1]!.order > entry.order) i--;
    this.#line.splice(i, 0, entry);
  }

  /** Takes the entry out of the line; false when it was not in it (granted or left). */
  #remove(entry: Entry): boolean {
    const i = this.#line.indexOf(entry);
    if (i < 0) return false;
    this.#line.splice(i, 1);
    return true;
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
      const head = this.#line[0];
      // The first in line still sizes its job: nobody behind it goes first.
      if (!head || head.bytes === null) return;
      const bytes = head.bytes;
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
          if (this.#line[0] === head) this.#settle(head, err);
          continue;
        }
        capacity = free - this.#reserve + this.#held;
        available = free - this.#reserve - this.#held;
        // The waiter may have been aborted, or an earlier place taken, while statfs ran.
        if (this.#line[0] !== head) continue;
      }
      if (bytes <= available) {
        this.#held += bytes;
        this.#settle(head, null);
        continue;
      }
      // Nothing is held that could come back: waiting would be forever.
      if (this.#held === 0) {
        this.#settle(head, this.#tooBig(bytes, capacity));
        continue;
      }
      return;
    }
  }

  #settle(entry: Entry, err: unknown): void {
    this.#remove(entry);
    entry.cleanup();
    if (err === null) entry.resolve(this.#release(entry.bytes ?? 0));
    else entry.reject(err);
  }
}
