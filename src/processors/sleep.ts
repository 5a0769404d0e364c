/**
 * The `sleep` processor, for benchmarks, tests and demos: it stands in for real processing with a
 * known cost and touches no input. `args.ms` waits that long (processing bound by something
 * else, e.g. a GPU or a remote service); `args.cpuMs` keeps this process busy for that long
 * (CPU-bound processing that competes with downloads for the cores). Both may be given; the wait
 * comes first. The result reports what was actually spent.
 *
 * The busy loop runs in short slices and yields between them, so heartbeats, downloads and an
 * abort are still served while it runs, as they would be beside a real processor.
 */

import { setImmediate as yieldToLoop, setTimeout as sleep } from 'node:timers/promises';
import { abortError, RoboflowError } from '../errors.js';
import type { Processor, ProcessorContext } from '../types.js';

/** Longest busy stretch before the event loop gets a turn. */
const CPU_SLICE_MS = 10;
/** Upper bound for either argument: a day. A larger value is a typo, not a benchmark. */
const MAX_MS = 86_400_000;

export interface SleepResult {
  /** Milliseconds spent waiting. */
  readonly waitedMs: number;
  /** Milliseconds spent busy on the CPU. */
  readonly cpuMs: number;
}

function msArg(args: Readonly<Record<string, unknown>>, key: 'ms' | 'cpuMs', jobId: string): number {
  const value = args[key];
  if (value === undefined) return 0;
  if (typeof value !== 'number' || !Number.isFinite(value) || value < 0 || value > MAX_MS) {
    throw new RoboflowError(
      'ERR_CONFIG',
      `job ${jobId}: sleep args.${key} must be a number of milliseconds between 0 and ${MAX_MS}, got ${JSON.stringify(value)}`,
    );
  }
  return value;
}

/** Busy arithmetic until `until`; the result is returned so the loop has an observable effect. */
function spin(until: number): number {
  let x = 0;
  while (performance.now() < until) {
    for (let i = 0; i < 1000; i++) x = (x * 1103515245 + 12345) >>> 0;
  }
  return x;
}

export async function runSleep(ctx: ProcessorContext): Promise<SleepResult> {
  const { job, signal } = ctx;
  const ms = msArg(job.args, 'ms', job.id);
  const cpuMs = msArg(job.args, 'cpuMs', job.id);
  const what = `job ${job.id}: sleep`;
  if (signal.aborted) throw abortError(signal, what);

  const waitStart = performance.now();
  if (ms > 0) {
    try {
      await sleep(ms, undefined, { signal });
    } catch (err) {
      if (signal.aborted) throw abortError(signal, what);
      throw err;
    }
  }
  const waitedMs = performance.now() - waitStart;

  let busy = 0;
  while (busy < cpuMs) {
    const start = performance.now();
    spin(start + Math.min(CPU_SLICE_MS, cpuMs - busy));
    busy += performance.now() - start;
    await yieldToLoop();
    if (signal.aborted) throw abortError(signal, what);
  }
  return { waitedMs: Math.round(waitedMs), cpuMs: Math.round(busy) };
}

export const sleepProcessor: Processor = {
  name: 'sleep',
  run: (ctx) => runSleep(ctx),
};
