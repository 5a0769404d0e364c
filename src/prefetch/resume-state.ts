/**
 * The state file of a partial download (`<dest>.roboflow-state.json`): which chunks of the temp
 * file hold durable bytes of which version of which object, and, for chunks that were being
 * fetched, how many of their first bytes are durable. With `durability: 'disk'` the downloader
 * writes it only after an `fdatasync` of the temp file, so every byte it lists survives a crash
 * or a power loss. With `durability: 'process'` nothing is fsynced: the bytes it lists survive
 * the process (they are in the page cache), not the machine, so the state names the boot it was
 * written in (`bootId`) and is trusted only in that boot.
 *
 * It is written atomically (write a sibling temp file, fsync it, rename over the old one), so a
 * reader sees either the old or the new content, never a torn mix. Anything that does not parse,
 * has another version, or describes another object is discarded: a partial download is never
 * trusted on a guess. `partialPaths` names both files of a partial download (the temp file
 * `<dest>.roboflow-partial` beside it); `removePartial` deletes them.
 */

import { readFileSync } from 'node:fs';
import { open, readFile, rename, rm } from 'node:fs/promises';
import path from 'node:path';
import type { z } from 'zod';
import { ChunkPlan, ChunkSet } from './ranges.js';

/**
 * Bumped whenever the layout changes; a state file of an unknown version is discarded. Version 2
 * added `tail`; a version 1 file (no tail) is still read, as a uniform plan. Version 3 added
 * `bootId`; bumped so that an older reader, which would ignore it, discards such a file instead
 * of trusting page-cache bytes after a reboot.
 */
export const STATE_VERSION = 3;

/**
 * The file's schema, built when a state file is first read: zod costs ~0.1 s of start-up, which
 * a download that finds no state file (most of them) should not pay.
 */
async function buildSchema() {
  const { z } = await import('zod');
  return z.object({
    version: z.union([z.literal(1), z.literal(2), z.literal(STATE_VERSION)]),
    /** Display form of the URL (secrets removed): a state file may be read by anyone. */
    url: z.string().min(1),
    size: z.number().int().nonnegative(),
    etag: z.string().optional(),
    lastModified: z.string().optional(),
    chunkSize: z.number().int().positive(),
    /** `[tail start, tail chunk size]` of the plan (`ChunkPlan`); absent when it is uniform. */
    tail: z.tuple([z.number().int().nonnegative(), z.number().int().positive()]).optional(),
    /** Bitmap of completed chunk indexes, base64 (`ChunkSet.toBase64`). */
    completed: z.string(),
    /** `[chunk index, durable bytes from the chunk's start]` of chunks not completed. Optional:
     * a reader that predates it ignores it and re-fetches those chunks whole, which is safe. */
    partial: z.array(z.tuple([z.number().int().nonnegative(), z.number().int().positive()])).optional(),
    /** Set when the bytes were not fsynced (`durability: 'process'`): the boot they live in. */
    bootId: z.string().min(1).optional(),
  });
}
type StateSchema = Awaited<ReturnType<typeof buildSchema>>;
let stateSchema: Promise<StateSchema> | undefined;

export interface ResumeState {
  readonly version: typeof STATE_VERSION;
  readonly url: string;
  readonly size: number;
  readonly etag?: string;
  /** ISO-8601; compared when the object has no ETag. */
  readonly lastModified?: string;
  readonly chunkSize: number;
  /** Where the plan's smaller chunks begin and their size; absent when the plan is uniform. */
  readonly tail?: { readonly start: number; readonly chunkSize: number };
  readonly completed: ChunkSet;
  /** Chunk index → bytes from the chunk's start that are durable, for chunks not in `completed`
   * (each strictly between 0 and the chunk's length). Always present on what is read. */
  readonly partial?: ReadonlyMap<number, number>;
  /**
   * The boot (`currentBootId()`) whose page cache holds the listed bytes, when they were not
   * fsynced; absent when they are on disk.
   */
  readonly bootId?: string;
}

/** What a state file must describe to be resumed. */
export interface ResumeIdentity {
  readonly url: string;
  readonly size: number;
  readonly etag?: string;
  readonly lastModified?: string;
  readonly chunkSize: number;
}

/**
 * Reads a state file. Returns undefined when it is missing, unreadable, not JSON, of another
 * version or inconsistent (a bitmap that does not fit the size and chunk size).
 */
export async function readResumeState(file: string): Promise<ResumeState | undefined> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch {
    return undefined;
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    return undefined;
  }
  stateSchema ??= buildSchema();
  const parsed = (await stateSchema).safeParse(json);
  if (!parsed.success) return undefined;
  const s = parsed.data;
  if ((s.version === 1 && s.tail !== undefined) || (s.version !== STATE_VERSION && s.bootId !== undefined)) return undefined;
  const tail = s.tail === undefined ? undefined : { start: s.tail[0], chunkSize: s.tail[1] };
  let plan: ChunkPlan;
  try {
    plan = planOf({ size: s.size, chunkSize: s.chunkSize, tail });
  } catch {
    return undefined;
  }
  const completed = ChunkSet.fromBase64(s.completed, plan.count);
  if (!completed) return undefined;
  const partial = new Map<number, number>();
  for (const [index, bytes] of s.partial ?? []) {
    // A prefix of a chunk that is complete, beyond the chunk, or listed twice: not ours.
    if (index >= plan.count || completed.has(index) || partial.has(index)) return undefined;
    const r = plan.range(index);
    if (bytes >= r.end - r.start) return undefined;
    partial.set(index, bytes);
  }
  return {
    version: STATE_VERSION,
    url: s.url,
    size: s.size,
    chunkSize: s.chunkSize,
    ...tailOf(plan),
    completed,
    partial,
    ...(s.etag !== undefined ? { etag: s.etag } : {}),
    ...(s.lastModified !== undefined ? { lastModified: s.lastModified } : {}),
    ...(s.bootId !== undefined ? { bootId: s.bootId } : {}),
  };
}

