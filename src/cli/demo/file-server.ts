/**
 * The demo's store: a small HTTP server on 127.0.0.1 that serves files by path-style URL
 * (`/<bucket>/<key>`) with what a remote object store looks like from one worker — a send-rate
 * cap per connection and a first-byte latency — and nothing else.
 *
 * It answers HEAD and GET with a single byte range (206), `If-Match` (412 when the file changed),
 * `ETag` and `Last-Modified` from the file's size and modification time, as static file servers
 * do. Bodies are read from the file slice by slice with backpressure, paced by `pacing.ts`.
 */

import { setMaxListeners } from 'node:events';
import { open, stat } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { RoboflowError } from '../../errors.js';
import { parseRange, resolveRange } from './byte-range.js';
import { drained, FAST_SLICE, pace, pacedSlice, sleep, type TokenBucket } from './pacing.js';

export interface FileServerOptions {
  /** Send rate cap of each response body, bytes/s; undefined = uncapped. (Default: undefined) */
  readonly rateLimitBytesPerSec?: number;
  /** Delay before the response headers of each request, ms. (Default: 0) */
  readonly firstByteLatencyMs?: number;
}

/** Serves files put with `putFile()` until `close()`. Start with `FileServer.start()`. */
export class FileServer {
  private readonly files = new Map<string, string>();
  private readonly sockets = new Set<Socket>();
  private readonly handlers = new Set<Promise<void>>();
  private readonly closing = new AbortController();
  private closed: Promise<void> | undefined;

  private constructor(
    private readonly server: Server,
    private readonly opts: FileServerOptions,
  ) {
    // Every response in flight listens for the server closing; a dozen at once is normal.
    setMaxListeners(0, this.closing.signal);
    server.on('connection', (s: Socket) => {
      this.sockets.add(s);
      s.once('close', () => this.sockets.delete(s));
    });
    server.on('request', (req: IncomingMessage, res: ServerResponse) => {
      const handled = this.handle(req, res)
        .catch((err: unknown) => {
          // The file went away or could not be read: a 500 when nothing was sent yet, otherwise
          // the connection is cut so the client sees a short body, never a complete-looking one.
          if (!res.headersSent) {
            res.writeHead(500, { 'Content-Type': 'text/plain' });
            res.end(`${err instanceof Error ? err.message : String(err)}\n`);
          } else {
            res.destroy();
          }
        })
        .finally(() => this.handlers.delete(handled));
      this.handlers.add(handled);
    });
  }

