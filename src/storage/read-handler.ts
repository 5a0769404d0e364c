/**
 * An AWS SDK v3 request handler that sends over `Http1Pool` (`http1.ts`) instead of `node:http`.
 *
 * The SDK still does everything S3-specific — endpoints, virtual-hosted or path-style addressing,
 * SigV4, region redirects, error parsing — and hands this handler a signed request. Only the
 * transport changes: a pool per origin, like the HTTP source's, so a ranged GET's body is an
 * `Http1Body` the downloader fills its own buffers from (the SDK hands the body through as
 * `GetObject`'s `Body`). Reads only: request bodies are refused, uploads keep the SDK's own
 * handler with its `Expect: 100-continue` and checksum handling.
 */

import type { LookupFunction } from 'node:net';
import { buildQueryString, HttpResponse, type HttpHandler, type HttpRequest } from '@smithy/core/protocols';
import type { HttpHandlerOptions } from '@smithy/types';
import { RoboflowError } from '../errors.js';
import { createHttpPool } from './http.js';
import type { Http1Pool, Http1Response } from './http1.js';

export interface ReadHandlerOptions {
  /** Connections per origin. */
  readonly connections: number;
  /** Time allowed for the response headers; the body is watched by the downloader's stall timer. */
  readonly headersTimeoutMs: number;
  /** The security policy's resolver, so a connection reaches only an address it allowed. */
  readonly lookup?: LookupFunction;
  /** Certificates to trust (Node's roots plus `AWS_CA_BUNDLE`); undefined = Node's roots. */
  readonly ca?: readonly string[];
}

type HandlerState = 'open' | 'destroyed';

export class ReadHttpHandler implements HttpHandler<Record<string, never>> {
  readonly metadata = { handlerProtocol: 'http/1.1' };
  private readonly opts: ReadHandlerOptions;
  private readonly pools = new Map<string, Http1Pool>();
  private state: HandlerState = 'open';

  constructor(opts: ReadHandlerOptions) {
    this.opts = opts;
  }

  async handle(request: HttpRequest, options: HttpHandlerOptions = {}): Promise<{ response: HttpResponse }> {
    if (this.state === 'destroyed') throw new RoboflowError('ERR_CLOSED', 'the S3 client is closed');
    if (request.body !== undefined && request.body !== null && request.body !== '') {
      // A programming error, not a user's: this handler is only given to clients that read.
      throw new RoboflowError('ERR_CONFIG', `${request.method} with a body is not sent by the reading S3 client`);
    }
    const port = request.port !== undefined ? `:${request.port}` : '';
    const origin = `${request.protocol}//${request.hostname}${port}`;
    const query = request.query ? buildQueryString(request.query) : '';
    const signal = options.abortSignal as AbortSignal | undefined;
    const res = await this.pool(origin).request({
      method: request.method as 'GET' | 'HEAD',
      path: query === '' ? request.path : `${request.path}?${query}`,
      headers: request.headers,
      ...(signal !== undefined ? { signal } : {}),
    });
    // Repeated headers already arrive joined: the SDK's shape as is.
    return { response: new HttpResponse({ statusCode: res.statusCode, headers: { ...res.headers }, body: res.body }) };
  }

  /**
   * One GET outside the SDK, over the same pools: a URL signed in its query string (see
   * `S3ClientHandle.presignGet`), to which the caller adds its own unsigned headers; or a HEAD
   * signed in `headers` (`s3-direct.ts`).
   */
  send(url: string, headers: Readonly<Record<string, string>>, signal?: AbortSignal, method: 'GET' | 'HEAD' = 'GET'): Promise<Http1Response> {
    if (this.state === 'destroyed') return Promise.reject(new RoboflowError('ERR_CLOSED', 'the S3 client is closed'));
    // Split by hand: WHATWG URL parsing would resolve `..` segments, which are legal in S3 keys.
    const m = /^(https?:\/\/[^/?#]+)(\/[^#]*)$/.exec(url);
    if (m === null) return Promise.reject(new RoboflowError('ERR_CONFIG', 'a presigned URL must be http(s)://host/path'));
    return this.pool(m[1] ?? '').request({
      method,
      path: m[2] ?? '/',
      headers,
      ...(signal !== undefined ? { signal } : {}),
    });
  }

  updateHttpClientConfig(): void {
    // Nothing is configurable after construction; the SDK calls this only when asked to.
  }

  httpHandlerConfigs(): Record<string, never> {
    return {};
  }

  /** Drops every connection at once (the SDK's `destroy()` is synchronous). Idempotent. */
  destroy(): void {
    switch (this.state) {
      case 'open': {
        this.state = 'destroyed';
        for (const pool of this.pools.values()) {
          pool.destroy().catch(() => undefined);
        }
        this.pools.clear();
        return;
      }
      case 'destroyed':
        return;
      default: {
        const _exhaustive: never = this.state;
        return _exhaustive;
      }
    }
  }

  private pool(origin: string): Http1Pool {
    let pool = this.pools.get(origin);
    if (pool === undefined) {
      const { connections, headersTimeoutMs, lookup, ca } = this.opts;
      pool = createHttpPool(origin, {
        maxConnections: connections,
        headersTimeoutMs,
        ...(lookup !== undefined ? { lookup } : {}),
        ...(ca !== undefined ? { ca } : {}),
      });
      this.pools.set(origin, pool);
    }
    return pool;
  }
}
