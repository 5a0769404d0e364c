/**
 * Argument checks and refusals shared by the two queue backends, worded once so that SQLite and
 * PostgreSQL reject the same calls with the same codes and the same messages.
 */

import { RoboflowError } from '../errors.js';
import type { JobStatus } from '../types.js';

/** Every status, in life-cycle order; `counts()` reports all of them. */
export const JOB_STATUSES: readonly JobStatus[] = ['pending', 'claimed', 'running', 'done', 'dead'];

/** Rows `list()` returns when the caller gives no limit: a screenful, not the whole history. */
export const DEFAULT_LIST_LIMIT = 100;
/** Upper bound of `list()`: beyond this a caller wants an export, not a listing. */
export const MAX_LIST_LIMIT = 10_000;
/**
 * Longest error text kept on a job. Processor errors can carry a whole stderr; the row is read
 * on every listing, so keep the head, which names the failure.
 */
export const MAX_ERROR_CHARS = 4_000;
/** Longest lease a worker may take: a day is already longer than any sane heartbeat gap. */
export const MAX_LEASE_MS = 86_400_000;
/** Longest retry backoff: thirty days; longer is a scheduling system's job, not a retry's. */
export const MAX_BACKOFF_MS = 30 * 86_400_000;

/**
 * Checks a job id from a caller and returns it as a number. Ids are positive integers the
 * database assigned; anything else cannot name a job, so it is "not found" rather than a crash
 * inside the driver.
 */
export function parseJobId(id: string): number {
  if (typeof id !== 'string' || !/^[1-9][0-9]{0,15}$/.test(id) || !Number.isSafeInteger(Number(id))) {
    throw new RoboflowError('ERR_JOB_NOT_FOUND', `no job ${JSON.stringify(id)}: job ids are positive integers`);
  }
  return Number(id);
}

export function checkOwner(owner: string): void {
  if (typeof owner !== 'string' || owner.length === 0 || owner.length > 200) {
    throw new RoboflowError(
      'ERR_CONFIG',
      `lease owner must be a non-empty string of at most 200 characters, got ${JSON.stringify(owner)}`,
    );
  }
}

export function checkLeaseMs(leaseMs: number): void {
  if (!Number.isInteger(leaseMs) || leaseMs < 1 || leaseMs > MAX_LEASE_MS) {
    throw new RoboflowError('ERR_CONFIG', `leaseMs must be an integer from 1 to ${MAX_LEASE_MS}, got ${leaseMs}`);
  }
}

export function checkBackoffMs(backoffMs: number): void {
  if (!Number.isFinite(backoffMs) || backoffMs < 0 || backoffMs > MAX_BACKOFF_MS) {
    throw new RoboflowError(
      'ERR_CONFIG',
      `backoffMs must be a number from 0 to ${MAX_BACKOFF_MS}, got ${backoffMs}`,
    );
  }
}

export function checkListLimit(limit: number | undefined): number {
  if (limit === undefined) return DEFAULT_LIST_LIMIT;
  if (!Number.isInteger(limit) || limit < 1 || limit > MAX_LIST_LIMIT) {
    throw new RoboflowError('ERR_CONFIG', `list limit must be an integer from 1 to ${MAX_LIST_LIMIT}, got ${limit}`);
  }
  return limit;
}

export function checkStatus(status: JobStatus | undefined): void {
  if (status !== undefined && !JOB_STATUSES.includes(status)) {
    throw new RoboflowError(
      'ERR_CONFIG',
      `unknown job status ${JSON.stringify(status)}; use one of ${JOB_STATUSES.join(', ')}`,
    );
  }
}

export function truncateError(error: string): string {
  const text = typeof error === 'string' ? error : String(error);
  return text.length <= MAX_ERROR_CHARS ? text : `${text.slice(0, MAX_ERROR_CHARS - 1)}…`;
}

/** JSON text of a processor's result; `undefined` is stored as no result. */
export function resultJson(id: string, result: unknown): string | null {
  if (result === undefined) return null;
  try {
    return JSON.stringify(result);
  } catch (err) {
    throw new RoboflowError(
      'ERR_QUEUE',
      `result of job ${id} is not JSON-serialisable: ${(err as Error).message}`,
      { cause: err, retryable: false },
    );
  }
}

export type LeaseOperation = 'heartbeat' | 'start' | 'commit' | 'complete' | 'fail' | 'release';

/** Where the job stood when a lease-holding call matched no row. */
export interface JobLeaseState {
  readonly status: JobStatus;
  readonly leaseOwner: string | null;
  /** The lease's end has passed by the queue's clock (only `commit` asks). */
  readonly leaseExpired?: boolean;
}

/** What an attempt name may be: it becomes part of an object key and a directory name. */
const ATTEMPT_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$/;

/** Throws `ERR_CONFIG` unless `attempt` is a name `commit` accepts. */
export function checkAttempt(attempt: string): void {
  if (typeof attempt !== 'string' || !ATTEMPT_NAME.test(attempt)) {
    throw new RoboflowError(
      'ERR_CONFIG',
      `attempt name ${JSON.stringify(attempt)} is not valid: use 1 to 100 letters, digits, '.', '_' or '-', starting with a letter or digit`,
    );
  }
}

/**
 * The error for a lease-holding call that changed nothing: the job is gone, someone else holds
 * it, or it is in a state the operation does not accept. Looked up after the update, so the
 * description can be a moment stale; the refusal itself was decided atomically by the update.
 */
export function leaseRefusal(
  op: LeaseOperation,
  id: string,
  owner: string,
  state: JobLeaseState | null,
): RoboflowError {
  if (state === null) return new RoboflowError('ERR_JOB_NOT_FOUND', `${op} of job ${id}: no such job`);
  const holder = state.leaseOwner === null ? 'no lease' : `leased by ${JSON.stringify(state.leaseOwner)}`;
  const why =
    state.leaseOwner !== null && state.leaseOwner !== owner
      ? 'another worker holds the lease (this one expired and the job was claimed again)'
      : op === 'start' && state.status === 'running'
        ? 'the job was already started'
        : op === 'commit' && state.status === 'running' && state.leaseExpired === true
          ? 'the lease expired before the commit (another worker may claim the job at any moment), so this attempt must not publish'
          : op === 'commit'
            ? 'commit needs a job that is running'
            : `${op} needs a job that is ${op === 'start' ? 'claimed' : 'claimed or running'}`;
  return new RoboflowError(
    'ERR_LEASE_LOST',
    `${op} of job ${id} by ${JSON.stringify(owner)} refused: the job is ${state.status} (${holder}); ${why}`,
  );
}

export function notDeadRefusal(id: string, status: JobStatus): RoboflowError {
  return new RoboflowError(
    'ERR_QUEUE',
    `job ${id} is ${status}; only dead jobs can be retried (wait for it to finish or fail)`,
    { retryable: false },
  );
}

export function closedError(displayUrl: string): RoboflowError {
  return new RoboflowError('ERR_CLOSED', `job queue ${displayUrl} is closed`, { url: displayUrl });
}
