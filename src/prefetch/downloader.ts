/**
 * ParallelDownloader: one object into one local file, with parallel range requests, crash-safe
 * resume and verification; the file appears at `dest` only complete and verified.
 *
 * Data flow
 * ---------
 * 1. **stat.** The source (`src/storage`) reports size, ETag, last-modified and any whole-object
 *    checksums. An empty object becomes an empty file. An object smaller than one chunk, or on a
 *    server without range support, is fetched with one request; the path below is the same.
 * 2. **plan.** `[0, size)` is cut into chunks by a `ChunkPlan` (`ranges.ts`): `chunkSize` bytes
 *    each, except that the last round (`connections` chunks) is cut into quarter-size chunks, so
 *    every lane stays busy to the end and the in-order hash finishes right after the last byte.
 *    The state file `<dest>.roboflow-state.json` (`resume-state.ts`) records the plan and the
 *    chunks a previous run made durable; it is trusted only when it names the same URL, size,
 *    ETag (or last-modified when there is none) and chunk size, and the temp file has the
 *    object's size, and then its plan is kept. Anything else is deleted, never guessed at.
 * 3. **temp file.** `<dest>.roboflow-partial`, beside `dest` so the final rename stays on one file
 *    system, is preallocated with `ftruncate(size)` and filled with positioned writes. The seed
 *    asks for a memory-mapped file; in Node, positioned writes into a preallocated file take the
 *    same page-cache path, without the SIGBUS a mapped page raises when the disk fills up. Because
 *    `ftruncate` makes a sparse file, free space is checked with `statfs` first, and `ENOSPC`
 *    during a write still fails cleanly with `ERR_NO_SPACE`.
 * 4. **lanes.** `connections` lanes take chunks from a `RangeScheduler` in ascending order. A
 *    lane holds a permit of the `ConcurrencyLimiter` (`concurrency.ts`, AIMD: halves on
 *    throttling, grows back by one per round) while its body streams. A body from `Http1Pool` is
 *    read with `fill()`: the socket reads land in one of the lane's write buffers (up to 2 MiB),
 *    which is then written at its offset, so no buffer is allocated per read (`fillFrom`). Any
 *    other body is read as a stream, its buffers gathered up to 2 MiB (`streamFrom`). For objects
 *    of 64 MiB and more a batch goes to a writer thread (`WriterThread`, `writer-thread.ts`) that
 *    writes it in 32 KiB pieces; the lanes' buffers are shared memory, so it crosses without a
 *    copy. Smaller objects go through the thread pool as 256 KiB pieces, two at a time
 *    (`FileWriter`, `file-writer.ts`, says why pieces). Either way the body is not read further until that write is done,
 *    so memory is `connections` × (2 MiB + the socket buffers of the one read and a look-ahead
 *    response) whatever the object size. Every request carries `If-Match: <etag>`.
 *    **Look-ahead:** a body that ends and a next request that only then starts cost one
 *    first-byte latency per chunk (about 6 % at 25 MB/s and 20 ms per 8 MiB). A lane therefore
 *    sends the request for its next chunk when the current body's remaining bytes take less than
 *    two first-byte latencies at the lane's rate, so the next headers arrive as the current body
 *    ends. The latency is the smallest of the recent requests' (the mean would count this
 *    process's own event-loop delays); the rate is the lane's over its last 100 ms, across body
 *    boundaries (a per-body rate would count the burst a look-ahead body starts with and fire
 *    the next look-ahead earlier each round). Only `connections` bodies are read at a time; a
 *    response that arrives early waits in its socket. Each lane may thus hold two sockets, so
 *    the connection pool needs 2 × `connections`.
 * 5. **durability.** Bytes count as fetched in the state file only after an `fdatasync` of the
 *    temp file that covers them: whole chunks, and for chunks being fetched the prefix written so
 *    far, so a resumed run continues a chunk where the durable bytes end. One `fdatasync` plus one
 *    atomic state write covers everything written since the previous one; it runs at most every
 *    250 ms, at once when `connections` × `chunkSize` / 8 bytes wait for it, and always at the end
 *    and on failure or abort. At `connections` × `chunkSize` / 4 waiting bytes, lanes stop writing
 *    until it is done. With `durability: 'process'` there is no `fdatasync` (here, at promotion
 *    or of the directory): the state file counts bytes once written, names this boot, and is
 *    trusted only in this boot (`resume-state.ts`); the bytes survive the process, not the machine.
 * 6. **verification.** MD5, SHA-1, SHA-256, CRC32 and CRC32C (the cheapest one the stat offers,
 *    `cheapestChecksum`, and `expectedChecksum`). A CRC-32 alone is computed by the writer thread
 *    per batch and the batches' CRCs combined (`SegmentCrc32Hasher`); a resumed download reads
 *    back only the bytes it had before; otherwise they are computed in byte order by an `InOrderHasher` (`verify.ts`) that reads
 *    the contiguous completed prefix back from the page cache while the download continues, so it
 *    finishes soon after the last byte. Without checksums only the size is checked, and so it is
 *    when the caller turns off `verifySourceChecksums` (MD5 costs ~1.5 CPU s per GB).
 * 7. **promotion.** `fdatasync`, verify, `rename(temp, dest)`, fsync the directory, delete the
 *    state file (no fsyncs with `durability: 'process'`). A partial download is never visible at
 *    `dest`, and a failed one leaves `dest` as it was.
 *
 * Failures
 * --------
 * - A retryable error (`RETRY_TABLE`) on a chunk re-requests only the rest of that chunk, from the
 *   last byte written, after `backoffDelay()` (full jitter, `Retry-After` honoured). A chunk gets
 *   `retry.maxAttempts` attempts; an attempt that wrote at least an eighth of the chunk restores
 *   the count, so a connection that keeps breaking but makes progress is not failed, yet a chunk
 *   never gets more than 9 × `maxAttempts` attempts. Exhausted attempts fail the download with
 *   `ERR_RETRIES_EXHAUSTED`; a permanent error (404, 403, …) fails it at once and aborts the
 *   other lanes.
 * - A body without a byte for `stallTimeoutMs`, or below `lowSpeedLimitBytes` per second over
 *   `lowSpeedTimeMs` (default: the stall timeout), is destroyed with `ERR_STALLED` (retried on
 *   another connection); a response head not complete within `headersTimeoutMs` or the stall
 *   timeout, whichever is shorter (1xx heads are no progress), fails with `ERR_TIMEOUT` (retried).
 * - A server delay (`Retry-After`, `x-oss-qos-delay-time`) is waited out up to
 *   `retry.maxDelayMs`; a server asking for longer fails the download at once, saying so.
 * - Trust in a body's bytes: one whose response declared its length (Content-Length equal to the
 *   range) is counted byte by byte as it is written. One of undeclared length (chunked,
 *   close-delimited) is counted only once it ends with exactly the range's length, so a body
 *   found too long or malformed leaves nothing a resumed run would trust. A range whose bytes are
 *   all in is done even if the body's end marker never comes. Every response's object size
 *   (Content-Range total) must be the planned one, else the object changed (see below).
 * - Sizes: free space (plus what a partial download holds) is checked before anything is
 *   planned, and chunks grow past `chunkSize` to keep a plan at `MAX_PLAN_CHUNKS`, so an absurd
 *   size from a server fails, or plans, in O(1).
 * - The object changed (`ERR_SOURCE_CHANGED` from an `If-Match` read, or, for objects without an
 *   ETag, a different size or last-modified on a stat after the last chunk): the partial files are
 *   deleted and the download starts over once (`restarts: 1`); a second change fails it. Bytes of
 *   two versions are never mixed.
 * - Abort (the caller's signal, `destroy()`): in-flight requests are aborted, the state of the
 *   durable chunks is written, the call rejects with `ERR_ABORTED` (or the signal's own
 *   `RoboflowError` reason). A later `download()` or `resume()` continues.
 * - After a failure the temp and state files are kept for resuming (`keepPartial`, default true),
 *   except after a checksum or size mismatch or a repeated source change, whose bytes are worthless.
 *
 * Crash bound: after SIGKILL or a power cut, a resumed download fetches again only what was not
 * recorded: fewer than `connections` × `chunkSize` / 4 written bytes (see durability), plus what
 * lanes held in memory (a quarter of a chunk each, at most 2 MiB) and what the sockets had
 * received but not yet handed over (on loopback at full speed a few MiB per connection, which
 * the kernel buffers and Node does not let us bound). The price: a state write per eighth of the
 * bound. At S3-like rates per connection it does not show; with one connection at loopback
 * speed (300 MB/s and more) an `fdatasync` every 1 MiB halves throughput (measured: 1 × 8 MiB,
 * 1 GiB in 7.5 s against 3.3 s with a state write every 32 MiB) — use more connections there.
 * Asserted from the server's request log in the CLI tests; measured per kill in BENCHMARKS.md.
 */