  /** Listens on 127.0.0.1, on a free port. */
  static async start(opts: FileServerOptions = {}): Promise<FileServer> {
    const rate = opts.rateLimitBytesPerSec;
    if (rate !== undefined && !(rate > 0)) throw new RoboflowError('ERR_CONFIG', `the file server's rate must be above 0 bytes/s, got ${rate}`);
    const server = createServer();
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, '127.0.0.1', () => {
        server.off('error', reject);
        resolve();
      });
    });
    return new FileServer(server, opts);
  }

  /** `http://127.0.0.1:<port>`. */
  get endpoint(): string {
    const { port } = this.server.address() as AddressInfo;
    return `http://127.0.0.1:${port}`;
  }

  /** Serves `file` (read in place, never modified) as `bucket`/`key`. */
  putFile(bucket: string, key: string, file: string): void {
    this.files.set(`/${bucket}/${key}`, file);
  }

  /** Path-style URL of a file put with `putFile()`. */
  httpUrl(bucket: string, key: string): string {
    return `${this.endpoint}/${encodeURIComponent(bucket)}/${key.split('/').map(encodeURIComponent).join('/')}`;
  }

  /** Stops listening, cuts open responses and resolves when every handler has finished. */
  close(): Promise<void> {
    this.closed ??= (async () => {
      this.closing.abort();
      const listening = new Promise<void>((resolve) => this.server.close(() => resolve()));
      for (const s of this.sockets) s.destroy();
      await listening;
      while (this.handlers.size > 0) await Promise.allSettled([...this.handlers]);
    })();
    return this.closed;
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const method = req.method ?? 'GET';
    req.resume();
    if (method !== 'GET' && method !== 'HEAD') {
      res.writeHead(405, { Allow: 'GET, HEAD' });
      res.end();
      return;
    }
    const file = this.fileOf(req.url ?? '/');
    if (file === undefined) {
      res.writeHead(404, { 'Content-Type': 'text/plain' });
      res.end(method === 'HEAD' ? undefined : 'no such file\n');
      return;
    }
    const signal = this.responseSignal(res);
    const latency = this.opts.firstByteLatencyMs ?? 0;
    if (latency > 0) await sleep(latency, signal);
    if (signal.aborted) return;

    const st = await stat(file);
    const size = st.size;
    const etag = `"${size.toString(16)}-${Math.trunc(st.mtimeMs).toString(16)}"`;
    const ifMatch = req.headers['if-match'];
    if (ifMatch !== undefined && ifMatch !== '*' && !ifMatch.split(',').some((t) => t.trim() === etag)) {
      res.writeHead(412, { ETag: etag });
      res.end();
      return;
    }
    const resolved = resolveRange(parseRange(req.headers.range), size);
    if (resolved === 'unsatisfiable') {
      res.writeHead(416, { 'Content-Range': `bytes */${size}` });
      res.end();
      return;
    }
    const { start, end } = resolved ?? { start: 0, end: size };
    const headers: Record<string, string> = {
      'Accept-Ranges': 'bytes',
      'Content-Type': 'application/octet-stream',
      'Content-Length': String(end - start),
      ETag: etag,
      'Last-Modified': st.mtime.toUTCString(),
    };
    if (resolved !== undefined) headers['Content-Range'] = `bytes ${start}-${end - 1}/${size}`;
    res.writeHead(resolved !== undefined ? 206 : 200, headers);
    if (method === 'HEAD') {
      res.end();
      return;
    }
    await this.sendBody(res, file, start, end, signal);
  }

  private fileOf(rawUrl: string): string | undefined {
    const pathname = rawUrl.split('?')[0] ?? '/';
    try {
      return this.files.get(pathname.split('/').map(decodeURIComponent).join('/'));
    } catch {
      return undefined; // a malformed escape names no file
    }
  }

  private async sendBody(res: ServerResponse, file: string, start: number, end: number, signal: AbortSignal): Promise<void> {
    const fh = await open(file, 'r');
    try {
      const rate = this.opts.rateLimitBytesPerSec;
      let bucket: TokenBucket | undefined;
      let pos = start;
      while (pos < end) {
        if (signal.aborted || res.destroyed) return;
        const len = Math.min(rate === undefined ? FAST_SLICE : pacedSlice(rate), end - pos);
        if (rate !== undefined) {
          bucket ??= { tokens: pacedSlice(rate), last: performance.now() };
          await pace(bucket, len, rate, signal);
          if (signal.aborted) return;
        }
        // A fresh buffer per slice: the socket keeps a reference until the bytes are sent.
        const buf = Buffer.allocUnsafe(len);
        let filled = 0;
        while (filled < len) {
          const { bytesRead } = await fh.read(buf, filled, len - filled, pos + filled);
          if (bytesRead === 0) throw new RoboflowError('ERR_IO', `file ${file} got shorter while it was served`);
          filled += bytesRead;
        }
        if (signal.aborted || res.destroyed) return;
        pos += len;
        if (!res.write(buf)) await drained(res, signal);
      }
      res.end();
    } finally {
      await fh.close();
    }
  }

  /** Aborts when the response goes away or the server closes. */
  private responseSignal(res: ServerResponse): AbortSignal {
    const ac = new AbortController();
    const abort = (): void => ac.abort();
    res.once('close', abort);
    const closing = this.closing.signal;
    if (closing.aborted) ac.abort();
    else {
      closing.addEventListener('abort', abort, { once: true });
      res.once('close', () => closing.removeEventListener('abort', abort));
    }
    return ac.signal;
  }
}
