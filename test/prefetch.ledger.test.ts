/**
 * The durability ledger on its own (src/prefetch/ledger.ts): a real temp file and a real state
 * file, no downloader and no server. What it records is read back with `readResumeState`, as a
 * resumed download would read it.
 */

import { mkdir, mkdtemp, open, rm } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { DurabilityLedger, type DurabilityLedgerOptions } from '../src/prefetch/ledger.js';
import { ChunkPlan, ChunkSet } from '../src/prefetch/ranges.js';
import { pageCacheBootId, partialPaths, readResumeState, type ResumeIdentity } from '../src/prefetch/resume-state.js';
import type { Durability } from '../src/types.js';

const CHUNK = 64 * 1024;
const CHUNKS = 6;
const SIZE = CHUNKS * CHUNK - 1000;
const PLAN = ChunkPlan.uniform(SIZE, CHUNK);
const IDENTITY: ResumeIdentity = { url: 'https://store.example/bucket/ep.mcap', size: SIZE, chunkSize: CHUNK, etag: '"v1"' };

let dir: string;
let fh: FileHandle;
let statePath: string;
const ledgers: DurabilityLedger[] = [];
const controllers: AbortController[] = [];

beforeEach(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'roboflow-ledger-'));
  const { temp, state } = partialPaths(path.join(dir, 'ep.mcap'));
  statePath = state;
  fh = await open(temp, 'w+');
  await fh.truncate(SIZE);
});

afterEach(async () => {
  for (const c of controllers.splice(0)) c.abort();
  for (const l of ledgers.splice(0)) {
    l.stopTimer();
    await l.settle(false);
  }
  await fh.close();
  await rm(dir, { recursive: true, force: true });
});

interface Made {
  readonly ledger: DurabilityLedger;
  readonly errors: unknown[];
  readonly control: AbortController;
}

function ledgerOf(o: Partial<DurabilityLedgerOptions> & { durability?: Durability } = {}): Made {
  const errors: unknown[] = [];
  const control = new AbortController();
  controllers.push(control);
  const ledger = new DurabilityLedger({
    fh,
    statePath,
    identity: IDENTITY,
    plan: PLAN,
    completed: new ChunkSet(PLAN.count),
    partial: new Map(),
    durability: 'disk',
    // Large: in these tests a state write starts when the test asks for one (or the interval).
    flushAtBytes: SIZE,
    backlogLimitBytes: SIZE,
    signal: control.signal,
    onError: (err) => errors.push(err),
    ...o,
  });
  ledgers.push(ledger);
  return { ledger, errors, control };
}

/** Writes real bytes of chunk `index` from `from` to `to` into the temp file. */
async function writeBytes(index: number, from: number, to: number): Promise<void> {
  const r = PLAN.range(index);
  expect(from).toBeGreaterThanOrEqual(r.start);
  expect(to).toBeLessThanOrEqual(r.end);
  await fh.write(Buffer.alloc(to - from, index + 1), 0, to - from, from);
}

/** Polls `cond` until it holds (the machine may be loaded: the deadline is generous). */
async function until(cond: () => boolean | Promise<boolean>): Promise<void> {
  const deadline = Date.now() + 30_000;
  while (!(await cond())) {
    expect(Date.now()).toBeLessThan(deadline);
    await new Promise((r) => setTimeout(r, 10));
  }
}

async function recorded(): Promise<{ completed: number[]; partial: [number, number][]; bootId: string | undefined }> {
  const state = await readResumeState(statePath);
  expect(state).toBeDefined();
  return { completed: [...state!.completed], partial: [...(state!.partial ?? new Map())], bootId: state!.bootId };
}

