import { describe, expect, it } from 'vitest';
import { RoboflowError } from '../src/errors.js';
import { runSleep, sleepProcessor } from '../src/processors/sleep.js';
import type { JobRecord } from '../src/types.js';

function makeJob(args: Record<string, unknown>): JobRecord {
  const now = new Date();
  return {
    id: 'job-sleep',
    key: 'job-sleep',
    priority: 0,
    inputs: [],
    output: null,
    processor: 'sleep',
    args,
    status: 'running',
    attempts: 1,
    maxAttempts: 3,
    leaseOwner: 'w1',
    leaseExpiresAt: now,
    lastError: null,
    result: null,
    commitAttempt: null,
    runAt: now,
    createdAt: now,
    updatedAt: now,
  };
}

function ctx(args: Record<string, unknown>, signal = new AbortController().signal) {
  return { job: makeJob(args), inputPaths: [], outputDir: '/nonexistent-not-used', signal };
}

describe('sleep processor', () => {
  it('waits at least args.ms and reports it', async () => {
    const result = await sleepProcessor.run(ctx({ ms: 50 }));
    expect((result as { waitedMs: number }).waitedMs).toBeGreaterThanOrEqual(49);
    expect((result as { cpuMs: number }).cpuMs).toBe(0);
  });

  it('burns at least args.cpuMs of busy time while still letting timers run', async () => {
    let ticks = 0;
    const timer = setInterval(() => ticks++, 1);
    const cpuBefore = process.cpuUsage();
    try {
      const result = await runSleep(ctx({ cpuMs: 120 }));
      expect(result.cpuMs).toBeGreaterThanOrEqual(120);
    } finally {
      clearInterval(timer);
    }
    const used = process.cpuUsage(cpuBefore);
    // Some real CPU time was spent (far less than requested is allowed on a starved machine).
    expect(used.user + used.system).toBeGreaterThan(0);
    // The loop yielded: the interval fired while the burn was going on.
    expect(ticks).toBeGreaterThan(0);
  });

  it('does nothing for empty args', async () => {
    expect(await runSleep(ctx({}))).toEqual({ waitedMs: expect.any(Number), cpuMs: 0 });
  });

  it('stops with ERR_ABORTED when the signal fires during the wait or the burn', async () => {
    for (const args of [{ ms: 60_000 }, { cpuMs: 60_000 }]) {
      const ac = new AbortController();
      setTimeout(() => ac.abort(), 30);
      const err = await runSleep(ctx(args, ac.signal)).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(RoboflowError);
      expect((err as RoboflowError).code).toBe('ERR_ABORTED');
    }
  });

  it('rejects bad arguments with ERR_CONFIG naming the job and the argument', async () => {
    for (const args of [{ ms: -1 }, { ms: 'soon' }, { cpuMs: Number.NaN }, { cpuMs: 1e12 }]) {
      const err = await runSleep(ctx(args)).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(RoboflowError);
      expect((err as RoboflowError).code).toBe('ERR_CONFIG');
      expect((err as RoboflowError).message).toContain('job-sleep');
      expect((err as RoboflowError).message).toContain(Object.keys(args)[0]!);
    }
  });
});
