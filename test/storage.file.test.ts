import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { openSource } from '../src/storage/index.js';
import { readAll, rejection } from './helpers.js';



describe('FileSource', () => {
  let dir: string;
  let file: string;
  let data: Buffer;

  beforeEach(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'roboflow-'));
    file = path.join(dir, 'rec.bin');
    data = randomBytes(300_000);
    await fs.writeFile(file, data);
  });

  afterEach(async () => {
    await fs.rm(dir, { recursive: true, force: true });
  });

  it('stats size, mtime and a synthesized ETag without checksums', async () => {
    const src = openSource(pathToFileURL(file).href);
    expect(src.kind).toBe('file');
    const st = await src.stat();
    const real = await fs.stat(file);
    expect(st.size).toBe(data.length);
    expect(st.etag).toBe(`"${real.ino}-${real.size}-${real.mtimeMs}"`);
    expect(st.lastModified?.getTime()).toBe(real.mtime.getTime());
    expect(st.checksums).toEqual([]);
    expect(st.rangesSupported).toBe(true);
    await src.close();
    await src.close();
  });

  it('reads exact ranges, including the last byte and the whole file', async () => {
    const src = openSource(file);
    const st = await src.stat();
    for (const [start, end] of [
      [0, 1],
      [1000, 70_001],
      [data.length - 1, data.length],
      [0, data.length],
    ] as const) {
      const { range, body } = await src.read({ start, end }, { ifMatch: st.etag! });
      expect(range).toEqual({ start, end });
      expect((await readAll(body)).equals(data.subarray(start, end))).toBe(true);
    }
  });

  it('refuses a range past the end and an empty range', async () => {
    const src = openSource(file);
    expect((await rejection(src.read({ start: 10, end: data.length + 1 }))).code).toBe('ERR_RANGE_NOT_SUPPORTED');
    expect((await rejection(src.read({ start: 10, end: 10 }))).code).toBe('ERR_CONFIG');
  });

  it('fails with ERR_SOURCE_CHANGED once the file is replaced', async () => {
    const src = openSource(file);
    const st = await src.stat();
    const replacement = path.join(dir, 'new.bin');
    await fs.writeFile(replacement, randomBytes(data.length));
    await fs.rename(replacement, file);
    const err = await rejection(src.read({ start: 0, end: 10 }, { ifMatch: st.etag! }));
    expect(err.code).toBe('ERR_SOURCE_CHANGED');
    expect(err.message).toContain(st.etag!);
    const again = await src.stat();
    expect(again.etag).not.toBe(st.etag);
  });

  it('notices an in-place rewrite of the same size', async () => {
    const src = openSource(file);
    const st = await src.stat();
    const handle = await fs.open(file, 'r+');
    await handle.write(Buffer.from('changed'), 0, 7, 0);
    // Make the change visible even on file systems with coarse timestamps.
    await handle.utimes(new Date(), new Date(Date.now() + 5_000));
    await handle.close();
    expect((await rejection(src.read({ start: 0, end: 10 }, { ifMatch: st.etag! }))).code).toBe('ERR_SOURCE_CHANGED');
  });

  it('maps a missing file to ERR_NOT_FOUND naming the path', async () => {
    const missing = path.join(dir, 'missing.mcap');
    const src = openSource(missing);
    const err = await rejection(src.stat());
    expect(err.code).toBe('ERR_NOT_FOUND');
    expect(err.message).toContain(missing);
    expect((await rejection(src.read({ start: 0, end: 1 }))).code).toBe('ERR_NOT_FOUND');
  });

  // root reads any file, so the mapping can only be seen as an ordinary user.
  it.skipIf(process.getuid?.() === 0)('maps an unreadable file to ERR_ACCESS_DENIED', async () => {
    await fs.chmod(file, 0o000);
    const src = openSource(file);
    const err = await rejection(src.read({ start: 0, end: 5 }));
    expect(err.code).toBe('ERR_ACCESS_DENIED');
    expect(err.message).toContain(file);
  });

  it('refuses a directory', async () => {
    const src = openSource(pathToFileURL(dir).href + '/sub');
    await fs.mkdir(path.join(dir, 'sub'));
    expect((await rejection(src.stat())).code).toBe('ERR_BAD_URL');
  });

  it('aborts a read when the signal fires', async () => {
    const src = openSource(file);
    const ac = new AbortController();
    ac.abort();
    expect((await rejection(src.read({ start: 0, end: 10 }, { signal: ac.signal }))).code).toBe('ERR_ABORTED');
    const live = new AbortController();
    const { body } = await src.read({ start: 0, end: data.length }, { signal: live.signal });
    live.abort();
    const err = await rejection(readAll(body));
    expect(err.code).toBe('ERR_ABORTED');
  });
});
