import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import fs from 'node:fs/promises';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import zlib from 'node:zlib';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  CreateBucketCommand,
  CreateMultipartUploadCommand,
  GetObjectCommand,
  HeadBucketCommand,
  HeadObjectCommand,
  ListBucketsCommand,
  ListObjectsCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
  type S3ClientConfig,
  UploadPartCommand,
} from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import { SignatureV4 } from '@smithy/signature-v4';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';

import { generatedContent, generatedSha256 } from '../src/cli/demo/content.js';
import { ObjectServer, type FaultRule } from './support/object-server.js';
import { NodeSha256 } from '../src/storage/s3-direct.js';
import { TOOL_SCRIPTS } from './support/package-root.js';
import { itFull } from './tier.js';

const MiB = 1024 * 1024;
const KEY_ID = 'AKIDTESTSERVER';
const SECRET = 'test-secret-key/with+odd=chars';

const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
const md5 = (b: Buffer): string => createHash('md5').update(b).digest('hex');

interface RawResponse {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
  /** The body arrived whole (no error, the message completed). */
  complete: boolean;
  error?: NodeJS.ErrnoException;
}

interface RawOptions {
  method?: string;
  headers?: Record<string, string>;
  body?: Buffer;
  /** Give up (destroy the request) after this long without a byte. */
  idleMs?: number;
}

/** One request on a fresh connection, resolving with whatever arrived (never rejects). */
function raw(url: string, opts: RawOptions = {}): Promise<RawResponse> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let response: http.IncomingMessage | undefined;
    let settled = false;
    let idle: NodeJS.Timeout | undefined;
    const finish = (error?: NodeJS.ErrnoException): void => {
      if (settled) return;
      settled = true;
      if (idle !== undefined) clearTimeout(idle);
      resolve({
        status: response?.statusCode ?? 0,
        headers: response?.headers ?? {},
        body: Buffer.concat(chunks),
        complete: error === undefined && response?.complete === true,
        ...(error === undefined ? {} : { error }),
      });
    };
    const req = http.request(url, { method: opts.method ?? 'GET', headers: opts.headers, agent: false });
    const armIdle = (): void => {
      if (opts.idleMs === undefined) return;
      if (idle !== undefined) clearTimeout(idle);
      idle = setTimeout(() => {
        const err: NodeJS.ErrnoException = new Error('client gave up');
        err.code = 'IDLE';
        finish(err);
        req.destroy();
      }, opts.idleMs);
    };
    armIdle();
    req.on('response', (res) => {
      response = res;
      armIdle();
      res.on('data', (c: Buffer) => {
        chunks.push(c);
        armIdle();
      });
      res.on('end', () => finish());
      res.on('error', (err) => finish(err));
    });
    req.on('error', (err) => finish(err));
    req.end(opts.body);
  });
}

function s3Client(server: ObjectServer, extra: Partial<S3ClientConfig> = {}): S3Client {
  return new S3Client({
    endpoint: server.endpoint,
    region: 'us-east-1',
    forcePathStyle: true,
    credentials: { accessKeyId: KEY_ID, secretAccessKey: SECRET },
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
    maxAttempts: 1,
    ...extra,
  });
}

async function sdkBytes(body: unknown): Promise<Buffer> {
  const b = body as { transformToByteArray(): Promise<Uint8Array> };
  return Buffer.from(await b.transformToByteArray());
}

async function sdkError(p: Promise<unknown>): Promise<{ name: string; $metadata: { httpStatusCode?: number } }> {
  try {
    await p;
  } catch (err) {
    return err as { name: string; $metadata: { httpStatusCode?: number } };
  }
  throw new Error('expected the SDK call to fail');
}

describe('generatedContent', () => {
  it('is deterministic, seed-dependent and consistent across slices', () => {
    const whole = generatedContent(7, 0, 100);
    expect(whole.length).toBe(100);
    expect(generatedContent(7, 0, 100).equals(whole)).toBe(true);
    expect(whole.subarray(10, 20).equals(generatedContent(7, 10, 20))).toBe(true);
    expect(generatedContent(8, 0, 100).equals(whole)).toBe(false);
    const big = generatedContent(3, 0, 70_000);
    for (const [s, e] of [
      [0, 1],
      [1, 9],
      [7, 8],
      [8, 16],
      [4095, 65_537],
      [69_999, 70_000],
      [123, 123],
    ] as const) {
      expect(generatedContent(3, s, e).equals(big.subarray(s, e))).toBe(true);
    }
  });

  it('differs from word to word (no short period) and handles offsets past 32 GiB', () => {
    const words = generatedContent(1, 0, 8 * 4096);
    const seen = new Set<string>();
    for (let i = 0; i < 4096; i++) seen.add(words.toString('hex', 8 * i, 8 * i + 8));
    expect(seen.size).toBe(4096);
    const far = 2 ** 35 * 8 - 12; // straddles a word index of 2^32
    expect(generatedContent(1, far, far + 24).subarray(5, 17).equals(generatedContent(1, far + 5, far + 17))).toBe(true);
    expect(generatedContent(1, far, far + 24).equals(generatedContent(1, 0, 24))).toBe(false);
  });

  it('hashes a whole object in slices to the SHA-256 of its bytes', async () => {
    const size = 3 * MiB + 5;
    expect(await generatedSha256(size, 11)).toBe(sha256(generatedContent(11, 0, size)));
    expect(await generatedSha256(0, 11)).toBe(sha256(Buffer.alloc(0)));
  });
});

