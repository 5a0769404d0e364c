/**
 * DurabilityLedger: which bytes of a partial download are written, which are durable, and the
 * batched `fdatasync` + state writes that move bytes from the one to the other; step 5 of a
 * download (`downloader.ts`, "durability"), the core of its crash safety.
 *
 * The lanes (`transfer.ts`) tell it what they wrote: `noteWritten` as a chunk's bytes land,
 * `chunkDone` when a chunk is whole. It records them in the state file (`resume-state.ts`) only
 * after an `fdatasync` of the temp file that covers them (with `durability: 'disk'`; with
 * `'process'` there is no `fdatasync`, and the state names this boot), so a resumed run trusts
 * nothing that a crash could have lost: whole chunks, and for chunks being fetched the prefix
 * written so far. One `fdatasync` plus one atomic state write covers everything written since
 * the previous one; it runs at most every `STATE_FLUSH_INTERVAL_MS`, at once when `flushAtBytes`
 * wait for it, and when the pass ends (`flush`, `settle`). At `backlogLimitBytes` waiting bytes
 * the lanes stop writing (`backlogFull`, `drainBacklog`) until a state write has recorded them,
 * which is what bounds what a crash costs (see "Crash bound" in `downloader.ts`).
 *
 * It knows nothing of HTTP or of the lanes: a file handle, a plan, the state file's path and
 * what was written. A failed background state write goes to `onError` (the pass fails with it).
 */

import type { FileHandle } from 'node:fs/promises';
import type { Durability } from '../types.js';
import type { ChunkPlan, ChunkSet, IndexedRange } from './ranges.js';
import { pageCacheBootId, type ResumeIdentity, STATE_VERSION, tailOf, writeResumeState } from './resume-state.js';

/**
 * Batching window of state writes: a crash loses at most the chunks completed in this window
 * (besides those in flight), while a fast download does not `fdatasync` once per chunk.
 */
const STATE_FLUSH_INTERVAL_MS = 250;

export interface DurabilityLedgerOptions {
  /** The temp file; `fdatasync`ed before each state write with `durability: 'disk'`. */
  readonly fh: FileHandle;
  /** The state file (`partialPaths(dest).state`). */
  readonly statePath: string;
  /** The object version and chunk size the state file names. */
  readonly identity: ResumeIdentity;
  readonly plan: ChunkPlan;
  /** Chunks a previous run made durable. */
  readonly completed: ChunkSet;
  /** Chunk index → durable bytes from the chunk's start, of chunks a previous run began. */
  readonly partial: ReadonlyMap<number, number>;
  readonly durability: Durability;
  /** Written-but-unrecorded bytes that start a state write at once. */
  readonly flushAtBytes: number;
  /** Written-but-unrecorded bytes at which writers wait (`drainBacklog`) until a state write ends. */
  readonly backlogLimitBytes: number;
  /** The pass: once aborted, no state write is started on its own, and nobody waits for one. */
  readonly signal: AbortSignal;
  /** A state write started in the background failed. */
  readonly onError: (err: unknown) => void;
}

export class DurabilityLedger {
  /** Chunks fully written (in the page cache; not necessarily durable yet). */
  private readonly written: ChunkSet;
  /** Chunks durable and recorded in the state file. */
  private readonly durable: ChunkSet;
  /** Chunks written completely since the last state write. */
  private readonly unrecorded: number[] = [];
  /** Chunk index → file offset written up to, for chunks being fetched. */
  private readonly writtenTo = new Map<number, number>();
  /** Chunk index → file offset durable and recorded up to, for chunks not complete. */
  private readonly durableTo = new Map<number, number>();
  private readonly fh: FileHandle;
  private readonly statePath: string;
  private readonly identity: ResumeIdentity;
  private readonly plan: ChunkPlan;
  private readonly durability: Durability;
  /** Written-but-unrecorded bytes that start a state write at once. */
  private readonly flushAtBytes: number;
  /** Written-but-unrecorded bytes at which lanes stop writing until a state write ends. */
  private readonly backlogLimitBytes: number;
  private readonly signal: AbortSignal;
  private readonly onError: (err: unknown) => void;
  private flushing: Promise<void> | undefined;
  private flushTimer: NodeJS.Timeout | undefined;
  private lastFlushAt = 0;

  constructor(o: DurabilityLedgerOptions) {
    this.fh = o.fh;
    this.statePath = o.statePath;
    this.identity = o.identity;
    this.plan = o.plan;
    this.durability = o.durability;
    this.flushAtBytes = o.flushAtBytes;
    this.backlogLimitBytes = o.backlogLimitBytes;
    this.signal = o.signal;
    this.onError = o.onError;
    this.written = o.completed.clone();
    this.durable = o.completed.clone();
    for (const [index, bytes] of o.partial) this.durableTo.set(index, this.chunk(index).start + bytes);
  }

  /** Nothing is durable yet: no earlier run recorded a byte, and no state write of this one did. */
  get recordsNothing(): boolean {
    return this.durable.size === 0 && this.durableTo.size === 0;
  }

  /** Where fetching a chunk starts: after its durable prefix from an earlier run, if any. */
  resumeFrom(range: IndexedRange): number {
    return this.durableTo.get(range.index) ?? range.start;
  }

