/** Small helpers shared by the test files. */
import type { Readable } from 'node:stream';
import { RoboflowError } from '../src/errors.js';
import type { JobQueue } from '../src/types.js';

/** Reads a body to the end. */
export async function readAll(body: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of body) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

/** The `RoboflowError` a promise rejects with; fails the test if it resolves or throws anything else. */
export async function rejection(promise: Promise<unknown>): Promise<RoboflowError> {
  const outcome = await promise.then(
    () => ({ resolved: true as const }),
    (err: unknown) => ({ resolved: false as const, err }),
  );
  if (outcome.resolved) throw new Error('expected a rejection');
  if (!(outcome.err instanceof RoboflowError)) throw new Error(`expected a RoboflowError, got ${String(outcome.err)}`);
  return outcome.err;
}

/** Whatever a promise rejects with, for failures that are not ours (resolver errors, stream aborts). */
export async function anyRejection(promise: Promise<unknown>): Promise<Error & { code?: string }> {
  const outcome = await promise.then(
    () => ({ resolved: true as const }),
    (err: unknown) => ({ resolved: false as const, err }),
  );
  if (outcome.resolved) throw new Error('expected a rejection');
  return outcome.err as Error & { code?: string };
}

/**
 * `queue` with some of its operations replaced: a queue that misbehaves in one way for a test.
 * Every other operation goes to `queue`; `onWork` is left out, so a worker over it polls.
 */
export function queueWith(queue: JobQueue, overrides: Partial<JobQueue>): JobQueue {
  return {
    submit: (spec, opts) => queue.submit(spec, opts),
    submitMany: (specs, opts) => queue.submitMany(specs, opts),
    claim: (owner, leaseMs) => queue.claim(owner, leaseMs),
    heartbeat: (id, owner, leaseMs) => queue.heartbeat(id, owner, leaseMs),
    start: (id, owner, leaseMs) => queue.start(id, owner, leaseMs),
    commit: (id, owner, attempt, leaseMs) => queue.commit(id, owner, attempt, leaseMs),
    complete: (id, owner, result) => queue.complete(id, owner, result),
    fail: (id, owner, error, opts) => queue.fail(id, owner, error, opts),
    release: (id, owner) => queue.release(id, owner),
    retry: (id) => queue.retry(id),
    get: (id) => queue.get(id),
    list: (filter) => queue.list(filter),
    counts: () => queue.counts(),
    close: () => queue.close(),
    ...overrides,
  };
}
