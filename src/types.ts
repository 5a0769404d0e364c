/**
 * Public types of roboflow-distributed.
 *
 * Glossary
 * --------
 * - **object**: one file in object storage (S3, Alibaba OSS, HTTP(S) or the local file system),
 *   addressed by a URL such as `s3://bucket/key`.
 * - **source**: what a URL becomes (`ObjectSource`): `stat()` plus ranged reads guarded by an ETag.
 * - **range**: a byte interval `[start, end)` of an object, fetched by one request. `end` is
 *   exclusive everywhere in this code base; only HTTP headers use the inclusive form.
 * - **chunk size**: the length ranges are cut to (the last range may be shorter).
 * - **connection**: one range request in flight. `connections` bounds them per download.
 * - **temp file**: `<dest>.roboflow-partial`, preallocated and filled by positioned writes; only
 *   a complete, verified temp file is renamed to `dest`.
 * - **state file**: `<dest>.roboflow-state.json`, beside the temp file; records which ranges are
 *   durably written so a download can resume after a crash.
 * - **durability**: what a download's bytes survive. `disk`: a power cut (fdatasync before the
 *   state file counts them, and before the rename). `process`: the process being killed, not the
 *   machine (the bytes live in the page cache until the kernel writes them back).
 * - **job**: one unit of work in the job queue: input URLs, an output prefix, a processor.
 * - **attempt**: one start of processing of a job. Claiming a job for prefetch is not an attempt.
 * - **lease**: a worker's time-limited claim on a job (owner + expiry), renewed by heartbeats. A
 *   job whose lease expires is claimable again (at-least-once delivery).
 * - **dead**: a job that failed `maxAttempts` times, or failed with a permanent error; it keeps its
 *   last error until someone retries it.
 * - **slot**: a place in the prefetch queue that holds one claimed job from the moment its inputs
 *   start downloading until the worker has finished with it.
 * - **buffer directory**: where prefetched inputs are written; bounded by a byte budget.
 * - **processor**: the code that turns a job's downloaded inputs into outputs.
 */

import type { Readable } from 'node:stream';

// ---------------------------------------------------------------------------------------------
// Storage
// ---------------------------------------------------------------------------------------------

/** A byte interval `[start, end)` of an object. */
export interface ByteRange {
  readonly start: number;
  /** Exclusive. */
  readonly end: number;
}

export type ChecksumAlgorithm = 'md5' | 'sha1' | 'sha256' | 'crc32' | 'crc32c';

/** A whole-object checksum. `hex` is lower-case hexadecimal of the digest bytes. */
export interface Checksum {
  readonly algorithm: ChecksumAlgorithm;
  readonly hex: string;
}

export type SourceKind = 'file' | 'http' | 's3' | 'oss';

/** What `ObjectSource.stat()` learns about an object. */
export interface ObjectStat {
  /** The object's URL with any secret (query signature, user info) removed. */
  readonly url: string;
  readonly size: number;
  /** Strong ETag as the server sent it, quotes included (`"abc"`); undefined if none or weak. */
  readonly etag?: string;
  readonly lastModified?: Date;
  /**
   * Whole-object checksums the source vouches for: the MD5 in a single-part S3 ETag,
   * `x-amz-checksum-*` full-object values. Empty when the source offers none.
   */
  readonly checksums: readonly Checksum[];
  /** False when the server said it cannot serve byte ranges (HTTP without `Accept-Ranges`). */
  readonly rangesSupported: boolean;
}

export interface ReadOptions {
  /** Sent as `If-Match`; a source whose object no longer has this ETag fails with `ERR_SOURCE_CHANGED`. */
  readonly ifMatch?: string;
  readonly signal?: AbortSignal;
}

/**
 * The body of one range request. The source has already checked the status (206, or 200 when
 * the range is the whole object), that Content-Range names exactly the requested range, and the
 * ETag. The consumer must read `body` to the end or destroy it.
 */
export interface RangeBody {
  readonly range: ByteRange;
  readonly body: Readable;
  /**
   * The object's size as this response states it (a Content-Range total, a 200's length), when
   * it states one: the downloader holds it against the size it planned for.
   */
  readonly total?: number;
  /**
   * Whether the body's length is bounded by its framing to exactly the range (HTTP: a
   * Content-Length the connection reads by, equal to the range; a local file: the read's end).
   * Such a body cannot carry more bytes than asked, so the downloader counts each byte as
   * durable-to-be once written. Any other body (chunked, close-delimited, a transport the source
   * cannot see into) proves its length only at its end: nothing of it is counted before then.
   */
  readonly lengthProven: boolean;
}

