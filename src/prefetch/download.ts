/**
 * Download: one call of `ParallelDownloader.download()` (`downloader.ts`), steps 1–3, 6 and 7 of
 * its data flow: stat the object, plan its chunks or take up the plan of a matching partial
 * download, prepare the temp file, let a pass of lanes fill it (`Transfer`, `transfer.ts`), verify
 * it and promote it to `dest`. When the object changes underneath, the partial files are deleted
 * and it starts over once. It also reports progress and counts retries for the pass.
 */

import { type FileHandle, open, rename, stat as statPath, statfs } from 'node:fs/promises';
import path from 'node:path';
import { channels, newDownloadId } from '../diagnostics.js';
import { abortError, RoboflowError, toRoboflowError } from '../errors.js';
import type { StorageClients } from '../storage/index.js';
import type {
  Checksum,
  ChecksumAlgorithm,
  DownloadOptions,
  DownloadProgress,
  DownloadResult,
  Durability,
  ObjectSource,
  ObjectStat,
  RetryOptions,
  VerifiedBy,
} from '../types.js';
import type { ConcurrencyLimiter } from './concurrency.js';
import { ChunkPlan, ChunkSet } from './ranges.js';
import {
  durableBytes,
  fsyncDir,
  partialPaths,
  planOf,
  readResumeState,
  removePartial,
  removeResumeState,
  type ResumeIdentity,
  stateMatches,
} from './resume-state.js';
import { Transfer } from './transfer.js';
import { cheapestChecksum, compareChecksums, InOrderHasher } from './verify.js';

/**
 * Most chunks in a plan. The chunk set, the scheduler's list and the state file grow with the
 * count; past it chunks are longer than asked (8 TiB in the default 8 MiB chunks, 64 GiB in the
 * smallest configurable 64 KiB), so no size a server names makes the plan large.
 */
const MAX_PLAN_CHUNKS = 1024 * 1024;
/** Window of the rate reported in progress. */
const RATE_WINDOW_MS = 3_000;

/** The settings of one download: the call's options over the downloader's, over `DEFAULTS`. */
export interface DownloadSettings {
  readonly connections: number;
  readonly chunkSize: number;
  readonly stallTimeoutMs: number;
  readonly lowSpeedLimitBytes: number;
  readonly lowSpeedTimeMs: number;
  readonly headersTimeoutMs: number;
  readonly retry: RetryOptions;
  readonly progressIntervalMs: number;
  readonly limiter: ConcurrencyLimiter | undefined;
  readonly lookahead: boolean;
  readonly durability: Durability;
}

/** One download call: stat, plan, lanes, verify, promote; restarts once if the object changes. */
export class Download {
  private readonly id = newDownloadId();
  private readonly startedAt = performance.now();
  /** Aborted by the caller's signal or by `destroy()`; see `linkSignals()`. */
  private readonly control = new AbortController();
  private readonly unlinkSignals: () => void;
  private source!: ObjectSource;
  private readonly temp: string;
  private readonly stateFile: string;
  private readonly dir: string;
  private retries = 0;
  private restarts = 0;
  private progressBytes = 0;
  private totalBytes = 0;
  private readonly rateSamples: [number, number][] = [];
  private progressTimer: NodeJS.Timeout | undefined;

  constructor(
    private readonly s: DownloadSettings,
    private readonly clients: StorageClients,
    private readonly url: string,
    private readonly dest: string,
    private readonly opts: DownloadOptions,
    destroySignal: AbortSignal,
  ) {
    this.unlinkSignals = linkSignals(this.control, [opts.signal, destroySignal]);
    const p = partialPaths(dest);
    this.temp = p.temp;
    this.stateFile = p.state;
    this.dir = path.dirname(path.resolve(dest));
  }

