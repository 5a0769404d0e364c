/**
 * roboflow-distributed as a library. The glossary and every public type are in `./types.ts`;
 * the CLI (`src/cli/`) is a thin layer over what is exported here.
 */

export type * from './types.js';
export {
  RoboflowError,
  RETRY_TABLE,
  isRoboflowError,
  isJobRetryable,
  toRoboflowError,
  backoffDelay,
  type ErrorCode,
} from './errors.js';
export { DEFAULTS, type Defaults } from './defaults.js';
export { channels } from './diagnostics.js';

export { ParallelDownloader, partialPaths, removePartial, type ParallelDownloaderOptions } from './prefetch/downloader.js';
export { ConcurrencyLimiter, type ConcurrencyLimiterOptions } from './prefetch/concurrency.js';
export { PrefetchQueue, type PrefetchQueueOptions, type PrefetchedJob, type SlotState } from './prefetch/queue.js';
export { ByteBudget, type ByteBudgetOptions } from './prefetch/budget.js';
export { Worker, type WorkerOptions, type WorkerSummary, type ShutdownMode } from './worker.js';

export { openQueue, parseQueueUrl, SqliteJobQueue, PostgresJobQueue, parseJobSpec, queryTimeoutFor, type OpenQueueOptions } from './jobs/index.js';
export { leaseSafetyMarginMs, leaseTrustMs } from './lease.js';
export { SUCCESS_MARKER, ATTEMPTS_FOLDER, type CommitMarker } from './storage/commit.js';
export { StorageClients, openSource, parseObjectUrl, joinOutputUrl, redactUrl } from './storage/index.js';
export { uploadFile, uploadDirectory } from './storage/upload.js';
export { getProcessor, processorNames } from './processors/index.js';

export {
  loadConfig,
  prefetchConfigFrom,
  storageOptionsFrom,
  policyFromConfig,
  describeConfig,
  type Config,
  type LoadedConfig,
} from './config.js';
export { Metrics, type MetricsOptions } from './metrics.js';
export { METRICS } from './metric-names.js';
export { createLogger, type Logger } from './log.js';
export { compilePolicy, compileAllowlist, SecurityPolicy } from './security/policy.js';