/** What a URL becomes: a narrow interface so the downloader knows nothing of protocols. */
export interface ObjectSource {
  readonly kind: SourceKind;
  /** Display form of the URL, with secrets removed; safe for logs and errors. */
  readonly url: string;
  stat(opts?: { signal?: AbortSignal }): Promise<ObjectStat>;
  read(range: ByteRange, opts?: ReadOptions): Promise<RangeBody>;
  /** Closes pooled connections. Idempotent. */
  close(): Promise<void>;
}

/** Options that turn a URL into a source or a sink. */
export interface StorageOptions {
  /** S3 endpoint (`--endpoint`, else `AWS_ENDPOINT_URL`). */
  readonly endpoint?: string;
  /** S3 region (else the SDK's default chain, else `us-east-1`). */
  readonly region?: string;
  /** Force path-style S3 addressing (automatic for IP and localhost endpoints). */
  readonly forcePathStyle?: boolean;
  /** Upper bound of parallel connections the source should keep open. */
  readonly maxConnections?: number;
  /** Per-request timeout for headers; body stalls are detected by the downloader. */
  readonly headersTimeoutMs?: number;
  /** Environment to read credentials and endpoints from (default `process.env`). */
  readonly env?: NodeJS.ProcessEnv;
}

// ---------------------------------------------------------------------------------------------
// Downloader
// ---------------------------------------------------------------------------------------------

export interface RetryOptions {
  /** Attempts per range, first included. */
  readonly maxAttempts: number;
  /** First backoff ceiling; doubles each attempt (full jitter picks in [0, ceiling]). */
  readonly baseDelayMs: number;
  readonly maxDelayMs: number;
}

/**
 * What a download survives (see the glossary). `disk` pays a flush of every byte to the disk
 * before the call returns; `process` does not, so a download runs at network speed on a disk
 * slower than the network, and a power cut or kernel crash loses it (the partial download of
 * another boot is discarded, never resumed).
 */
export type Durability = (typeof DURABILITIES)[number];

/** Every `Durability`, for the checks of the option, the config field and the flag. */
export const DURABILITIES = ['disk', 'process'] as const;

export function isDurability(value: unknown): value is Durability {
  return (DURABILITIES as readonly unknown[]).includes(value);
}

export interface DownloadOptions {
  readonly connections?: number;
  readonly chunkSize?: number;
  readonly signal?: AbortSignal;
  /** A range that receives no byte for this long is aborted and retried. */
  readonly stallTimeoutMs?: number;
  readonly retry?: Partial<RetryOptions>;
  /** A checksum the caller knows (e.g. from the job record); verified before promotion. */
  readonly expectedChecksum?: Checksum;
  /**
   * Verify the whole-object checksums the store vouches for (an MD5 ETag, `x-amz-checksum-*`)
   * before promotion. Off saves ~1.5 CPU s per GB (MD5) where the transport is trusted; the size,
   * and `expectedChecksum` when given, are still checked. (Default: true)
   */
  readonly verifySourceChecksums?: boolean;
  /** Expected size, if the caller knows it; a different size fails with `ERR_SIZE_MISMATCH`. */
  readonly expectedSize?: number;
  /** Called at most every `progressIntervalMs` and once at the end. */
  readonly onProgress?: (p: DownloadProgress) => void;
  readonly progressIntervalMs?: number;
  /** Keep the temp and state files when the download fails, so it can resume (default true). */
  readonly keepPartial?: boolean;
  /** What the download survives. (Default: `DEFAULTS.durability`, `disk`) */
  readonly durability?: Durability;
  /**
   * Where this download stands when downloads compete for the downloader's shared limiter
   * (lower goes first; see `ConcurrencyLimiter.withPriority`). The prefetch queue passes the
   * job's claim order. (Default: the shared limiter's own, 0)
   */
  readonly priority?: number;
}

export interface DownloadProgress {
  readonly bytesDone: number;
  readonly total: number;
  /** Bytes per second over the recent window. */
  readonly rate: number;
}

export type VerifiedBy = 'size' | ChecksumAlgorithm;

export interface DownloadResult {
  readonly url: string;
  readonly dest: string;
  readonly bytes: number;
  readonly seconds: number;
  /** Bytes that were already durably on disk from an earlier, interrupted run. */
  readonly resumedBytes: number;
  /** Range attempts that were retried. */
  readonly retries: number;
  /** Times the whole download restarted because the object changed. */
  readonly restarts: number;
  readonly etag?: string;
  /** What the final file was checked against: always its size, plus every checksum verified. */
  readonly verified: readonly VerifiedBy[];
}

