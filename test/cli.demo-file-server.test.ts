/**
 * The demo's store (src/cli/demo/file-server.ts): a real server on 127.0.0.1 serving real files,
 * read by plain HTTP requests and by the downloader the demo measures.
 */

import { randomBytes } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm, utimes, writeFile } from 'node:fs/promises';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { FileServer } from '../src/cli/demo/file-server.js';
import { ParallelDownloader } from '../src/prefetch/downloader.js';
import { rejection } from './helpers.js';

let dir: string;
let server: FileServer;
let file: string;
let data: Buffer;

beforeEach(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'roboflow-file-server-'));
  file = path.join(dir, 'episode.mcap');
  data = randomBytes(300_000);
  await writeFile(file, data);
  server = await FileServer.start();
  server.putFile('episodes', 'a dir/episode 1.mcap', file);
});

afterEach(async () => {
  await server.close();
  await rm(dir, { recursive: true, force: true });
});

const url = (): string => server.httpUrl('episodes', 'a dir/episode 1.mcap');

describe('FileServer', () => {
  it('answers HEAD with the size, byte ranges and a validator, and GET with the whole file', async () => {
    const head = await fetch(url(), { method: 'HEAD' });
    expect(head.status).toBe(200);
    expect(head.headers.get('content-length')).toBe(String(data.length));
    expect(head.headers.get('accept-ranges')).toBe('bytes');
    expect(head.headers.get('etag')).toMatch(/^"[0-9a-f]+-[0-9a-f]+"$/);
    const get = await fetch(url());
    expect(get.status).toBe(200);
    expect(Buffer.from(await get.arrayBuffer()).equals(data)).toBe(true);
  });

  it('serves bounded, open and suffix ranges with 206 and refuses ranges past the end with 416', async () => {
    const cases: [string, number, number][] = [
      ['bytes=10-19', 10, 20],
      ['bytes=299990-', 299_990, 300_000],
      ['bytes=-5', 299_995, 300_000],
      ['bytes=299999-400000', 299_999, 300_000],
    ];
    for (const [range, start, end] of cases) {
      const res = await fetch(url(), { headers: { Range: range } });
      expect(res.status, range).toBe(206);
      expect(res.headers.get('content-range'), range).toBe(`bytes ${start}-${end - 1}/${data.length}`);
      expect(Buffer.from(await res.arrayBuffer()).equals(data.subarray(start, end)), range).toBe(true);
    }
    const past = await fetch(url(), { headers: { Range: 'bytes=300000-' } });
    expect(past.status).toBe(416);
    expect(past.headers.get('content-range')).toBe(`bytes */${data.length}`);
    await past.arrayBuffer();
  });

  it('answers 412 to an If-Match of an older version, 404 to other keys and 405 to writes', async () => {
    const etag = (await fetch(url(), { method: 'HEAD' })).headers.get('etag')!;
    expect((await fetch(url(), { method: 'HEAD', headers: { 'If-Match': etag } })).status).toBe(200);
    await utimes(file, new Date(), new Date(Date.now() + 60_000));
    const changed = await fetch(url(), { method: 'HEAD', headers: { 'If-Match': etag } });
    expect(changed.status).toBe(412);
    expect(changed.headers.get('etag')).not.toBe(etag);
    const missing = await fetch(server.httpUrl('episodes', 'nope.mcap'));
    expect(missing.status).toBe(404);
    await missing.arrayBuffer();
    const put = await fetch(url(), { method: 'PUT', body: 'x' });
    expect(put.status).toBe(405);
    await put.arrayBuffer();
  });

  it('is what the downloader reads in the demo: a capped, delayed file arrives whole', async () => {
    await server.close();
    server = await FileServer.start({ rateLimitBytesPerSec: 4 * 1024 * 1024, firstByteLatencyMs: 5 });
    server.putFile('episodes', 'e.mcap', file);
    const downloader = new ParallelDownloader({ connections: 3, chunkSize: 64 * 1024 });
    try {
      const dest = path.join(dir, 'out.mcap');
      const result = await downloader.download(server.httpUrl('episodes', 'e.mcap'), dest);
      expect(result.bytes).toBe(data.length);
      expect((await readFile(dest)).equals(data)).toBe(true);
    } finally {
      await downloader.close();
    }
  });

  it('close() ends a response in progress and resolves; the endpoint then refuses connections', async () => {
    await server.close();
    server = await FileServer.start({ rateLimitBytesPerSec: 16 * 1024 });
    server.putFile('episodes', 'e.mcap', file);
    const target = server.httpUrl('episodes', 'e.mcap');
    const received = await new Promise<{ bytes: number; complete: boolean }>((resolve, reject) => {
      http
        .get(target, (res) => {
          let bytes = 0;
          res.on('data', (chunk: Buffer) => {
            bytes += chunk.length;
            if (bytes > 0) void server.close();
          });
          res.on('close', () => resolve({ bytes, complete: res.complete }));
        })
        .on('error', reject);
    });
    expect(received.complete).toBe(false);
    expect(received.bytes).toBeLessThan(data.length);
    await server.close();
    await expect(fetch(target, { method: 'HEAD' })).rejects.toThrow();
  });
});

describe("runPrefetchComparison with the demo's own store", () => {
  it('refuses generated content, which only a store the caller starts serves, before writing anything', async () => {
    const { runPrefetchComparison } = await import('../src/cli/demo/comparison.js');
    const err = await rejection(runPrefetchComparison({ jobs: 1, sizeBytes: 1024, content: 'generated', processor: { kind: 'checksum' }, tempDir: dir }));
    expect(err.code).toBe('ERR_CONFIG');
    expect(err.message).toMatch(/startStore/);
    expect((await readdir(dir)).filter((f) => f.startsWith('roboflow-demo-'))).toEqual([]);
  });
});
