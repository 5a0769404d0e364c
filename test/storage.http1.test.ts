/**
 * `Http1Pool` against real servers on 127.0.0.1: raw `node:net` servers where the exact bytes on
 * the wire matter, `node:tls` with a certificate made at test time for HTTPS. No mocks.
 */
import { execFile, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import net, { type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import tls from 'node:tls';
import { promisify } from 'node:util';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { RoboflowError } from '../src/errors.js';
import { type Http1Body, Http1Pool, type Http1PoolOptions, type Http1Response } from '../src/storage/http1.js';
import { readAll, rejection } from './helpers.js';
import { describeFull } from './tier.js';

const MiB = 1024 * 1024;
const TARGET = 64 * 1024;
const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');

// ----- Servers -----

interface SeenRequest {
  readonly method: string;
  readonly path: string;
  readonly version: string;
  /** Lower-case names. */
  readonly headers: Record<string, string>;
  /** Which connection (0-based, in accept order) and which request on it (0-based). */
  readonly conn: number;
  readonly nth: number;
}

type Handler = (req: SeenRequest, socket: net.Socket) => void;

interface TestServer {
  readonly origin: string;
  readonly port: number;
  /** 'connection' (TCP) or 'secureConnection' (TLS) events. */
  connections: number;
  /** Sockets open right now, and the most ever open at once. */
  open: number;
  peak: number;
  readonly requests: SeenRequest[];
  readonly sockets: net.Socket[];
  close(): Promise<void>;
}

const servers: TestServer[] = [];
const pools: Http1Pool[] = [];

afterEach(async () => {
  await Promise.all(pools.splice(0).map((p) => p.destroy()));
  await Promise.all(servers.splice(0).map((s) => s.close()));
});

/**
 * A server that parses request heads (GET/HEAD: no request bodies) and hands each to `handler`
 * with its socket, which writes whatever bytes the test wants.
 */
async function startServer(handler: Handler, tlsOpts?: { key: string; cert: string }): Promise<TestServer> {
  const sockets: net.Socket[] = [];
  const requests: SeenRequest[] = [];
  const onSocket = (socket: net.Socket): void => {
    const conn = state.connections++;
    state.open++;
    state.peak = Math.max(state.peak, state.open);
    sockets.push(socket);
    socket.setNoDelay(true);
    socket.on('error', () => undefined);
    socket.on('close', () => {
      state.open--;
    });
    let buffered = Buffer.alloc(0);
    let nth = 0;
    socket.on('data', (chunk: Buffer) => {
      buffered = Buffer.concat([buffered, chunk]);
      for (let at = buffered.indexOf('\r\n\r\n'); at >= 0; at = buffered.indexOf('\r\n\r\n')) {
        const lines = buffered.toString('latin1', 0, at).split('\r\n');
        buffered = buffered.subarray(at + 4);
        const [method = '', path = '', version = ''] = (lines[0] ?? '').split(' ');
        const headers: Record<string, string> = {};
        for (const line of lines.slice(1)) {
          const colon = line.indexOf(':');
          headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
        }
        const req: SeenRequest = { method, path, version, headers, conn, nth: nth++ };
        requests.push(req);
        handler(req, socket);
      }
    });
  };
  const server = tlsOpts === undefined ? net.createServer(onSocket) : tls.createServer(tlsOpts, onSocket);
  server.on('tlsClientError', () => undefined);
  await new Promise<void>((done) => server.listen(0, '127.0.0.1', done));
  const { port } = server.address() as AddressInfo;
  const state: TestServer = {
    origin: `${tlsOpts === undefined ? 'http' : 'https'}://127.0.0.1:${port}`,
    port,
    connections: 0,
    open: 0,
    peak: 0,
    requests,
    sockets,
    close: () =>
      new Promise<void>((done) => {
        for (const s of sockets) s.destroy();
        server.close(() => done());
      }),
  };
  servers.push(state);
  return state;
}

function head(status: number, headers: Record<string, string | number> = {}, reason = 'OK'): string {
  let text = `HTTP/1.1 ${status} ${reason}\r\n`;
  for (const [name, value] of Object.entries(headers)) text += `${name}: ${value}\r\n`;
  return `${text}\r\n`;
}

/** A handler that answers every request with `bodies[path]` framed by Content-Length. */
function serveBodies(bodies: Record<string, Buffer>): Handler {
  return (req, socket) => {
    const body = bodies[req.path];
    if (body === undefined) {
      socket.write(head(404, { 'content-length': 0 }, 'Not Found'));
      return;
    }
    socket.write(head(200, { 'content-length': body.length }));
    if (req.method !== 'HEAD') socket.write(body);
  };
}

function newPool(origin: string, opts: Partial<Http1PoolOptions> = {}): Http1Pool {
  const pool = new Http1Pool(origin, { maxConnections: 4, headersTimeoutMs: 10_000, ...opts });
  pools.push(pool);
  return pool;
}

function get(pool: Http1Pool, path: string, extra: { signal?: AbortSignal; method?: 'GET' | 'HEAD' } = {}): Promise<Http1Response> {
  return pool.request({ method: extra.method ?? 'GET', path, headers: {}, ...(extra.signal ? { signal: extra.signal } : {}) });
}

interface Filled {
  readonly bytes: Buffer;
  /** What each fill() resolved with, the final 0 included. */
  readonly counts: number[];
  readonly onBytesSum: number;
  readonly onBytesCalls: number[];
}

/** Fills `body` into reused `targetSize` buffers until a fill returns 0. */
async function fillAll(body: Http1Body, targetSize = TARGET): Promise<Filled> {
  const target = Buffer.alloc(targetSize);
  const parts: Buffer[] = [];
  const counts: number[] = [];
  const onBytesCalls: number[] = [];
  for (;;) {
    const n = await body.fill(target, (k) => onBytesCalls.push(k));
    counts.push(n);
    if (n === 0) break;
    parts.push(Buffer.from(target.subarray(0, n)));
    if (counts.length > 100_000) throw new Error('fill never returned 0');
  }
  return { bytes: Buffer.concat(parts), counts, onBytesSum: onBytesCalls.reduce((a, b) => a + b, 0), onBytesCalls };
}

/** The counts `fill()` should return for a body of `size` bytes in `target`-byte buffers. */
function expectedCounts(size: number, target = TARGET): number[] {
  const counts = Array<number>(Math.floor(size / target)).fill(target);
  if (size % target > 0) counts.push(size % target);
  counts.push(0);
  return counts;
}

/** The error a synchronous call throws. */
function thrown(fn: () => unknown): RoboflowError {
  try {
    fn();
  } catch (err) {
    if (err instanceof RoboflowError) return err;
    throw new Error(`expected a RoboflowError, got ${String(err)}`);
  }
  throw new Error('expected a throw');
}

const delay = (ms: number): Promise<void> => new Promise((done) => setTimeout(done, ms));

async function until(what: string, pred: () => boolean, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!pred()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await delay(5);
  }
}

/** Settles-or-not probe for a promise. */
function track<T>(p: Promise<T>): { readonly settled: boolean; readonly promise: Promise<T> } {
  const t = { settled: false, promise: p };
  p.then(
    () => (t.settled = true),
    () => (t.settled = true),
  );
  return t;
}

// ----- Tests -----

describe('Http1Pool: bodies framed by Content-Length', () => {
  const data = randomBytes(MiB);
  const odd = randomBytes(MiB + 123);

  it('fill() puts a 1 MiB body into 64 KiB targets byte-exact and reuses the connection', async () => {
    const srv = await startServer(serveBodies({ '/a': data, '/b': odd }));
    const pool = newPool(srv.origin);

    const a = await pool.request({ method: 'GET', path: '/a', headers: { 'X-Test': 'one', 'x-skip': undefined } });
    expect(a.statusCode).toBe(200);
    expect(a.headers['content-length']).toBe(String(MiB));
    expect(a.body.length).toBe(MiB);
    const fa = await fillAll(a.body);
    expect(fa.bytes.equals(data)).toBe(true);
    expect(fa.counts).toEqual(expectedCounts(MiB)); // 16 × 65536, then 0
    expect(fa.onBytesSum).toBe(MiB);
    expect(fa.onBytesCalls.every((n) => n > 0)).toBe(true);
    expect(a.body.complete).toBe(true);

    // A size that is not a multiple of the target: fewer bytes only in the last fill, then 0.
    const b = await get(pool, '/b');
    const fb = await fillAll(b.body);
    expect(fb.bytes.equals(odd)).toBe(true);
    expect(fb.counts).toEqual(expectedCounts(MiB + 123));
    expect(fb.counts.at(-2)).toBe(123);
    expect(fb.onBytesSum).toBe(MiB + 123);
    // Another fill after the end keeps returning 0.
    expect(await b.body.fill(Buffer.alloc(10))).toBe(0);

    expect(srv.connections).toBe(1);
    expect(srv.requests.map((r) => [r.conn, r.nth, r.method, r.path, r.version])).toEqual([
      [0, 0, 'GET', '/a', 'HTTP/1.1'],
      [0, 1, 'GET', '/b', 'HTTP/1.1'],
    ]);
    expect(srv.requests[0]?.headers).toEqual({ 'x-test': 'one', host: `127.0.0.1:${srv.port}` });
  });

  it('parses a head longer than one head read (20 KiB of headers) sent with its body in one write', async () => {
    const big = 'v'.repeat(1000);
    const headers: Record<string, string | number> = { 'content-length': odd.length };
    for (let i = 0; i < 20; i++) headers[`x-amz-meta-h${i}`] = big;
    const srv = await startServer((_req, socket) => void socket.write(Buffer.concat([Buffer.from(head(200, headers), 'latin1'), odd])));
    const pool = newPool(srv.origin);
    for (let round = 0; round < 2; round++) {
      const res = await get(pool, '/x');
      expect(res.headers['x-amz-meta-h19']).toBe(big);
      expect((await fillAll(res.body)).bytes.equals(odd)).toBe(true);
    }
    expect(srv.connections).toBe(1);
  });

  it('reads the same body as a stream byte-exact; fill() after streaming throws, streaming after fill() fails', async () => {
    const srv = await startServer(serveBodies({ '/a': data }));
    const pool = newPool(srv.origin);

    const whole = await get(pool, '/a');
    expect((await readAll(whole.body)).equals(data)).toBe(true);

    // Mid-stream: a fill is refused, the stream goes on unharmed.
    const mixed = await get(pool, '/a');
    const it = mixed.body[Symbol.asyncIterator]();
    const first = await it.next();
    expect(first.done).toBe(false);
    const chunks: Buffer[] = [first.value as Buffer];
    const err = thrown(() => mixed.body.fill(Buffer.alloc(TARGET)));
    expect(err.code).toBe('ERR_IO');
    expect(err.message).toContain('read as a stream cannot also be filled');
    for (let r = await it.next(); !r.done; r = await it.next()) chunks.push(r.value as Buffer);
    expect(Buffer.concat(chunks).equals(data)).toBe(true);
    expect(srv.connections).toBe(1);

    // The other way round: a body once filled fails when read as a stream.
    const filled = await get(pool, '/a');
    const target = Buffer.alloc(1000);
    expect(await filled.body.fill(target)).toBe(1000);
    expect(target.equals(data.subarray(0, 1000))).toBe(true);
    const streamErr = await rejection(readAll(filled.body));
    expect(streamErr.code).toBe('ERR_IO');
    expect(streamErr.message).toContain('being filled cannot also be read as a stream');
  });

  it('does not reuse a connection the server answers with Connection: close', async () => {
    const srv = await startServer((req, socket) => {
      socket.write(head(200, { 'content-length': 5, connection: 'close' }));
      socket.write('hello');
    });
    const pool = newPool(srv.origin);
    for (let i = 0; i < 2; i++) {
      const res = await get(pool, `/${i}`);
      expect((await readAll(res.body)).toString()).toBe('hello');
    }
    expect(srv.connections).toBe(2);
    expect(srv.requests.map((r) => [r.conn, r.nth])).toEqual([
      [0, 0],
      [1, 0],
    ]);
    await until('the client to close both connections', () => srv.open === 0);
  });

  it('keeps an HTTP/1.0 connection only when the server says keep-alive', async () => {
    const srv = await startServer((req, socket) => {
      const keep: Record<string, string> = req.path === '/keep' ? { connection: 'Keep-Alive' } : {};
      socket.write(head(200, { 'content-length': 2, ...keep }).replace('HTTP/1.1', 'HTTP/1.0') + 'ok');
    });
    const pool = newPool(srv.origin, { maxConnections: 1 });
    for (const path of ['/keep', '/keep', '/plain', '/keep']) {
      const res = await get(pool, path);
      expect((await readAll(res.body)).toString()).toBe('ok');
    }
    // /plain ends its connection: the /keep after it opens a new one.
    expect(srv.requests.map((r) => `${r.conn}:${r.nth} ${r.path}`)).toEqual(['0:0 /keep', '0:1 /keep', '0:2 /plain', '1:0 /keep']);
  });

  it('closes an idle connection a second before the Keep-Alive timeout the server announces', async () => {
    const srv = await startServer((req, socket) => {
      socket.write(head(200, { 'content-length': 2, 'keep-alive': 'timeout=2, max=100' }) + 'ok');
    });
    const pool = newPool(srv.origin);
    const started = Date.now();
    const res = await get(pool, '/');
    expect((await readAll(res.body)).toString()).toBe('ok');
    await until('the client to close the idle connection', () => srv.open === 0, 10_000);
    const idle = Date.now() - started;
    // timeout=2 → closed after 1 s idle (the 4 s default otherwise).
    expect(idle).toBeGreaterThanOrEqual(950);
    expect(idle).toBeLessThan(3_500);
    const again = await get(pool, '/');
    expect((await readAll(again.body)).toString()).toBe('ok');
    expect(srv.connections).toBe(2);
  });
});

/** The body `data` in chunked encoding: chunk sizes cycle through `sizes`; some chunks carry
 * extensions, the last chunk one too, followed by two trailer fields. */
function chunked(data: Buffer, sizes: readonly number[]): Buffer {
  const parts: Buffer[] = [];
  let off = 0;
  for (let i = 0; off < data.length; i++) {
    const n = Math.min(sizes[i % sizes.length]!, data.length - off);
    const size = i % 3 === 0 ? n.toString(16).toUpperCase() : n.toString(16);
    const ext = i % 2 === 0 ? `;name="value";flag` : i % 5 === 1 ? ' ; x=1' : '';
    parts.push(Buffer.from(`${size}${ext}\r\n`, 'latin1'), data.subarray(off, off + n), Buffer.from('\r\n'));
    off += n;
  }
  parts.push(Buffer.from('0;final=yes\r\nX-Checksum: abc123\r\nX-Other: 2\r\n\r\n', 'latin1'));
  return Buffer.concat(parts);
}

/** Writes `bytes` in pieces: the first `byteByByte` one at a time, then `piece`-sized, yielding
 * to the event loop in between, so the client sees the framing split at every kind of place. */
async function trickle(socket: net.Socket, bytes: Buffer, byteByByte: number, piece: number): Promise<void> {
  let off = 0;
  while (off < bytes.length && !socket.destroyed) {
    const n = off < byteByByte ? 1 : piece;
    socket.write(bytes.subarray(off, off + n));
    off += n;
    await new Promise((done) => setImmediate(done));
  }
}

describe('Http1Pool: chunked and close-delimited bodies', () => {
  const data = randomBytes(300_000);
  const encoded = chunked(data, [1, 2, 3, 16, 100, 4096, 65_536, 7, 30_000, 1000]);

  it('decodes a chunked body with extensions and a trailer, by stream and by fill(), on one connection', async () => {
    const srv = await startServer((req, socket) => {
      const response = Buffer.concat([Buffer.from(head(200, { 'transfer-encoding': 'chunked' })), encoded]);
      void trickle(socket, response, 400, 9_999);
    });
    const pool = newPool(srv.origin);

    const streamed = await get(pool, '/s');
    expect(streamed.headers['transfer-encoding']).toBe('chunked');
    expect(streamed.body.length).toBeUndefined();
    expect((await readAll(streamed.body)).equals(data)).toBe(true);

    const filled = await get(pool, '/f');
    const f = await fillAll(filled.body, 10_000);
    expect(f.bytes.equals(data)).toBe(true);
    expect(f.counts).toEqual(expectedCounts(data.length, 10_000));
    expect(f.onBytesSum).toBe(data.length);

    expect(srv.connections).toBe(1);
    expect(srv.requests.map((r) => [r.conn, r.nth])).toEqual([
      [0, 0],
      [0, 1],
    ]);
  });

  it('reads a close-delimited body whole, by stream and by fill(), and never reuses its connection', async () => {
    const srv = await startServer((req, socket) => {
      socket.write(head(200, { 'content-type': 'application/octet-stream' }));
      void trickle(socket, data, 0, 50_000).then(() => socket.end());
    });
    const pool = newPool(srv.origin);

    const streamed = await get(pool, '/s');
    expect(streamed.body.length).toBeUndefined();
    expect((await readAll(streamed.body)).equals(data)).toBe(true);

    const filled = await get(pool, '/f');
    const f = await fillAll(filled.body, TARGET);
    expect(f.bytes.equals(data)).toBe(true);
    expect(f.counts).toEqual(expectedCounts(data.length));

    expect(srv.connections).toBe(2);
    expect(srv.requests.map((r) => [r.conn, r.nth])).toEqual([
      [0, 0],
      [1, 0],
    ]);
  });

  it('refuses a Transfer-Encoding other than chunked alone (gzip; gzip, chunked; chunked twice) before any body byte', async () => {
    for (const te of ['gzip', 'gzip, chunked', 'chunked, identity', 'chunked, chunked']) {
      const srv = await startServer((req, socket) => {
        socket.end(head(200, { 'transfer-encoding': te }) + '1\r\nx\r\n0\r\n\r\n');
      });
      const pool = newPool(srv.origin);
      const err = await rejection(get(pool, '/'));
      expect(err.code, te).toBe('ERR_BAD_RESPONSE');
      expect(err.message).toContain('only chunked is read');
    }
  });
});

describe('Http1Pool: responses without a body, informational heads', () => {
  it('HEAD with a Content-Length and a 204 have empty bodies and keep the connection', async () => {
    const srv = await startServer((req, socket) => {
      if (req.method === 'HEAD') socket.write(head(200, { 'content-length': 12_345, etag: '"e"' }));
      else if (req.path === '/204') socket.write(head(204, {}, 'No Content'));
      else socket.write(head(200, { 'content-length': 3 }) + 'abc');
    });
    const pool = newPool(srv.origin);

    const h = await get(pool, '/x', { method: 'HEAD' });
    expect(h.statusCode).toBe(200);
    expect(h.headers['content-length']).toBe('12345');
    expect(h.headers.etag).toBe('"e"');
    expect(h.body.complete).toBe(true);
    expect((await readAll(h.body)).length).toBe(0);

    const h2 = await get(pool, '/x', { method: 'HEAD' });
    expect(await h2.body.fill(Buffer.alloc(100))).toBe(0);

    const nc = await get(pool, '/204');
    expect(nc.statusCode).toBe(204);
    expect((await readAll(nc.body)).length).toBe(0);

    const g = await get(pool, '/get');
    expect((await readAll(g.body)).toString()).toBe('abc');

    expect(srv.connections).toBe(1);
    expect(srv.requests.map((r) => `${r.method} ${r.path}`)).toEqual(['HEAD /x', 'HEAD /x', 'GET /204', 'GET /get']);
  });

  it('a body-less response need not be read for its connection to serve again', async () => {
    const srv = await startServer((req, socket) => {
      socket.write(head(200, { 'content-length': 99 }));
    });
    const pool = newPool(srv.origin, { maxConnections: 1 });
    for (let i = 0; i < 3; i++) expect((await get(pool, '/', { method: 'HEAD' })).statusCode).toBe(200);
    expect(srv.connections).toBe(1);
  });

  it('skips 100 Continue heads, whether they arrive alone or with the real head', async () => {
    const srv = await startServer((req, socket) => {
      if (req.path === '/apart') {
        socket.write('HTTP/1.1 100 Continue\r\n\r\n');
        setTimeout(() => socket.write(head(200, { 'content-length': 5, 'x-real': 'yes' }) + 'apart'), 30);
      } else {
        socket.write('HTTP/1.1 100 Continue\r\nX-Info: 1\r\n\r\nHTTP/1.1 102 Processing\r\n\r\n' + head(201, { 'content-length': 8 }, 'Created') + 'together');
      }
    });
    const pool = newPool(srv.origin);

    const apart = await get(pool, '/apart');
    expect(apart.statusCode).toBe(200);
    expect(apart.headers['x-real']).toBe('yes');
    expect((await readAll(apart.body)).toString()).toBe('apart');

    const together = await get(pool, '/together');
    expect(together.statusCode).toBe(201);
    expect(together.headers['x-info']).toBeUndefined();
    expect((await readAll(together.body)).toString()).toBe('together');
    expect(srv.connections).toBe(1);
  });
});

describe('Http1Pool: broken responses', () => {
  const data = randomBytes(100_000);

  it('a body cut short fails fill() with ERR_TRUNCATED_BODY; filled tells the good bytes', async () => {
    const srv = await startServer((req, socket) => {
      // 30 000 of the 100 000 bytes, in three writes: the later ones arrive while a fill() waits.
      socket.write(Buffer.concat([Buffer.from(head(200, { 'content-length': data.length })), data.subarray(0, 10_000)]));
      setTimeout(() => socket.write(data.subarray(10_000, 20_000)), 20);
      setTimeout(() => socket.write(data.subarray(20_000, 30_000)), 40);
      setTimeout(() => (req.path === '/end' ? socket.end() : socket.resetAndDestroy()), 80);
    });
    const pool = newPool(srv.origin);

    const res = await get(pool, '/end');
    const target = Buffer.alloc(TARGET);
    let heard = 0;
    const err = await rejection(res.body.fill(target, (n) => (heard += n)));
    expect(err.code).toBe('ERR_TRUNCATED_BODY');
    expect(err.retryable).toBe(true);
    expect(res.body.filled).toBe(30_000);
    expect(heard).toBe(30_000);
    expect(target.subarray(0, 30_000).equals(data.subarray(0, 30_000))).toBe(true);
    // The failure sticks.
    expect((await rejection(res.body.fill(target))).code).toBe('ERR_TRUNCATED_BODY');

    // A stream reader gets an error too, here after a reset.
    const streamed = await get(pool, '/reset');
    const streamErr = await rejection(readAll(streamed.body));
    expect(streamErr.code).toBe('ERR_TRUNCATED_BODY');
    expect(srv.connections).toBe(2);
  });

  it('delivers a body whole when bytes past its Content-Length come with it, and closes that connection', async () => {
    // The extra bytes in the same write as the head and body (one read at the client), after a
    // pause (a read of their own while the connection is idle), and after a chunked body.
    const srv = await startServer((req, socket) => {
      if (req.path === '/same') socket.write(head(200, { 'content-length': 10 }) + '0123456789EXTRA BYTES');
      else if (req.path === '/chunked') socket.write(head(200, { 'transfer-encoding': 'chunked' }) + 'a\r\n0123456789\r\n0\r\n\r\nEXTRA');
      else if (req.path === '/later') {
        socket.write(head(200, { 'content-length': 10 }) + '0123456789');
        setTimeout(() => socket.write('EXTRA'), 50);
      } else socket.write(head(200, { 'content-length': 2 }) + 'ok');
    });
    const pool = newPool(srv.origin, { maxConnections: 1 });

    for (const path of ['/same', '/chunked', '/later']) {
      const res = await get(pool, path);
      expect(res.statusCode).toBe(200);
      if (path === '/chunked') expect((await readAll(res.body)).toString()).toBe('0123456789');
      else {
        const target = Buffer.alloc(64);
        expect(await res.body.fill(target)).toBe(10);
        expect(target.toString('latin1', 0, 10)).toBe('0123456789');
        expect(await res.body.fill(target)).toBe(0);
      }
      // The connection that carried the extra bytes is closed, not handed to the next request.
      await until(`the connection of ${path} to close`, () => srv.open === 0);
      const next = await get(pool, '/ok');
      expect((await readAll(next.body)).toString()).toBe('ok');
    }
    // Each /ok opens a new connection, which the next path reuses and which then closes.
    expect(srv.requests.map((r) => `${r.conn}:${r.nth} ${r.path}`)).toEqual([
      '0:0 /same',
      '1:0 /ok',
      '1:1 /chunked',
      '2:0 /ok',
      '2:1 /later',
      '3:0 /ok',
    ]);
  });

  it('refuses malformed status lines, header lines and framing with ERR_BAD_RESPONSE', async () => {
    const answers: Record<string, string> = {
      '/status': 'HTTX/1.1 200 OK\r\ncontent-length: 0\r\n\r\n',
      '/status-code': 'HTTP/1.1 2000 OK\r\n\r\n',
      '/header': 'HTTP/1.1 200 OK\r\nno colon here\r\ncontent-length: 0\r\n\r\n',
      '/folded': 'HTTP/1.1 200 OK\r\nx-a: 1\r\n  folded\r\ncontent-length: 0\r\n\r\n',
      '/length': 'HTTP/1.1 200 OK\r\ncontent-length: 12abc\r\n\r\n',
      '/lengths': 'HTTP/1.1 200 OK\r\ncontent-length: 5, 6\r\n\r\nhello',
      '/switch': 'HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n',
      '/huge-head': `HTTP/1.1 200 OK\r\n${'x-filler: 0123456789abcdef0123456789abcdef\r\n'.repeat(2_000)}\r\n`,
    };
    const srv = await startServer((req, socket) => {
      if (req.path === '/big-head') socket.write(`HTTP/1.1 200 OK\r\n${'x-filler: 0123456789abcdef0123456789abcdef\r\n'.repeat(1_200)}content-length: 2\r\n\r\nok`);
      else socket.write(answers[req.path] ?? 'HTTP/1.1 200 OK\r\ncontent-length: 2, 2\r\n\r\nok');
    });
    const pool = newPool(srv.origin);
    for (const path of Object.keys(answers)) {
      const err = await rejection(get(pool, path));
      expect(err.code, path).toBe('ERR_BAD_RESPONSE');
      expect(err.message, path).toContain('malformed HTTP response');
    }
    expect((await rejection(get(pool, '/status'))).message).toContain('bad status line "HTTX/1.1 200 OK"');
    expect((await rejection(get(pool, '/header'))).message).toContain('bad header line "no colon here"');
    expect((await rejection(get(pool, '/huge-head'))).message).toContain('response head larger than 65536 bytes');
    // A big head under the limit is fine; equal repeated Content-Length values are one value.
    const big = await get(pool, '/big-head');
    expect(big.headers['x-filler']?.length).toBe(1_200 * 34 - 2);
    expect((await readAll(big.body)).toString()).toBe('ok');
    const ok = await get(pool, '/ok');
    expect((await readAll(ok.body)).toString()).toBe('ok');
  });

  it('fails a body whose chunk framing is malformed', async () => {
    const srv = await startServer((req, socket) => {
      socket.write(head(200, { 'transfer-encoding': 'chunked' }) + '5\r\nhello\r\nzz\r\n');
    });
    const pool = newPool(srv.origin);
    const res = await get(pool, '/');
    const err = await rejection(readAll(res.body));
    // The body fails as a malformed response (the connection is closed), naming the bad line.
    expect(err.code).toBe('ERR_BAD_RESPONSE');
    expect(err.message).toContain('bad chunk size line "zz"');
    await until('the client to close the connection', () => srv.open === 0);
  });

  it('refuses a header value with a line break before sending anything', async () => {
    const srv = await startServer(serveBodies({}));
    const pool = newPool(srv.origin);
    const err = await rejection(pool.request({ method: 'GET', path: '/', headers: { 'x-evil': 'a\r\nx-injected: 1' } }));
    expect(err.code).toBe('ERR_CONFIG');
    await delay(50);
    expect(srv.requests).toEqual([]);
  });
});

describe('Http1Pool: timeouts, aborts and failed connections', () => {
  it('fails with ERR_TIMEOUT about headersTimeoutMs after sending, and works afterwards', async () => {
    const srv = await startServer((req, socket) => {
      if (req.conn > 0) socket.write(head(200, { 'content-length': 2 }) + 'ok');
    });
    const pool = newPool(srv.origin, { headersTimeoutMs: 200 });
    const started = Date.now();
    const err = await rejection(get(pool, '/silent'));
    const elapsed = Date.now() - started;
    expect(err.code).toBe('ERR_TIMEOUT');
    expect(err.message).toContain('within 200 ms');
    expect(elapsed).toBeGreaterThanOrEqual(150);
    expect(elapsed).toBeLessThan(3_000);

    const res = await get(pool, '/ok');
    expect((await readAll(res.body)).toString()).toBe('ok');
    expect(srv.connections).toBe(2);
    await until('the timed-out connection to close', () => srv.open === 1);
  });

  it('aborts before the head with ERR_ABORTED and closes that connection', async () => {
    const srv = await startServer(() => undefined);
    const pool = newPool(srv.origin);
    const ac = new AbortController();
    const pending = get(pool, '/never?X-Amz-Signature=s3cr3t', { signal: ac.signal });
    await until('the request to arrive', () => srv.requests.length === 1);
    ac.abort();
    const err = await rejection(pending);
    expect(err.code).toBe('ERR_ABORTED');
    expect(err.message).toContain('/never');
    // The query of a presigned URL carries its signature: never in a message.
    expect(err.message).not.toContain('s3cr3t');
    await until('the client to close the connection', () => srv.open === 0);
  });

  it('aborting while a fill() waits rejects it with ERR_ABORTED, keeping the good bytes', async () => {
    const data = randomBytes(100_000);
    const srv = await startServer((req, socket) => {
      const body = req.path === '/stall' ? data.subarray(0, 1000) : data;
      socket.write(Buffer.concat([Buffer.from(head(200, { 'content-length': data.length })), body]));
    });
    const pool = newPool(srv.origin, { maxConnections: 1 });
    const ac = new AbortController();
    const res = await get(pool, '/stall', { signal: ac.signal });
    const target = Buffer.alloc(TARGET);
    let heard = 0;
    const filling = track(res.body.fill(target, (n) => (heard += n)));
    await until('the first 1000 bytes', () => heard === 1000);
    await delay(30);
    expect(filling.settled).toBe(false);
    ac.abort();
    const err = await rejection(filling.promise);
    expect(err.code).toBe('ERR_ABORTED');
    expect(res.body.filled).toBe(1000);
    expect(target.subarray(0, 1000).equals(data.subarray(0, 1000))).toBe(true);
    await until('the client to close the connection', () => srv.open === 0);

    // The pool (one connection at most) serves on.
    const next = await get(pool, '/all');
    expect((await fillAll(next.body)).bytes.equals(data)).toBe(true);
  });

  it('aborting a streamed body fails the stream with ERR_ABORTED', async () => {
    const srv = await startServer((req, socket) => {
      socket.write(head(200, { 'content-length': 10_000 }) + 'x'.repeat(100));
    });
    const pool = newPool(srv.origin);
    const ac = new AbortController();
    const res = await get(pool, '/', { signal: ac.signal });
    const reading = rejection(readAll(res.body));
    await delay(30);
    ac.abort(new RoboflowError('ERR_ABORTED', 'the test gave up'));
    const err = await reading;
    expect(err.code).toBe('ERR_ABORTED');
    expect(err.message).toBe('the test gave up');
  });

  it('rejects a request whose signal is already aborted without connecting', async () => {
    const srv = await startServer(serveBodies({ '/': Buffer.from('x') }));
    const pool = newPool(srv.origin);
    const err = await rejection(get(pool, '/', { signal: AbortSignal.abort() }));
    expect(err.code).toBe('ERR_ABORTED');
    await delay(50);
    expect(srv.connections).toBe(0);
  });

  it('fails a refused connection with ERR_CONNECTION naming the origin', async () => {
    const probe = net.createServer();
    await new Promise<void>((done) => probe.listen(0, '127.0.0.1', done));
    const { port } = probe.address() as AddressInfo;
    await new Promise<void>((done) => probe.close(() => done()));
    const pool = newPool(`http://127.0.0.1:${port}`);
    const err = await rejection(get(pool, '/x'));
    expect(err.code).toBe('ERR_CONNECTION');
    expect(err.retryable).toBe(true);
    expect(err.message).toContain(`http://127.0.0.1:${port}`);
    expect(err.message).toContain('ECONNREFUSED');
  });

  it('refuses a non-HTTP origin', () => {
    expect(thrown(() => new Http1Pool('ftp://127.0.0.1/', { maxConnections: 1, headersTimeoutMs: 1000 })).code).toBe('ERR_CONFIG');
  });
});

describe('Http1Pool: stale keep-alive connections', () => {
  it('a connection the server closed after a response is replaced without an error', async () => {
    const srv = await startServer((req, socket) => {
      socket.write(head(200, { 'content-length': 2 }) + 'ok');
      socket.end(); // no Connection: close
    });
    const pool = newPool(srv.origin, { maxConnections: 1 });
    for (let i = 0; i < 3; i++) {
      const res = await get(pool, `/${i}`);
      expect((await readAll(res.body)).toString()).toBe('ok');
    }
    expect(srv.connections).toBe(3);
  });

  it('a request sent on a connection the server drops unanswered is sent again on a new one', async () => {
    // The server answers the first request on each connection and drops the connection on the
    // second: the race of a server closing an idle connection while the client sends on it.
    const srv = await startServer((req, socket) => {
      if (req.nth === 0) socket.write(head(200, { 'content-length': 2 }) + 'ok');
      else socket.destroy();
    });
    const pool = newPool(srv.origin, { maxConnections: 1 });
    for (let i = 0; i < 3; i++) {
      const res = await get(pool, `/${i}`);
      expect((await readAll(res.body)).toString()).toBe('ok');
    }
    expect(srv.connections).toBe(3);
    expect(srv.requests.map((r) => `${r.conn}:${r.nth} ${r.path}`)).toEqual(['0:0 /0', '0:1 /1', '1:0 /1', '1:1 /2', '2:0 /2']);
  });

  it('a new connection dropped unanswered is a failure, not retried', async () => {
    const srv = await startServer((req, socket) => socket.destroy());
    const pool = newPool(srv.origin);
    const err = await rejection(get(pool, '/'));
    expect(err.code).toBe('ERR_CONNECTION');
    expect(err.message).toContain(srv.origin);
    expect(srv.connections).toBe(1);
  });
});

describe('Http1Pool: connection limit', () => {
  it('opens at most maxConnections sockets; every request completes', async () => {
    const bodies = Array.from({ length: 5 }, (_, i) => randomBytes(50_000 + i));
    const srv = await startServer((req, socket) => {
      const body = bodies[Number(req.path.slice(1))]!;
      setTimeout(() => socket.write(Buffer.concat([Buffer.from(head(200, { 'content-length': body.length })), body])), 30);
    });
    const pool = newPool(srv.origin, { maxConnections: 2 });
    const results = await Promise.all(
      bodies.map(async (_, i) => {
        const res = await get(pool, `/${i}`);
        return i % 2 === 0 ? readAll(res.body) : (await fillAll(res.body)).bytes;
      }),
    );
    results.forEach((bytes, i) => expect(bytes.equals(bodies[i]!), `body ${i}`).toBe(true));
    expect(srv.peak).toBe(2);
    expect(srv.connections).toBe(2);
    expect(srv.requests.length).toBe(5);
  });

  it('hands waiting requests new connections when finished ones close', async () => {
    const srv = await startServer((req, socket) => {
      setTimeout(() => socket.write(head(200, { 'content-length': req.path.length, connection: 'close' }) + req.path), 10);
    });
    const pool = newPool(srv.origin, { maxConnections: 1 });
    const paths = ['/a', '/bb', '/ccc'];
    const bodies = await Promise.all(paths.map(async (p) => (await readAll((await get(pool, p)).body)).toString()));
    expect(bodies).toEqual(paths);
    // (No peak check: the server may accept the next connection before it sees the last close.)
    expect(srv.connections).toBe(3);
    expect(srv.requests.map((r) => `${r.conn}:${r.nth}`)).toEqual(['0:0', '1:0', '2:0']);
  });

  it('destroying an unread body frees its connection slot', async () => {
    const srv = await startServer((req, socket) => {
      socket.write(head(200, { 'content-length': 100_000 }) + 'partial');
    });
    const pool = newPool(srv.origin, { maxConnections: 1 });
    const first = await get(pool, '/1');
    const second = track(get(pool, '/2'));
    await delay(30);
    expect(second.settled).toBe(false);
    first.body.destroy();
    const res = await second.promise;
    expect(res.statusCode).toBe(200);
    res.body.destroy();
    expect(srv.requests.map((r) => `${r.conn}:${r.nth} ${r.path}`)).toEqual(['0:0 /1', '1:0 /2']);
  });

  it('a waiting request whose signal aborts leaves the queue without disturbing the others', async () => {
    const held: (() => void)[] = [];
    const srv = await startServer((req, socket) => {
      const answer = (): void => void socket.write(head(200, { 'content-length': req.path.length }) + req.path);
      if (req.path.startsWith('/hold')) held.push(answer);
      else answer();
    });
    const pool = newPool(srv.origin, { maxConnections: 2 });
    const a = get(pool, '/hold-a');
    const b = get(pool, '/hold-b');
    await until('both held requests to arrive', () => srv.requests.length === 2);
    const ac = new AbortController();
    const c = track(get(pool, '/c', { signal: ac.signal }));
    const d = get(pool, '/d');
    await delay(30);
    expect(c.settled).toBe(false);
    ac.abort();
    expect((await rejection(c.promise)).code).toBe('ERR_ABORTED');

    for (const answer of held) answer();
    expect((await readAll((await a).body)).toString()).toBe('/hold-a');
    expect((await readAll((await b).body)).toString()).toBe('/hold-b');
    expect((await readAll((await d).body)).toString()).toBe('/d');
    expect(srv.requests.map((r) => r.path)).toEqual(['/hold-a', '/hold-b', '/d']);
    expect(srv.connections).toBe(2);
  });
});

describe('Http1Pool: close() and destroy()', () => {
  const data = randomBytes(200_000);

  /** Answers /slow with a head and half the body, keeping the rest for `finish()`; /silent never. */
  async function slowServer(): Promise<{ srv: TestServer; finish: () => void }> {
    const rests: (() => void)[] = [];
    const srv = await startServer((req, socket) => {
      if (req.path === '/silent') return;
      if (req.path !== '/slow') {
        socket.write(head(200, { 'content-length': 2 }) + 'ok');
        return;
      }
      socket.write(head(200, { 'content-length': data.length }));
      socket.write(data.subarray(0, 100_000));
      rests.push(() => socket.write(data.subarray(100_000)));
    });
    return { srv, finish: () => rests.splice(0).forEach((f) => f()) };
  }

  it('close() waits for a body in flight, refuses new requests with ERR_CLOSED, and is idempotent', async () => {
    const { srv, finish } = await slowServer();
    const pool = newPool(srv.origin);
    const res = await get(pool, '/slow');
    // An idle connection besides the busy one: closed at once.
    const warm = await get(pool, '/ok');
    expect((await readAll(warm.body)).toString()).toBe('ok');
    expect(srv.connections).toBe(2);

    const closing = track(pool.close());
    expect(pool.close()).toBe(closing.promise);
    const refused = await rejection(get(pool, '/ok'));
    expect(refused.code).toBe('ERR_CLOSED');
    expect(refused.message).toContain(srv.origin);
    await until('the idle connection to close', () => srv.open === 1);
    await delay(100);
    expect(closing.settled).toBe(false);

    finish();
    const f = await fillAll(res.body);
    expect(f.bytes.equals(data)).toBe(true);
    await closing.promise;
    await until('the busy connection to close', () => srv.open === 0);
    await pool.close();
    await pool.destroy();
  });

  it('close() rejects requests waiting for a connection with ERR_CLOSED', async () => {
    const { srv, finish } = await slowServer();
    const pool = newPool(srv.origin, { maxConnections: 1 });
    const res = await get(pool, '/slow');
    const waiting = get(pool, '/ok');
    const closing = pool.close();
    expect((await rejection(waiting)).code).toBe('ERR_CLOSED');
    finish();
    expect((await readAll(res.body)).equals(data)).toBe(true);
    await closing;
    expect(srv.requests.map((r) => r.path)).toEqual(['/slow']);
  });

  it('destroy() fails bodies and requests in flight and resolves; idempotent', async () => {
    const { srv } = await slowServer();
    const pool = newPool(srv.origin);
    const filledRes = await get(pool, '/slow');
    const streamedRes = await get(pool, '/slow');
    const headless = track(get(pool, '/silent'));
    await until('three requests', () => srv.requests.length === 3);

    const target = Buffer.alloc(MiB);
    let heard = 0;
    const filling = rejection(filledRes.body.fill(target, (n) => (heard += n)));
    const streaming = rejection(readAll(streamedRes.body));
    await until('the first half of the body', () => heard === 100_000);

    await pool.destroy();
    const fillErr = await filling;
    // A body failed by the pool says so.
    expect(fillErr.code).toBe('ERR_CLOSED');
    expect(filledRes.body.filled).toBe(100_000);
    expect(target.subarray(0, 100_000).equals(data.subarray(0, 100_000))).toBe(true);
    expect((await streaming).code).toBe('ERR_CLOSED');
    expect((await rejection(headless.promise)).code).toBe('ERR_CLOSED');
    await until('every connection to close', () => srv.open === 0);

    await pool.destroy();
    await pool.close();
    expect((await rejection(get(pool, '/ok'))).code).toBe('ERR_CLOSED');
  });
});

describe('Http1Pool over TLS', () => {
  let dir: string;
  let key: string;
  let cert: string;
  const data = randomBytes(MiB);

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'http1-tls-'));
    await promisify(execFile)('openssl', [
      'req',
      '-x509',
      '-newkey',
      'rsa:2048',
      '-nodes',
      '-subj',
      '/CN=localhost',
      '-addext',
      'subjectAltName=IP:127.0.0.1',
      '-days',
      '2',
      '-keyout',
      join(dir, 'key.pem'),
      '-out',
      join(dir, 'cert.pem'),
    ]);
    key = await readFile(join(dir, 'key.pem'), 'utf8');
    cert = await readFile(join(dir, 'cert.pem'), 'utf8');
  });

  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('fill() over https with the certificate passed as ca is byte-exact and reuses the connection', async () => {
    const srv = await startServer(serveBodies({ '/a': data }), { key, cert });
    const pool = newPool(srv.origin, { ca: [cert] });
    for (let i = 0; i < 2; i++) {
      const res = await get(pool, '/a');
      const f = await fillAll(res.body);
      expect(f.bytes.equals(data)).toBe(true);
      expect(f.counts).toEqual(expectedCounts(MiB));
      expect(f.onBytesSum).toBe(MiB);
    }
    const streamed = await get(pool, '/a');
    expect((await readAll(streamed.body)).equals(data)).toBe(true);
    expect(srv.connections).toBe(1);
    expect(srv.requests.map((r) => r.headers.host)).toEqual(Array(3).fill(`127.0.0.1:${srv.port}`));
  });

  it('refuses the self-signed certificate without ca with ERR_CONNECTION', async () => {
    const srv = await startServer(serveBodies({ '/a': data }), { key, cert });
    const pool = newPool(srv.origin);
    const err = await rejection(get(pool, '/a'));
    expect(err.code).toBe('ERR_CONNECTION');
    expect(err.message).toContain(srv.origin);
    expect(err.message).toMatch(/certificate/i);
    expect(srv.requests).toEqual([]);
  });
});