describe('ObjectServer generated-content cache', () => {
  it('serves the same bytes from a cache smaller than the object, ranges across blocks included', async () => {
    const MiB = 2 ** 20;
    const size = 5 * MiB + 123;
    const server = await ObjectServer.start({ generatedCacheBytes: 2 * MiB });
    try {
      server.putObject('b', 'g.bin', { generated: { size, seed: 9 } });
      await server.preloadGenerated('b', 'g.bin');
      const whole = generatedContent(9, 0, size);
      // Inside one block, across a block boundary, the unaligned tail, and a block read again
      // after the cache had to drop it.
      for (const [start, end] of [[10, 1000], [MiB - 5, MiB + 5], [5 * MiB, size], [0, 3 * MiB], [100, 200_000], [4 * MiB + 7, 5 * MiB]] as const) {
        const r = await raw(server.httpUrl('b', 'g.bin'), { headers: { range: `bytes=${start}-${end - 1}` } });
        expect(r.status).toBe(206);
        expect(r.body.equals(whole.subarray(start, end)), `bytes ${start}-${end - 1}`).toBe(true);
      }
      const all = await raw(server.httpUrl('b', 'g.bin'));
      expect(createHash('sha256').update(all.body).digest('hex')).toBe(await generatedSha256(size, 9));
    } finally {
      await server.close();
    }
  });
});