  async run(): Promise<DownloadResult> {
    // Opened here, not in the constructor, so a bad URL rejects the promise instead of throwing.
    try {
      this.source = this.clients.open(this.url);
    } catch (err) {
      this.unlinkSignals();
      throw err;
    }
    const display = this.source.url;
    try {
      if (this.signal.aborted) throw this.aborted();
      this.startProgress();
      for (;;) {
        try {
          const result = await this.attempt();
          this.reportProgress();
          channels.downloadDone.publish({
            downloadId: this.id,
            url: display,
            bytes: result.bytes,
            seconds: result.seconds,
            resumedBytes: result.resumedBytes,
            retries: result.retries,
          });
          return result;
        } catch (err) {
          if (!(err instanceof RoboflowError) || err.code !== 'ERR_SOURCE_CHANGED' || this.signal.aborted) throw err;
          await removePartial(this.dest);
          if (this.restarts >= 1) {
            throw new RoboflowError(
              'ERR_SOURCE_CHANGED',
              `source changed during download of ${display}: ${err.message} (it changed again after a restart; try later)`,
              { url: display, cause: err },
            );
          }
          this.restarts++;
        }
      }
    } catch (err) {
      const e = this.signal.aborted ? this.aborted() : toRoboflowError(err, 'ERR_IO', display);
      channels.downloadError.publish({ downloadId: this.id, url: display, code: e.code });
      throw e;
    } finally {
      this.unlinkSignals();
      if (this.progressTimer) clearInterval(this.progressTimer);
      await this.source.close().catch(() => undefined);
    }
  }

  private get signal(): AbortSignal {
    return this.control.signal;
  }

  private aborted(): RoboflowError {
    return abortError(this.signal, `download of ${this.source.url}`);
  }

  /** One pass from stat to promotion. Throws `ERR_SOURCE_CHANGED` for the caller to restart. */
  private async attempt(): Promise<DownloadResult> {
    const st = await this.source.stat({ signal: this.signal });
    if (this.opts.expectedSize !== undefined && st.size !== this.opts.expectedSize) {
      throw new RoboflowError(
        'ERR_SIZE_MISMATCH',
        `${st.url} is ${st.size} bytes, the caller expected ${this.opts.expectedSize} — check the job's recorded size`,
        { url: st.url },
      );
    }
    // Room first, before anything grows with the size: a size no disk holds (a server's HEAD
    // can claim 2^53−1 bytes) fails here, in O(1).
    if (st.size > 0) await this.checkFreeSpace(st.size);
    // Without range support the whole object is one chunk: a retry starts it again from byte 0.
    // Otherwise chunks grow past `chunkSize` where needed to keep the plan at MAX_PLAN_CHUNKS.
    const chunkSize = st.rangesSupported ? Math.max(this.s.chunkSize, Math.ceil(st.size / MAX_PLAN_CHUNKS)) : Math.max(1, st.size);
    const identity: ResumeIdentity = {
      url: st.url,
      size: st.size,
      chunkSize,
      ...(st.etag !== undefined ? { etag: st.etag } : {}),
      ...(st.lastModified !== undefined ? { lastModified: st.lastModified.toISOString() } : {}),
    };
    const { plan, completed, partial } = await this.loadResumable(identity);
    const resumedBytes = durableBytes(plan, completed, partial);
    this.totalBytes = st.size;
    this.progressBytes = resumedBytes;
    this.rateSamples.length = 0;
    channels.downloadStart.publish({ downloadId: this.id, url: st.url, size: st.size, resumedBytes });

    // The store's cheapest checksum unless the caller opted out; the caller's own always.
    const expected: Checksum[] = this.opts.verifySourceChecksums === false ? [] : cheapestChecksum(st.checksums);
    if (this.opts.expectedChecksum) expected.push(this.opts.expectedChecksum);
    let verifiedChecksums: ChecksumAlgorithm[];
    if (st.size === 0) {
      verifiedChecksums = await this.writeEmpty(st, expected);
    } else {
      verifiedChecksums = await this.fill(st, identity, plan, completed, partial, expected);
    }
    await rename(this.temp, this.dest);
    if (this.s.durability === 'disk') await fsyncDir(this.dir);
    await removeResumeState(this.stateFile);
    const verified: VerifiedBy[] = ['size', ...verifiedChecksums];
    return {
      url: st.url,
      dest: this.dest,
      bytes: st.size,
      seconds: (performance.now() - this.startedAt) / 1000,
      resumedBytes,
      retries: this.retries,
      restarts: this.restarts,
      ...(st.etag !== undefined ? { etag: st.etag } : {}),
      verified,
    };
  }

