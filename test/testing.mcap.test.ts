import { createHash } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { McapIndexedReader, McapStreamReader } from '@mcap/core';
import type { IReadable } from '@mcap/core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RoboflowError } from '../src/errors.js';
import { SAMPLE_TOPICS, writeSampleEpisode, type SampleEpisode } from '../src/cli/demo/episodes.js';

const MiB = 1024 * 1024;
let dir: string;

beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'roboflow-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function sha256(p: string): Promise<string> {
  return createHash('sha256').update(await readFile(p)).digest('hex');
}

function bufferReadable(buf: Uint8Array): IReadable {
  return {
    size: () => Promise.resolve(BigInt(buf.length)),
    read: (offset, length) => Promise.resolve(buf.subarray(Number(offset), Number(offset + length))),
  };
}

/** Counts messages per topic with @mcap/core's streaming reader, independently of our code. */
function streamCounts(buf: Uint8Array): Map<string, number> {
  const reader = new McapStreamReader();
  reader.append(buf);
  const topics = new Map<number, string>();
  const counts = new Map<string, number>();
  for (let rec = reader.nextRecord(); rec; rec = reader.nextRecord()) {
    if (rec.type === 'Channel') topics.set(rec.id, rec.topic);
    if (rec.type === 'Message') {
      const topic = topics.get(rec.channelId)!;
      counts.set(topic, (counts.get(topic) ?? 0) + 1);
    }
  }
  expect(reader.done()).toBe(true);
  return counts;
}

function reportedCounts(ep: SampleEpisode): Map<string, number> {
  return new Map(ep.channels.map((c) => [c.topic, c.messageCount]));
}

