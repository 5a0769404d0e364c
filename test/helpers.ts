/** Small helpers shared by the test files. */
import type { Readable } from 'node:stream';
import { RoboflowError } from '../src/errors.js';

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