describe('DurabilityLedger', () => {
  it('records whole chunks, and the written prefix of a chunk being fetched, once flushed', async () => {
    const { ledger, errors } = ledgerOf();
    expect(ledger.recordsNothing).toBe(true);
    await writeBytes(0, 0, CHUNK);
    ledger.noteWritten(0, CHUNK);
    ledger.chunkDone(0);
    const c3 = PLAN.range(3);
    await writeBytes(3, c3.start, c3.start + 5000);
    ledger.noteWritten(3, c3.start + 5000);
    expect(ledger.unrecordedBytes()).toBeGreaterThan(0);

    await ledger.flush();
    expect(await recorded()).toEqual({ completed: [0], partial: [[3, 5000]], bootId: undefined });
    expect(ledger.unrecordedBytes()).toBe(0);
    expect(ledger.recordsNothing).toBe(false);
    // A retry of chunk 3, or a run that resumes it, starts after its durable prefix.
    expect(ledger.resumeFrom(c3)).toBe(c3.start + 5000);
    expect(ledger.resumeFrom(PLAN.range(4))).toBe(PLAN.range(4).start);
    expect(errors).toEqual([]);
  });

  it('records a chunk written to its end as whole only once it is reported done', async () => {
    const { ledger } = ledgerOf();
    const c2 = PLAN.range(2);
    await writeBytes(2, c2.start, c2.end);
    ledger.noteWritten(2, c2.end);
    await ledger.flush();
    // Its lane has not said it is done (its body may yet prove too long): not complete, and no
    // prefix either, so a resumed run fetches it again whole.
    expect(await recorded()).toMatchObject({ completed: [], partial: [] });

    ledger.chunkDone(2);
    await ledger.flush();
    expect(await recorded()).toMatchObject({ completed: [2], partial: [] });
  });

  it('takes up where a previous run ended: its complete chunks and durable prefixes', async () => {
    const completed = new ChunkSet(PLAN.count);
    completed.add(0);
    completed.add(1);
    const c2 = PLAN.range(2);
    const { ledger } = ledgerOf({ completed, partial: new Map([[2, 700]]) });
    expect(ledger.recordsNothing).toBe(false);
    expect(ledger.unrecordedBytes()).toBe(0);
    expect(ledger.resumeFrom(c2)).toBe(c2.start + 700);
    expect(ledger.writtenPrefix()).toBe(c2.start);
    await writeBytes(2, c2.start + 700, c2.start + 900);
    ledger.noteWritten(2, c2.start + 900);
    expect(ledger.unrecordedBytes()).toBe(200);
    await writeBytes(3, PLAN.range(3).start, PLAN.range(3).end);
    ledger.chunkDone(3);
    await ledger.flush();
    expect(await recorded()).toMatchObject({ completed: [0, 1, 3], partial: [[2, 900]] });
    // The ledger keeps its own copy: the caller's set is as it was.
    expect([...completed]).toEqual([0, 1]);
  });

  it('reports the prefix of whole written chunks, up to the object size', async () => {
    const { ledger } = ledgerOf();
    expect(ledger.writtenPrefix()).toBe(0);
    for (const i of [1, 2]) ledger.chunkDone(i);
    expect(ledger.writtenPrefix()).toBe(0);
    ledger.chunkDone(0);
    expect(ledger.writtenPrefix()).toBe(PLAN.range(3).start);
    for (let i = 3; i < PLAN.count; i++) ledger.chunkDone(i);
    expect(ledger.writtenPrefix()).toBe(SIZE);
  });

  it('writes the state without being asked, within its interval', async () => {
    const { ledger } = ledgerOf();
    await writeBytes(0, 0, CHUNK);
    ledger.chunkDone(0);
    await ledger.flush();
    const c1 = PLAN.range(1);
    await writeBytes(1, c1.start, c1.start + 123);
    ledger.noteWritten(1, c1.start + 123);
    await until(async () => (await recorded()).partial.length > 0);
    expect(await recorded()).toMatchObject({ completed: [0], partial: [[1, 123]] });
  });

  it('holds writers back until a state write records the backlog, through failed writes', async () => {
    // The state file's directory is missing at first: every state write fails until it exists,
    // so what is unrecorded stays so, whatever the timing.
    const missingDir = path.join(dir, 'later');
    statePath = path.join(missingDir, 'ep.mcap.roboflow-state.json');
    const { ledger, errors } = ledgerOf({ statePath, backlogLimitBytes: 2 * CHUNK });
    for (const i of [0, 1]) await writeBytes(i, PLAN.range(i).start, PLAN.range(i).end);
    // The first chunk starts a state write at once (none was written yet); it fails, and its
    // error goes to onError. The second one waits behind it.
    ledger.chunkDone(0);
    ledger.chunkDone(1);
    await until(() => errors.length >= 1);
    expect((errors[0] as NodeJS.ErrnoException).code).toBe('ENOENT');
    await expect(ledger.flush()).rejects.toMatchObject({ code: 'ENOENT' });
    // Nothing of the failed writes was taken as recorded.
    expect(ledger.unrecordedBytes()).toBe(2 * CHUNK);
    expect(ledger.backlogFull()).toBe(true);

    let drained = false;
    const draining = ledger.drainBacklog().then(() => {
      drained = true;
    });
    const failedBefore = errors.length;
    await until(() => errors.length >= failedBefore + 2);
    expect(drained).toBe(false);

    await mkdir(missingDir);
    await draining;
    expect(ledger.backlogFull()).toBe(false);
    expect(ledger.unrecordedBytes()).toBe(0);
    expect(await recorded()).toMatchObject({ completed: [0, 1], partial: [] });
  });

  it('names this boot when the bytes are not fsynced (durability "process")', async () => {
    const { ledger } = ledgerOf({ durability: 'process' });
    ledger.chunkDone(0);
    await ledger.flush();
    expect(await recorded()).toEqual({ completed: [0], partial: [], bootId: pageCacheBootId() });
  });

  it('records everything written when the pass ends with the partial download kept', async () => {
    const { ledger, control } = ledgerOf();
    await ledger.flush();
    control.abort();
    const c4 = PLAN.range(4);
    ledger.chunkDone(1);
    ledger.noteWritten(4, c4.start + 4096);
    ledger.stopTimer();
    await ledger.settle(true);
    expect(await recorded()).toMatchObject({ completed: [1], partial: [[4, 4096]] });
  });
});