  /** The chunk `index` is written up to the file offset `to` (not necessarily to its end). */
  noteWritten(index: number, to: number): void {
    this.writtenTo.set(index, Math.max(to, this.writtenTo.get(index) ?? 0));
    this.scheduleFlush();
  }

  /** The chunk `index` is written whole. */
  chunkDone(index: number): void {
    this.written.add(index);
    this.writtenTo.delete(index);
    this.unrecorded.push(index);
    this.scheduleFlush();
  }

  /** The end of the object's prefix made of whole written chunks (the object's size when all are). */
  writtenPrefix(): number {
    const firstMissing = this.written.firstMissing();
    return firstMissing >= this.written.count ? this.plan.size : this.chunk(firstMissing).start;
  }

  /** Bytes written to the temp file that no state write records yet: what a crash would cost. */
  unrecordedBytes(): number {
    let n = 0;
    for (const index of this.unrecorded) {
      const r = this.chunk(index);
      n += r.end - (this.durableTo.get(index) ?? r.start);
    }
    for (const [index, to] of this.writtenTo) {
      const from = this.durableTo.get(index) ?? this.chunk(index).start;
      if (to > from) n += to - from;
    }
    return n;
  }

  /**
   * True when `backlogLimitBytes` written bytes still wait for an `fdatasync` and a state write.
   * They would be fetched again after a crash, so no lane writes more (or starts a chunk) until a
   * flush has recorded them: at full speed a flush of hundreds of dirty megabytes takes long
   * enough for much more to arrive, and the crash bound would grow with the throughput.
   */
  backlogFull(): boolean {
    return this.unrecordedBytes() >= this.backlogLimitBytes;
  }

  /** Waits until the durability backlog is below `backlogLimitBytes` (see above). */
  async drainBacklog(): Promise<void> {
    while (this.backlogFull() && !this.signal.aborted) {
      if (!this.flushing) this.startFlush();
      await (this.flushing ?? Promise.resolve()).catch(() => undefined);
    }
  }

  /** A state write in the background; a failure goes to `onError`. */
  startFlush(): void {
    void this.flush().catch((err: unknown) => this.onError(err));
  }

  /** Drops a state write waiting for its interval (the pass is ending). */
  stopTimer(): void {
    if (this.flushTimer) clearTimeout(this.flushTimer);
  }

  /**
   * The end of the pass: when the partial download is kept, one last `fdatasync` + state write
   * records everything written; otherwise only a state write already running is waited for.
   * Never throws.
   */
  async settle(keep: boolean): Promise<void> {
    if (keep) await this.flush().catch(() => undefined);
    else while (this.flushing) await this.flushing.catch(() => undefined);
  }

  /**
   * Makes every chunk written so far durable and records it: one `fdatasync` (with `durability:
   * 'disk'`), then one atomic state write. Runs one at a time; a call while one runs waits for it
   * and then runs again.
   */
  async flush(): Promise<void> {
    while (this.flushing) await this.flushing.catch(() => undefined);
    if (this.flushTimer) {
      clearTimeout(this.flushTimer);
      this.flushTimer = undefined;
    }
    // Nothing new since the last write: the state file already says it all.
    if (this.unrecordedBytes() === 0 && this.lastFlushAt > 0) return;
    const run = async () => {
      const batch = this.unrecorded.splice(0);
      // Offsets written so far: the fdatasync below makes them durable.
      const progress = [...this.writtenTo];
      try {
        const bootId = this.durability === 'process' ? pageCacheBootId() : undefined;
        if (bootId === undefined) await this.fh.datasync();
        for (const i of batch) {
          this.durable.add(i);
          this.durableTo.delete(i);
        }
        for (const [i, to] of progress) {
          // A chunk written to its end is recorded whole once its lane reports it done.
          if (this.durable.has(i) || to >= this.chunk(i).end) continue;
          if (to > (this.durableTo.get(i) ?? this.chunk(i).start)) this.durableTo.set(i, to);
        }
        const partial = new Map([...this.durableTo].map(([i, to]) => [i, to - this.chunk(i).start] as const));
        await writeResumeState(this.statePath, {
          ...this.identity,
          ...tailOf(this.plan),
          version: STATE_VERSION,
          completed: this.durable,
          partial,
          ...(bootId !== undefined ? { bootId } : {}),
        });
      } catch (err) {
        this.unrecorded.unshift(...batch);
        throw err;
      }
      this.lastFlushAt = performance.now();
    };
    this.flushing = run();
    try {
      await this.flushing;
    } finally {
      this.flushing = undefined;
    }
    if (this.unrecordedBytes() > 0 && !this.signal.aborted) this.scheduleFlush();
  }

  /** A state write at once past `flushAtBytes` (or the interval), else within the interval. */
  private scheduleFlush(): void {
    if (this.flushing) return;
    const wait = this.lastFlushAt + STATE_FLUSH_INTERVAL_MS - performance.now();
    if (wait <= 0 || this.unrecordedBytes() >= this.flushAtBytes) {
      // flush() clears a pending timer.
      this.startFlush();
    } else if (!this.flushTimer) {
      this.flushTimer = setTimeout(() => {
        this.flushTimer = undefined;
        this.startFlush();
      }, wait);
    }
  }

  private chunk(index: number): IndexedRange {
    return this.plan.range(index);
  }
}
