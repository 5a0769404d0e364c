/**
 * Every default of roboflow-distributed, in one object, each with the reason it is what it is.
 * The configuration loader (`src/config.ts`) layers a file, the environment and flags over these;
 * library classes fall back to them for options a caller leaves out.
 */

import type { Durability } from './types.js';

const MiB = 1024 * 1024;

export const DEFAULTS = {
  /**
   * Prefetch slots: jobs downloaded ahead of the one being processed. Two hide one download
   * behind one processing step even when download and processing times vary; more only hold
   * disk space. (Default: 2)
   */
  slots: 2,
  /**
   * Range requests in flight per object. S3 and OSS cap throughput per connection (tens of MB/s),
   * so one stream cannot fill a 10 Gbit link; 16 × ~50 MB/s saturates it without tripping the
   * stores' per-prefix request limits. (Default: 16)
   */
  downloadConnections: 16,
  /**
   * Range transfers in flight across all downloads of a worker. null: no host-wide limit, so
   * every prefetch slot downloads with all its connections (the pools are sized for it) and a
   * prefetch slot never slows the job needed next. Set it when the link or the store cannot take
   * `slots × downloadConnections` transfers; the job handed out next then gets them first.
   * (Default: none)
   */
  maxHostConnections: null as number | null,
  /**
   * Length of one range request. 8 MiB matches the AWS CLI's multipart size and the part size
   * most S3 uploads use, amortises per-request latency (20 ms ≈ 6 % of an 8 MiB range at
   * 25 MB/s), and bounds what a retry re-fetches. (Default: 8 MiB)
   */
  chunkSize: 8 * MiB,
  /**
   * Where prefetched inputs are written. Relative to the working directory, so a demo works
   * anywhere; production sets it to a local NVMe. (Default: `.roboflow-buffer`)
   */
  bufferDir: '.roboflow-buffer',
  /**
   * Most bytes the buffer directory may hold across all slots. null means free space minus
   * `bufferReserveBytes`, measured when a slot starts. (Default: null)
   */
  bufferBudgetBytes: null as number | null,
  /**
   * Free space left untouched on the buffer file system when no budget is set, so the processor
   * and the OS still have room for their own output. (Default: 1 GiB)
   */
  bufferReserveBytes: 1024 * MiB,
  /**
   * What a download survives: `disk`, a power cut (its bytes are fdatasynced before the resume
   * state counts them and before the file is renamed into place), or `process`, only the process
   * being killed (no fdatasync: the kernel writes the bytes back when it chooses). `disk` is the
   * safe choice and costs little where the disk outruns the network. `process` is for inputs
   * that are scratch, on a disk slower than the network (cloud block volumes give 125–250 MB/s
   * at baseline, a bucket 1 GB/s and more): there every download would wait for the disk, while
   * a job whose machine fails is run again from the queue anyway. (Default: `disk`)
   */
  durability: 'disk' as Durability,
  /**
   * Attempts per range before the download fails. Transient faults (resets, 5xx, throttling)
   * rarely outlast five tries with backoff; more would hide a broken store. (Default: 6)
   */
  rangeMaxAttempts: 6,
  /** First backoff ceiling, doubled per attempt (full jitter). (Default: 200 ms) */
  retryBaseDelayMs: 200,
  /** Largest backoff between two attempts of one range. (Default: 20 s) */
  retryMaxDelayMs: 20_000,
  /**
   * A range that receives no byte for this long is aborted and retried from where it stopped.
   * Long enough for a throttled store's slow first byte, short enough that a dead connection
   * does not hold a slot. (Default: 30 s)
   */
  stallTimeoutMs: 30_000,
  /**
   * Time to wait for the complete response head of one request. A download's range requests
   * are also bounded by `stallTimeoutMs`: a head that does not come (a status line and then
   * silence, endless `100 Continue`) is as stalled as a body. (Default: 60 s)
   */
  headersTimeoutMs: 60_000,
  /**
   * A range receiving fewer bytes per second than this over `lowSpeedTimeMs` is retried on
   * another connection (curl's --speed-limit), so a server dripping a byte a second cannot hold a
   * download for ever. Low enough that a healthy but slow store never trips it: 16 lanes below it
   * are under 16 KiB/s together, slower than any link a bucket is read over. 0 turns it off.
   * (Default: 1 KiB/s)
   */
  lowSpeedLimitBytes: 1024,
  /**
   * The window of `lowSpeedLimitBytes` (curl's --speed-time); null is `stallTimeoutMs`, so one
   * setting says how long a range may make no (or next to no) progress. (Default: none, i.e. the
   * stall timeout)
   */
  lowSpeedTimeMs: null as number | null,
  /** How often progress is reported. (Default: 250 ms) */
  progressIntervalMs: 250,
  /**
   * Lease on a claimed job. Long enough to survive a few missed heartbeats (GC pause, busy
   * database), short enough that a killed worker's jobs come back within a minute. (Default: 60 s)
   */
  leaseMs: 60_000,
  /** Heartbeat interval: a third of the lease, so two can be missed. (Default: 20 s) */
  heartbeatMs: 20_000,
  /** Attempts per job before it is dead. (Default: 3) */
  maxAttempts: 3,
  /** First delay before a failed job is retried; doubles per attempt. (Default: 5 s) */
  jobRetryBaseDelayMs: 5_000,
  /** Longest delay before a failed job is retried. (Default: 5 min) */
  jobRetryMaxDelayMs: 300_000,
  /** How often an idle worker asks the queue for work. (Default: 1 s) */
  pollIntervalMs: 1_000,
  /**
   * How often an idle worker asks a queue that wakes it when work arrives (PostgreSQL, through
   * LISTEN/NOTIFY) anyway: only for what no notification announces, a lost worker's job whose
   * lease expired, and as a safety net. 100 idle workers then make under 7 queries a second, and
   * a lost worker's job is back within a lease and this long. (Default: 15 s)
   */
  fallbackPollIntervalMs: 15_000,
  /**
   * Job queue URL. An SQLite file in the working directory: zero set-up for one machine.
   * (Default: `sqlite://roboflow.db`)
   */
  queue: 'sqlite://roboflow.db',
  /** Address of `/metrics`; loopback only unless an operator opens it. (Default: none) */
  metricsAddr: null as string | null,
  /** (Default: `info`) */
  logLevel: 'info' as 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent',
  /** Time limit for one `exec` processor run. (Default: 1 h) */
  execTimeoutMs: 3_600_000,
  /**
   * Time an `exec` program gets between SIGTERM and SIGKILL when it is stopped (time limit or
   * shutdown): enough to flush and close files, short enough that shutdown is not held up.
   * (Default: 5 s)
   */
  execKillGraceMs: 5_000,
  /**
   * URL patterns job inputs may be read from (`--allow-source`). Empty allows every source: on
   * one machine whose operator submits its own jobs nothing needs fencing, and a first run works
   * without set-up. A shared queue sets it (SECURITY.md); the worker warns at start while it is
   * empty. (Default: none)
   */
  allowSources: [] as readonly string[],
  /** URL prefixes job outputs may be written under (`--allow-output`); empty allows any. (Default: none) */
  allowOutputs: [] as readonly string[],
  /**
   * Non-public address blocks (CIDR) the worker may still connect to once private addresses are
   * refused, which happens as soon as a source allowlist or one of these blocks is configured.
   * Empty: public addresses only (plus literal IP hosts that source patterns name), so neither
   * the cloud metadata service nor the internal network is within a job's reach unless the
   * operator opens a block on purpose. (Default: none)
   */
  allowPrivateRanges: [] as readonly string[],
  /**
   * Processor names this worker runs; a job naming another is refused (dead, ERR_POLICY_DENIED).
   * Empty runs every processor, as a single machine expects. (Default: none, i.e. all)
   */
  processors: [] as readonly string[],
  /**
   * The argv template `exec` jobs run, set by the operator (`'ffmpeg -i {input} {output}/out.mp4'`).
   * null: jobs bring their own command (`args.command`), if `allowJobCommands` lets them.
   * (Default: none)
   */
  execCommand: null as string | null,
  /**
   * Whether `exec` jobs may run the command they carry. null decides from the policy: allowed
   * while no source allowlist is set (one machine: `roboflow jobs submit --exec` works out of the
   * box), refused once `allowSources` is set (a fleet, whose submitters need not be trusted with
   * running programs as the worker's user). (Default: none, i.e. automatic)
   */
  allowJobCommands: null as boolean | null,
} as const satisfies Record<string, unknown>;

export type Defaults = typeof DEFAULTS;
