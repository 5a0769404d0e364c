/**
 * HTTP(S) objects as an `ObjectSource`, over `Http1Pool` (`http1.ts`).
 *
 * Connections come from a pool per origin that the caller supplies (`StorageClients` shares them
 * between sources); bodies have no timeout of their own because the downloader detects stalled
 * ranges itself.
 * Redirects are followed here, by hand, so that every hop can be checked by a policy hook and
 * credentials never travel to another origin.
 */

import type { IncomingHttpHeaders } from 'node:http';
import type { LookupFunction } from 'node:net';
import type { Readable } from 'node:stream';
import { DEFAULTS } from '../defaults.js';
import { abortError, errorForStatus, retryAfterFromHeaders, RoboflowError, toRoboflowError, withUrl } from '../errors.js';
import { escapeControl, quoteServerText, redactUrl, redactUrlsInText } from '../redact.js';
import type { ByteRange, ObjectSource, ObjectStat, RangeBody, ReadOptions } from '../types.js';
import { Http1Pool, type Http1Request, type Http1Response } from './http1.js';
import { checkRange, expectContentRange, isStrongEtag, parseContentRange, parseUnsatisfiedRange, rangeHeader } from './range.js';

/** Redirect hops followed before giving up: enough for CDN → bucket chains, few enough to stop loops. */
export const MAX_REDIRECTS = 5;

const REDIRECT_STATUSES = new Set([301, 302, 303, 307, 308]);

/** Most bytes of an error body read for a message; the rest is discarded. */
const ERROR_BODY_LIMIT = 4096;
/** How long an error body may take to arrive before it is dropped (the status alone suffices). */
const ERROR_BODY_TIMEOUT_MS = 2_000;

export interface HttpPoolOptions {
  readonly maxConnections?: number;
  readonly headersTimeoutMs?: number;
  /**
   * Name resolution for every connection of the pool: the security policy's `lookup`, which
   * refuses non-public addresses at connect time. (Default: `dns.lookup`)
   */
  readonly lookup?: LookupFunction;
  /** Certificates to trust instead of Node's roots (e.g. Node's plus `AWS_CA_BUNDLE`). */
  readonly ca?: readonly string[];
}

/** The pool for one origin: `StorageClients`' for HTTP sources, the S3 read handler's for S3. */
export function createHttpPool(origin: string, opts: HttpPoolOptions = {}): Http1Pool {
  return new Http1Pool(origin, {
    maxConnections: opts.maxConnections ?? DEFAULTS.downloadConnections,
    headersTimeoutMs: opts.headersTimeoutMs ?? DEFAULTS.headersTimeoutMs,
    // The check sits in the lookup, so the socket connects to exactly the address that was checked.
    ...(opts.lookup !== undefined ? { lookup: opts.lookup } : {}),
    ...(opts.ca !== undefined ? { ca: opts.ca } : {}),
  });
}

/** What an `HttpSource` sends its requests through: an `Http1Pool`. */
export interface HttpDispatcher {
  request(req: Http1Request): Promise<Http1Response>;
}

export interface HttpSourceDeps {
  /** The dispatcher for an origin (`https://host:port`); called for every request. */
  readonly dispatcherFor: (origin: string) => HttpDispatcher;
  /**
   * Called with every redirect target before it is requested; throws to refuse it (a security
   * policy, e.g. no redirects to private addresses). The URL is the real one, secrets included.
   */
  readonly checkRedirect?: (url: string) => void;
  /** Called once, by the first `close()`, to release what `dispatcherFor` handed out. */
  readonly onClose?: () => Promise<void>;
}

type SourceState = 'open' | 'closed';

export function headerValue(headers: IncomingHttpHeaders, name: string): string | undefined {
  const v = headers[name];
  if (v === undefined) return undefined;
  return Array.isArray(v) ? v.join(', ') : v;
}

