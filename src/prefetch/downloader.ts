/**
 * ParallelDownloader: one object into one local file, with parallel range requests, crash-safe
 * resume and verification; the file appears at `dest` only complete and verified.
 *
 * This file is the facade: options, settings and the lifecycle of the downloader. The work is
 * done by one `Download` per call (`download.ts`: stat, plan, temp file, verify, promote), one
 * `Transfer` per pass over the missing chunks (`transfer.ts`: the lanes, look-ahead, body
 * reading) and its `DurabilityLedger` (`ledger.ts`: what is written, what is durable, the state
 * writes). The partial files are named by `partialPaths` (`resume-state.ts`).
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
 *    system, is preallocated with `ftruncate(size)` and filled with positioned writes. The design
 *    (docs/design.md) asks for a memory-mapped file; in Node, positioned writes into a
 *    preallocated file take the same page-cache path, without the SIGBUS a mapped page raises
 *    when the disk fills up. Because `ftruncate` makes a sparse file, free space is checked with
 *    `statfs` first, and `ENOSPC` during a write still fails cleanly with `ERR_NO_SPACE`.
 * 4. **lanes** (`transfer.ts`). `connections` lanes take chunks from a `RangeScheduler` in
 *    ascending order. A lane holds a permit of the `ConcurrencyLimiter` (`concurrency.ts`,
 *    AIMD: halves on throttling, grows back by one per round) while its body streams. A body from `Http1Pool` is
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
 * 5. **durability** (`ledger.ts`). Bytes count as fetched in the state file only after an
 *    `fdatasync` of the temp file that covers them: whole chunks, and for chunks being fetched the prefix written so
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

import { setMaxListeners } from 'node:events';
import { DEFAULTS } from '../defaults.js';
import { RoboflowError } from '../errors.js';
import { StorageClients } from '../storage/index.js';
import type { DownloadOptions, DownloadResult, Durability, RetryOptions, StorageOptions } from '../types.js';
import { DURABILITIES, isDurability } from '../types.js';
import type { ConcurrencyLimiter } from './concurrency.js';
import { Download, type DownloadSettings } from './download.js';

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
    let settings: DownloadSettings;
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
   * The design's "resume from an existing partial download" (docs/design.md). Identical to `download()`, which
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

  private settings(opts: DownloadOptions): DownloadSettings {
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