import { type FileHandle, open, rename, rm, stat as statPath, statfs } from 'node:fs/promises';
import { setMaxListeners } from 'node:events';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { DEFAULTS } from '../defaults.js';
import { channels, newDownloadId } from '../diagnostics.js';
import { abortError, backoffDelay, RoboflowError, serverDelayMs, toRoboflowError } from '../errors.js';
import { type Http1Body, isHttp1Body } from '../storage/http1.js';
import { StorageClients } from '../storage/index.js';
import type {
  ByteRange,
  Checksum,
  ChecksumAlgorithm,
  DownloadOptions,
  DownloadProgress,
  DownloadResult,
  Durability,
  ObjectSource,
  ObjectStat,
  RangeBody,
  RetryOptions,
  StorageOptions,
  VerifiedBy,
} from '../types.js';
import { DURABILITIES, isDurability } from '../types.js';
import { formatDuration } from '../units.js';
import { ConcurrencyLimiter, type Release } from './concurrency.js';
import { FileWriter } from './file-writer.js';
import { sharedBuffer, WriterThread } from './writer-thread.js';
import { ChunkPlan, ChunkSet, type IndexedRange, RangeScheduler, shouldRequestAhead } from './ranges.js';
import {
  durableBytes,
  fsyncDir,
  pageCacheBootId,
  planOf,
  readResumeState,
  removeResumeState,
  type ResumeIdentity,
  STATE_VERSION,
  stateMatches,
  tailOf,
  writeResumeState,
} from './resume-state.js';
import { cheapestChecksum, compareChecksums, crc32OfRange, createOrderedHasher, InOrderHasher, type OrderedHasher, SegmentCrc32Hasher } from './verify.js';

export interface ParallelDownloaderOptions {
  /** Lanes (range requests streaming at once) per download. (Default: `DEFAULTS.downloadConnections`) */
  readonly connections?: number;
  /** Chunk length of one range request. (Default: `DEFAULTS.chunkSize`) */
  readonly chunkSize?: number;
  /**
   * A body without a byte for this long is aborted and retried; so is a request whose response
   * head is not complete by then (when shorter than the headers timeout). (Default:
   * `DEFAULTS.stallTimeoutMs`)
   */
  readonly stallTimeoutMs?: number;
  /**
   * A body receiving fewer bytes per second than this over `lowSpeedTimeMs` is aborted and
   * retried on another connection; 0 turns the check off. (Default: `DEFAULTS.lowSpeedLimitBytes`)
   */
  readonly lowSpeedLimitBytes?: number;
  /** The window of `lowSpeedLimitBytes`. (Default: `DEFAULTS.lowSpeedTimeMs`, null = `stallTimeoutMs`) */
  readonly lowSpeedTimeMs?: number | null;
  /** Per-range retry policy. (Default: `DEFAULTS.rangeMaxAttempts`, `retryBaseDelayMs`, `retryMaxDelayMs`) */
  readonly retry?: Partial<RetryOptions>;
  /** How often `onProgress` is called. (Default: `DEFAULTS.progressIntervalMs`) */
  readonly progressIntervalMs?: number;
  /** What a download survives (`DownloadOptions.durability`). (Default: `DEFAULTS.durability`) */
  readonly durability?: Durability;
  /** How URLs become sources, when `clients` is not given. */
  readonly storage?: StorageOptions;
  /**
   * Shared connection pools; when given, `close()` leaves them open for their owner. Give them
   * `maxConnections` of at least 2 × `connections`: a lane's look-ahead request needs a socket
   * of its own while the lane's current body still streams.
   */
  readonly clients?: StorageClients;
  /**
   * Send each lane's next range request shortly before its current body ends, so the next first
   * byte arrives as the current body ends (see "Look-ahead" above). Off only to measure what it
   * is worth. (Default: true)
   */
  readonly lookahead?: boolean;
  /**
   * A limit on range transfers shared by every download of a worker, so throttling seen by one
   * download slows all of them. Without it each download has its own, with `max = connections`.
   */
  readonly limiter?: ConcurrencyLimiter;
}

/** The temp file and state file of a download to `dest`. */
export function partialPaths(dest: string): { temp: string; state: string } {
  return { temp: `${dest}.roboflow-partial`, state: `${dest}.roboflow-state.json` };
}