  /**
   * The durable chunks (and durable prefixes of chunks) of a matching partial download; deletes a
   * partial download that does not match.
   */
  private async loadResumable(id: ResumeIdentity): Promise<{ plan: ChunkPlan; completed: ChunkSet; partial: ReadonlyMap<number, number> }> {
    const state = await readResumeState(this.stateFile);
    // A state of another boot is discarded here (its bytes were never flushed to disk).
    if (state && stateMatches(state, id)) {
      const tempSize = await statPath(this.temp).then(
        (s) => (s.isFile() ? s.size : -1),
        () => -1,
      );
      // The state's plan, not a fresh one: its chunk indexes mean that plan's ranges.
      if (tempSize === id.size) return { plan: planOf(state), completed: state.completed.clone(), partial: state.partial ?? new Map() };
    }
    await removePartial(this.dest);
    const plan = ChunkPlan.forDownload(id.size, id.chunkSize, this.s.connections);
    return { plan, completed: new ChunkSet(plan.count), partial: new Map() };
  }

  /**
   * Throws `ERR_NO_SPACE` unless the object fits: free space plus what a partial download of it
   * already holds (a resumed one needs only the rest; one that does not match is deleted, which
   * frees as much).
   */
  private async checkFreeSpace(size: number): Promise<void> {
    const fs = await statfs(this.dir);
    const held = await statPath(this.temp).then(
      (s) => (s.isFile() ? Math.min(s.blocks * 512, s.size) : 0),
      () => 0,
    );
    const needed = size - held;
    const available = fs.bavail * fs.bsize;
    if (available <= needed) {
      throw new RoboflowError(
        'ERR_NO_SPACE',
        `not enough free space in ${this.dir} for ${this.source.url}: need ${needed} bytes, ${available} available — free space or choose another directory`,
        { url: this.source.url },
      );
    }
  }

  private async writeEmpty(st: ObjectStat, expected: readonly Checksum[]): Promise<ChecksumAlgorithm[]> {
    const fh = await open(this.temp, 'w');
    try {
      if (this.s.durability === 'disk') await fh.datasync();
      const hasher = new InOrderHasher(fh, expected.map((c) => c.algorithm));
      return compareChecksums(st.url, expected, await hasher.finish(0));
    } finally {
      await fh.close();
    }
  }

  /** Fills the temp file with every missing chunk, verifies it and leaves it closed. */
  private async fill(
    st: ObjectStat,
    identity: ResumeIdentity,
    plan: ChunkPlan,
    completed: ChunkSet,
    partial: ReadonlyMap<number, number>,
    expected: readonly Checksum[],
  ): Promise<ChecksumAlgorithm[]> {
    const fresh = completed.size === 0 && partial.size === 0;
    let fh: FileHandle;
    try {
      fh = await open(this.temp, fresh ? 'w+' : 'r+');
      if (fresh) await fh.truncate(st.size);
    } catch (err) {
      throw this.diskError(err);
    }
    const transfer = new Transfer(this, fh, st, identity, plan, completed, partial, expected);
    let keep = this.opts.keepPartial ?? true;
    try {
      await transfer.run();
      // The last fdatasync (and state write) and the hashing of what the lanes wrote last run at
      // once: the hash is sequential, so the last round's chunks are hashed after their last byte.
      const [digests] = await Promise.all([transfer.hasher.finish(st.size), transfer.recordAll()]);
      const verified = compareChecksums(st.url, expected, digests);
      const onDisk = (await fh.stat()).size;
      if (onDisk !== st.size) {
        throw new RoboflowError('ERR_SIZE_MISMATCH', `${this.temp} is ${onDisk} bytes after download, expected ${st.size}`, {
          url: st.url,
        });
      }
      if (st.etag === undefined) await this.checkUnchanged(st);
      return verified;
    } catch (err) {
      const code = err instanceof RoboflowError ? err.code : undefined;
      if (code === 'ERR_CHECKSUM_MISMATCH' || code === 'ERR_SIZE_MISMATCH' || code === 'ERR_SOURCE_CHANGED') keep = false;
      throw err;
    } finally {
      await transfer.settle(keep);
      await fh.close().catch(() => undefined);
      if (!keep) await removePartial(this.dest);
    }
  }