// ---------------------------------------------------------------------------------------------
// Jobs
// ---------------------------------------------------------------------------------------------

/**
 * - `pending`: waiting to be claimed (not before `runAt`).
 * - `claimed`: leased by a worker that is prefetching its inputs; no attempt spent yet.
 * - `running`: leased and being processed; `attempts` was incremented when it started.
 * - `done`: finished; `result` holds what the processor returned.
 * - `dead`: failed for good; `lastError` says why.
 */
export type JobStatus = 'pending' | 'claimed' | 'running' | 'done' | 'dead';

export interface JobInput {
  readonly url: string;
  readonly size?: number;
  readonly checksum?: Checksum;
}

/** What a submitter provides. */
export interface JobSpec {
  readonly inputs: readonly JobInput[];
  /** Output prefix URL (`s3://bucket/prefix/`, `file:///dir/`), or undefined for no upload. */
  readonly output?: string;
  /** Processor name (`exec`, `mcap-summary`, `checksum`). */
  readonly processor: string;
  /** Processor arguments, e.g. `{ command: ['gzip', '-k', '{input}'] }` for `exec`. */
  readonly args?: Readonly<Record<string, unknown>>;
  /** Default 3. */
  readonly maxAttempts?: number;
  /**
   * Names the job for deduplication: a job whose key is already in the queue (pending, claimed,
   * running, done or dead) is not added again. (Default: derived from processor, args, inputs and
   * output, so submitting the same work twice adds it once; see `deriveJobKey`.)
   */
  readonly key?: string;
  /** Higher is claimed first; equal priorities go oldest first. (Default: 0) */
  readonly priority?: number;
}

/** How `submit` and `submitMany` treat a key that is already in the queue. */
export interface SubmitOptions {
  /**
   * Re-queue a `done` or `dead` job with the same key (attempts reset, the new spec's fields
   * written over the old ones). Jobs that are pending, claimed or running are never touched.
   * (Default: false, the existing job is left as it is)
   */
  readonly replace?: boolean;
}

/**
 * What submitting one spec did: `added` a new job, `replaced` (re-queued) a done or dead one, or
 * found its key already there (`exists`; `status` says where that job stands).
 */
export interface SubmitOutcome {
  readonly id: string;
  readonly key: string;
  readonly outcome: 'added' | 'replaced' | 'exists';
  readonly status: JobStatus;
}

export interface JobRecord {
  readonly id: string;
  /** Unique in the queue: given by the submitter or derived from the spec (`JobSpec.key`). */
  readonly key: string;
  /** Higher is claimed first. */
  readonly priority: number;
  readonly inputs: readonly JobInput[];
  readonly output: string | null;
  readonly processor: string;
  readonly args: Readonly<Record<string, unknown>>;
  readonly status: JobStatus;
  readonly attempts: number;
  readonly maxAttempts: number;
  readonly leaseOwner: string | null;
  readonly leaseExpiresAt: Date | null;
  readonly lastError: string | null;
  readonly result: unknown;
  /**
   * The attempt last authorised to publish the job's output (`commit`), e.g. `3-1a2b3c4d`; null
   * until one was. Once the job is `done`, the attempt whose output is published.
   */
  readonly commitAttempt: string | null;
  /** Not claimable before this time (retry backoff). */
  readonly runAt: Date;
  readonly createdAt: Date;
  readonly updatedAt: Date;
}

export interface FailOptions {
  /** False for permanent errors: the job goes dead at once. */
  readonly retryable: boolean;
  /** Delay before the job is claimable again (ignored when it goes dead). */
  readonly backoffMs: number;
}

/**
 * The job queue. Two implementations, SQLite (`src/jobs/sqlite.ts`) and PostgreSQL
 * (`src/jobs/postgres.ts`), mirror each other operation by operation and pass one contract suite.
 * Every lease-holding call takes the owner and fails with `ERR_LEASE_LOST` when the caller no
 * longer holds the lease (it expired and someone else claimed the job).
 */