function contentLength(headers: IncomingHttpHeaders): number | undefined {
  const v = headerValue(headers, 'content-length');
  if (v === undefined || !/^\s*\d+\s*$/.test(v)) return undefined;
  const n = Number(v);
  return Number.isSafeInteger(n) ? n : undefined;
}

/**
 * Destroys a response body we will not read. A destroyed body may report an `error`, which would
 * be an uncaught exception without a listener.
 */
export function dropBody(body: Readable): void {
  body.on('error', () => undefined);
  body.destroy();
}

/** Reads the body to its end and drops it, so the connection goes back to the pool. */
export async function discard(body: Readable & { dump?: (o?: { limit: number }) => Promise<void> }): Promise<void> {
  try {
    if (typeof body.dump === 'function') await body.dump({ limit: 64 * 1024 });
    else dropBody(body);
  } catch {
    dropBody(body);
  }
}

/** The start of an error body as text, bounded in size and time; the body is always destroyed. */
export async function errorBodyText(body: Readable): Promise<string> {
  let text = '';
  const timer = setTimeout(() => dropBody(body), ERROR_BODY_TIMEOUT_MS);
  try {
    for await (const chunk of body) {
      text += Buffer.isBuffer(chunk) ? chunk.toString('utf8') : String(chunk);
      if (text.length >= ERROR_BODY_LIMIT) break;
    }
  } catch {
    // A body that fails to arrive only costs us the detail.
  } finally {
    clearTimeout(timer);
    dropBody(body);
  }
  return text;
}

/** `<Code>` and `<Message>` of an S3-style XML error body (bounded lengths), when present. */
export function xmlErrorFields(text: string): { readonly code?: string; readonly message?: string } {
  const code = /<Code>([^<]{1,100})<\/Code>/.exec(text)?.[1];
  const message = /<Message>([^<]{1,300})<\/Message>/.exec(text)?.[1];
  return { ...(code !== undefined ? { code } : {}), ...(message !== undefined ? { message } : {}) };
}

/**
 * A short description from an error body: S3-style XML `<Code>`/`<Message>`, else the first line
 * of text. Bounded in size and time; the body is always consumed or destroyed.
 */
async function errorDetail(body: Readable, contentType: string | undefined): Promise<string | undefined> {
  const text = await errorBodyText(body);
  const { code, message } = xmlErrorFields(text);
  // The server wrote it: control characters are escaped before it joins a message.
  if (code || message) return escapeControl(redactUrlsInText([code, message].filter(Boolean).join(': ')));
  if (contentType && /html/i.test(contentType)) return 'an HTML page';
  const line = text.split('\n', 1)[0]?.trim().slice(0, 200);
  return line ? escapeControl(redactUrlsInText(line)) : undefined;
}

export class HttpSource implements ObjectSource {
  readonly kind = 'http' as const;
  readonly url: string;
  private readonly target: URL;
  private readonly authorization: string | undefined;
  private readonly deps: HttpSourceDeps;
  private state: SourceState = 'open';
  private closing: Promise<void> | undefined;

  constructor(url: URL, display: string, deps: HttpSourceDeps) {
    this.url = display;
    this.deps = deps;
    const target = new URL(url.href);
    // User info becomes Basic auth and leaves the URL, so it is never sent to a redirect target
    // nor printed.
    if (target.username !== '' || target.password !== '') {
      const user = decodeURIComponent(target.username);
      const pass = decodeURIComponent(target.password);
      this.authorization = `Basic ${Buffer.from(`${user}:${pass}`).toString('base64')}`;
      target.username = '';
      target.password = '';
    }
    target.hash = '';
    this.target = target;
  }

