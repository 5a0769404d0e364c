import { copyFile, mkdir, mkdtemp, open, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RoboflowError } from '../src/errors.js';
import { getProcessor } from '../src/processors/index.js';
import { SUMMARY_FILE, summarizeMcap, type McapFileSummary, type McapSummaryResult } from '../src/processors/mcap-summary.js';
import { writeSampleEpisode, type SampleEpisode, type SampleEpisodeLayout } from '../src/cli/demo/episodes.js';
import type { JobRecord } from '../src/types.js';

function makeJob(urls: string[]): JobRecord {
  const now = new Date();
  return {
    id: 'job-mcap',
    key: 'job-mcap',
    priority: 0,
    inputs: urls.map((url) => ({ url })),
    output: null,
    processor: 'mcap-summary',
    args: {},
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

let dir: string;
const episodes = {} as Record<SampleEpisodeLayout, SampleEpisode>;

beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'roboflow-'));
  for (const [i, layout] of (['indexed', 'no-statistics', 'unindexed'] as const).entries()) {
    episodes[layout] = await writeSampleEpisode(path.join(dir, `${layout}.mcap`), {
      sizeBytes: 1024 * 1024,
      seed: 10 + i,
      layout,
    });
  }
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

function expectMatches(summary: McapFileSummary, episode: SampleEpisode): void {
  expect(summary.messageCount).toBe(episode.messageCount);
  expect(summary.bytes).toBe(episode.bytes);
  expect(summary.profile).toBe('ros2');
  expect(summary.channels).toEqual(
    episode.channels.map((c) => ({
      id: c.id,
      topic: c.topic,
      messageEncoding: 'cdr',
      schemaName: c.schemaName,
      messageCount: c.messageCount,
    })),
  );
  expect(summary.startTime).toBe(episode.startTime);
  expect(summary.endTime).toBe(episode.endTime);
  expect(summary.durationSeconds).toBeCloseTo(Number(BigInt(episode.endTime) - BigInt(episode.startTime)) / 1e9, 9);
}

async function badInput(filePath: string, name: string): Promise<RoboflowError> {
  const err = await summarizeMcap(filePath, { name }).catch((e: unknown) => e);
  expect(err).toBeInstanceOf(RoboflowError);
  const e = err as RoboflowError;
  expect(e.code).toBe('ERR_BAD_INPUT_FILE');
  expect(e.retryable).toBe(false);
  expect(e.message).toContain(name);
  return e;
}

describe('mcap-summary on sample episodes', () => {
  it('reads counts from the statistics record of an indexed file', async () => {
    const s = await summarizeMcap(episodes.indexed.path);
    expect(s.countedFrom).toBe('statistics');
    expectMatches(s, episodes.indexed);
    expect(s.channels.every((c) => c.messageCount > 0)).toBe(true);
  });

  it('counts from message indexes when statistics are absent', async () => {
    const s = await summarizeMcap(episodes['no-statistics'].path);
    expect(s.countedFrom).toBe('message-index');
    expectMatches(s, episodes['no-statistics']);
  });

  it('streams a file without a summary section', async () => {
    const s = await summarizeMcap(episodes.unindexed.path);
    expect(s.countedFrom).toBe('stream');
    expectMatches(s, episodes.unindexed);
  });

  it('writes summary.json with one entry per input and returns compact counts', async () => {
    const outputDir = path.join(dir, 'out-multi');
    await mkdir(outputDir);
    const inputs = [episodes.indexed, episodes.unindexed];
    const result = (await getProcessor('mcap-summary').run({
      job: makeJob(['s3://bucket/run/ep-a.mcap', 'file:///data/ep-b.mcap']),
      inputPaths: inputs.map((e) => e.path),
      outputDir,
      signal: new AbortController().signal,
    })) as McapSummaryResult;
    expect(result.files).toBe(2);
    expect(result.messageCount).toBe(inputs[0]!.messageCount + inputs[1]!.messageCount);
    expect(result.summaries.map((s) => [s.file, s.messageCount, s.channels])).toEqual([
      ['ep-a.mcap', inputs[0]!.messageCount, 4],
      ['ep-b.mcap', inputs[1]!.messageCount, 4],
    ]);
    const written = JSON.parse(await readFile(path.join(outputDir, SUMMARY_FILE), 'utf8')) as McapFileSummary[];
    expect(written).toHaveLength(2);
    expect(written[0]!.file).toBe('ep-a.mcap');
    expectMatches(written[0]!, inputs[0]!);
    expectMatches(written[1]!, inputs[1]!);
  });

  it('writes an array even for a single input', async () => {
    const outputDir = path.join(dir, 'out-single');
    await mkdir(outputDir);
    await getProcessor('mcap-summary').run({
      job: makeJob(['s3://bucket/one.mcap']),
      inputPaths: [episodes.indexed.path],
      outputDir,
      signal: new AbortController().signal,
    });
    const written = JSON.parse(await readFile(path.join(outputDir, SUMMARY_FILE), 'utf8')) as unknown;
    expect(Array.isArray(written)).toBe(true);
  });
});

