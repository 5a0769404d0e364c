import { randomBytes } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { toRoboflowError } from '../src/errors.js';
import { StorageClients } from '../src/storage/index.js';
import { ObjectServer } from './support/object-server.js';
import { anyRejection, readAll, rejection } from './helpers.js';



/** A plain HTTP server for behaviours the object server does not have (no ranges, redirects). */
async function plainServer(handler: http.RequestListener): Promise<{ url: string; close: () => Promise<void>; requests: http.IncomingHttpHeaders[] }> {
  const requests: http.IncomingHttpHeaders[] = [];
  const server = http.createServer((req, res) => {
    requests.push({ ...req.headers, ':method': req.method ?? '', ':path': req.url ?? '' });
    handler(req, res);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    requests,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

describe('HttpSource against the object server', () => {
  let server: ObjectServer;
  let clients: StorageClients;
  const data = randomBytes(1_000_000);

  beforeAll(async () => {
    server = await ObjectServer.start();
  });

  afterAll(async () => {
    await server.close();
  });

  beforeAll(() => {
    clients = new StorageClients({ maxConnections: 4 });
  });

  afterAll(async () => {
    await clients.close();
  });

  afterEach(() => {
    server.clearFaults();
    server.putObject('b', 'obj.bin', data);
  });

  it('stats size, strong ETag, Last-Modified and range support', async () => {
    const put = server.putObject('b', 'obj.bin', data);
    const src = clients.open(server.httpUrl('b', 'obj.bin'));
    const st = await src.stat();
    expect(st).toMatchObject({ size: data.length, etag: put.etag, rangesSupported: true, checksums: [] });
    expect(st.url).toBe(server.httpUrl('b', 'obj.bin'));
    expect(st.lastModified).toBeInstanceOf(Date);
    await src.close();
  });

  it('reads ranges byte-exact, sending Range and If-Match', async () => {
    const put = server.putObject('b', 'obj.bin', data);
    const src = clients.open(server.httpUrl('b', 'obj.bin'));
    server.clearRequests();
    const ranges = [
      [0, 1],
      [12_345, 600_000],
      [data.length - 10, data.length],
      [0, data.length],
    ] as const;
    for (const [start, end] of ranges) {
      const { body } = await src.read({ start, end }, { ifMatch: put.etag });
      expect((await readAll(body)).equals(data.subarray(start, end))).toBe(true);
    }
    const gets = server.requests.filter((r) => r.method === 'GET');
    expect(gets.map((r) => r.range)).toEqual(ranges.map(([start, end]) => ({ start, end })));
    expect(gets.every((r) => r.ifMatch === put.etag)).toBe(true);
  });

  it('stats a 0-byte object', async () => {
    server.putObject('b', 'empty', Buffer.alloc(0));
    const src = clients.open(server.httpUrl('b', 'empty'));
    const st = await src.stat();
    expect(st.size).toBe(0);
    expect(st.etag).toBe('"d41d8cd98f00b204e9800998ecf8427e"');
  });

  it('fails with ERR_SOURCE_CHANGED when the object is replaced (412)', async () => {
    const put = server.putObject('b', 'obj.bin', data);
    server.addFault({ fault: { kind: 'replace', body: randomBytes(data.length) } });
    const src = clients.open(server.httpUrl('b', 'obj.bin'));
    const err = await rejection(src.read({ start: 0, end: 100 }, { ifMatch: put.etag }));
    expect(err.code).toBe('ERR_SOURCE_CHANGED');
    expect(err.status).toBe(412);
    expect(err.message).toContain(put.etag);
  });

  it('names URL and status for 404 and 403, with the server detail', async () => {
    const missing = clients.open(server.httpUrl('b', 'missing.mcap'));
    const notFound = await rejection(missing.stat());
    expect(notFound.code).toBe('ERR_NOT_FOUND');
    expect(notFound.message).toContain(server.httpUrl('b', 'missing.mcap'));
    expect(notFound.message).toContain('HTTP 404');
    const readNotFound = await rejection(missing.read({ start: 0, end: 10 }));
    expect(readNotFound.code).toBe('ERR_NOT_FOUND');
    expect(readNotFound.message).toContain('NoSuchKey');

    server.addFault({ fault: { kind: 'status', status: 403 } });
    const src = clients.open(server.httpUrl('b', 'obj.bin'));
    const denied = await rejection(src.read({ start: 0, end: 10 }));
    expect(denied.code).toBe('ERR_ACCESS_DENIED');
    expect(denied.status).toBe(403);
    expect(denied.message).toContain(server.httpUrl('b', 'obj.bin'));
    expect(denied.message).toContain('HTTP 403');
  });

  it('rejects a Content-Range that names another range, naming both', async () => {
    server.addFault({ fault: { kind: 'bad-content-range' } });
    const src = clients.open(server.httpUrl('b', 'obj.bin'));
    const err = await rejection(src.read({ start: 100, end: 200 }));
    expect(err.code).toBe('ERR_BAD_RESPONSE');
    expect(err.message).toContain('expected "bytes 100-199/<size>"');
    expect(err.message).toContain(`"bytes 101-200/${data.length}"`);
  });

  it('rejects an HTML page served for a range', async () => {
    server.addFault({ fault: { kind: 'html-error' } });
    const src = clients.open(server.httpUrl('b', 'obj.bin'));
    const err = await rejection(src.read({ start: 0, end: 100 }));
    expect(err.code).toBe('ERR_BAD_RESPONSE');
    expect(err.message).toContain('HTML page, not the object');
  });

  it('accepts a 206 without Content-Length when Content-Range is exact', async () => {
    server.addFault({ fault: { kind: 'no-content-length' } });
    const src = clients.open(server.httpUrl('b', 'obj.bin'));
    const { body } = await src.read({ start: 5, end: 500_005 });
    expect((await readAll(body)).equals(data.subarray(5, 500_005))).toBe(true);
    expect(server.requests.at(-1)?.fault).toBe('no-content-length');
  });

  it('carries Retry-After and x-oss-qos-delay-time into retryAfterMs', async () => {
    const src = clients.open(server.httpUrl('b', 'obj.bin'));
    server.addFault({ fault: { kind: 'status', status: 503, retryAfterSeconds: 7 } });
    const throttled = await rejection(src.read({ start: 0, end: 10 }));
    expect(throttled.code).toBe('ERR_THROTTLED');
    expect(throttled.retryAfterMs).toBe(7000);
    expect(throttled.retryable).toBe(true);

    server.addFault({ fault: { kind: 'status', status: 503, ossDelayMs: 1500 } });
    expect((await rejection(src.read({ start: 0, end: 10 }))).retryAfterMs).toBe(1500);

    server.addFault({ fault: { kind: 'status', status: 500 }, match: { method: 'HEAD' } });
    const serverError = await rejection(src.stat());
    expect(serverError.code).toBe('ERR_SERVER');
    expect(serverError.retryAfterMs).toBeUndefined();
  });

  it('surfaces a reset mid-body as a stream error and keeps working afterwards', async () => {
    server.addFault({ fault: { kind: 'reset', afterBytes: 1000 } });
    const src = clients.open(server.httpUrl('b', 'obj.bin'));
    const { body } = await src.read({ start: 0, end: 500_000 });
    await expect(readAll(body)).rejects.toThrow();
    const again = await src.read({ start: 0, end: 500_000 });
    expect((await readAll(again.body)).equals(data.subarray(0, 500_000))).toBe(true);
  });

  it('keeps query secrets out of the display URL and errors', async () => {
    const url = `${server.httpUrl('b', 'missing.bin')}?X-Amz-Signature=deadbeefcafe&X-Amz-Credential=AKIAX%2F1`;
    const src = clients.open(url);
    expect(src.url).not.toContain('deadbeefcafe');
    expect(src.url).toContain('X-Amz-Signature=REDACTED');
    const err = await rejection(src.stat());
    expect(err.message).not.toContain('deadbeefcafe');
    expect(err.message).not.toContain('AKIAX');
  });

  it('aborts an in-flight request with ERR_ABORTED', async () => {
    server.addFault({ fault: { kind: 'stall', afterBytes: 0 } });
    const src = clients.open(server.httpUrl('b', 'obj.bin'));
    const ac = new AbortController();
    const { body } = await src.read({ start: 0, end: 1000 }, { signal: ac.signal });
    const reading = anyRejection(readAll(body));
    ac.abort();
    expect(toRoboflowError(await reading).code).toBe('ERR_ABORTED');
    const pre = new AbortController();
    pre.abort();
    expect((await rejection(src.read({ start: 0, end: 10 }, { signal: pre.signal }))).code).toBe('ERR_ABORTED');
  });
});

describe('HttpSource against plain servers', () => {
  const data = randomBytes(50_000);
  const closers: (() => Promise<void>)[] = [];
  let clients: StorageClients;

  beforeAll(() => {
    clients = new StorageClients();
  });

  afterEach(async () => {
    while (closers.length > 0) await closers.pop()!();
  });

  afterAll(async () => {
    await clients.close();
  });

  /** Serves `data` whole, ignoring Range; HEAD answers 405. */
  async function noRangeServer() {
    const s = await plainServer((req, res) => {
      if (req.method === 'HEAD') {
        res.writeHead(405).end();
        return;
      }
      res.writeHead(200, { 'content-length': String(data.length), etag: 'W/"weak"', 'content-type': 'application/octet-stream' });
      res.end(data);
    });
    closers.push(s.close);
    return s;
  }

  it('falls back to a ranged GET when HEAD is refused, and sees no range support', async () => {
    const s = await noRangeServer();
    const src = clients.open(`${s.url}/file.bin`);
    const st = await src.stat();
    expect(st).toMatchObject({ size: data.length, rangesSupported: false });
    expect(st.etag).toBeUndefined();
    expect(s.requests.map((r) => `${r[':method']} ${r.range ?? ''}`)).toEqual(['HEAD ', 'GET bytes=0-0']);
    await src.close();
  });

  it('rejects a 200 answer to a partial range, accepts it for the whole object', async () => {
    const s = await noRangeServer();
    const src = clients.open(`${s.url}/file.bin`);
    const err = await rejection(src.read({ start: 10, end: 20 }));
    expect(err.code).toBe('ERR_RANGE_NOT_SUPPORTED');
    expect(err.message).toContain('ignored the Range header (bytes=10-19)');
    const whole = await src.read({ start: 0, end: data.length });
    expect((await readAll(whole.body)).equals(data)).toBe(true);
  });

  it('follows redirects, checks each hop, and keeps credentials on the first origin', async () => {
    const target = await plainServer((req, res) => {
      const m = /bytes=(\d+)-(\d+)/.exec(req.headers.range ?? '');
      const start = Number(m?.[1] ?? 0);
      const end = Number(m?.[2] ?? data.length - 1) + 1;
      res.writeHead(206, {
        'content-range': `bytes ${start}-${end - 1}/${data.length}`,
        'content-length': String(end - start),
        'accept-ranges': 'bytes',
        etag: '"v1"',
      });
      res.end(req.method === 'HEAD' ? undefined : data.subarray(start, end));
    });
    closers.push(target.close);
    const hops = await plainServer((req, res) => {
      if (req.headers.authorization !== 'Basic ' + Buffer.from('alice:pa ss').toString('base64')) {
        res.writeHead(401).end();
        return;
      }
      if (req.url === '/start') res.writeHead(301, { location: '/second' }).end();
      else res.writeHead(307, { location: `${target.url}/final.bin?X-Amz-Signature=secret1` }).end();
    });
    closers.push(hops.close);
    const seen: string[] = [];
    const origin = new URL(hops.url);
    const src = clients.open(`http://alice:pa%20ss@${origin.host}/start`, { checkRedirect: (u) => seen.push(u) });
    expect(src.url).toBe(`http://alice:REDACTED@${origin.host}/start`);
    const { body } = await src.read({ start: 100, end: 200 }, { ifMatch: '"v1"' });
    expect((await readAll(body)).equals(data.subarray(100, 200))).toBe(true);
    expect(seen).toEqual([`${hops.url}/second`, `${target.url}/final.bin?X-Amz-Signature=secret1`]);
    expect(target.requests.every((r) => r.authorization === undefined)).toBe(true);

    const refusing = clients.open(`http://alice:pa%20ss@${origin.host}/start`, {
      checkRedirect: (u) => {
        if (u.startsWith(target.url)) throw new Error('private address');
      },
    });
    const err = await rejection(refusing.read({ start: 0, end: 10 }));
    expect(err.code).toBe('ERR_POLICY_DENIED');
    expect(err.message).not.toContain('secret1');
  });

  it('stats a GET-only presigned URL whose HEAD is forbidden', async () => {
    const s = await plainServer((req, res) => {
      if (req.method === 'HEAD') {
        res.writeHead(403, { 'content-type': 'application/xml' }).end();
        return;
      }
      res.writeHead(206, { 'content-range': `bytes 0-0/${data.length}`, 'content-length': '1', etag: '"p"' });
      res.end(data.subarray(0, 1));
    });
    closers.push(s.close);
    const st = await clients.open(`${s.url}/obj?X-Amz-Signature=abc`).stat();
    expect(st).toMatchObject({ size: data.length, rangesSupported: true, etag: '"p"' });
  });

  it('stops after 5 redirects', async () => {
    const loop = await plainServer((req, res) => {
      const n = Number(req.url?.slice(1) ?? 0);
      res.writeHead(302, { location: `/${n + 1}` }).end();
    });
    closers.push(loop.close);
    const src = clients.open(`${loop.url}/0`);
    const err = await rejection(src.stat());
    expect(err.code).toBe('ERR_BAD_RESPONSE');
    expect(err.message).toContain('more than 5 redirects');
    expect(loop.requests.length).toBe(6);
  });

  it('probes range support when HEAD does not mention it', async () => {
    const s = await plainServer((req, res) => {
      if (req.method === 'HEAD') {
        res.writeHead(200, { 'content-length': String(data.length), etag: '"x"' }).end();
        return;
      }
      res.writeHead(206, { 'content-range': `bytes 0-0/${data.length}`, 'content-length': '1', etag: '"x"' });
      res.end(data.subarray(0, 1));
    });
    closers.push(s.close);
    const st = await clients.open(`${s.url}/a`).stat();
    expect(st).toMatchObject({ size: data.length, rangesSupported: true, etag: '"x"' });
  });

  it('refuses use after close', async () => {
    const s = await noRangeServer();
    const own = new StorageClients();
    const src = own.open(`${s.url}/file.bin`);
    expect((await src.stat()).size).toBe(data.length);
    await src.close();
    await src.close();
    expect((await rejection(src.stat())).code).toBe('ERR_CLOSED');
    const other = own.open(`${s.url}/file.bin`);
    await own.close();
    await own.close();
    expect((await rejection(other.stat())).code).toBe('ERR_CLOSED');
    expect(() => own.open(`${s.url}/file.bin`)).toThrow(/closed/);
  });

  it('maps a refused connection to ERR_CONNECTION', async () => {
    const s = await plainServer((_req, res) => res.end());
    const url = `${s.url}/gone`;
    await s.close();
    const err = await rejection(clients.open(url).stat());
    expect(err.code).toBe('ERR_CONNECTION');
    expect(err.retryable).toBe(true);
    expect(err.message).toContain(url);
  });
});