  async stat(opts: { signal?: AbortSignal } = {}): Promise<ObjectStat> {
    const { signal } = opts;
    const res = await this.send('HEAD', {}, signal);
    const status = res.statusCode;
    // 403: a presigned URL is signed for GET only, so HEAD fails its signature check.
    if (status === 405 || status === 501 || status === 403) {
      await discard(res.body);
      return this.statByProbe(signal);
    }
    if (status < 200 || status >= 300) throw await this.statusError(res, 'HEAD');
    await discard(res.body);
    // Only a 200 describes the whole object: a 206 (or any other success) says nothing sure
    // about its size, which every range and the final check depend on.
    if (status !== 200) {
      throw new RoboflowError('ERR_BAD_RESPONSE', `HEAD ${this.url}: HTTP ${status}, expected 200; the server's answer does not describe the object`, {
        url: this.url,
        status,
      });
    }
    const size = contentLength(res.headers);
    const acceptRanges = headerValue(res.headers, 'accept-ranges');
    // Without a size, or without a word on ranges, one ranged GET settles both.
    if (size === undefined || acceptRanges === undefined) return this.statByProbe(signal);
    return this.makeStat(res.headers, size, /\bbytes\b/i.test(acceptRanges));
  }

  async read(range: ByteRange, opts: ReadOptions = {}): Promise<RangeBody> {
    checkRange(range, this.url);
    const headers: Record<string, string> = { range: rangeHeader(range) };
    if (opts.ifMatch !== undefined) headers['if-match'] = opts.ifMatch;
    const res = await this.send('GET', headers, opts.signal);
    const status = res.statusCode;
    if (status === 206 || status === 200) {
      let total: number | undefined;
      try {
        total = this.checkRangeResponse(res, range, opts.ifMatch);
      } catch (err) {
        dropBody(res.body);
        throw err;
      }
      // `length` is the framing the connection reads by, not a header: a Content-Length beside
      // `Transfer-Encoding: chunked` bounds nothing.
      return { range, body: res.body, lengthProven: res.body.length === range.end - range.start, ...(total !== undefined ? { total } : {}) };
    }
    if (status === 412) {
      await discard(res.body);
      throw new RoboflowError(
        'ERR_SOURCE_CHANGED',
        `${this.url} changed since it was first read (If-Match ${escapeControl(opts.ifMatch ?? '(none)')} failed: HTTP 412)`,
        { url: this.url, status },
      );
    }
    throw await this.statusError(res, 'GET');
  }

  close(): Promise<void> {
    switch (this.state) {
      case 'open':
        this.state = 'closed';
        this.closing = this.deps.onClose?.() ?? Promise.resolve();
        return this.closing;
      case 'closed':
        return this.closing ?? Promise.resolve();
      default: {
        const _exhaustive: never = this.state;
        return _exhaustive;
      }
    }
  }

