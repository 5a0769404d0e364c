/**
 * Every metric roboflow exports, in one place: name, type, unit, help text, labels, buckets and a
 * stability level. `src/metrics.ts` creates them from this table, the Grafana dashboard
 * (`deploy/grafana-dashboard.json`) queries them, and a test checks the two agree.
 *
 * Names follow the Prometheus conventions: base unit as a suffix (`_seconds`, `_bytes`),
 * `_total` on counters. Labels take values from small fixed sets only (states, error codes,
 * outcomes): never job ids or URLs, which would grow without bound and may leak secrets.
 *
 * Stability: `stable` names and labels change only with a major version, because dashboards
 * and alerts depend on them; `experimental` ones may still change.
 */

export type MetricType = 'counter' | 'gauge' | 'histogram';
export type MetricUnit = 'seconds' | 'bytes' | 'jobs' | 'slots' | 'ranges' | 'errors' | 'retries' | 'connections';
export type MetricStability = 'stable' | 'experimental';

export interface MetricSpec {
  readonly name: string;
  readonly type: MetricType;
  readonly unit: MetricUnit;
  readonly help: string;
  readonly labels: readonly string[];
  /** Histograms only: upper bounds in the metric's unit. */
  readonly buckets?: readonly number[];
  readonly stability: MetricStability;
}

/**
 * Download and upload times of one ~4 GB object: from a cached 100 ms to a throttled 10 min.
 */
const TRANSFER_BUCKETS = [0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600] as const;

/** One job end to end, processing included: up to the exec processor's 1 h default limit. */
const JOB_BUCKETS = [0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600] as const;

export const METRICS = {
  prefetchQueueDepth: {
    name: 'roboflow_prefetch_queue_depth',
    type: 'gauge',
    unit: 'jobs',
    help: 'Prefetched jobs whose inputs are on disk, waiting for the worker (slots in state ready).',
    labels: [],
    stability: 'stable',
  },
  prefetchSlots: {
    name: 'roboflow_prefetch_slots',
    type: 'gauge',
    unit: 'slots',
    help: 'Prefetch slots by state: claiming, downloading, ready, failed, active.',
    labels: ['state'],
    stability: 'stable',
  },
  prefetchDownloadDuration: {
    name: 'roboflow_prefetch_download_duration_seconds',
    type: 'histogram',
    unit: 'seconds',
    help: 'Time to download one object, from start to verified file.',
    labels: [],
    buckets: TRANSFER_BUCKETS,
    stability: 'stable',
  },
  prefetchBytesDownloaded: {
    name: 'roboflow_prefetch_bytes_downloaded_total',
    type: 'counter',
    unit: 'bytes',
    help: 'Bytes downloaded and written to the buffer directory.',
    labels: [],
    stability: 'stable',
  },
  prefetchErrors: {
    name: 'roboflow_prefetch_errors_total',
    type: 'counter',
    unit: 'errors',
    help: 'Failed downloads (stage=download) and failed prefetch slots (stage=prefetch), by error code.',
    labels: ['reason', 'stage'],
    stability: 'stable',
  },
  downloadRangeRetries: {
    name: 'roboflow_download_range_retries_total',
    type: 'counter',
    unit: 'retries',
    help: 'Range requests retried, by the error code of the failed attempt.',
    labels: ['reason'],
    stability: 'stable',
  },
  downloadRangesInFlight: {
    name: 'roboflow_download_ranges_in_flight',
    type: 'gauge',
    unit: 'ranges',
    help: 'Range requests in flight across all downloads.',
    labels: [],
    stability: 'stable',
  },
  downloadResumedBytes: {
    name: 'roboflow_download_resumed_bytes_total',
    type: 'counter',
    unit: 'bytes',
    help: 'Bytes of finished downloads that were already on disk from an interrupted run and not fetched again.',
    labels: [],
    stability: 'stable',
  },
  downloadConcurrencyLimit: {
    name: 'roboflow_download_concurrency_limit',
    type: 'gauge',
    unit: 'connections',
    help: 'Range requests the adaptive concurrency control currently allows in flight across the downloads of a worker (per download outside a worker).',
    labels: [],
    stability: 'experimental',
  },
  workerInputWait: {
    name: 'roboflow_worker_input_wait_seconds_total',
    type: 'counter',
    unit: 'seconds',
    help: 'Time the worker waited for a job whose inputs were on disk; high means input-bound.',
    labels: [],
    stability: 'stable',
  },
  workerBusy: {
    name: 'roboflow_worker_busy_seconds_total',
    type: 'counter',
    unit: 'seconds',
    help: 'Time the worker spent processing and uploading jobs.',
    labels: [],
    stability: 'stable',
  },
  workerJobs: {
    name: 'roboflow_worker_jobs_total',
    type: 'counter',
    unit: 'jobs',
    help: 'Jobs the worker finished with, by outcome: done, retried, dead, released, lease_lost.',
    labels: ['outcome'],
    stability: 'stable',
  },
  workerJobDuration: {
    name: 'roboflow_worker_job_duration_seconds',
    type: 'histogram',
    unit: 'seconds',
    help: 'Time from the start of processing a job to its outcome, by outcome.',
    labels: ['outcome'],
    buckets: JOB_BUCKETS,
    stability: 'stable',
  },
  uploadBytes: {
    name: 'roboflow_upload_bytes_total',
    type: 'counter',
    unit: 'bytes',
    help: 'Bytes of job outputs uploaded.',
    labels: [],
    stability: 'stable',
  },
  uploadDuration: {
    name: 'roboflow_upload_duration_seconds',
    type: 'histogram',
    unit: 'seconds',
    help: 'Time to upload one output object.',
    labels: [],
    buckets: TRANSFER_BUCKETS,
    stability: 'stable',
  },
} as const satisfies Record<string, MetricSpec>;

export type MetricId = keyof typeof METRICS;

/** Every name above, for checks (dashboard, scrape tests). */
export const METRIC_NAMES: readonly string[] = Object.values(METRICS).map((m) => m.name);

/**
 * The series names a metric exposes in the text format: histograms add `_bucket`, `_sum` and
 * `_count` to their name.
 */
export function seriesNames(spec: MetricSpec): string[] {
  return spec.type === 'histogram' ? [`${spec.name}_bucket`, `${spec.name}_sum`, `${spec.name}_count`] : [spec.name];
}