/** Deletes the temp and state files of a download to `dest` (no error if there are none). */
export async function removePartial(dest: string): Promise<void> {
  const { temp, state } = partialPaths(dest);
  await Promise.all([rm(temp, { force: true }), removeResumeState(state)]);
}

/**
 * Batching window of state writes: a crash loses at most the chunks completed in this window
 * (besides those in flight), while a fast download does not `fdatasync` once per chunk.
 */
const STATE_FLUSH_INTERVAL_MS = 250;
/** An attempt that wrote this fraction of its chunk restores the chunk's attempt count. */
const PROGRESS_RESETS_ATTEMPTS_FRACTION = 1 / 8;
/**
 * Pause of a lane whose request a throttling store turned away while the adaptive limit can still
 * go down (plus up to `retry.baseDelayMs` of jitter). Long enough that lanes do not bounce off a
 * store that is full for a moment (a range just ended, its slot not yet free), short enough that
 * the store does not sit idle while lanes sleep. Measured on the chaos throttle (K = 4): 100 ms
 * gave 813 503s, 250 ms 418, 500 ms 241 but took 16 % longer.
 */
const PACED_THROTTLE_PAUSE_MS = 250;
/** Look-ahead sends the next request this many first-byte latencies before the body ends. */
const LOOKAHEAD_LATENCIES = 2;
/**
 * Received bytes are gathered up to this size before they go to the file (as pieces, see
 * `file-writer.ts`): on two cores this halves the CPU per byte against one write per 64 KiB socket
 * read (0.5 vs 1.0 CPU-s per 256 MiB measured), and bounds memory at this much per lane.
 */
const WRITE_BATCH_BYTES = 2 * 1024 * 1024;
/**
 * Objects from this size on are written from a thread of their own (`writer-thread.ts`); below,
 * the thread's start-up (tens of ms) costs more than it saves, and batches go through the thread
 * pool (`file-writer.ts`).
 */
const WRITER_THREAD_MIN_BYTES = 64 * 1024 * 1024;
/**
 * Most chunks in a plan. The chunk set, the scheduler's list and the state file grow with the
 * count; past it chunks are longer than asked (8 TiB in the default 8 MiB chunks, 64 GiB in the
 * smallest configurable 64 KiB), so no size a server names makes the plan large.
 */
const MAX_PLAN_CHUNKS = 1024 * 1024;
/** Smallest write batch, for small chunks (the batch is at most a quarter of a chunk). */
const MIN_WRITE_BATCH_BYTES = 64 * 1024;
/** Window over which a lane measures its rate for the look-ahead decision. */
const RATE_WINDOW_LANE_MS = 100;
/** Window of the rate reported in progress. */
const RATE_WINDOW_MS = 3_000;

type Lifecycle = 'open' | 'closing' | 'closed';

/**
 * Downloads objects with parallel range requests. One instance serves many downloads (each call
 * is independent); `close()` waits for them, `destroy()` aborts them.
 */
export class ParallelDownloader {
  private readonly opts: ParallelDownloaderOptions;
  private clients: StorageClients | undefined;
  private readonly ownsClients: boolean;
  private readonly running = new Set<Promise<void>>();
  private readonly destroyController = new AbortController();
  private lifecycle: Lifecycle = 'open';
  private closing: Promise<void> | undefined;

  constructor(opts: ParallelDownloaderOptions = {}) {
    this.opts = opts;
    this.clients = opts.clients;
    this.ownsClients = opts.clients === undefined;
    // Each running download listens once (and stops when it settles); there may be many.
    setMaxListeners(0, this.destroyController.signal);
  }

  /** Downloads running now. */
  get activeDownloads(): number {
    return this.running.size;
  }

  /**
   * Downloads `url` to `dest`. When a matching partial download of the same object version
   * exists beside `dest`, it continues from there (`resumedBytes`); a partial download of
   * anything else is deleted first.
   */
  download(url: string, dest: string, opts: DownloadOptions = {}): Promise<DownloadResult> {
    switch (this.lifecycle) {
      case 'open':
        break;
      case 'closing':
      case 'closed':
        return Promise.reject(
          new RoboflowError('ERR_CLOSED', `cannot download ${url}: the downloader is closed`, { url }),
        );
      default: {
        const _exhaustive: never = this.lifecycle;
        throw new Error(`unknown lifecycle ${String(_exhaustive)}`);
      }
    }
    let settings: Settings;
    try {
      settings = this.settings(opts);
    } catch (err) {
      return Promise.reject(err);
    }
    this.clients ??= new StorageClients({
      ...this.opts.storage,
      // Each lane may have a look-ahead request open beside the body it reads: two sockets.
      maxConnections: this.opts.storage?.maxConnections ?? 2 * (this.opts.connections ?? DEFAULTS.downloadConnections),
    });
    const job = new Download(settings, this.clients, url, dest, opts, this.destroyController.signal);
    const result = job.run();
    const settled = result.then(
      () => undefined,
      () => undefined,
    );
    this.running.add(settled);
    void settled.then(() => this.running.delete(settled));
    return result;
  }

  /**
   * The seed's "resume from an existing partial download". Identical to `download()`, which
   * always resumes when it can: when there is no usable partial download this downloads the
   * whole object and reports `resumedBytes: 0` rather than failing, because a caller that asks
   * to resume wants the file, and a stale or missing partial is no reason to refuse it.
   */
  resume(url: string, dest: string, opts: DownloadOptions = {}): Promise<DownloadResult> {
    return this.download(url, dest, opts);
  }

  /** Refuses new downloads and resolves when the running ones have settled. Idempotent. */
  close(): Promise<void> {
    this.closing ??= this.shutdown();
    return this.closing;
  }

  /**
   * Aborts every running download (their partial files stay resumable), then closes.
   * Idempotent; `reason` becomes the downloads' rejection when it is a `RoboflowError`.
   */
  async destroy(reason?: Error): Promise<void> {
    if (!this.destroyController.signal.aborted) {
      this.destroyController.abort(
        reason instanceof RoboflowError ? reason : new RoboflowError('ERR_ABORTED', 'the downloader was destroyed', { cause: reason }),
      );
    }
    await this.close();
  }

  private async shutdown(): Promise<void> {
    this.lifecycle = 'closing';
    while (this.running.size > 0) await Promise.all(this.running);
    if (this.ownsClients && this.clients) await this.clients.close();
    this.lifecycle = 'closed';
  }