describe('ObjectServer', () => {
  let server: ObjectServer;
  let tmp: string | undefined;
  const clients: S3Client[] = [];
  const data = randomBytes(10_000);

  beforeEach(async () => {
    server = await ObjectServer.start();
    server.putObject('b', 'dir/obj one.bin', data);
  });

  afterEach(async () => {
    for (const c of clients.splice(0)) c.destroy();
    await server.close();
    if (tmp !== undefined) await fs.rm(tmp, { recursive: true, force: true });
    tmp = undefined;
  });

  const url = (key = 'dir/obj one.bin'): string => server.httpUrl('b', key);
  const client = (extra: Partial<S3ClientConfig> = {}): S3Client => {
    const c = s3Client(server, extra);
    clients.push(c);
    return c;
  };

  describe('reads', () => {
    it('serves the whole object with ETag, Last-Modified and Accept-Ranges', async () => {
      expect(url()).toBe(`${server.endpoint}/b/dir/obj%20one.bin`);
      const r = await raw(url());
      expect(r.status).toBe(200);
      expect(r.body.equals(data)).toBe(true);
      expect(r.headers).toMatchObject({
        etag: `"${md5(data)}"`,
        'accept-ranges': 'bytes',
        'content-length': String(data.length),
        'content-type': 'application/octet-stream',
      });
      expect(new Date(r.headers['last-modified'] ?? '').getTime()).toBeGreaterThan(0);
      expect(r.headers['content-range']).toBeUndefined();
    });

    it.each([
      ['bytes=0-0', 0, 1],
      ['bytes=9999-9999', 9999, 10_000],
      ['bytes=100-199', 100, 200],
      ['bytes=9990-20000', 9990, 10_000],
      ['bytes=9000-', 9000, 10_000],
      ['bytes=-1', 9999, 10_000],
      ['bytes=-25', 9975, 10_000],
      ['bytes=-20000', 0, 10_000],
    ])('answers Range %s with 206 and the right Content-Range', async (range, start, end) => {
      const r = await raw(url(), { headers: { Range: range } });
      expect(r.status).toBe(206);
      expect(r.headers['content-range']).toBe(`bytes ${start}-${end - 1}/${data.length}`);
      expect(r.headers['content-length']).toBe(String(end - start));
      expect(r.body.equals(data.subarray(start, end))).toBe(true);
      expect(server.requests.at(-1)?.range).toEqual({ start, end });
    });

    it.each(['bytes=10000-', 'bytes=10000-10005', 'bytes=-0'])('answers unsatisfiable %s with 416 InvalidRange', async (range) => {
      const r = await raw(url(), { headers: { Range: range } });
      expect(r.status).toBe(416);
      expect(r.headers['content-range']).toBe(`bytes */${data.length}`);
      expect(r.body.toString()).toContain('<Code>InvalidRange</Code>');
    });

    it('ignores ranges it cannot parse and serves the whole object', async () => {
      for (const range of ['bytes=5-2', 'items=0-1', 'bytes=0-1,5-6']) {
        const r = await raw(url(), { headers: { Range: range } });
        expect(r.status).toBe(200);
        expect(r.body.length).toBe(data.length);
      }
    });

    it('serves zero-byte objects', async () => {
      server.putObject('b', 'empty', Buffer.alloc(0));
      const r = await raw(url('empty'));
      expect(r).toMatchObject({ status: 200, complete: true });
      expect(r.body.length).toBe(0);
      expect(r.headers['content-length']).toBe('0');
      expect(r.headers.etag).toBe(`"${md5(Buffer.alloc(0))}"`);
      expect((await raw(url('empty'), { headers: { Range: 'bytes=0-' } })).status).toBe(416);
      expect((await raw(url('empty'), { headers: { Range: 'bytes=-5' } })).status).toBe(416);
      server.putObject('b', 'empty-gen', { generated: { size: 0, seed: 1 } });
      expect((await raw(url('empty-gen'))).status).toBe(200);
    });

    it('answers HEAD with the headers of a GET and no body', async () => {
      const r = await raw(url(), { method: 'HEAD' });
      expect(r.status).toBe(200);
      expect(r.body.length).toBe(0);
      expect(r.headers).toMatchObject({ 'content-length': String(data.length), etag: `"${md5(data)}"` });
      const ranged = await raw(url(), { method: 'HEAD', headers: { Range: 'bytes=0-9' } });
      expect(ranged.status).toBe(206);
      expect(ranged.headers['content-range']).toBe(`bytes 0-9/${data.length}`);
      const missing = await raw(url('nope'), { method: 'HEAD' });
      expect(missing.status).toBe(404);
      expect(missing.body.length).toBe(0);
    });

    it('answers 404 NoSuchKey and NoSuchBucket in S3 XML', async () => {
      const r = await raw(url('missing/key'));
      expect(r.status).toBe(404);
      expect(r.headers['content-type']).toBe('application/xml');
      expect(r.body.toString()).toMatch(/<Error><Code>NoSuchKey<\/Code>.*<Resource>\/b\/missing\/key<\/Resource>/);
      const nb = await raw(server.httpUrl('no-bucket', 'k'));
      expect(nb.status).toBe(404);
      expect(nb.body.toString()).toContain('<Code>NoSuchBucket</Code>');
    });

    it('honours If-Match: 206 when it matches, 412 PreconditionFailed when not', async () => {
      const etag = `"${md5(data)}"`;
      const ok = await raw(url(), { headers: { Range: 'bytes=10-19', 'If-Match': etag } });
      expect(ok.status).toBe(206);
      expect(ok.body.equals(data.subarray(10, 20))).toBe(true);
      expect((await raw(url(), { headers: { 'If-Match': '*' } })).status).toBe(200);
      const bad = await raw(url(), { headers: { Range: 'bytes=10-19', 'If-Match': '"0123"' } });
      expect(bad.status).toBe(412);
      expect(bad.body.toString()).toContain('<Error><Code>PreconditionFailed</Code>');
      expect((await raw(url(), { headers: { 'If-None-Match': etag } })).status).toBe(304);
    });

    it('computes MD5 ETags for generated and file bodies, and takes ETag overrides', async () => {
      const size = 2 * MiB + 3;
      const put = server.putObject('b', 'gen', { generated: { size, seed: 4 } });
      expect(put.size).toBe(size);
      const head = await raw(url('gen'), { method: 'HEAD' });
      expect(head.headers.etag).toBe(`"${md5(generatedContent(4, 0, size))}"`);
      expect(put.etag).toBe(head.headers.etag);
      const r = await raw(url('gen'), { headers: { Range: `bytes=${MiB - 3}-${MiB + 4}` } });
      expect(r.body.equals(generatedContent(4, MiB - 3, MiB + 5))).toBe(true);
      expect(await server.objectSha256('b', 'gen')).toBe(await generatedSha256(size, 4));

      tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'roboflow-'));
      const file = path.join(tmp, 'f.bin');
      const fileData = randomBytes(300_000);
      await fs.writeFile(file, fileData);
      server.putObject('b', 'file', { file });
      const fr = await raw(url('file'), { headers: { Range: 'bytes=1000-' } });
      expect(fr.headers.etag).toBe(`"${md5(fileData)}"`);
      expect(fr.body.equals(fileData.subarray(1000))).toBe(true);
      expect(server.objectBytes('b', 'file').equals(fileData)).toBe(true);
      expect(await server.objectSha256('b', 'file')).toBe(sha256(fileData));

      expect(server.putObject('b', 'over', data, { etag: 'abc-2' }).etag).toBe('"abc-2"');
      expect((await raw(url('over'), { method: 'HEAD' })).headers.etag).toBe('"abc-2"');
    });

    it('streams a large generated object whole and intact', async () => {
      const size = 24 * MiB + 7;
      server.putObject('b', 'large', { generated: { size, seed: 99 } });
      const r = await raw(url('large'));
      expect(r.complete).toBe(true);
      expect(r.body.length).toBe(size);
      expect(sha256(r.body)).toBe(await generatedSha256(size, 99));
      expect(server.bytesServed('b', 'large')).toBe(size);
    });

    it('logs every request with its range, If-Match, status, bytes and fault', async () => {
      server.clearRequests();
      const etag = `"${md5(data)}"`;
      server.addFault({ fault: { kind: 'truncate', afterBytes: 5 }, match: { rangedOnly: true }, skip: 1 });
      await raw(url(), { headers: { Range: 'bytes=0-99', 'If-Match': etag } });
      await raw(url(), { headers: { Range: 'bytes=100-199' } });
      await raw(url(), { method: 'HEAD' });
      await raw(url());
      expect(server.requests).toEqual([
        expect.objectContaining({ method: 'GET', bucket: 'b', key: 'dir/obj one.bin', range: { start: 0, end: 100 }, ifMatch: etag, status: 206, bytesSent: 100 }),
        expect.objectContaining({ method: 'GET', range: { start: 100, end: 200 }, status: 206, bytesSent: 5, fault: 'truncate' }),
        expect.objectContaining({ method: 'HEAD', status: 200, bytesSent: 0, operation: 'HeadObject' }),
        expect.objectContaining({ method: 'GET', status: 200, bytesSent: data.length, operation: 'GetObject' }),
      ]);
      expect(server.requests[0]?.fault).toBeUndefined();
      expect(server.requests[3]?.range).toBeUndefined();
      expect(typeof server.requests[0]?.startedAt).toBe('number');
      expect(server.bytesServed('b', 'dir/obj one.bin')).toBe(100 + 5 + data.length);
      expect(server.bytesServed('other')).toBe(0);
      server.clearRequests();
      expect(server.requests).toHaveLength(0);
      expect(server.bytesServed()).toBe(0);
    });
  });

  describe('shaping', () => {
    it('caps the send rate per connection (lower bound only)', async () => {
      server.putObject('b', 'mb', { generated: { size: 1_000_000, seed: 2 } });
      await server.objectEtag('b', 'mb');
      server.setRateLimit(4_000_000);
      const t0 = performance.now();
      const r = await raw(url('mb'));
      const seconds = (performance.now() - t0) / 1000;
      expect(r.body.length).toBe(1_000_000);
      expect(seconds).toBeGreaterThanOrEqual(0.15);
      server.setRateLimit(undefined);
    });

    it('waits the first-byte latency before the headers', async () => {
      server.setFirstByteLatency(300);
      const t0 = performance.now();
      const r = await raw(url(), { method: 'HEAD' });
      expect(r.status).toBe(200);
      expect(performance.now() - t0).toBeGreaterThanOrEqual(250);
    });

    it('answers 503 SlowDown above maxConcurrentRequests GETs in flight', async () => {
      const limited = await ObjectServer.start({ maxConcurrentRequests: 1, throttleRetryAfterSeconds: 2 });
      try {
        limited.putObject('b', 'k', data);
        limited.addFault({ fault: { kind: 'stall', afterBytes: 10 } });
        const stalled = raw(limited.httpUrl('b', 'k'), { idleMs: 400 });
        while (limited.requests.length === 0 || limited.requests[0]?.bytesSent !== 10) await new Promise((r) => setTimeout(r, 10));
        const second = await raw(limited.httpUrl('b', 'k'));
        expect(second.status).toBe(503);
        expect(second.headers['retry-after']).toBe('2');
        expect(second.body.toString()).toContain('<Code>SlowDown</Code>');
        expect(limited.requests[1]).toMatchObject({ status: 503, throttled: true });
        // HEAD is not a GET: not counted, not refused.
        expect((await raw(limited.httpUrl('b', 'k'), { method: 'HEAD' })).status).toBe(200);
        expect((await stalled).body.length).toBe(10);
        let third = await raw(limited.httpUrl('b', 'k'));
        for (let i = 0; i < 100 && third.status === 503; i++) {
          await new Promise((r) => setTimeout(r, 20));
          third = await raw(limited.httpUrl('b', 'k'));
        }
        expect(third.status).toBe(200);
      } finally {
        await limited.close();
      }
    });
  });

  describe('faults', () => {
    it('status: injects the status, Retry-After, x-oss-qos-delay-time and an S3 XML body', async () => {
      server.addFault({ fault: { kind: 'status', status: 503, retryAfterSeconds: 7, ossDelayMs: 1500 } });
      const r = await raw(url());
      expect(r.status).toBe(503);
      expect(r.headers['retry-after']).toBe('7');
      expect(r.headers['x-oss-qos-delay-time']).toBe('1500');
      expect(r.body.toString()).toContain('<Code>SlowDown</Code>');
      expect(server.requests.at(-1)).toMatchObject({ status: 503, fault: 'status' });
      expect((await raw(url())).status).toBe(200);

      server.addFault({ fault: { kind: 'status', status: 500, body: 'oops', contentType: 'text/plain' } });
      const custom = await raw(url());
      expect(custom).toMatchObject({ status: 500 });
      expect(custom.headers['content-type']).toBe('text/plain');
      expect(custom.body.toString()).toBe('oops');
    });

    it('reset: the client gets exactly n bytes, then a connection error', async () => {
      server.addFault({ fault: { kind: 'reset', afterBytes: 1000 } });
      const r = await raw(url());
      expect(r.status).toBe(200);
      expect(r.complete).toBe(false);
      expect(r.error).toBeDefined();
      expect(r.body.equals(data.subarray(0, 1000))).toBe(true);
      expect(server.requests.at(-1)).toMatchObject({ bytesSent: 1000, fault: 'reset' });
      const zero = (server.addFault({ fault: { kind: 'reset', afterBytes: 0 } }), await raw(url()));
      expect(zero.status).toBe(200);
      expect(zero.body.length).toBe(0);
      expect(zero.complete).toBe(false);
    });

    it('reset on HEAD drops the connection without an answer', async () => {
      server.addFault({ fault: { kind: 'reset', afterBytes: 0 }, match: { method: 'HEAD' } });
      const r = await raw(url(), { method: 'HEAD' });
      expect(r.status).toBe(0);
      expect(r.error).toBeDefined();
    });

    it('truncate: the connection closes after n bytes although Content-Length promised more', async () => {
      server.addFault({ fault: { kind: 'truncate', afterBytes: 1234 } });
      const r = await raw(url());
      expect(r.headers['content-length']).toBe(String(data.length));
      expect(r.complete).toBe(false);
      expect(r.body.equals(data.subarray(0, 1234))).toBe(true);
      expect(server.requests.at(-1)).toMatchObject({ bytesSent: 1234, fault: 'truncate' });
    });

    it('stall with ms: pauses after n bytes, then completes', async () => {
      server.addFault({ fault: { kind: 'stall', afterBytes: 500, ms: 300 } });
      const t0 = performance.now();
      const r = await raw(url());
      expect(r.complete).toBe(true);
      expect(r.body.equals(data)).toBe(true);
      expect(performance.now() - t0).toBeGreaterThanOrEqual(250);
    });

    it('stall without ms: sends n bytes and then nothing until the client gives up', async () => {
      server.addFault({ fault: { kind: 'stall', afterBytes: 2000 } });
      const r = await raw(url(), { idleMs: 300 });
      expect(r.error?.code).toBe('IDLE');
      expect(r.body.equals(data.subarray(0, 2000))).toBe(true);
      expect(server.requests.at(-1)).toMatchObject({ bytesSent: 2000, fault: 'stall' });
    });

    it('replace: the object changes (new ETag) before the request is served', async () => {
      const before = `"${md5(data)}"`;
      const next = randomBytes(5000);
      server.addFault({ fault: { kind: 'replace', body: next } });
      const r = await raw(url(), { headers: { Range: 'bytes=0-99' } });
      expect(r.status).toBe(206);
      expect(r.headers.etag).toBe(`"${md5(next)}"`);
      expect(r.headers['content-range']).toBe('bytes 0-99/5000');
      expect(r.body.equals(next.subarray(0, 100))).toBe(true);
      expect((await raw(url(), { headers: { 'If-Match': before } })).status).toBe(412);
      expect(server.objectBytes('b', 'dir/obj one.bin').equals(next)).toBe(true);
    });

    it('bad-content-range: a 206 whose Content-Range names other bytes than it sends', async () => {
      server.addFault({ fault: { kind: 'bad-content-range' } });
      const r = await raw(url(), { headers: { Range: 'bytes=100-199' } });
      expect(r.status).toBe(206);
      expect(r.headers['content-range']).toBe(`bytes 101-200/${data.length}`);
      expect(r.body.equals(data.subarray(100, 200))).toBe(true);
      server.addFault({ fault: { kind: 'bad-content-range' } });
      const tail = await raw(url(), { headers: { Range: 'bytes=-10' } });
      expect(tail.headers['content-range']).toBe(`bytes 9989-9998/${data.length}`);
    });

    it('no-content-length: the body comes chunked without Content-Length', async () => {
      server.addFault({ fault: { kind: 'no-content-length' } });
      const r = await raw(url());
      expect(r.status).toBe(200);
      expect(r.headers['content-length']).toBeUndefined();
      expect(r.headers['transfer-encoding']).toBe('chunked');
      expect(r.body.equals(data)).toBe(true);
    });

    it('html-error: a 200 text/html page instead of the object', async () => {
      server.addFault({ fault: { kind: 'html-error' } });
      const r = await raw(url());
      expect(r.status).toBe(200);
      expect(r.headers['content-type']).toContain('text/html');
      expect(r.body.toString()).toMatch(/^<!DOCTYPE html>/);
      expect(r.headers.etag).toBeUndefined();
    });

    it('rules apply in order with times and skip; only matching requests count', async () => {
      server.putObject('b', 'other', data);
      server.addFault({ fault: { kind: 'status', status: 500 }, match: { key: 'dir/obj one.bin' }, skip: 1, times: 2 });
      server.addFault({ fault: { kind: 'status', status: 502 }, times: 2 });
      const statuses: number[] = [];
      for (let i = 0; i < 5; i++) statuses.push((await raw(url())).status);
      // 1st: rule 1 skips it, rule 2 takes it; 2nd, 3rd: rule 1; 4th: rule 2; 5th: none left.
      expect(statuses).toEqual([502, 500, 500, 502, 200]);
      expect((await raw(url('other'))).status).toBe(200);
      expect((await raw(url(), { method: 'HEAD' })).status).toBe(200);
      server.clearFaults();

      server.addFault({ fault: { kind: 'status', status: 500 }, match: { rangedOnly: true, method: 'get' }, times: 10 });
      expect((await raw(url())).status).toBe(200);
      expect((await raw(url(), { headers: { Range: 'bytes=0-0' } })).status).toBe(500);
    });

    it('probability rules draw from a seeded PRNG: reproducible, bounded by times', async () => {
      const pattern = async (rule: FaultRule): Promise<number[]> => {
        const s = await ObjectServer.start();
        try {
          s.putObject('b', 'k', Buffer.from('x'));
          s.addFault(rule);
          const out: number[] = [];
          for (let i = 0; i < 40; i++) out.push((await raw(s.httpUrl('b', 'k'))).status);
          return out;
        } finally {
          await s.close();
        }
      };
      const rule: FaultRule = { fault: { kind: 'status', status: 503 }, probability: 0.5, seed: 42 };
      const a = await pattern(rule);
      const b = await pattern(rule);
      expect(a).toEqual(b);
      const hits = a.filter((s) => s === 503).length;
      expect(hits).toBeGreaterThan(5);
      expect(hits).toBeLessThan(35);
      expect(await pattern({ ...rule, seed: 43 })).not.toEqual(a);
      expect((await pattern({ ...rule, times: 3 })).filter((s) => s === 503)).toHaveLength(3);
    });

    it('status faults on PUT through the SDK', async () => {
      const s3 = client();
      server.addFault({ fault: { kind: 'status', status: 403 }, match: { method: 'PUT' } });
      const err = await sdkError(s3.send(new PutObjectCommand({ Bucket: 'b', Key: 'up', Body: Buffer.from('abc') })));
      expect(err.name).toBe('AccessDenied');
      expect(err.$metadata.httpStatusCode).toBe(403);
      expect(server.hasObject('b', 'up')).toBe(false);
    });
  });

  describe('writes through the AWS SDK', () => {
    it('PUT then GET/HEAD round-trip, with SDK errors for 412 and 404', async () => {
      const s3 = client();
      const body = randomBytes(100_000);
      const put = await s3.send(new PutObjectCommand({ Bucket: 'up', Key: 'a/b c+d.bin', Body: body, ContentType: 'application/x-test' }));
      expect(put.ETag).toBe(`"${md5(body)}"`);
      expect(server.objectBytes('up', 'a/b c+d.bin').equals(body)).toBe(true);
      const head = await s3.send(new HeadObjectCommand({ Bucket: 'up', Key: 'a/b c+d.bin' }));
      expect(head).toMatchObject({ ContentLength: body.length, ETag: put.ETag, ContentType: 'application/x-test' });
      const got = await s3.send(new GetObjectCommand({ Bucket: 'up', Key: 'a/b c+d.bin', Range: 'bytes=10-19', IfMatch: put.ETag }));
      expect(got.ContentRange).toBe(`bytes 10-19/${body.length}`);
      expect((await sdkBytes(got.Body)).equals(body.subarray(10, 20))).toBe(true);
      const pre = await sdkError(s3.send(new GetObjectCommand({ Bucket: 'up', Key: 'a/b c+d.bin', IfMatch: '"nope"' })));
      expect(pre.name).toBe('PreconditionFailed');
      expect((await sdkError(s3.send(new GetObjectCommand({ Bucket: 'up', Key: 'missing' })))).name).toBe('NoSuchKey');
      expect(server.requests.map((r) => r.operation)).toContain('PutObject');
    });

    it('decodes the aws-chunked body and checks the CRC32 trailer the SDK sends by default', async () => {
      tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'roboflow-'));
      const file = path.join(tmp, 'stream.bin');
      const body = randomBytes(3 * MiB + 17);
      await fs.writeFile(file, body);
      const s3 = client({ requestChecksumCalculation: 'WHEN_SUPPORTED', responseChecksumValidation: 'WHEN_SUPPORTED' });
      await s3.send(new PutObjectCommand({ Bucket: 'up', Key: 'streamed', Body: createReadStream(file), ContentLength: body.length }));
      expect(server.objectSize('up', 'streamed')).toBe(body.length);
      expect(await server.objectSha256('up', 'streamed')).toBe(sha256(body));
      const small = Buffer.from('checksummed in a header');
      await s3.send(new PutObjectCommand({ Bucket: 'up', Key: 'small', Body: small }));
      expect(server.objectBytes('up', 'small').equals(small)).toBe(true);
    });

    it('refuses bodies whose checksum, SHA-256 or aws-chunked framing is wrong', async () => {
      const bad = await raw(server.httpUrl('up', 'x'), { method: 'PUT', headers: { 'x-amz-checksum-crc32': 'AAAAAA==' }, body: Buffer.from('hello') });
      expect(bad.status).toBe(400);
      expect(bad.body.toString()).toContain('<Code>BadDigest</Code>');
      const sha = await raw(server.httpUrl('up', 'x'), { method: 'PUT', headers: { 'x-amz-content-sha256': '0'.repeat(64) }, body: Buffer.from('hello') });
      expect(sha.status).toBe(400);
      expect(sha.body.toString()).toContain('XAmzContentSHA256Mismatch');
      const framing = await raw(server.httpUrl('up', 'x'), {
        method: 'PUT',
        headers: { 'content-encoding': 'aws-chunked', 'x-amz-content-sha256': 'STREAMING-UNSIGNED-PAYLOAD-TRAILER', 'x-amz-decoded-content-length': '5' },
        body: Buffer.from('5\r\nhel'),
      });
      expect(framing.status).toBe(400);
      expect(server.hasObject('up', 'x')).toBe(false);
      const good = await raw(server.httpUrl('up', 'x'), {
        method: 'PUT',
        headers: { 'content-encoding': 'aws-chunked', 'x-amz-content-sha256': 'STREAMING-UNSIGNED-PAYLOAD-TRAILER', 'x-amz-decoded-content-length': '8' },
        body: Buffer.from('3\r\nhel\r\n5\r\nlo wo\r\n0\r\n\r\n'),
      });
      expect(good.status).toBe(200);
      expect(server.objectBytes('up', 'x').toString()).toBe('hello wo');
    });

    it('multipart upload of a 12 MiB file with lib-storage Upload', async () => {
      tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'roboflow-'));
      const file = path.join(tmp, 'big.bin');
      const body = randomBytes(12 * MiB);
      await fs.writeFile(file, body);
      server.clearRequests();
      const upload = new Upload({ client: client(), params: { Bucket: 'up', Key: 'big/file.bin', Body: createReadStream(file) }, queueSize: 2 });
      const done = await upload.done();
      expect(done.ETag).toMatch(/^"[0-9a-f]{32}-3"$/);
      const ops = server.requests.map((r) => r.operation);
      expect(ops.filter((o) => o === 'CreateMultipartUpload')).toHaveLength(1);
      expect(ops.filter((o) => o === 'UploadPart')).toHaveLength(3);
      expect(ops.filter((o) => o === 'CompleteMultipartUpload')).toHaveLength(1);
      expect(await server.objectSha256('up', 'big/file.bin')).toBe(sha256(body));
      const head = await raw(server.httpUrl('up', 'big/file.bin'), { method: 'HEAD' });
      expect(head.headers.etag).toBe(done.ETag);
      const tail = await raw(server.httpUrl('up', 'big/file.bin'), { headers: { Range: `bytes=${10 * MiB}-` } });
      expect(tail.body.equals(body.subarray(10 * MiB))).toBe(true);
    });

    it('refuses to complete with parts below the minimum size, a wrong ETag, or an unknown upload', async () => {
      const s3 = client();
      const { UploadId } = await s3.send(new CreateMultipartUploadCommand({ Bucket: 'up', Key: 'mp' }));
      const p1 = await s3.send(new UploadPartCommand({ Bucket: 'up', Key: 'mp', UploadId, PartNumber: 1, Body: Buffer.from('small') }));
      const p2 = await s3.send(new UploadPartCommand({ Bucket: 'up', Key: 'mp', UploadId, PartNumber: 2, Body: Buffer.from('last') }));
      const tooSmall = await sdkError(
        s3.send(new CompleteMultipartUploadCommand({ Bucket: 'up', Key: 'mp', UploadId, MultipartUpload: { Parts: [{ PartNumber: 1, ETag: p1.ETag }, { PartNumber: 2, ETag: p2.ETag }] } })),
      );
      expect(tooSmall.name).toBe('EntityTooSmall');
      const wrong = await sdkError(s3.send(new CompleteMultipartUploadCommand({ Bucket: 'up', Key: 'mp', UploadId, MultipartUpload: { Parts: [{ PartNumber: 1, ETag: '"00"' }] } })));
      expect(wrong.name).toBe('InvalidPart');
      const single = await s3.send(new CompleteMultipartUploadCommand({ Bucket: 'up', Key: 'mp', UploadId, MultipartUpload: { Parts: [{ PartNumber: 2, ETag: p2.ETag }] } }));
      expect(single.ETag).toBe(`"${createHash('md5').update(Buffer.from(md5(Buffer.from('last')), 'hex')).digest('hex')}-1"`);
      expect(server.objectBytes('up', 'mp').toString()).toBe('last');
      const gone = await sdkError(s3.send(new AbortMultipartUploadCommand({ Bucket: 'up', Key: 'mp', UploadId })));
      expect(gone.name).toBe('NoSuchUpload');
    });

    it('ListObjectsV2 with prefix, delimiter and pagination', async () => {
      for (const k of ['logs/a.txt', 'logs/b.txt', 'logs/sub/c.txt', 'logs/sub/d.txt', 'logs/z.txt', 'other.txt']) server.putObject('list', k, Buffer.from(k));
      const s3 = client();
      const all = await s3.send(new ListObjectsV2Command({ Bucket: 'list', Prefix: 'logs/' }));
      expect(all.Contents?.map((c) => c.Key)).toEqual(['logs/a.txt', 'logs/b.txt', 'logs/sub/c.txt', 'logs/sub/d.txt', 'logs/z.txt']);
      expect(all.Contents?.[0]).toMatchObject({ Size: 'logs/a.txt'.length, ETag: `"${md5(Buffer.from('logs/a.txt'))}"` });
      expect(all.IsTruncated).toBe(false);
      const delimited = await s3.send(new ListObjectsV2Command({ Bucket: 'list', Prefix: 'logs/', Delimiter: '/' }));
      expect(delimited.Contents?.map((c) => c.Key)).toEqual(['logs/a.txt', 'logs/b.txt', 'logs/z.txt']);
      expect(delimited.CommonPrefixes?.map((p) => p.Prefix)).toEqual(['logs/sub/']);
      const keys: string[] = [];
      let token: string | undefined;
      let pages = 0;
      do {
        const page = await s3.send(new ListObjectsV2Command({ Bucket: 'list', MaxKeys: 2, ContinuationToken: token }));
        keys.push(...(page.Contents ?? []).map((c) => c.Key ?? ''));
        token = page.IsTruncated === true ? page.NextContinuationToken : undefined;
        pages++;
      } while (token !== undefined);
      expect(pages).toBe(3);
      expect(keys).toEqual(['logs/a.txt', 'logs/b.txt', 'logs/sub/c.txt', 'logs/sub/d.txt', 'logs/z.txt', 'other.txt']);
      expect((await sdkError(s3.send(new ListObjectsV2Command({ Bucket: 'nobucket' })))).name).toBe('NoSuchBucket');
    });

    it('ListObjects (v1), ListBuckets, HeadBucket and CreateBucket', async () => {
      for (const k of ['x/1', 'x/2', 'y']) server.putObject('v1', k, Buffer.from(k));
      const s3 = client();
      const v1 = await s3.send(new ListObjectsCommand({ Bucket: 'v1', Delimiter: '/' }));
      expect(v1.Contents?.map((c) => c.Key)).toEqual(['y']);
      expect(v1.CommonPrefixes?.map((p) => p.Prefix)).toEqual(['x/']);
      expect((await s3.send(new ListBucketsCommand({}))).Buckets?.map((b) => b.Name)).toEqual(['b', 'v1']);
      await s3.send(new CreateBucketCommand({ Bucket: 'fresh' }));
      await s3.send(new HeadBucketCommand({ Bucket: 'fresh' }));
      expect((await s3.send(new ListObjectsV2Command({ Bucket: 'fresh' }))).KeyCount).toBe(0);
      expect((await sdkError(s3.send(new HeadBucketCommand({ Bucket: 'absent' })))).$metadata.httpStatusCode).toBe(404);
    });

    it('spools large uploads to a temp file and serves them from there', async () => {
      const spooling = await ObjectServer.start({ spoolThresholdBytes: 1000 });
      try {
        const body = randomBytes(100_000);
        const put = await raw(spooling.httpUrl('b', 'k'), { method: 'PUT', body });
        expect(put.headers.etag).toBe(`"${md5(body)}"`);
        const r = await raw(spooling.httpUrl('b', 'k'), { headers: { Range: 'bytes=99000-' } });
        expect(r.body.equals(body.subarray(99_000))).toBe(true);
        const next = randomBytes(50_000);
        expect((await raw(spooling.httpUrl('b', 'k'), { method: 'PUT', body: next })).status).toBe(200);
        expect((await raw(spooling.httpUrl('b', 'k'))).body.equals(next)).toBe(true);
        expect(await spooling.objectSha256('b', 'k')).toBe(sha256(next));
      } finally {
        await spooling.close();
      }
    });

    it('DeleteObject removes the object', async () => {
      const r = await raw(url(), { method: 'DELETE' });
      expect(r.status).toBe(204);
      expect(server.hasObject('b', 'dir/obj one.bin')).toBe(false);
      expect((await raw(url())).status).toBe(404);
    });
  });

  describe('SigV4', () => {
    let secure: ObjectServer;

    beforeEach(async () => {
      secure = await ObjectServer.start({ credentials: { accessKeyId: KEY_ID, secretAccessKey: SECRET } });
      secure.putObject('sec', 'path/to key.bin', data);
    });

    afterEach(async () => {
      await secure.close();
    });

    const sdk = (secretAccessKey = SECRET, accessKeyId = KEY_ID): S3Client => {
      const c = s3Client(secure, { credentials: { accessKeyId, secretAccessKey } });
      clients.push(c);
      return c;
    };

    it('accepts requests signed with the right keys', async () => {
      const s3 = sdk();
      const got = await s3.send(new GetObjectCommand({ Bucket: 'sec', Key: 'path/to key.bin', Range: 'bytes=0-9' }));
      expect((await sdkBytes(got.Body)).equals(data.subarray(0, 10))).toBe(true);
      await s3.send(new PutObjectCommand({ Bucket: 'sec', Key: 'new (1)*.bin', Body: Buffer.from('signed') }));
      expect(secure.objectBytes('sec', 'new (1)*.bin').toString()).toBe('signed');
      const list = await s3.send(new ListObjectsV2Command({ Bucket: 'sec', Prefix: 'path/', MaxKeys: 10 }));
      expect(list.KeyCount).toBe(1);
      const streamed = sdk();
      tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'roboflow-'));
      const file = path.join(tmp, 's.bin');
      await fs.writeFile(file, data);
      const chunky = s3Client(secure, { requestChecksumCalculation: 'WHEN_SUPPORTED' });
      clients.push(chunky);
      await chunky.send(new PutObjectCommand({ Bucket: 'sec', Key: 'chunked', Body: createReadStream(file), ContentLength: data.length }));
      expect(secure.objectBytes('sec', 'chunked').equals(data)).toBe(true);
      expect(streamed).toBeDefined();
    });

    it('refuses a wrong secret (SignatureDoesNotMatch), an unknown key and unsigned requests', async () => {
      const wrong = await sdkError(sdk('not-the-secret').send(new GetObjectCommand({ Bucket: 'sec', Key: 'path/to key.bin' })));
      expect(wrong.name).toBe('SignatureDoesNotMatch');
      expect(wrong.$metadata.httpStatusCode).toBe(403);
      const put = await sdkError(sdk('not-the-secret').send(new PutObjectCommand({ Bucket: 'sec', Key: 'x', Body: Buffer.from('x') })));
      expect(put.name).toBe('SignatureDoesNotMatch');
      expect(secure.hasObject('sec', 'x')).toBe(false);
      const unknown = await sdkError(sdk(SECRET, 'AKIDOTHER').send(new GetObjectCommand({ Bucket: 'sec', Key: 'path/to key.bin' })));
      expect(unknown.name).toBe('InvalidAccessKeyId');
      const anon = await raw(secure.httpUrl('sec', 'path/to key.bin'));
      expect(anon.status).toBe(403);
      expect(anon.body.toString()).toContain('<Code>AccessDenied</Code>');
      expect(secure.requests.at(-1)).toMatchObject({ status: 403 });
    });

    it('verifies chunk signatures of a signed streaming upload (the AWS documentation example)', async () => {
      // https://docs.aws.amazon.com/AmazonS3/latest/API/sigv4-streaming.html: 66560 bytes of 'a'
      // in chunks of 65536, 1024 and 0, with the published seed and chunk signatures.
      const example = await ObjectServer.start({
        credentials: { accessKeyId: 'AKIAIOSFODNN7EXAMPLE', secretAccessKey: 'wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY' },
        clock: () => Date.UTC(2013, 4, 24, 0, 1),
      });
      try {
        const body = (corrupt: boolean): Buffer => {
          const second = Buffer.alloc(1024, 'a');
          if (corrupt) second[10] = 0x62;
          return Buffer.concat([
            Buffer.from('10000;chunk-signature=ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648\r\n'),
            Buffer.alloc(65536, 'a'),
            Buffer.from('\r\n400;chunk-signature=0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497\r\n'),
            second,
            Buffer.from('\r\n0;chunk-signature=b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9\r\n\r\n'),
          ]);
        };
        const headers = {
          Host: 's3.amazonaws.com',
          'x-amz-date': '20130524T000000Z',
          'x-amz-storage-class': 'REDUCED_REDUNDANCY',
          Authorization:
            'AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, ' +
            'SignedHeaders=content-encoding;content-length;host;x-amz-content-sha256;x-amz-date;x-amz-decoded-content-length;x-amz-storage-class, ' +
            'Signature=4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9',
          'x-amz-content-sha256': 'STREAMING-AWS4-HMAC-SHA256-PAYLOAD',
          'Content-Encoding': 'aws-chunked',
          'x-amz-decoded-content-length': '66560',
          'Content-Length': '66824',
        };
        const target = `${example.endpoint}/examplebucket/chunkObject.txt`;
        const bad = await raw(target, { method: 'PUT', headers, body: body(true) });
        expect(bad.status).toBe(403);
        expect(bad.body.toString()).toContain('SignatureDoesNotMatch');
        expect(example.hasObject('examplebucket', 'chunkObject.txt')).toBe(false);
        const ok = await raw(target, { method: 'PUT', headers, body: body(false) });
        expect(ok.status).toBe(200);
        expect(example.objectBytes('examplebucket', 'chunkObject.txt').equals(Buffer.alloc(66560, 'a'))).toBe(true);
      } finally {
        await example.close();
      }
    });

    it('accepts presigned URLs until they expire', async () => {
      const signer = new SignatureV4({ credentials: { accessKeyId: KEY_ID, secretAccessKey: SECRET }, region: 'us-east-1', service: 's3', sha256: NodeSha256, uriEscapePath: false });
      const u = new URL(secure.httpUrl('sec', 'path/to key.bin'));
      const presign = async (expiresIn: number, signingDate = new Date()): Promise<string> => {
        const signed = await signer.presign(
          { method: 'GET', protocol: 'http:', hostname: u.hostname, port: Number(u.port), path: u.pathname, query: {}, headers: { host: u.host, 'x-amz-content-sha256': 'UNSIGNED-PAYLOAD' } },
          { expiresIn, signingDate },
        );
        const q = Object.entries(signed.query ?? {})
          .map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(String(v))}`)
          .join('&');
        return `${secure.endpoint}${signed.path}?${q}`;
      };
      const ok = await raw(await presign(60), { headers: { Range: 'bytes=0-4' } });
      expect(ok.status).toBe(206);
      expect(ok.body.equals(data.subarray(0, 5))).toBe(true);
      const expired = await raw(await presign(60, new Date(Date.now() - 3600_000)));
      expect(expired.status).toBe(403);
      expect(expired.body.toString()).toContain('expired');
      const tampered = (await presign(60)).replace('path/to', 'path/too');
      expect((await raw(tampered)).status).toBe(403);
    });
  });

  describe('life cycle', () => {
    it('close() resolves with a stalled response open and ends that connection', async () => {
      server.addFault({ fault: { kind: 'stall', afterBytes: 100 } });
      const pending = raw(url());
      while (server.requests[0]?.bytesSent !== 100) await new Promise((r) => setTimeout(r, 10));
      await server.close();
      const r = await pending;
      expect(r.complete).toBe(false);
      expect(r.body.length).toBe(100);
      await server.close(); // idempotent
      const after = await raw(url());
      expect(after.error?.code).toBe('ECONNREFUSED');
    });

    itFull('runs as a standalone process that prints its endpoint and exits on SIGTERM', async () => {
      const main = path.resolve(path.dirname(fileURLToPath(import.meta.url)), `../${TOOL_SCRIPTS.objectServer}`);
      const child = spawn(process.execPath, [main, '--rate', '64M', '--latency', '1', '--full-object-crc32', '--object', 'bench/data.bin=generated:1M:5'], {
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      try {
        const line = await new Promise<string>((resolve, reject) => {
          const rl = createInterface({ input: child.stdout });
          rl.once('line', (l) => {
            rl.close();
            resolve(l);
          });
          child.once('exit', (code) => reject(new Error(`object server exited early with ${code}`)));
        });
        const info = JSON.parse(line) as { endpoint: string; objects: { bucket: string; key: string; size: number; etag: string; url: string }[] };
        expect(info.endpoint).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
        expect(info.objects).toEqual([expect.objectContaining({ bucket: 'bench', key: 'data.bin', size: MiB, s3Url: 's3://bench/data.bin' })]);
        const r = await raw(info.objects[0]?.url ?? '');
        expect(r.status).toBe(200);
        expect(r.headers.etag).toBe(info.objects[0]?.etag);
        expect(sha256(r.body)).toBe(await generatedSha256(MiB, 5));
        // The FULL_OBJECT CRC32 only when asked for, as S3 does; it is the content's.
        expect(r.headers['x-amz-checksum-crc32']).toBeUndefined();
        const withMode = await raw(info.objects[0]?.url ?? '', { method: 'HEAD', headers: { 'x-amz-checksum-mode': 'ENABLED' } });
        expect(withMode.headers['x-amz-checksum-type']).toBe('FULL_OBJECT');
        const crc = Buffer.alloc(4);
        crc.writeUInt32BE(zlib.crc32(r.body));
        expect(withMode.headers['x-amz-checksum-crc32']).toBe(crc.toString('base64'));
        const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
        child.kill('SIGTERM');
        expect(await exited).toBe(0);
      } finally {
        if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      }
    });
  });
});