describe('mcap-summary on bad inputs', () => {
  it('reports truncated copies of every layout as ERR_BAD_INPUT_FILE naming the file', async () => {
    for (const layout of ['indexed', 'no-statistics', 'unindexed'] as const) {
      const copy = path.join(dir, `cut-${layout}.mcap`);
      await copyFile(episodes[layout].path, copy);
      await truncate(copy, Math.floor(episodes[layout].bytes / 2));
      const err = await badInput(copy, `cut-${layout}.mcap`);
      expect(err.message).toContain('truncated');
    }
  });

  it('reports a file cut just before its last byte as truncated', async () => {
    const copy = path.join(dir, 'cut-end.mcap');
    await copyFile(episodes.indexed.path, copy);
    await truncate(copy, episodes.indexed.bytes - 1);
    expect((await badInput(copy, 'cut-end.mcap')).message).toContain('truncated');
  });

  it('reports non-MCAP files (text, empty, tiny) as not MCAP', async () => {
    const text = path.join(dir, 'notes.txt');
    await writeFile(text, 'this is a CSV, not a recording\n'.repeat(100));
    expect((await badInput(text, 'notes.txt')).message).toContain('not an MCAP file');
    const empty = path.join(dir, 'empty.mcap');
    await writeFile(empty, '');
    expect((await badInput(empty, 'empty.mcap')).message).toContain('not an MCAP file');
    const tiny = path.join(dir, 'tiny.mcap');
    await writeFile(tiny, Buffer.from([0x89, 0x4d, 0x43]));
    expect((await badInput(tiny, 'tiny.mcap')).message).toContain('not an MCAP file');
  });

  it('reports a corrupt summary section and a corrupt chunk', async () => {
    // A byte in the summary section (just before the footer) breaks the summary CRC.
    const summaryCopy = path.join(dir, 'bad-summary.mcap');
    await copyFile(episodes.indexed.path, summaryCopy);
    await flipByte(summaryCopy, episodes.indexed.bytes - 37 - 40);
    expect((await badInput(summaryCopy, 'bad-summary.mcap')).message).toContain('corrupt');

    // A byte in the middle of a chunk breaks its CRC, which streaming checks.
    const chunkCopy = path.join(dir, 'bad-chunk.mcap');
    await copyFile(episodes.unindexed.path, chunkCopy);
    await flipByte(chunkCopy, Math.floor(episodes.unindexed.bytes / 3));
    expect((await badInput(chunkCopy, 'bad-chunk.mcap')).message).toContain('corrupt');
  });

  it('names the input by its URL in processor errors, without the query string', async () => {
    const text = path.join(dir, 'local-7');
    await writeFile(text, 'x'.repeat(1000));
    const outputDir = path.join(dir, 'out-bad');
    await mkdir(outputDir);
    const err = await getProcessor('mcap-summary')
      .run({
        job: makeJob(['https://h.example/rec/episode-9.mcap?X-Amz-Signature=topsecret']),
        inputPaths: [text],
        outputDir,
        signal: new AbortController().signal,
      })
      .catch((e: unknown) => e);
    expect((err as RoboflowError).code).toBe('ERR_BAD_INPUT_FILE');
    expect((err as RoboflowError).message).toContain('episode-9.mcap');
    expect((err as RoboflowError).message).not.toContain('topsecret');
  });

  it('stops with ERR_ABORTED when the signal has fired', async () => {
    const ac = new AbortController();
    ac.abort();
    await expect(summarizeMcap(episodes.unindexed.path, { signal: ac.signal })).rejects.toMatchObject({ code: 'ERR_ABORTED' });
  });
});

async function flipByte(filePath: string, position: number): Promise<void> {
  const fh = await open(filePath, 'r+');
  try {
    const b = Buffer.alloc(1);
    await fh.read(b, 0, 1, position);
    b[0] = b[0]! ^ 0xff;
    await fh.write(b, 0, 1, position);
  } finally {
    await fh.close();
  }
}
