/**
 * Events the core publishes, on `node:diagnostics_channel` (as Node's own HTTP client does): the downloader, the
 * prefetch queue and the worker never import a metrics library; `src/metrics.ts` (and anyone
 * else, e.g. a progress bar or a test) subscribes. Publishing to a channel without subscribers
 * costs a property check, so the hot path stays cheap.
 *
 * All channel names live here.
 */

import diagnosticsChannel from 'node:diagnostics_channel';
import type { ErrorCode } from './errors.js';
import type { JobStatus } from './types.js';

export interface DownloadStartEvent {
  readonly downloadId: number;
  readonly url: string;
  readonly size: number;
  readonly resumedBytes: number;
}
/** Bytes durably handed to the file system (written), after they were received. */
export interface DownloadBytesEvent {
  readonly downloadId: number;
  readonly bytes: number;
}
/** One range request started (`delta` +1) or ended (`delta` −1), for an in-flight gauge. */
export interface RangeRequestEvent {
  readonly downloadId: number;
  readonly delta: 1 | -1;
}
export interface RangeRetryEvent {
  readonly downloadId: number;
  readonly url: string;
  readonly code: ErrorCode;
  readonly attempt: number;
  readonly delayMs: number;
}
export interface DownloadDoneEvent {
  readonly downloadId: number;
  readonly url: string;
  readonly bytes: number;
  readonly seconds: number;
  readonly resumedBytes: number;
  readonly retries: number;
}
export interface DownloadErrorEvent {
  readonly downloadId: number;
  readonly url: string;
  readonly code: ErrorCode;
}
/** Adaptive concurrency changed the number of ranges allowed in flight. */
export interface ConcurrencyEvent {
  readonly limit: number;
}

export type SlotStateName = 'claiming' | 'downloading' | 'ready' | 'failed' | 'active' | 'released';
export interface SlotTransitionEvent {
  readonly slot: number;
  readonly jobId: string | null;
  readonly from: SlotStateName | null;
  readonly to: SlotStateName | null;
}
export interface PrefetchErrorEvent {
  readonly jobId: string;
  readonly code: ErrorCode;
}

export type JobOutcome = 'done' | 'retried' | 'dead' | 'released' | 'lease_lost';
export interface WorkerWaitEvent {
  /** Seconds the worker waited for a job's inputs (time in `nextReady()`). */
  readonly seconds: number;
}
export interface WorkerBusyEvent {
  /** Seconds spent processing and uploading one job. */
  readonly seconds: number;
}
export interface JobFinishedEvent {
  readonly jobId: string;
  readonly outcome: JobOutcome;
  readonly seconds: number;
  readonly status: JobStatus;
}
export interface UploadDoneEvent {
  readonly bytes: number;
  readonly seconds: number;
}

function channel<T>(name: string) {
  const ch = diagnosticsChannel.channel(name);
  return {
    name,
    channel: ch,
    publish(message: T): void {
      if (ch.hasSubscribers) ch.publish(message);
    },
    subscribe(fn: (message: T) => void): () => void {
      const listener = (m: unknown) => fn(m as T);
      ch.subscribe(listener);
      return () => {
        ch.unsubscribe(listener);
      };
    },
  };
}

export const channels = {
  downloadStart: channel<DownloadStartEvent>('roboflow:download:start'),
  downloadBytes: channel<DownloadBytesEvent>('roboflow:download:bytes'),
  rangeRequest: channel<RangeRequestEvent>('roboflow:download:range-request'),
  rangeRetry: channel<RangeRetryEvent>('roboflow:download:range-retry'),
  downloadDone: channel<DownloadDoneEvent>('roboflow:download:done'),
  downloadError: channel<DownloadErrorEvent>('roboflow:download:error'),
  concurrency: channel<ConcurrencyEvent>('roboflow:download:concurrency'),
  slotTransition: channel<SlotTransitionEvent>('roboflow:prefetch:slot'),
  prefetchError: channel<PrefetchErrorEvent>('roboflow:prefetch:error'),
  workerWait: channel<WorkerWaitEvent>('roboflow:worker:wait'),
  workerBusy: channel<WorkerBusyEvent>('roboflow:worker:busy'),
  jobFinished: channel<JobFinishedEvent>('roboflow:worker:job'),
  uploadDone: channel<UploadDoneEvent>('roboflow:upload:done'),
} as const;

let nextDownloadId = 1;
/** A process-unique id that ties a download's events together. */
export function newDownloadId(): number {
  return nextDownloadId++;
}
