/**
 * roboflow-distributed as a library: what the README's "Use as a library" section documents, and
 * nothing more. The glossary and the public types are in `./types.ts`; the CLI (`src/cli/`) is a
 * thin layer over the same classes.
 *
 * Everything else (the concurrency limiter, the byte budget, the names of partial files, URL
 * parsing, the retry delays, …) is internal: tests and the CLI import it from its own module,
 * and it may change in any release. `test/api.test.ts` pins this list, so a new export is a
 * decision made here and in the README together.
 */

// Types: the glossary, storage, downloads, jobs, prefetch, processors.
export type * from './types.js';

// Errors: one type, a stable code, one retry table.
export {
  RoboflowError,
  RETRY_TABLE,
  isRoboflowError,
  isJobRetryable,
  toRoboflowError,
  type ErrorCode,
  type RoboflowErrorOptions,
} from './errors.js';
export { DEFAULTS, type Defaults } from './defaults.js';

// Objects: URL → source → local file, and outputs back.
export { ParallelDownloader, type ParallelDownloaderOptions } from './prefetch/downloader.js';
export { StorageClients, openSource, type StorageClientsOptions } from './storage/index.js';
export {
  uploadFile,
  uploadDirectory,
  type UploadOptions,
  type UploadResult,
  type DirectoryUploadResult,
} from './storage/upload.js';

// Jobs: the queue, the prefetch queue in front of it, the worker loop, the processors.
export {
  openQueue,
  queryTimeoutFor,
  SqliteJobQueue,
  PostgresJobQueue,
  type SqliteJobQueueOptions,
  type PostgresJobQueueOptions,
  type OpenQueueOptions,
} from './jobs/index.js';
export { SUCCESS_MARKER, type CommitMarker } from './storage/commit.js';
export {
  PrefetchQueue,
  type PrefetchQueueOptions,
  type PrefetchedJob,
  type PrefetchStats,
  type SlotInfo,
  type SlotState,
} from './prefetch/queue.js';
export {
  Worker,
  type WorkerOptions,
  type WorkerSettings,
  type WorkerSummary,
  type WorkerJobResult,
  type JobReport,
  type ShutdownMode,
} from './worker.js';
export { getProcessor, processorNames, type ProcessorName, type ProcessorOptions } from './processors/index.js';

// Configuration, as the CLI loads it.
export {
  loadConfig,
  prefetchConfigFrom,
  storageOptionsFrom,
  policyFromConfig,
  type LoadedConfig,
  type LoadConfigOptions,
} from './config/load.js';
export { type Config } from './config.js';
export { compilePolicy, type SecurityPolicy, type PolicyOptions } from './security/policy.js';

// Observing: events, Prometheus metrics, logs.
export { channels, type JobOutcome } from './diagnostics.js';
export { Metrics, type MetricsOptions, type MetricsServer } from './metrics.js';
export { METRICS, type MetricSpec } from './metric-names.js';
export { createLogger, type Logger, type LoggerOptions } from './log.js';
