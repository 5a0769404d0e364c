import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ChunkPlan, ChunkSet } from '../src/prefetch/ranges.js';
import {
  currentBootId,
  durableBytes,
  pageCacheBootId,
  planOf,
  readResumeState,
  removeResumeState,
  type ResumeState,
  stateMatches,
  STATE_VERSION,
  writeResumeState,
} from '../src/prefetch/resume-state.js';

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'roboflow-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

function sample(): ResumeState {
  const completed = new ChunkSet(13);
  for (const i of [0, 1, 2, 7, 12]) completed.add(i);
  return {
    version: STATE_VERSION,
    url: 'https://example.com/bucket/rec.mcap',
    size: 100,
    chunkSize: 8,
    etag: '"abc"',
    lastModified: '2024-01-02T03:04:05.000Z',
    completed,
    // Chunk 12 is the 4-byte tail (100 = 12 × 8 + 4); 3 and 5 were being fetched.
    partial: new Map([
      [3, 5],
      [5, 1],
    ]),
  };
}

describe('resume state', () => {
  it('round-trips through the file', async () => {
    const file = path.join(dir, 'x.roboflow-state.json');
    await writeResumeState(file, sample());
    const back = await readResumeState(file);
    expect(back).toBeDefined();
    expect({ ...back!, completed: [...back!.completed], partial: [...back!.partial!] }).toEqual({
      ...sample(),
      completed: [0, 1, 2, 7, 12],
      partial: [
        [3, 5],
        [5, 1],
      ],
    });
    // Atomic write leaves no temp sibling behind.
    await expect(readFile(`${file}.tmp`)).rejects.toThrow();
    expect(stateMatches(back!, { url: sample().url, size: 100, chunkSize: 8, etag: '"abc"' })).toBe(true);
  });

  it('reads a file without durable prefixes (as older versions wrote it) as having none', async () => {
    const file = path.join(dir, 'old.json');
    await writeResumeState(file, { ...sample(), partial: new Map() });
    expect(await readFile(file, 'utf8')).not.toContain('partial');
    expect((await readResumeState(file))!.partial!.size).toBe(0);
  });

  it('round-trips a plan with a tail of smaller chunks, and reads a version 1 file (no tail) as uniform', async () => {
    const file = path.join(dir, 'tail.json');
    // 100 bytes: 8 chunks of 8 up to 64, then 12 chunks of 3: 20 chunks.
    const plan = new ChunkPlan(100, 8, 64, 3);
    const completed = new ChunkSet(plan.count);
    for (const i of [0, 7, 8, 19]) completed.add(i);
    const state: ResumeState = { ...sample(), tail: { start: 64, chunkSize: 3 }, completed, partial: new Map([[9, 2]]) };
    await writeResumeState(file, state);
    const back = (await readResumeState(file))!;
    expect(back.tail).toEqual({ start: 64, chunkSize: 3 });
    expect([...back.completed]).toEqual([0, 7, 8, 19]);
    expect(planOf(back).ranges()).toEqual(plan.ranges());
    // 8 + 8 + 3 + 3 completed, 2 durable of chunk 9.
    expect(durableBytes(planOf(back), back.completed, back.partial)).toBe(24);
    const json = JSON.parse(await readFile(file, 'utf8')) as Record<string, unknown>;
    expect(json.tail).toEqual([64, 3]);
    // A tail that is not a plan, a prefix beyond a tail chunk, a bitmap of the uniform plan, a
    // version 1 file with a tail: discarded.
    for (const bad of [
      { ...json, tail: [60, 3] },
      { ...json, tail: [64, 9] },
      { ...json, partial: [[9, 3]] },
      { ...json, completed: new ChunkSet(13).toBase64() },
      { ...json, version: 1 },
    ]) {
      await writeFile(file, JSON.stringify(bad));
      expect(await readResumeState(file), JSON.stringify(bad)).toBeUndefined();
    }
    const { tail: _tail, ...v1 } = JSON.parse(JSON.stringify({ ...json, version: 1, completed: sample().completed.toBase64(), partial: [[3, 5]] })) as Record<string, unknown>;
    await writeFile(file, JSON.stringify(v1));
    const old = (await readResumeState(file))!;
    expect(old.tail).toBeUndefined();
    expect(planOf(old).isUniform).toBe(true);
    expect([...old.completed]).toEqual([0, 1, 2, 7, 12]);
  });

  it('overwrites an earlier state', async () => {
    const file = path.join(dir, 's.json');
    await writeResumeState(file, sample());
    // Chunk 5, in progress before, is complete now.
    const more = { ...sample(), partial: new Map([[3, 6]]) };
    more.completed.add(5);
    await writeResumeState(file, more);
    expect([...(await readResumeState(file))!.completed]).toEqual([0, 1, 2, 5, 7, 12]);
  });

  it('discards missing, corrupt, truncated, other-version and inconsistent files', async () => {
    const file = path.join(dir, 's.json');
    expect(await readResumeState(file)).toBeUndefined();
    await writeResumeState(file, sample());
    const good = await readFile(file, 'utf8');
    const bad = [
      '',
      'not json',
      good.slice(0, good.length / 2),
      JSON.stringify({ ...JSON.parse(good), version: STATE_VERSION + 1 }),
      JSON.stringify({ ...JSON.parse(good), size: -1 }),
      JSON.stringify({ ...JSON.parse(good), chunkSize: 0 }),
      JSON.stringify({ ...JSON.parse(good), completed: 42 }),
      // A bitmap for 13 chunks does not fit 1000 bytes in chunks of 8.
      JSON.stringify({ ...JSON.parse(good), size: 1000 }),
      // Durable prefixes that cannot be: of a completed chunk, a whole chunk or more, past the
      // last chunk, beyond the 4-byte tail chunk, listed twice, empty.
      JSON.stringify({ ...JSON.parse(good), partial: [[7, 3]] }),
      JSON.stringify({ ...JSON.parse(good), partial: [[3, 8]] }),
      JSON.stringify({ ...JSON.parse(good), partial: [[13, 1]] }),
      JSON.stringify({ ...JSON.parse(good), completed: new ChunkSet(13).toBase64(), partial: [[12, 4]] }),
      JSON.stringify({ ...JSON.parse(good), partial: [[3, 1], [3, 2]] }),
      JSON.stringify({ ...JSON.parse(good), partial: [[3, 0]] }),
      '[]',
      'null',
    ];
    for (const text of bad) {
      await writeFile(file, text);
      expect(await readResumeState(file), text).toBeUndefined();
    }
  });

  it('matches only the same url, size, chunk size and version', () => {
    const s = sample();
    const id = { url: s.url, size: 100, chunkSize: 8, etag: '"abc"' };
    expect(stateMatches(s, id)).toBe(true);
    expect(stateMatches(s, { ...id, url: 'https://example.com/bucket/other' })).toBe(false);
    expect(stateMatches(s, { ...id, size: 101 })).toBe(false);
    expect(stateMatches(s, { ...id, chunkSize: 16 })).toBe(false);
    expect(stateMatches(s, { ...id, etag: '"def"' })).toBe(false);
    const { etag: _etag, ...noEtag } = s;
    // Without an ETag the last-modified time decides.
    expect(stateMatches(noEtag, { url: s.url, size: 100, chunkSize: 8, lastModified: s.lastModified! })).toBe(true);
    expect(stateMatches(noEtag, { url: s.url, size: 100, chunkSize: 8, lastModified: '2025-01-01T00:00:00.000Z' })).toBe(false);
    expect(stateMatches(noEtag, id)).toBe(false);
  });

  it('trusts a state of page-cache bytes only in the boot that wrote it', async () => {
    const s = { ...sample(), bootId: 'b1' };
    const id = { url: s.url, size: 100, chunkSize: 8, etag: '"abc"' };
    expect(stateMatches(s, id, 'b1')).toBe(true);
    expect(stateMatches(s, id, 'b2')).toBe(false);
    // No boot id on this system: nothing proves the page cache survived.
    expect(stateMatches(s, id, undefined)).toBe(false);
    // A state of bytes on disk matches in any boot.
    expect(stateMatches(sample(), id, 'b2')).toBe(true);
    expect(stateMatches(sample(), id, undefined)).toBe(true);

    const file = path.join(dir, 's.json');
    await writeResumeState(file, s);
    const back = (await readResumeState(file))!;
    expect(back.bootId).toBe('b1');
    expect(stateMatches(back, id, 'b1')).toBe(true);
    // An older layout never carried a boot id: such a file is not ours.
    await writeFile(file, JSON.stringify({ ...JSON.parse(await readFile(file, 'utf8')), version: 2 }));
    expect(await readResumeState(file)).toBeUndefined();
  });

  it('knows this boot on Linux', () => {
    if (process.platform !== 'linux') return;
    expect(currentBootId()).toMatch(/^[0-9a-f-]{36}$/);
    expect(pageCacheBootId()).toBe(currentBootId());
  });

  it('removes the file and a leftover temp sibling', async () => {
    const file = path.join(dir, 's.json');
    await writeResumeState(file, sample());
    await writeFile(`${file}.tmp`, 'half');
    await removeResumeState(file);
    expect(await readResumeState(file)).toBeUndefined();
    await expect(readFile(`${file}.tmp`)).rejects.toThrow();
  });
});