  private settings(opts: DownloadOptions): Settings {
    const o = this.opts;
    const connections = opts.connections ?? o.connections ?? DEFAULTS.downloadConnections;
    const chunkSize = opts.chunkSize ?? o.chunkSize ?? DEFAULTS.chunkSize;
    const stallTimeoutMs = opts.stallTimeoutMs ?? o.stallTimeoutMs ?? DEFAULTS.stallTimeoutMs;
    const retry: RetryOptions = {
      maxAttempts: opts.retry?.maxAttempts ?? o.retry?.maxAttempts ?? DEFAULTS.rangeMaxAttempts,
      baseDelayMs: opts.retry?.baseDelayMs ?? o.retry?.baseDelayMs ?? DEFAULTS.retryBaseDelayMs,
      maxDelayMs: opts.retry?.maxDelayMs ?? o.retry?.maxDelayMs ?? DEFAULTS.retryMaxDelayMs,
    };
    const positive = (name: string, v: number) => {
      if (!Number.isSafeInteger(v) || v < 1) {
        throw new RoboflowError('ERR_CONFIG', `${name} must be a positive integer, got ${v}`);
      }
    };
    positive('connections', connections);
    positive('chunkSize', chunkSize);
    positive('stallTimeoutMs', stallTimeoutMs);
    positive('retry.maxAttempts', retry.maxAttempts);
    const lowSpeedLimitBytes = o.lowSpeedLimitBytes ?? DEFAULTS.lowSpeedLimitBytes;
    const lowSpeedTimeMs = (o.lowSpeedTimeMs === undefined ? DEFAULTS.lowSpeedTimeMs : o.lowSpeedTimeMs) ?? stallTimeoutMs;
    if (!Number.isSafeInteger(lowSpeedLimitBytes) || lowSpeedLimitBytes < 0) {
      throw new RoboflowError('ERR_CONFIG', `lowSpeedLimitBytes must be a whole number of bytes per second, 0 or more, got ${lowSpeedLimitBytes}`);
    }
    positive('lowSpeedTimeMs', lowSpeedTimeMs);
    return {
      connections,
      chunkSize,
      stallTimeoutMs,
      lowSpeedLimitBytes,
      lowSpeedTimeMs,
      headersTimeoutMs: o.storage?.headersTimeoutMs ?? DEFAULTS.headersTimeoutMs,
      retry,
      progressIntervalMs: opts.progressIntervalMs ?? o.progressIntervalMs ?? DEFAULTS.progressIntervalMs,
      limiter: opts.priority !== undefined && o.limiter ? o.limiter.withPriority(opts.priority) : o.limiter,
      lookahead: o.lookahead ?? true,
      durability: checkDurability(opts.durability ?? o.durability ?? DEFAULTS.durability),
    };
  }
}

function checkDurability(d: Durability): Durability {
  if (isDurability(d)) return d;
  throw new RoboflowError('ERR_CONFIG', `durability must be ${DURABILITIES.map((v) => `"${v}"`).join(' or ')}, got ${JSON.stringify(d)}`);
}

interface Settings {
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

/**
 * A lane's receive rate over its last completed window, continuous across bodies. Not per body:
 * a look-ahead body starts with a burst of what piled up in its socket while it waited, and a
 * rate that counted it would send the next look-ahead earlier still, round after round.
 */
class LaneMeter {
  private markAt = performance.now();
  private markBytes = 0;
  private bytes = 0;
  /** Bytes per second; 0 until the first window is complete. */
  rate = 0;