describeFull('Http1Pool in a process of its own', () => {
  beforeAll(async () => {
    // The child imports the compiled module (`npm test` builds first); build it if it is
    // missing or older than its source.
    const built = await stat(join(ROOT, 'dist/storage/http1.js')).catch(() => undefined);
    const source = await stat(join(ROOT, 'src/storage/http1.ts'));
    if (built === undefined || built.mtimeMs < source.mtimeMs) await promisify(execFile)('npm', ['run', 'build'], { cwd: ROOT });
  });

  it('an idle pooled connection does not keep the process alive', async () => {
    const srv = await startServer(serveBodies({ '/a': Buffer.from('hello from the server') }));
    const moduleUrl = pathToFileURL(join(ROOT, 'dist/storage/http1.js')).href;
    const script = `
      import { Http1Pool } from ${JSON.stringify(moduleUrl)};
      const pool = new Http1Pool(${JSON.stringify(srv.origin)}, { maxConnections: 2, headersTimeoutMs: 10000 });
      const read = async () => {
        const res = await pool.request({ method: 'GET', path: '/a', headers: {} });
        const chunks = [];
        for await (const c of res.body) chunks.push(c);
        return Buffer.concat(chunks).toString();
      };
      const first = await read();
      await new Promise((r) => setTimeout(r, 100));
      const second = await read();
      await new Promise((r) => setImmediate(r));
      // No pool.close(): the idle connection must not hold the event loop.
      console.log(JSON.stringify({ first, second, active: process.getActiveResourcesInfo() }));
    `;
    const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    let printedAt = 0;
    child.stdout.on('data', (d: Buffer) => {
      stdout += d.toString();
      printedAt ||= Date.now();
    });
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const killer = setTimeout(() => child.kill('SIGKILL'), 20_000);
    const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((done) => child.on('exit', (c, s) => done([c, s])));
    const exitedAt = Date.now();
    clearTimeout(killer);

    expect(stderr).toBe('');
    expect(signal).toBeNull();
    expect(code).toBe(0);
    const report = JSON.parse(stdout) as { first: string; second: string; active: string[] };
    expect(report.first).toBe('hello from the server');
    expect(report.second).toBe('hello from the server');
    // The connection was still open and was reused...
    expect(srv.connections).toBe(1);
    expect(srv.requests.length).toBe(2);
    // ...yet holds nothing: no referenced socket, and the child left well before the 4 s idle
    // close that a referenced connection would have waited for.
    expect(report.active).not.toContain('TCPSocketWrap');
    expect(report.active).not.toContain('Timeout');
    expect(exitedAt - printedAt).toBeLessThan(2_500);
  });
});
