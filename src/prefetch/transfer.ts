/**
 * Transfer: the lanes of one pass over a download's missing chunks; step 4 of a download
 * (`downloader.ts`, "lanes"). Each lane takes chunks in ascending order, holds a permit of the
 * limiter while its body streams, reads the body into write batches (`fillFrom` for an
 * `Http1Body`, `streamFrom` for any other), retries what failed from the last byte counted, and
 * sends the request for its next chunk before the current body ends (look-ahead). The pass owns
 * the writer (`writer-thread.ts` or `file-writer.ts`), the in-order hasher (`verify.ts`) and the
 * durability ledger (`ledger.ts`), which it tells what was written; `Download` (`download.ts`)
 * creates one per attempt, so a restart after a source change starts from nothing.
 *
 * Also here: what watches a body being read (`BodyWatch`: the stall timer and the low-speed
 * limit) and a lane's rate for the look-ahead decision (`LaneMeter`).
 */

import type { FileHandle } from 'node:fs/promises';
import { setMaxListeners } from 'node:events';
import type { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { channels } from '../diagnostics.js';
import { abortError, backoffDelay, RoboflowError, serverDelayMs, toRoboflowError } from '../errors.js';
import { type Http1Body, isHttp1Body } from '../storage/http1.js';
import type { ByteRange, Checksum, ObjectStat, RangeBody } from '../types.js';
import { formatDuration } from '../units.js';
import { ConcurrencyLimiter, type Release } from './concurrency.js';
import type { Download } from './download.js';
import { FileWriter } from './file-writer.js';
import { DurabilityLedger } from './ledger.js';
import { type ChunkPlan, type ChunkSet, type IndexedRange, RangeScheduler, shouldRequestAhead } from './ranges.js';
import type { ResumeIdentity } from './resume-state.js';
import { crc32OfRange, createOrderedHasher, type OrderedHasher, SegmentCrc32Hasher } from './verify.js';
import { sharedBuffer, WriterThread } from './writer-thread.js';

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
/** Smallest write batch, for small chunks (the batch is at most a quarter of a chunk). */
const MIN_WRITE_BATCH_BYTES = 64 * 1024;
/** Window over which a lane measures its rate for the look-ahead decision. */
const RATE_WINDOW_LANE_MS = 100;

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

/**
 * The lanes of one pass over the missing chunks, with the writer, the in-order hasher and the
 * durability ledger they feed. Created per attempt, so a restart after a source change starts
 * from nothing.
 */
export class Transfer {
  readonly hasher: OrderedHasher;
  private readonly scheduler: RangeScheduler;
  private readonly limiter: ConcurrencyLimiter;
  /** What is written and what is durable; the batched `fdatasync` + state writes (`ledger.ts`). */
  private readonly ledger: DurabilityLedger;
  /** Bytes per write batch; small next to a chunk, so the crash bound holds at small chunk sizes. */
  private readonly batchLimit: number;
  /** Batches into the temp file (`writer-thread.ts`, `file-writer.ts`). */
  private readonly writer: FileWriter | WriterThread;
  /** Write buffers of `batchLimit` bytes, reused by the lanes' fast path (`fillFrom`). */
  private readonly writeBuffers: Buffer[] = [];
  private readonly control = new AbortController();
  private failure: RoboflowError | undefined;
  /** Times to response headers of the latest requests (a ring), for the look-ahead. */
  private readonly latencies: number[] = [];
  private latencyNext = 0;
  private readonly rangesSupported: boolean;

  constructor(
    private readonly d: Download,
    fh: FileHandle,
    private readonly st: ObjectStat,
    identity: ResumeIdentity,
    plan: ChunkPlan,
    completed: ChunkSet,
    partial: ReadonlyMap<number, number>,
    expected: readonly Checksum[],
  ) {
    this.rangesSupported = st.rangesSupported;
    // The crash bound is `connections` × `chunkSize` bytes fetched again. A quarter of it may
    // wait for a state write and an eighth starts one; the lanes' batches in memory are a quarter
    // of a chunk each; the rest is left for what sockets hold (on loopback a few MiB each).
    const bound = d.settingsOf.connections * identity.chunkSize;
    this.batchLimit = Math.min(WRITE_BATCH_BYTES, Math.max(MIN_WRITE_BATCH_BYTES, Math.floor(identity.chunkSize / 4)));
    this.ledger = new DurabilityLedger({
      fh,
      statePath: d.paths.state,
      identity,
      plan,
      completed,
      partial,
      durability: d.settingsOf.durability,
      flushAtBytes: Math.max(this.batchLimit, Math.floor(bound / 8)),
      backlogLimitBytes: Math.max(2 * this.batchLimit, Math.floor(bound / 4)),
      signal: this.control.signal,
      onError: (err) => this.fail(d.diskError(err, d.paths.state)),
    });
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
      if (this.ledger.recordsNothing) this.ledger.startFlush();
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
    return this.ledger.flush();
  }

  /**
   * Ends the pass: stops the hasher and, when the partial download is kept, records every
   * chunk that is complete (one last `fdatasync` + state write). Never throws.
   */
  async settle(keep: boolean): Promise<void> {
    if (!this.control.signal.aborted) this.control.abort(new RoboflowError('ERR_ABORTED', 'download pass ended'));
    this.ledger.stopTimer();
    await this.writer.close();
    await this.hasher.stop();
    await this.ledger.settle(keep);
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
        if (!ahead) await this.ledger.drainBacklog();
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
    let offset = first?.from ?? this.ledger.resumeFrom(range);
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
          this.ledger.noteWritten(range.index, to);
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
      // A body whose framing bounds it to the range (the source says so: `lengthProven`) holds
      // the range's bytes in order: each is counted as it is written, and a retry continues
      // after it. Any other (chunked, close-delimited, a transport the source cannot see into)
      // proves its length only at its end; until then its bytes are written but not counted, so
      // a body found too long or malformed leaves nothing behind that a resumed run would trust.
      const countsAsWritten = o.body.lengthProven;
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
    if (!this.ledger.backlogFull()) return;
    await this.ledger.drainBacklog();
    watch.restart();
  }

  /**
   * The request for the lane's next chunk, sent when the current body's `left` bytes will take
   * about as long as the next response's first byte (see "Look-ahead" in `downloader.ts`);
   * undefined when it is not yet time or not allowed now.
   */
  private requestAhead(left: number, meter: LaneMeter): PendingRequest | undefined {
    if (
      this.scheduler.remaining === 0 ||
      this.limiter.shouldYield ||
      // A throttling store counts a look-ahead request as one more in flight: none until the
      // limit has grown back.
      this.limiter.throttled ||
      this.ledger.backlogFull() ||
      !shouldRequestAhead(left, meter.rate, this.latencyMs, LOOKAHEAD_LATENCIES)
    ) {
      return undefined;
    }
    const next = this.scheduler.take();
    return next ? this.request(next, this.ledger.resumeFrom(next)) : undefined;
  }

  // Completion, hashing -----------------------------------------------------------------------

  private chunkDone(index: number): void {
    this.ledger.chunkDone(index);
    this.advanceHasher();
  }

  private advanceHasher(): void {
    this.hasher.advanceTo(this.ledger.writtenPrefix());
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

function abortReason(signal: AbortSignal): Error {
  const reason: unknown = signal.reason;
  return reason instanceof Error ? reason : new RoboflowError('ERR_ABORTED', 'request aborted', { cause: reason });
}