  /**
   * Throws unless the response carries exactly `range` of the object's stored bytes; returns the
   * object's size the response states (the Content-Range total, or a 200's length), if any.
   */
  private checkRangeResponse(res: Http1Response, range: ByteRange, ifMatch: string | undefined): number | undefined {
    const contentType = headerValue(res.headers, 'content-type');
    if (contentType !== undefined && /^\s*text\/html\b/i.test(contentType)) {
      throw new RoboflowError(
        'ERR_BAD_RESPONSE',
        `${this.url}: the server returned an HTML page, not the object (HTTP ${res.statusCode}, Content-Type ${quoteServerText(contentType)}) — a login or error page?`,
        { url: this.url, status: res.statusCode },
      );
    }
    // The request asks for identity: encoded bytes have other offsets and another length, so
    // not one of them is a byte of the range.
    const encoding = headerValue(res.headers, 'content-encoding');
    if (encoding !== undefined && !/^\s*(identity)?\s*$/i.test(encoding)) {
      throw new RoboflowError(
        'ERR_BAD_RESPONSE',
        `${this.url}: the server sent the range encoded (Content-Encoding ${quoteServerText(encoding)}) although identity was asked; its bytes are not the object's — check the server's compression settings`,
        { url: this.url, status: res.statusCode },
      );
    }
    const length = contentLength(res.headers);
    const want = range.end - range.start;
    let total: number | undefined;
    if (res.statusCode === 206) {
      total = expectContentRange(headerValue(res.headers, 'content-range'), range, this.url).total;
      if (length !== undefined && length !== want) {
        throw new RoboflowError(
          'ERR_BAD_RESPONSE',
          `${this.url}: range ${rangeHeader(range)} came with Content-Length ${length}, expected ${want}`,
          { url: this.url, status: 206 },
        );
      }
    } else if (range.start === 0 && length === range.end) {
      // A 200 is the whole object: its length is the object's size.
      total = length;
    } else {
      throw new RoboflowError(
        'ERR_RANGE_NOT_SUPPORTED',
        `${this.url}: the server ignored the Range header (${rangeHeader(range)}) and answered 200 with ` +
          `${length === undefined ? 'a body of unknown length' : `${length} bytes`}; it cannot serve ranges`,
        { url: this.url, status: 200 },
      );
    }
    const etag = headerValue(res.headers, 'etag');
    if (ifMatch !== undefined && isStrongEtag(etag) && etag !== ifMatch) {
      // A server that ignores If-Match still tells us the version it sent.
      throw new RoboflowError(
        'ERR_SOURCE_CHANGED',
        `${this.url} changed since it was first read (ETag ${escapeControl(ifMatch)}, now ${escapeControl(etag)})`,
        { url: this.url, status: res.statusCode },
      );
    }
    return total;
  }

  /** `GET` of the first byte: learns size and range support where `HEAD` could not. */
  private async statByProbe(signal: AbortSignal | undefined): Promise<ObjectStat> {
    const res = await this.send('GET', { range: 'bytes=0-0' }, signal);
    const status = res.statusCode;
    if (status === 206) {
      await discard(res.body);
      const cr = parseContentRange(headerValue(res.headers, 'content-range'));
      if (!cr || cr.start !== 0) {
        throw new RoboflowError(
          'ERR_BAD_RESPONSE',
          `${this.url}: a request for bytes=0-0 came back with Content-Range ${quoteServerText(headerValue(res.headers, 'content-range') ?? '(none)')}`,
          { url: this.url, status },
        );
      }
      if (cr.total === undefined) {
        throw new RoboflowError('ERR_BAD_RESPONSE', `${this.url}: the server does not tell the object's size (Content-Range total "*")`, {
          url: this.url,
          status,
        });
      }
      return this.makeStat(res.headers, cr.total, true);
    }
    if (status === 200) {
      // The server sends the whole object; its headers are all we wanted.
      dropBody(res.body);
      const size = contentLength(res.headers);
      if (size === undefined) {
        throw new RoboflowError(
          'ERR_BAD_RESPONSE',
          `${this.url}: the server sends neither Content-Length nor Content-Range, so the object's size is unknown`,
          { url: this.url, status },
        );
      }
      return this.makeStat(res.headers, size, false);
    }
    if (status === 416) {
      // `bytes */0`: an empty object has no first byte to send. Any other size (or one that is
      // no number we can use) contradicts the refusal of byte 0: the answer is not to be trusted.
      const value = headerValue(res.headers, 'content-range');
      const total = parseUnsatisfiedRange(value);
      if (total === 0) {
        await discard(res.body);
        return this.makeStat(res.headers, total, true);
      }
      if (value !== undefined) {
        await discard(res.body);
        throw new RoboflowError(
          'ERR_BAD_RESPONSE',
          `${this.url}: the server refused bytes=0-0 (HTTP 416) with Content-Range ${quoteServerText(value)}; only an empty object ("bytes */0") has no byte 0, so the answer contradicts itself`,
          { url: this.url, status },
        );
      }
    }
    throw await this.statusError(res, 'GET');
  }