  add(n: number): void {
    this.bytes += n;
    const now = performance.now();
    if (now - this.markAt >= RATE_WINDOW_LANE_MS) {
      this.rate = ((this.bytes - this.markBytes) * 1000) / (now - this.markAt);
      this.markAt = now;
      this.markBytes = this.bytes;
    }
  }
}

/** A request sent ahead of its body being read; the outcome is kept as a value until then. */
interface PendingRequest {
  readonly range: IndexedRange;
  /** Offset in the object the request starts at. */
  readonly from: number;
  readonly outcome: Promise<{ ok: true; body: RangeBody } | { ok: false; err: unknown }>;
  /** Aborts the request and destroys its body if it already came. */
  abandon(): void;
  /** Called once the body has been read or failed, to drop the abort wiring. */
  done(): void;
}

/** One download call: stat, plan, lanes, verify, promote; restarts once if the object changes. */
class Download {
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
    private readonly s: Settings,
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
  get settingsOf(): Settings {
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
 * The lanes of one pass over the missing chunks, the batched state writes and the in-order
 * hasher. Created per attempt, so a restart after a source change starts from nothing.
 */
class Transfer {
  readonly hasher: OrderedHasher;
  private readonly scheduler: RangeScheduler;
  private readonly limiter: ConcurrencyLimiter;
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
  /** Bytes per write batch; small next to a chunk, so the crash bound holds at small chunk sizes. */
  private readonly batchLimit: number;
  /** Batches into the temp file (`writer-thread.ts`, `file-writer.ts`). */
  private readonly writer: FileWriter | WriterThread;
  /** Write buffers of `batchLimit` bytes, reused by the lanes' fast path (`fillFrom`). */
  private readonly writeBuffers: Buffer[] = [];
  /** Written-but-unrecorded bytes that start a state write at once. */
  private readonly flushAtBytes: number;
  /** Written-but-unrecorded bytes at which lanes stop writing until a state write ends. */
  private readonly backlogLimitBytes: number;
  private readonly control = new AbortController();
  private failure: RoboflowError | undefined;
  private flushing: Promise<void> | undefined;
  private flushTimer: NodeJS.Timeout | undefined;
  private lastFlushAt = 0;
  /** Times to response headers of the latest requests (a ring), for the look-ahead. */
  private readonly latencies: number[] = [];
  private latencyNext = 0;
  private readonly rangesSupported: boolean;

  constructor(
    private readonly d: Download,
    private readonly fh: FileHandle,
    private readonly st: ObjectStat,
    private readonly identity: ResumeIdentity,
    private readonly plan: ChunkPlan,
    completed: ChunkSet,
    partial: ReadonlyMap<number, number>,
    expected: readonly Checksum[],
  ) {
    this.rangesSupported = st.rangesSupported;
    this.written = completed.clone();
    this.durable = completed.clone();
    for (const [index, bytes] of partial) this.durableTo.set(index, this.chunk(index).start + bytes);
    // The crash bound is `connections` × `chunkSize` bytes fetched again. A quarter of it may
    // wait for a state write and an eighth starts one; the lanes' batches in memory are a quarter
    // of a chunk each; the rest is left for what sockets hold (on loopback a few MiB each).
    const bound = d.settingsOf.connections * identity.chunkSize;
    this.batchLimit = Math.min(WRITE_BATCH_BYTES, Math.max(MIN_WRITE_BATCH_BYTES, Math.floor(identity.chunkSize / 4)));
    this.flushAtBytes = Math.max(this.batchLimit, Math.floor(bound / 8));
    this.backlogLimitBytes = Math.max(2 * this.batchLimit, Math.floor(bound / 4));
    this.scheduler = new RangeScheduler(plan.missing(completed));
    this.limiter = d.settingsOf.limiter ?? new ConcurrencyLimiter({ max: d.settingsOf.connections });
    // Every lane and look-ahead request listens on this signal: up to ~3 listeners per lane.
    setMaxListeners(Math.max(10, 4 * d.settingsOf.connections), this.control.signal);
    const readBack = () =>
      createOrderedHasher({
        fh,
        path: d.paths.temp,
        size: st.size,
        algorithms: expected.map((c) => c.algorithm),
      });
    const threaded = st.size >= WRITER_THREAD_MIN_BYTES;
    // CRC-32 alone: the writer thread computes it per batch and what this run writes is not read
    // back (`SegmentCrc32Hasher`); only the bytes a resumed download already had are.
    const crcFromWrites = threaded && expected.length > 0 && expected.every((c) => c.algorithm === 'crc32');
    if (crcFromWrites) {
      const hasher = new SegmentCrc32Hasher(readBack, (position, bytes) => crc32OfRange(fh, position, bytes));
      // What a resumed download already had, read while this run fetches the rest.
      const had: ByteRange[] = [];
      for (let i = 0; i < plan.count; i++) {
        const r = plan.range(i);
        const durable = completed.has(i) ? r.end - r.start : (partial.get(i) ?? 0);
        if (durable > 0) had.push({ start: r.start, end: r.start + durable });
      }
      if (had.length > 0) hasher.readAhead(had);
      this.hasher = hasher;
    } else {
      this.hasher = readBack();
    }
    // Last: a thread started before something above threw would have no owner to end it.
    const mapError = (err: unknown) => d.diskError(err);
    try {
      this.writer = threaded ? new WriterThread(fh.fd, mapError, undefined, crcFromWrites) : new FileWriter(fh, mapError);
    } catch (err) {
      void this.hasher.stop();
      throw err;
    }
    this.advanceHasher();
  }

  async run(): Promise<void> {
    const signal = this.d.downloadSignal;
    const onAbort = () => this.control.abort(signal.reason);
    if (signal.aborted) onAbort();
    signal.addEventListener('abort', onAbort, { once: true });
    try {
      // The state file exists from the start, so even a run killed before its first chunk
      // leaves a partial download a later run recognises. It is written while the first
      // requests wait for their headers: a run killed before it lands has written nothing worth
      // keeping, and every later state write queues behind it.
      if (this.durable.size === 0 && this.durableTo.size === 0) this.startFlush();
      const lanes = Math.min(this.d.settingsOf.connections, this.scheduler.remaining);
      await Promise.all(Array.from({ length: lanes }, () => this.lane()));
      if (this.failure) throw this.failure;
      if (this.control.signal.aborted) throw abortError(signal, `download of ${this.d.displayUrl}`);
    } finally {
      signal.removeEventListener('abort', onAbort);
    }
  }

  /** Makes everything written durable and records it: the end of a complete pass. */
  recordAll(): Promise<void> {
    return this.flush();
  }

  /**
   * Ends the pass: stops the hasher and, when the partial download is kept, records every
   * chunk that is complete (one last `fdatasync` + state write). Never throws.
   */
  async settle(keep: boolean): Promise<void> {
    if (!this.control.signal.aborted) this.control.abort(new RoboflowError('ERR_ABORTED', 'download pass ended'));
    if (this.flushTimer) clearTimeout(this.flushTimer);
    await this.writer.close();
    await this.hasher.stop();
    if (keep) await this.flush().catch(() => undefined);
    else while (this.flushing) await this.flushing.catch(() => undefined);
  }

  private fail(err: RoboflowError): void {
    if (this.control.signal.aborted) return;
    this.failure = err;
    this.control.abort(err);
  }

  // Lanes -----------------------------------------------------------------------------------

  private async lane(): Promise<void> {
    const signal = this.control.signal;
    let release: Release | undefined;
    let ahead: PendingRequest | undefined;
    const meter = new LaneMeter();
    try {
      while (!signal.aborted) {
        if (!ahead) await this.drainDurabilityBacklog();
        const range = ahead?.range ?? this.scheduler.take();
        if (!range) break;
        release ??= await this.limiter.acquire(signal);
        const current = ahead;
        ahead = undefined;
        const holder = { release };
        try {
          ahead = await this.fetchChunk(range, current, holder, meter);
        } finally {
          release = holder.release;
        }
        this.limiter.onSuccess();
        this.chunkDone(range.index);
        if (this.limiter.shouldYield && release) {
          // Give the turn to a waiter (another download) or obey a lowered limit. A look-ahead
          // request goes too: without a permit it would hold a socket and a request at the store
          // that the waiter, or the lowered limit, should have.
          release();
          release = undefined;
          if (ahead) {
            ahead.abandon();
            this.scheduler.giveBack(ahead.range);
            ahead = undefined;
          }
        }
      }
    } catch (err) {
      if (!signal.aborted) this.fail(toRoboflowError(err, 'ERR_IO', this.d.displayUrl));
    } finally {
      release?.();
      ahead?.abandon();
    }
  }

  /**
   * Fetches one chunk with retries; returns the look-ahead request it started for the lane's
   * next chunk, if any. `holder.release` is the lane's permit, given back during backoff.
   */
  private async fetchChunk(
    range: IndexedRange,
    first: PendingRequest | undefined,
    holder: { release: Release | undefined },
    meter: LaneMeter,
  ): Promise<PendingRequest | undefined> {
    const { retry } = this.d.settingsOf;
    const signal = this.control.signal;
    const length = range.end - range.start;
    let offset = first?.from ?? this.resumeFrom(range);
    /** Highest offset already counted in progress, so a restart from byte 0 is not counted twice. */
    let counted = offset;
    let attempts = 0;
    let pending = first;
    for (;;) {
      attempts++;
      const startedAt = offset;
      const state: TransferState = { offset, counted: offset, ahead: undefined };
      try {
        await this.transferOnce(range, pending ?? this.request(range, offset), state, meter, (to) => {
          if (to > counted) {
            this.d.countBytes(to - counted);
            counted = to;
          }
          this.writtenTo.set(range.index, Math.max(to, this.writtenTo.get(range.index) ?? 0));
          this.scheduleFlush();
        });
        return state.ahead;
      } catch (err) {
        state.ahead?.abandon();
        if (state.ahead) this.scheduler.giveBack(state.ahead.range);
        pending = undefined;
        if (signal.aborted) throw err;
        const e = toRoboflowError(err, 'ERR_CONNECTION', this.d.displayUrl);
        if (!e.retryable) throw e;
        // Only counted bytes are kept: those of a body that failed before its length was
        // proven are fetched again.
        offset = this.rangesSupported ? state.counted : range.start;
        // Every byte counted: whatever failed after them, there is nothing left to ask for.
        if (offset >= range.end) return undefined;
        if (state.counted - startedAt >= length * PROGRESS_RESETS_ATTEMPTS_FRACTION) attempts = 0;
        let paced = false;
        if (e.code === 'ERR_THROTTLED') {
          this.limiter.onThrottle();
          // An adaptive limit paces a throttling store: the lane waits for a permit under the
          // lowered limit instead of sleeping longer at each 503 (exponential sleeps leave the
          // store idle while every lane waits out its own), and the 503 uses no attempt until
          // the limit is at its floor, where the usual backoff and attempt count take over.
          paced = this.limiter.adaptive && this.limiter.limit > this.limiter.min;
          if (paced) attempts--;
        }
        // A server asking for a longer wait than any this download makes (retry.maxDelayMs)
        // is not retried sooner against its word: it fails now, saying so (as curl does past
        // --retry-max-time).
        const tooLong = e.retryAfterMs !== undefined && e.retryAfterMs > retry.maxDelayMs;
        if (attempts >= retry.maxAttempts || tooLong) {
          const asked = tooLong
            ? `; the server asked to wait ${formatDuration(e.retryAfterMs ?? 0)} before retrying, longer than the longest wait honoured (${formatDuration(retry.maxDelayMs)}, retryMaxDelayMs) — try again later`
            : '';
          throw new RoboflowError(
            'ERR_RETRIES_EXHAUSTED',
            `bytes ${range.start}-${range.end - 1} of ${this.d.displayUrl} failed ${attempts} times in a row; last error: ${e.message}${asked}`,
            { url: this.d.displayUrl, cause: e, ...(e.status !== undefined ? { status: e.status } : {}) },
          );
        }
        // Paced: the store's own hint if it gave one, else a short pause (the permit queue does
        // the rest); otherwise exponential backoff with the table's floors.
        const delayMs = paced
          ? (serverDelayMs(e, retry.maxDelayMs) ?? PACED_THROTTLE_PAUSE_MS + Math.random() * retry.baseDelayMs)
          : backoffDelay(Math.max(1, attempts), e, retry);
        this.d.countRetry(e.code, attempts, delayMs);
        // Waiting does not need a permit; giving it back lets a lowered limit take effect.
        holder.release?.();
        holder.release = undefined;
        try {
          await sleep(delayMs, undefined, { signal });
        } catch {
          throw abortError(signal, `download of ${this.d.displayUrl}`);
        }
        holder.release = await this.limiter.acquire(signal);
      }
    }
  }

  /**
   * Sends a range request with its own abort controller: aborted with the download, and by a
   * headers timeout that is disarmed once headers arrive (so it never cuts a long body).
   */
  private request(range: IndexedRange, from: number): PendingRequest {
    const source = this.d.objectSource;
    // A head not complete within the stall timeout made no progress a body would be allowed
    // (informational heads, a status line and then silence): it is as stalled as a body.
    const { headersTimeoutMs: headersLimitMs, stallTimeoutMs } = this.d.settingsOf;
    const headersTimeoutMs = Math.min(headersLimitMs, stallTimeoutMs);
    const ctl = new AbortController();
    const downloadSignal = this.control.signal;
    const onAbort = () => ctl.abort(downloadSignal.reason);
    downloadSignal.addEventListener('abort', onAbort, { once: true });
    const timer = setTimeout(() => {
      ctl.abort(
        new RoboflowError('ERR_TIMEOUT', `no response headers from ${this.d.displayUrl} within ${headersTimeoutMs} ms`, {
          url: this.d.displayUrl,
        }),
      );
    }, headersTimeoutMs);
    const sentAt = performance.now();
    let body: Readable | undefined;
    let finished = false;
    channels.rangeRequest.publish({ downloadId: this.d.downloadId, delta: 1 });
    const done = () => {
      if (finished) return;
      finished = true;
      clearTimeout(timer);
      downloadSignal.removeEventListener('abort', onAbort);
      channels.rangeRequest.publish({ downloadId: this.d.downloadId, delta: -1 });
    };
    const wanted: ByteRange = { start: from, end: range.end };
    const outcome = source
      .read(wanted, {
        signal: ctl.signal,
        ...(this.st.etag !== undefined ? { ifMatch: this.st.etag } : {}),
      })
      .then(
        (res) => {
          clearTimeout(timer);
          body = res.body;
          ctl.signal.addEventListener('abort', () => res.body.destroy(abortReason(ctl.signal)), { once: true });
          this.observeLatency(performance.now() - sentAt);
          if (ctl.signal.aborted) res.body.destroy();
          return { ok: true as const, body: res };
        },
        (err: unknown) => {
          const reason: unknown = ctl.signal.reason;
          // Our own timeout shows up as whatever abort error the source raises; name it.
          const e = reason instanceof RoboflowError && reason.code === 'ERR_TIMEOUT' && !downloadSignal.aborted ? reason : err;
          done();
          return { ok: false as const, err: e };
        },
      );
    return {
      range,
      from,
      outcome,
      abandon: () => {
        ctl.abort(new RoboflowError('ERR_ABORTED', 'look-ahead request abandoned'));
        body?.destroy();
        void outcome.then((o) => {
          if (o.ok) o.body.body.destroy();
          done();
        });
      },
      done,
    };
  }

  private observeLatency(ms: number): void {
    const keep = 2 * this.d.settingsOf.connections;
    if (this.latencies.length < keep) this.latencies.push(ms);
    else this.latencies[this.latencyNext] = ms;
    this.latencyNext = (this.latencyNext + 1) % keep;
  }

  /**
   * The first-byte latency the look-ahead plans with: the smallest of the latest requests. The
   * mean would include this process's own event-loop delays and pool queueing, which make a
   * look-ahead sent early stream beside the current body for long, not just overlap its end.
   */
  private get latencyMs(): number {
    return this.latencies.length === 0 ? 0 : Math.min(...this.latencies);
  }

  /**
   * Reads one response body into the temp file. `state.offset` follows the bytes written,
   * `state.counted` those counted, where a retry continues; `state.ahead` is the look-ahead
   * request, if one was sent.
   */
  private async transferOnce(
    range: IndexedRange,
    pending: PendingRequest,
    state: TransferState,
    meter: LaneMeter,
    onWritten: (offset: number) => void,
  ): Promise<void> {
    const { stallTimeoutMs, lowSpeedLimitBytes, lowSpeedTimeMs, lookahead } = this.d.settingsOf;
    const url = this.d.displayUrl;
    let serving = false;
    try {
      const o = await pending.outcome;
      if (!o.ok) throw o.err;
      const { body } = o.body;
      // The store accepted this request: a throttle meanwhile learns how many it was serving.
      this.limiter.noteServing(1);
      serving = true;
      if (o.body.range.start !== pending.from || o.body.range.end !== range.end) {
        body.destroy();
        throw new RoboflowError(
          'ERR_BAD_RESPONSE',
          `${url}: asked for bytes ${pending.from}-${range.end - 1}, the source answered ${o.body.range.start}-${o.body.range.end - 1}`,
          { url },
        );
      }
      // Every response names the object's size (Content-Range total): one naming another size
      // than the plan's is of another object version, or the HEAD did not tell the truth.
      if (o.body.total !== undefined && o.body.total !== this.st.size) {
        body.destroy();
        throw new RoboflowError(
          'ERR_SOURCE_CHANGED',
          `${url}: the response for bytes ${pending.from}-${range.end - 1} gives the object's size as ${o.body.total} bytes, the download planned for ${this.st.size}`,
          { url },
        );
      }
      const watch = new BodyWatch(stallTimeoutMs, lowSpeedLimitBytes, lowSpeedTimeMs, (why) => {
        body.destroy(new RoboflowError('ERR_STALLED', `${why} from ${url} (bytes ${state.offset}-${range.end - 1}); retrying`, { url }));
      });
      // A body whose length its response declared (Content-Length = the range) holds the
      // range's bytes in order: each is counted as it is written, and a retry continues after
      // it. Any other (chunked, close-delimited) proves its length only at its end; until then
      // its bytes are written but not counted, so a body found too long or malformed leaves
      // nothing behind that a resumed run would trust.
      const countsAsWritten = !(isHttp1Body(body) && body.length === undefined);
      const held: [number, number, number][] = [];
      const count = () => {
        if (this.hasher instanceof SegmentCrc32Hasher) for (const [at, n, crc] of held.splice(0)) this.hasher.add(at, n, crc);
        state.counted = state.offset;
        onWritten(state.offset);
      };
      const write = async (bufs: Buffer[], n: number) => {
        const at = state.offset;
        const crc = await this.writer.write(bufs, n, at);
        if (crc !== undefined) held.push([at, n, crc]);
        state.offset = at + n;
        if (countsAsWritten) count();
      };
      const lookAhead = (received: number) => {
        if (lookahead && state.ahead === undefined) state.ahead = this.requestAhead(range.end - received, meter);
      };
      try {
        const reading: BodyReading = { range, from: pending.from, state, watch, meter, write, lookAhead };
        if (isHttp1Body(body) && body.length === range.end - pending.from) await this.fillFrom(body, reading);
        else await this.streamFrom(body, reading);
      } catch (err) {
        // Every byte of the range is in and the body then broke off (no final chunk, the
        // connection closed or went quiet): nothing is left to fetch. A malformed or too long
        // body (not retryable) still fails.
        if (state.offset !== range.end || this.control.signal.aborted || !toRoboflowError(err, 'ERR_CONNECTION').retryable) throw err;
      } finally {
        watch.stop();
        if (!body.destroyed && state.offset < range.end) body.destroy();
      }
      if (state.offset === range.end && state.counted !== state.offset) count();
      if (state.offset < range.end) {
        throw new RoboflowError(
          'ERR_TRUNCATED_BODY',
          `${url}: the response for bytes ${pending.from}-${range.end - 1} ended after ${state.offset - pending.from} bytes`,
          { url },
        );
      }
    } finally {
      if (serving) this.limiter.noteServing(-1);
      pending.done();
    }
  }

  /**
   * The fast path: socket reads land in one of our write buffers (`Http1Body.fill`), which then
   * goes to the file; no buffer is allocated per read. Reading waits for the write, so memory is
   * one batch per lane.
   */
  private async fillFrom(body: Http1Body, r: BodyReading): Promise<void> {
    const { range, state, watch, meter, write, lookAhead } = r;
    const buf =
      this.writeBuffers.pop() ??
      (this.writer instanceof WriterThread ? sharedBuffer(this.batchLimit) : Buffer.allocUnsafeSlow(this.batchLimit));
    try {
      while (state.offset < range.end) {
        const want = Math.min(this.batchLimit, range.end - state.offset);
        let n: number;
        try {
          n = await body.fill(buf.subarray(0, want), (k) => {
            watch.add(k);
            meter.add(k);
            lookAhead(state.offset + body.filled);
          });
        } catch (err) {
          // Bytes that arrived before the failure are good: the retry starts after them.
          if (body.filled > 0 && !this.control.signal.aborted) await write([buf.subarray(0, body.filled)], body.filled).catch(() => undefined);
          throw err;
        }
        if (n === 0) return;
        watch.pause();
        await this.beforeWrite(watch);
        await write([buf.subarray(0, n)], n);
        watch.restart();
        if (n < want) return;
      }
    } finally {
      this.writeBuffers.push(buf);
    }
  }

  /**
   * Any other body (a stream without a known length, a body the SDK wrapped): received buffers
   * wait until `batchLimit` bytes are together, then go to the file as one batch.
   */
  private async streamFrom(body: Readable, r: BodyReading): Promise<void> {
    const { range, from, state, watch, meter, write, lookAhead } = r;
    const batch: Buffer[] = [];
    let batchBytes = 0;
    const writeBatch = async () => {
      if (batchBytes === 0) return;
      const n = batchBytes;
      batchBytes = 0;
      await write(batch.splice(0), n);
    };
    try {
      for await (const chunk of body as AsyncIterable<Buffer>) {
        watch.add(chunk.length);
        const received = state.offset + batchBytes + chunk.length;
        if (received > range.end) {
          throw new RoboflowError(
            'ERR_BAD_RESPONSE',
            `${this.d.displayUrl}: the response for bytes ${from}-${range.end - 1} carried more bytes than asked for`,
            { url: this.d.displayUrl },
          );
        }
        batch.push(chunk);
        batchBytes += chunk.length;
        meter.add(chunk.length);
        if (batchBytes >= this.batchLimit || received === range.end) {
          watch.pause();
          await this.beforeWrite(watch);
          // Reading waits for the write: backpressure keeps memory at one batch per lane.
          await writeBatch();
          watch.restart();
        }
        lookAhead(received);
      }
      await writeBatch();
    } catch (err) {
      // Bytes that arrived before the failure are good: writing them lets the retry start
      // after them. (A failed write already emptied the batch, so it is not tried twice.)
      if (!this.control.signal.aborted) await writeBatch().catch(() => undefined);
      throw err;
    }
  }

  /** Too much written and not yet recorded: a crash now would fetch it all again, so wait. */
  private async beforeWrite(watch: BodyWatch): Promise<void> {
    if (!this.durabilityBacklogFull()) return;
    await this.drainDurabilityBacklog();
    watch.restart();
  }

  /**
   * The request for the lane's next chunk, sent when the current body's `left` bytes will take
   * about as long as the next response's first byte (see "Look-ahead" at the top); undefined
   * when it is not yet time or not allowed now.
   */
  private requestAhead(left: number, meter: LaneMeter): PendingRequest | undefined {
    if (
      this.scheduler.remaining === 0 ||
      this.limiter.shouldYield ||
      // A throttling store counts a look-ahead request as one more in flight: none until the
      // limit has grown back.
      this.limiter.throttled ||
      this.durabilityBacklogFull() ||
      !shouldRequestAhead(left, meter.rate, this.latencyMs, LOOKAHEAD_LATENCIES)
    ) {
      return undefined;
    }
    const next = this.scheduler.take();
    return next ? this.request(next, this.resumeFrom(next)) : undefined;
  }

  // Completion, durability, hashing ---------------------------------------------------------

  private chunk(index: number): IndexedRange {
    return this.plan.range(index);
  }

  /** Where fetching a chunk starts: after its durable prefix from an earlier run, if any. */
  private resumeFrom(range: IndexedRange): number {
    return this.durableTo.get(range.index) ?? range.start;
  }

  private chunkDone(index: number): void {
    this.written.add(index);
    this.writtenTo.delete(index);
    this.unrecorded.push(index);
    this.advanceHasher();
    this.scheduleFlush();
  }

  private advanceHasher(): void {
    const firstMissing = this.written.firstMissing();
    const prefix = firstMissing >= this.written.count ? this.st.size : this.chunk(firstMissing).start;
    this.hasher.advanceTo(prefix);
  }

  /** Bytes written to the temp file that no state write records yet: what a crash would cost. */
  private unrecordedBytes(): number {
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
  private durabilityBacklogFull(): boolean {
    return this.unrecordedBytes() >= this.backlogLimitBytes;
  }

  /** Waits until the durability backlog is below `backlogLimitBytes` (see above). */
  private async drainDurabilityBacklog(): Promise<void> {
    while (this.durabilityBacklogFull() && !this.control.signal.aborted) {
      if (!this.flushing) this.startFlush();
      await (this.flushing ?? Promise.resolve()).catch(() => undefined);
    }
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

  private startFlush(): void {
    void this.flush().catch((err: unknown) => this.fail(this.d.diskError(err, this.d.paths.state)));
  }

  /**
   * Makes every chunk written so far durable and records it: one `fdatasync` (with `durability:
   * 'disk'`), then one atomic state write. Runs one at a time; a call while one runs waits for it
   * and then runs again.
   */
  private async flush(): Promise<void> {
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
        const bootId = this.d.settingsOf.durability === 'process' ? pageCacheBootId() : undefined;
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
        await writeResumeState(this.d.paths.state, {
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
    if (this.unrecordedBytes() > 0 && !this.control.signal.aborted) this.scheduleFlush();
  }
}

/** One response body being read into the temp file by a lane (`fillFrom`, `streamFrom`). */
interface BodyReading {
  /** The chunk; the body holds its bytes from `from` on. */
  readonly range: IndexedRange;
  readonly from: number;
  /** Where the next byte goes: advanced by `write`. */
  readonly state: { offset: number };
  /** The stall timer and low-speed limit: told of bytes as they arrive, restarted after a write. */
  readonly watch: BodyWatch;
  readonly meter: LaneMeter;
  /** Writes `n` bytes at `state.offset` and advances it. */
  readonly write: (bufs: Buffer[], n: number) => Promise<void>;
  /** Sends the lane's next request when `received` says it is time (look-ahead). */
  readonly lookAhead: (received: number) => void;
}

/** Where one attempt at a chunk stands. */
interface TransferState {
  /** Where the next byte goes in the temp file. */
  offset: number;
  /** Bytes up to here are counted (progress, resume state): where a retry continues. */
  counted: number;
  /** The lane's look-ahead request, if one was sent. */
  ahead: PendingRequest | undefined;
}

/**
 * The stall timer and the low-speed limit of one body being read (curl's --speed-limit and
 * --speed-time): a body without a byte for `stallMs`, or with fewer than `minBytesPerSec` over
 * a window of `windowMs`, is given up (`onGiveUp`) and its range retried on another connection.
 * The window is judged by a timer of its own, so a socket read costs a counter increment and a
 * timer refresh, as before. Time the lane spends writing (`restart`) counts for neither.
 */
class BodyWatch {
  private readonly stall: NodeJS.Timeout;
  private readonly window: NodeJS.Timeout | undefined;
  private windowAt = performance.now();
  private windowBytes = 0;
  private paused = false;

  constructor(
    stallMs: number,
    private readonly minBytesPerSec: number,
    private readonly windowMs: number,
    private readonly onGiveUp: (why: string) => void,
  ) {
    this.stall = setTimeout(() => onGiveUp(`no data for ${stallMs} ms`), stallMs);
    if (minBytesPerSec > 0) this.window = setInterval(() => this.judge(), windowMs);
  }

  /** `n` bytes arrived. */
  add(n: number): void {
    this.stall.refresh();
    this.windowBytes += n;
  }

  /** The lane waits on its own (a write): no window is judged until `restart`. */
  pause(): void {
    this.paused = true;
  }

  /** After a wait of the lane's own: both measures start again. */
  restart(): void {
    this.paused = false;
    this.stall.refresh();
    this.windowAt = performance.now();
    this.windowBytes = 0;
  }

  stop(): void {
    clearTimeout(this.stall);
    clearInterval(this.window);
  }

  private judge(): void {
    const elapsed = performance.now() - this.windowAt;
    // A window cut short by a write is judged at the next tick, whole.
    if (this.paused || elapsed < this.windowMs * 0.9) return;
    const rate = (this.windowBytes * 1000) / elapsed;
    this.windowAt += elapsed;
    this.windowBytes = 0;
    if (rate < this.minBytesPerSec) {
      this.stop();
      this.onGiveUp(`${Math.floor(rate)} B/s over ${formatDuration(Math.round(elapsed))}, below the low-speed limit of ${this.minBytesPerSec} B/s`);
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

function abortReason(signal: AbortSignal): Error {
  const reason: unknown = signal.reason;
  return reason instanceof Error ? reason : new RoboflowError('ERR_ABORTED', 'request aborted', { cause: reason });
}