/** The chunk plan a state was written for. */
export function planOf(state: { readonly size: number; readonly chunkSize: number; readonly tail?: ResumeState['tail'] | undefined }): ChunkPlan {
  return state.tail === undefined
    ? ChunkPlan.uniform(state.size, state.chunkSize)
    : new ChunkPlan(state.size, state.chunkSize, state.tail.start, state.tail.chunkSize);
}

/** The `tail` field that records `plan` in a state (none for a uniform plan); `planOf` reverses it. */
export function tailOf(plan: ChunkPlan): Pick<ResumeState, 'tail'> {
  return plan.isUniform ? {} : { tail: { start: plan.tailStart, chunkSize: plan.tailChunkSize } };
}

/** Bytes a state vouches for: its completed chunks plus the durable prefixes of the others. */
export function durableBytes(plan: ChunkPlan, completed: ChunkSet, partial?: ReadonlyMap<number, number>): number {
  let n = plan.bytesIn(completed);
  for (const bytes of partial?.values() ?? []) n += bytes;
  return n;
}

/**
 * Whether `state` was written for exactly this object version and chunk size (its tail is its
 * own: see `planOf`), and its bytes are still there: on disk, or in this boot's page cache.
 */
export function stateMatches(state: ResumeState, id: ResumeIdentity, bootId: string | undefined = currentBootId()): boolean {
  return (
    (state.bootId === undefined || (bootId !== undefined && state.bootId === bootId)) &&
    state.url === id.url &&
    state.size === id.size &&
    state.chunkSize === id.chunkSize &&
    state.etag === id.etag &&
    // Without an ETag the modification time is the only version marker there is.
    (id.etag !== undefined || state.lastModified === id.lastModified)
  );
}

/**
 * Writes the state atomically and durably: a sibling `.tmp` file is written and fsynced, then
 * renamed over `file`. The directory is not fsynced here: losing a rename in a power cut leaves
 * the previous state file, which lists fewer chunks but only durable ones, so resuming from it is
 * still correct (it re-fetches a little more). A state with a `bootId` is not fsynced: it is
 * worthless after a power cut anyway.
 */
export async function writeResumeState(file: string, state: ResumeState): Promise<void> {
  const body: z.infer<StateSchema> = {
    version: STATE_VERSION,
    url: state.url,
    size: state.size,
    chunkSize: state.chunkSize,
    ...(state.tail !== undefined ? { tail: [state.tail.start, state.tail.chunkSize] as [number, number] } : {}),
    completed: state.completed.toBase64(),
    ...(state.partial !== undefined && state.partial.size > 0 ? { partial: [...state.partial].sort((a, b) => a[0] - b[0]) } : {}),
    ...(state.etag !== undefined ? { etag: state.etag } : {}),
    ...(state.lastModified !== undefined ? { lastModified: state.lastModified } : {}),
    ...(state.bootId !== undefined ? { bootId: state.bootId } : {}),
  };
  const tmp = `${file}.tmp`;
  const fh = await open(tmp, 'w');
  try {
    await fh.writeFile(`${JSON.stringify(body)}\n`);
    if (state.bootId === undefined) await fh.datasync();
  } finally {
    await fh.close();
  }
  await rename(tmp, file);
}

/** Removes a state file and any leftover `.tmp` sibling. */
export async function removeResumeState(file: string): Promise<void> {
  await Promise.all([rm(file, { force: true }), rm(`${file}.tmp`, { force: true })]);
}

/** The temp file and state file of a download to `dest`. */
export function partialPaths(dest: string): { temp: string; state: string } {
  return { temp: `${dest}.roboflow-partial`, state: `${dest}.roboflow-state.json` };
}

/** Deletes the temp and state files of a download to `dest` (no error if there are none). */
export async function removePartial(dest: string): Promise<void> {
  const { temp, state } = partialPaths(dest);
  await Promise.all([rm(temp, { force: true }), removeResumeState(state)]);
}

/** fsyncs a directory so a rename or unlink in it is durable. */
export async function fsyncDir(dir: string): Promise<void> {
  const fh = await open(path.resolve(dir), 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

let bootId: string | null | undefined;

/**
 * This boot's identity (Linux: `/proc/sys/kernel/random/boot_id`, new at every boot), or
 * undefined where there is none: page-cache state is then never resumed, as if after a reboot.
 */
export function currentBootId(): string | undefined {
  if (bootId === undefined) {
    try {
      bootId = readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim() || null;
    } catch {
      bootId = null;
    }
  }
  return bootId ?? undefined;
}

/**
 * What a state of page-cache bytes records: this boot, or, where there is no boot id, a marker
 * that `stateMatches` never accepts (such a state is not resumed).
 */
export function pageCacheBootId(): string {
  return currentBootId() ?? 'unknown';
}