  /** Objects without an ETag were read without `If-Match`; a second stat is their only guard. */
  private async checkUnchanged(before: ObjectStat): Promise<void> {
    const after = await this.source.stat({ signal: this.signal });
    if (after.size !== before.size || after.lastModified?.getTime() !== before.lastModified?.getTime()) {
      throw new RoboflowError(
        'ERR_SOURCE_CHANGED',
        `${before.url} changed while it was downloaded (size ${before.size} → ${after.size}, last modified ${before.lastModified?.toISOString()} → ${after.lastModified?.toISOString()})`,
        { url: before.url },
      );
    }
  }

  // Shared with Transfer --------------------------------------------------------------------

  get displayUrl(): string {
    return this.source.url;
  }
  get objectSource(): ObjectSource {
    return this.source;
  }
  get settingsOf(): DownloadSettings {
    return this.s;
  }
  get downloadSignal(): AbortSignal {
    return this.signal;
  }
  get downloadId(): number {
    return this.id;
  }
  get paths(): { temp: string; state: string } {
    return { temp: this.temp, state: this.stateFile };
  }

  countRetry(code: RoboflowError['code'], attempt: number, delayMs: number): void {
    this.retries++;
    channels.rangeRetry.publish({ downloadId: this.id, url: this.source.url, code, attempt, delayMs });
  }

  countBytes(n: number): void {
    this.progressBytes += n;
    channels.downloadBytes.publish({ downloadId: this.id, bytes: n });
  }

  /** A failure of the local disk, named after the file (`file`, default the temp file). */
  diskError(err: unknown, file: string = this.temp): RoboflowError {
    const e = toRoboflowError(err, 'ERR_IO');
    if (e.code === 'ERR_NO_SPACE') {
      return new RoboflowError(
        'ERR_NO_SPACE',
        `no space left in ${this.dir} while writing ${file} for ${this.source.url} — free space or choose another directory`,
        { url: this.source.url, cause: err },
      );
    }
    if (e.code === 'ERR_IO') {
      return new RoboflowError('ERR_IO', `cannot write ${file}: ${e.message}`, { url: this.source.url, cause: err });
    }
    return e;
  }

  // Progress --------------------------------------------------------------------------------

  private startProgress(): void {
    if (!this.opts.onProgress) return;
    this.progressTimer = setInterval(() => this.reportProgress(), this.s.progressIntervalMs);
    this.progressTimer.unref();
  }

  private reportProgress(): void {
    const onProgress = this.opts.onProgress;
    if (!onProgress) return;
    const now = performance.now();
    const samples = this.rateSamples;
    samples.push([now, this.progressBytes]);
    while (samples.length > 2 && now - (samples[0] as [number, number])[0] > RATE_WINDOW_MS) samples.shift();
    const [t0, b0] = samples[0] as [number, number];
    const rate = now > t0 ? ((this.progressBytes - b0) * 1000) / (now - t0) : 0;
    const p: DownloadProgress = { bytesDone: this.progressBytes, total: this.totalBytes, rate };
    try {
      onProgress(p);
    } catch {
      // A failing progress callback must not break the download it reports on.
    }
  }
}

/**
 * Aborts `target` when any of `sources` aborts, with that signal's reason; returns the function
 * that removes the listeners. Not `AbortSignal.any()`: on Node 20 every dependent signal stays
 * reachable from a long-lived source (about 1 KB per call, measured), and the downloader's own
 * destroy signal lives as long as a worker.
 */
function linkSignals(target: AbortController, sources: readonly (AbortSignal | undefined)[]): () => void {
  const links: [AbortSignal, () => void][] = [];
  for (const source of sources) {
    if (!source) continue;
    if (source.aborted) {
      target.abort(source.reason);
      break;
    }
    const onAbort = () => target.abort(source.reason);
    source.addEventListener('abort', onAbort, { once: true });
    links.push([source, onAbort]);
  }
  return () => {
    for (const [source, onAbort] of links.splice(0)) source.removeEventListener('abort', onAbort);
  };
}