describe('writeSampleEpisode', () => {
  it('is deterministic for a seed and differs between seeds', async () => {
    const a = await writeSampleEpisode(path.join(dir, 'a.mcap'), { sizeBytes: MiB, seed: 5 });
    const b = await writeSampleEpisode(path.join(dir, 'b.mcap'), { sizeBytes: MiB, seed: 5 });
    const c = await writeSampleEpisode(path.join(dir, 'c.mcap'), { sizeBytes: MiB, seed: 6 });
    expect(await sha256(a.path)).toBe(await sha256(b.path));
    expect(a).toEqual({ ...b, path: a.path });
    expect(await sha256(c.path)).not.toBe(await sha256(a.path));
  });

  it.each([1 * MiB, 20 * MiB])('lands within 10 %% of %i bytes and reports the true size', async (size) => {
    const ep = await writeSampleEpisode(path.join(dir, `size-${size}.mcap`), { sizeBytes: size, seed: 2 });
    const buf = await readFile(ep.path);
    expect(ep.bytes).toBe(buf.length);
    expect(Math.abs(buf.length - size) / size).toBeLessThan(0.1);
  });

  it('writes an indexed file whose statistics and messages match what it reports', async () => {
    const ep = await writeSampleEpisode(path.join(dir, 'indexed.mcap'), { sizeBytes: 2 * MiB, seed: 3 });
    const buf = await readFile(ep.path);
    const reader = await McapIndexedReader.Initialize({ readable: bufferReadable(buf) });
    expect(reader.header.profile).toBe('ros2');
    expect(reader.chunkIndexes.length).toBeGreaterThan(0);
    expect(reader.chunkIndexes.every((c) => c.compression === '')).toBe(true);
    expect(Number(reader.statistics!.messageCount)).toBe(ep.messageCount);
    expect(reader.statistics!.messageStartTime.toString()).toBe(ep.startTime);
    expect(reader.statistics!.messageEndTime.toString()).toBe(ep.endTime);
    expect([...reader.channelsById.values()].map((c) => c.topic)).toEqual([...SAMPLE_TOPICS]);
    expect([...reader.schemasById.values()].every((s) => s.encoding === 'ros2msg')).toBe(true);

    const counts = new Map<string, number>();
    let firstImage: Uint8Array | undefined;
    for await (const m of reader.readMessages()) {
      const topic = reader.channelsById.get(m.channelId)!.topic;
      counts.set(topic, (counts.get(topic) ?? 0) + 1);
      if (topic === '/camera/front/image_raw' && !firstImage) firstImage = m.data;
    }
    expect(counts).toEqual(reportedCounts(ep));
    expect(streamCounts(buf)).toEqual(reportedCounts(ep));
    // Realistic rates: IMU at 200 Hz is ~6.7 times the camera's 30 Hz.
    const ratio = counts.get('/imu')! / counts.get('/camera/front/image_raw')!;
    expect(ratio).toBeGreaterThan(6);
    expect(ratio).toBeLessThan(7.5);

    // The first frame is a well-formed CDR sensor_msgs/Image.
    const view = new DataView(firstImage!.buffer, firstImage!.byteOffset, firstImage!.byteLength);
    expect([...firstImage!.subarray(0, 4)]).toEqual([0, 1, 0, 0]);
    const frameIdLen = view.getUint32(4 + 8, true);
    let pos = 4 + 12 + frameIdLen;
    pos = 4 + Math.ceil((pos - 4) / 4) * 4;
    const height = view.getUint32(pos, true);
    const width = view.getUint32(pos + 4, true);
    const encLen = view.getUint32(pos + 8, true);
    expect(Buffer.from(firstImage!.subarray(pos + 12, pos + 12 + encLen - 1)).toString()).toBe('rgb8');
    pos = 4 + Math.ceil((pos + 12 + encLen + 1 - 4) / 4) * 4; // is_bigendian, then align for step
    expect(view.getUint32(pos, true)).toBe(width * 3);
    expect(view.getUint32(pos + 4, true)).toBe(width * height * 3);
    expect(firstImage!.byteLength).toBe(pos + 8 + width * height * 3);
  });

  it('writes full 640x480 frames for large files', async () => {
    const ep = await writeSampleEpisode(path.join(dir, 'large.mcap'), { sizeBytes: 40 * MiB, seed: 4, topics: ['/camera/front/image_raw'] });
    const buf = await readFile(ep.path);
    const reader = await McapIndexedReader.Initialize({ readable: bufferReadable(buf) });
    for await (const m of reader.readMessages()) {
      expect(m.data.byteLength).toBeGreaterThan(640 * 480 * 3);
      expect(m.data.byteLength).toBeLessThan(640 * 480 * 3 + 100);
      break;
    }
    await rm(ep.path);
  });

  it('writes an unindexed layout that only a streaming reader can read', async () => {
    const ep = await writeSampleEpisode(path.join(dir, 'unindexed.mcap'), { sizeBytes: MiB, layout: 'unindexed' });
    const buf = await readFile(ep.path);
    await expect(McapIndexedReader.Initialize({ readable: bufferReadable(buf) })).rejects.toThrow(/not indexed/);
    expect(streamCounts(buf)).toEqual(reportedCounts(ep));
  });

  it('writes a layout without statistics that is still indexed', async () => {
    const ep = await writeSampleEpisode(path.join(dir, 'nostats.mcap'), { sizeBytes: MiB, layout: 'no-statistics' });
    const reader = await McapIndexedReader.Initialize({ readable: bufferReadable(await readFile(ep.path)) });
    expect(reader.statistics).toBeUndefined();
    expect(reader.chunkIndexes.length).toBeGreaterThan(0);
  });

  it('takes custom topics, and gives every topic a message even for a tiny size', async () => {
    const topics = ['/camera/left/image_raw', '/camera/right/image_raw', '/imu', '/tf'];
    const ep = await writeSampleEpisode(path.join(dir, 'tiny.mcap'), { sizeBytes: 1, topics });
    expect(ep.channels.map((c) => c.topic)).toEqual(topics);
    expect(ep.channels.every((c) => c.messageCount >= 1)).toBe(true);
    expect(streamCounts(await readFile(ep.path))).toEqual(reportedCounts(ep));
  });

  it('rejects topics of unknown type and bad sizes with ERR_CONFIG', async () => {
    for (const opts of [
      { sizeBytes: MiB, topics: ['/lidar/points'] },
      { sizeBytes: 0 },
      { sizeBytes: 1.5 },
      { sizeBytes: MiB, topics: [] },
    ]) {
      const err = await writeSampleEpisode(path.join(dir, 'bad.mcap'), opts).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(RoboflowError);
      expect((err as RoboflowError).code).toBe('ERR_CONFIG');
    }
  });

  it('stops on abort and leaves no file behind', async () => {
    const sub = await mkdtemp(path.join(dir, 'abort-'));
    const ac = new AbortController();
    ac.abort();
    await expect(writeSampleEpisode(path.join(sub, 'x.mcap'), { sizeBytes: 50 * MiB, signal: ac.signal })).rejects.toMatchObject({
      code: 'ERR_ABORTED',
    });
    expect(await readdir(sub)).toEqual([]);
  });
});