  private makeStat(headers: IncomingHttpHeaders, size: number, rangesSupported: boolean): ObjectStat {
    const etag = headerValue(headers, 'etag');
    const lm = headerValue(headers, 'last-modified');
    const lastModified = lm === undefined ? undefined : new Date(lm);
    return {
      url: this.url,
      size,
      ...(isStrongEtag(etag) ? { etag } : {}),
      ...(lastModified && !Number.isNaN(lastModified.getTime()) ? { lastModified } : {}),
      checksums: [],
      rangesSupported,
    };
  }

  private async statusError(res: Http1Response, what: string): Promise<RoboflowError> {
    const retryAfterMs = retryAfterFromHeaders((n) => headerValue(res.headers, n));
    const detail = await errorDetail(res.body, headerValue(res.headers, 'content-type'));
    return errorForStatus(res.statusCode, this.url, what, {
      ...(retryAfterMs !== undefined ? { retryAfterMs } : {}),
      ...(detail !== undefined ? { detail } : {}),
    });
  }

  /** One request, following redirects. Returns the first response that is not a redirect. */
  private async send(
    method: 'GET' | 'HEAD',
    headers: Record<string, string>,
    signal: AbortSignal | undefined,
  ): Promise<Http1Response> {
    if (this.state === 'closed') {
      throw new RoboflowError('ERR_CLOSED', `source ${this.url} is closed`, { url: this.url });
    }
    let url = this.target;
    for (let hop = 0; ; hop++) {
      if (signal?.aborted) throw abortError(signal, `${method} ${this.url}`);
      const requestHeaders: Record<string, string> = {
        ...headers,
        // Ranges index the stored bytes; a compressed representation has other offsets.
        'accept-encoding': 'identity',
      };
      if (this.authorization !== undefined && url.origin === this.target.origin) {
        requestHeaders['authorization'] = this.authorization;
      }
      let res: Http1Response;
      try {
        res = await this.deps.dispatcherFor(url.origin).request({
          path: `${url.pathname}${url.search}`,
          method,
          headers: requestHeaders,
          ...(signal ? { signal } : {}),
        });
      } catch (err) {
        if (signal?.aborted) throw abortError(signal, `${method} ${this.url}`);
        throw withUrl(toRoboflowError(err, 'ERR_CONNECTION', this.url), this.url);
      }
      if (!REDIRECT_STATUSES.has(res.statusCode)) return res;
      const location = headerValue(res.headers, 'location');
      await discard(res.body);
      if (location === undefined) {
        throw new RoboflowError('ERR_BAD_RESPONSE', `${this.url}: HTTP ${res.statusCode} redirect without a Location header`, {
          url: this.url,
          status: res.statusCode,
        });
      }
      if (hop >= MAX_REDIRECTS) {
        throw new RoboflowError('ERR_BAD_RESPONSE', `${this.url}: more than ${MAX_REDIRECTS} redirects; last to ${escapeControl(redactUrl(location))}`, {
          url: this.url,
          status: res.statusCode,
        });
      }
      let next: URL;
      try {
        next = new URL(location, url);
      } catch {
        throw new RoboflowError('ERR_BAD_RESPONSE', `${this.url}: redirect to an invalid URL ${quoteServerText(redactUrl(location), 200)}`, {
          url: this.url,
          status: res.statusCode,
        });
      }
      if (next.protocol !== 'http:' && next.protocol !== 'https:') {
        throw new RoboflowError('ERR_BAD_RESPONSE', `${this.url}: redirect to a non-HTTP URL ${quoteServerText(redactUrl(next.href), 200)}`, {
          url: this.url,
          status: res.statusCode,
        });
      }
      try {
        this.deps.checkRedirect?.(next.href);
      } catch (err) {
        if (err instanceof RoboflowError) throw err;
        throw new RoboflowError('ERR_POLICY_DENIED', `${this.url}: redirect to ${redactUrl(next.href)} refused: ${(err as Error).message}`, {
          url: this.url,
          cause: err,
        });
      }
      next.username = '';
      next.password = '';
      next.hash = '';
      url = next;
    }
  }
}