export interface JobQueue {
  /**
   * Adds a job, unless one with its key is already in the queue: then returns that job as it is
   * (or re-queued, with `replace`, when it was done or dead).
   */
  submit(spec: JobSpec, opts?: SubmitOptions): Promise<JobRecord>;
  /**
   * `submit` for many specs in one transaction, one outcome per spec in the same order. A key
   * that appears twice in `specs` is added once; the second gets `exists`. Specs are checked
   * before anything is written: one bad spec refuses the whole batch, naming its index.
   */
  submitMany(specs: readonly JobSpec[], opts?: SubmitOptions): Promise<SubmitOutcome[]>;
  /**
   * Atomically claims the claimable job of highest priority, oldest first among equals:
   * `pending` with `runAt <= now`, or `claimed` / `running` whose lease has expired. Returns null
   * when there is none.
   */
  claim(owner: string, leaseMs: number): Promise<JobRecord | null>;
  /** Extends the lease; `ERR_LEASE_LOST` if the owner no longer holds it. */
  heartbeat(id: string, owner: string, leaseMs: number): Promise<void>;
  /** `claimed` → `running`, attempts + 1. */
  start(id: string, owner: string, leaseMs: number): Promise<JobRecord>;
  /**
   * Authorises attempt `attempt` of a `running` job to publish its output (README "Output commit
   * protocol"): records it as the job's `commitAttempt` and renews the lease. Refused with
   * `ERR_LEASE_LOST` unless the owner holds a lease that has not expired by the queue's clock, so
   * an attempt whose lease ran out never publishes, even before anyone else claimed the job.
   */
  commit(id: string, owner: string, attempt: string, leaseMs: number): Promise<JobRecord>;
  complete(id: string, owner: string, result: unknown): Promise<JobRecord>;
  /**
   * Back to `pending` after `backoffMs`, or `dead` when not retryable or attempts are spent.
   * Failing a job that is only `claimed` (e.g. its inputs would not download) spends an attempt
   * too, so a job that can never be prepared still ends `dead` instead of circling forever.
   */
  fail(id: string, owner: string, error: string, opts: FailOptions): Promise<JobRecord>;
  /**
   * Hands a claimed job back to `pending` without spending an attempt (shutdown, prefetch).
   * Also accepts a `running` job (shutdown that cancelled processing): the attempt already spent
   * stays counted, and a job released during its last attempt goes `dead` at the next claim.
   */
  release(id: string, owner: string): Promise<void>;
  /** `dead` → `pending` with attempts reset to 0; `lastError` stays until the job fails again or completes. */
  retry(id: string): Promise<JobRecord>;
  get(id: string): Promise<JobRecord | null>;
  list(filter?: { status?: JobStatus; limit?: number }): Promise<JobRecord[]>;
  counts(): Promise<Record<JobStatus, number>>;
  /**
   * Calls `listener` whenever jobs may have become claimable: submitted, released, retried, or a
   * retry delay ran out. Returns the function that unsubscribes. Only queues that can tell other
   * processes have it (PostgreSQL, through LISTEN/NOTIFY); without it, idle workers poll.
   */
  onWork?(listener: () => void): () => void;
  /** Idempotent. */
  close(): Promise<void>;
}

// ---------------------------------------------------------------------------------------------
// Prefetch
// ---------------------------------------------------------------------------------------------

/** `PrefetchConfig` of the PrefetchQueue design (docs/design.md). */
export interface PrefetchConfig {
  /** Jobs downloaded ahead of the one being processed (0 = download, then process). */
  readonly slots: number;
  readonly downloadConnections: number;
  readonly chunkSize: number;
  readonly bufferDir: string;
  /** Most bytes the buffer directory may hold across slots; null = free space minus reserve. */
  readonly bufferBudgetBytes: number | null;
}

/** A slot's status as the PrefetchQueue design (docs/design.md) names it. */
export type PrefetchStatus =
  | { readonly kind: 'downloading' }
  | { readonly kind: 'ready' }
  | { readonly kind: 'failed'; readonly reason: string };

/** A job whose inputs are on local disk, handed out by `PrefetchQueue.nextReady()`. */
export interface ReadyJob {
  readonly job: JobRecord;
  /** Local paths of the inputs, in the order of `job.inputs`. */
  readonly inputPaths: readonly string[];
  /** Seconds spent downloading this job's inputs. */
  readonly downloadSeconds: number;
  readonly bytes: number;
}

// ---------------------------------------------------------------------------------------------
// Processors
// ---------------------------------------------------------------------------------------------

export interface ProcessorContext {
  readonly job: JobRecord;
  readonly inputPaths: readonly string[];
  /** An empty directory; every file the processor leaves here is uploaded to `job.output`. */
  readonly outputDir: string;
  readonly signal: AbortSignal;
}

export interface Processor {
  readonly name: string;
  /** Returns a JSON-serialisable result stored on the job. Throws `RoboflowError` on failure. */
  run(ctx: ProcessorContext): Promise<unknown>;
}
