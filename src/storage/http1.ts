/**
 * HTTP/1.1 over keep-alive connections whose response bodies can be read straight into the
 * caller's buffers.
 *
 * Why not undici or `node:http` for the bulk bytes: both read sockets through Node's stream
 * machinery, which allocates a new buffer for every read (64 KiB), and undici copies each one
 * again into its WebAssembly parser. At loopback speed that is most of what a download costs: 16
 * range GETs through undici into a file took ~1.3 CPU s per GB on the benchmark machine, the same
 * bytes read by sockets whose reads land in reused buffers (`net.connect({ onread })`) 0.55
 * (BENCHMARKS.md, "Node floor"). A body read with `Http1Body.fill()` has the kernel copy the bytes
 * into the caller's buffer, the one then written to the file: one copy in and one out, as curl.
 *
 * Deliberately narrow: GET and HEAD without a request body, one request at a time per connection
 * (no pipelining), no upgrades, no proxies. Bodies framed by Content-Length (the fast path),
 * chunked, or the end of the connection. Redirects, error bodies, signing and retries belong to
 * the callers (`HttpSource`, the S3 read handler, the downloader).
 */

import net, { type LookupFunction, type Socket } from 'node:net';
import { Readable } from 'node:stream';
import tls from 'node:tls';
import { abortError, RoboflowError, toRoboflowError } from '../errors.js';
import { quoteServerText } from '../redact.js';

export interface Http1PoolOptions {
  /** Most connections open at once; requests beyond wait for one. */
  readonly maxConnections: number;
  /** Time from sending a request (connecting included) to its complete response head. */
  readonly headersTimeoutMs: number;
  /** Name resolution for every connection (a security policy's, which refuses addresses). */
  readonly lookup?: LookupFunction;
  /** Certificates to trust instead of Node's roots. */
  readonly ca?: readonly string[];
}

export interface Http1Request {
  readonly method: 'GET' | 'HEAD';
  /** Path and query, already encoded. */
  readonly path: string;
  /** Header names in any case; `host` defaults to the pool's origin. */
  readonly headers: Readonly<Record<string, string | undefined>>;
  readonly signal?: AbortSignal;
}

export interface Http1Response {
  readonly statusCode: number;
  /** Lower-case names; a repeated header's values joined with ", ". */
  readonly headers: Readonly<Record<string, string>>;
  readonly body: Http1Body;
}

/** Socket reads that are not body bytes for a caller's buffer land here. */
const SCRATCH_BYTES = 64 * 1024;
/**
 * Reads while a response head is awaited land in the first bytes of the scratch buffer only. The
 * body bytes that share a read with the head are copied (the caller's buffer is not known yet);
 * with a 64 KiB read that was up to 63 KiB per response, which, at one response per chunk and
 * look-ahead responses waiting their turn, showed as ~2 % of a download's CPU in allocations and
 * copies. A head that does not fit takes more reads.
 */
const HEAD_READ_BYTES = 4 * 1024;
/** A response head larger than this is refused (S3's are about 1 KiB). */
const MAX_HEAD_BYTES = 64 * 1024;
/** Idle keep-alive connections close after this unless the server asks for less. Servers commonly
 * keep idle connections 5 s; closing first avoids sending on a connection being closed. */
const DEFAULT_KEEP_ALIVE_MS = 4_000;
const LF = 0x0a;
const CR = 0x0d;
/** A header field name (RFC 9110 token). */
const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
/** What a header value may not hold once its line is cut out: a bare CR, a NUL. */
const BAD_VALUE_CHAR = /[\r\0]/;

/**
 * Where the head in `buf` ends: at the first empty line, searched from `from`. Lines may end in
 * CRLF or, as many servers and every common client accept, a bare LF. Returns the length of the
 * head (its last line break excluded) and where the body starts, or undefined.
 */
function findHeadEnd(buf: Buffer, from: number): { readonly headLength: number; readonly bodyStart: number } | undefined {
  for (let i = buf.indexOf(LF, from); i >= 0; i = buf.indexOf(LF, i + 1)) {
    if (buf[i + 1] === LF) return { headLength: i, bodyStart: i + 2 };
    if (buf[i + 1] === CR && buf[i + 2] === LF) return { headLength: i, bodyStart: i + 3 };
  }
  return undefined;
}

type Framing =
  | { readonly kind: 'none' }
  | { readonly kind: 'length'; remaining: number }
  | { readonly kind: 'chunked'; readonly decoder: ChunkedDecoder }
  | { readonly kind: 'close' };

type BodyMode = 'unset' | 'fill' | 'stream';

/**
 * A response body. Read it either as a stream (any `Readable` consumer: one copy per socket read)
 * or with `fill()`, which lets socket reads land in the caller's buffer — never both.
 */
export class Http1Body extends Readable {
  /** Bytes announced by Content-Length, if any. */
  readonly length: number | undefined;
  /** Bytes put into the caller's buffer by the latest `fill()`, also when it failed. */
  filled = 0;
  #mode: BodyMode = 'unset';
  #complete = false;
  readonly #framing: Framing;
  readonly #owner: BodyOwner;
  /** Body bytes received while nobody asked for them (at most about one socket read). */
  readonly #pending: Buffer[] = [];
  #target: Buffer | undefined;
  #onBytes: ((n: number) => void) | undefined;
  #settle: { resolve: (n: number) => void; reject: (err: Error) => void } | undefined;

  /** @internal Made by a connection for each response. */
  constructor(framing: Framing, owner: BodyOwner) {
    super({ highWaterMark: SCRATCH_BYTES });
    this.#framing = framing;
    this.#owner = owner;
    this.length = framing.kind === 'length' ? framing.remaining : framing.kind === 'none' ? 0 : undefined;
    if (framing.kind === 'none') this.#complete = true;
    // A body may fail while nobody listens: a look-ahead response not yet read, or one read with
    // fill(), whose failures reject the fill. Without a listener that would be an uncaught
    // exception; stream consumers (iterators, pipeline) still get the error through their own.
    this.on('error', () => undefined);
  }

  /**
   * Fills `target` with the next body bytes; resolves with the bytes put there: `target.length`,
   * fewer only at the end of the body, 0 after it. `onBytes` hears of every socket read as it
   * lands (progress, stall timers). Rejects if the body fails; `filled` then tells how many bytes
   * of `target` are good. One fill at a time; `target` must not be touched until it settles.
   */
  fill(target: Buffer, onBytes?: (n: number) => void): Promise<number> {
    if (this.#mode === 'stream') throw new RoboflowError('ERR_IO', 'a response body read as a stream cannot also be filled');
    if (this.#settle !== undefined) throw new RoboflowError('ERR_IO', 'a response body is filled one buffer at a time');
    // An empty fill would resolve 0, which means the end of the body.
    if (target.length === 0) throw new RoboflowError('ERR_IO', 'fill() needs a target of at least one byte');
    this.#mode = 'fill';
    this.filled = 0;
    if (this.destroyed) return Promise.reject(this.errored ?? new RoboflowError('ERR_ABORTED', 'the response body was destroyed'));
    this.#drainPendingInto(target);
    if (this.filled === target.length || (this.#complete && this.#pending.length === 0)) {
      if (this.filled > 0) onBytes?.(this.filled);
      if (this.#complete && this.#pending.length === 0) this.#finishStream();
      return Promise.resolve(this.filled);
    }
    if (this.filled > 0) onBytes?.(this.filled);
    return new Promise<number>((resolve, reject) => {
      this.#target = target;
      this.#onBytes = onBytes;
      this.#settle = { resolve, reject };
      this.#owner.wantData();
    });
  }

  /** Reads the body to its end and drops it, so the connection can serve again; a body longer
   * than `limit` is destroyed instead (its connection with it). */
  async dump(opts: { limit?: number } = {}): Promise<void> {
    const limit = opts.limit ?? 128 * 1024;
    if (this.#complete && this.#pending.length === 0 && this.#mode !== 'fill') {
      this.#finishStream();
      this.resume();
      return;
    }
    let seen = 0;
    try {
      for await (const chunk of this) {
        seen += (chunk as Buffer).length;
        if (seen > limit) break;
      }
    } catch {
      // A body we throw away may fail; its connection is gone either way.
    }
    if (!this.destroyed) this.destroy();
  }

  override _read(): void {
    if (this.#mode === 'fill') {
      this.destroy(new RoboflowError('ERR_IO', 'a response body being filled cannot also be read as a stream'));
      return;
    }
    this.#mode = 'stream';
    while (this.#pending.length > 0) {
      if (!this.push(this.#pending.shift())) return;
    }
    if (this.#complete) {
      this.#finishStream();
      return;
    }
    this.#owner.wantData();
  }

  override _destroy(err: Error | null, callback: (error?: Error | null) => void): void {
    const reason = err ?? new RoboflowError('ERR_ABORTED', 'the response body was destroyed');
    if (!this.#complete) this.#owner.abandon(reason);
    this.#rejectFill(reason);
    this.#pending.length = 0;
    callback(err);
  }

  // ----- Called by the connection -----

  /** @internal The framing of this body: how the connection decodes what it reads. */
  get framing(): Framing {
    return this.#framing;
  }

  /** @internal Whether reading the socket serves anyone now. */
  get wantsData(): boolean {
    if (this.#complete || this.destroyed) return false;
    if (this.#settle !== undefined) return true;
    return this.#mode === 'stream' && this.readableLength < this.readableHighWaterMark;
  }

  /** @internal Where the next socket read may land directly: the rest of the caller's buffer. */
  directTarget(): Buffer | undefined {
    const t = this.#target;
    if (t === undefined || this.#framing.kind !== 'length') return undefined;
    const room = Math.min(t.length - this.filled, this.#framing.remaining);
    return room > 0 ? t.subarray(this.filled, this.filled + room) : undefined;
  }

  /** @internal `n` bytes were read straight into `directTarget()`. */
  landed(n: number): void {
    if (this.#framing.kind === 'length') this.#framing.remaining -= n;
    this.filled += n;
    this.#onBytes?.(n);
    if (this.#framing.kind === 'length' && this.#framing.remaining === 0) this.#complete = true;
    this.#maybeResolveFill();
  }

  /** @internal Decoded body bytes in a buffer that will be reused: copied wherever they go. */
  deliver(data: Buffer): void {
    if (data.length === 0) return;
    const t = this.#target;
    let rest = data;
    if (t !== undefined) {
      const n = Math.min(t.length - this.filled, rest.length);
      rest.copy(t, this.filled, 0, n);
      this.filled += n;
      this.#onBytes?.(n);
      rest = rest.subarray(n);
    }
    if (rest.length > 0) {
      const copy = Buffer.from(rest);
      if (this.#mode === 'stream' && this.#pending.length === 0) this.push(copy);
      else this.#pending.push(copy);
    }
    this.#maybeResolveFill();
  }

  /** @internal The framing says the body is complete. */
  markComplete(): void {
    this.#complete = true;
    this.#maybeResolveFill();
    if (this.#mode === 'stream' && this.#pending.length === 0) this.#finishStream();
  }

  /** @internal The connection failed before the body was complete. */
  fail(err: Error): void {
    if (this.#complete) return;
    this.destroy(err);
  }

  get complete(): boolean {
    return this.#complete;
  }

  #drainPendingInto(target: Buffer): void {
    while (this.#pending.length > 0 && this.filled < target.length) {
      const head = this.#pending[0]!;
      const n = Math.min(head.length, target.length - this.filled);
      head.copy(target, this.filled, 0, n);
      this.filled += n;
      if (n === head.length) this.#pending.shift();
      else this.#pending[0] = head.subarray(n);
    }
  }

  #maybeResolveFill(): void {
    const t = this.#target;
    const settle = this.#settle;
    if (t === undefined || settle === undefined) return;
    if (this.filled < t.length && !this.#complete) return;
    this.#target = undefined;
    this.#onBytes = undefined;
    this.#settle = undefined;
    if (this.#complete && this.#pending.length === 0) this.#finishStream();
    settle.resolve(this.filled);
  }

  #rejectFill(err: Error): void {
    const settle = this.#settle;
    this.#target = undefined;
    this.#onBytes = undefined;
    this.#settle = undefined;
    settle?.reject(err);
  }

  /** Ends the Readable side once everything was handed out, so stream consumers see 'end'. */
  #finishStream(): void {
    if (!this.readableEnded && !this.destroyed) this.push(null);
  }
}

/** What a body needs from its connection. */
interface BodyOwner {
  /** Someone waits for bytes: read the socket. */
  wantData(): void;
  /** The body is dropped before its end: the connection cannot serve again. */
  abandon(reason: Error): void;
}

/**
 * Transfer-Encoding: chunked, decoded incrementally from whatever the socket hands over.
 * Extensions and trailers are read and ignored.
 */
class ChunkedDecoder {
  #state: 'size' | 'data' | 'data-crlf' | 'trailer' | 'done' = 'size';
  #line = '';
  #left = 0;

  get done(): boolean {
    return this.#state === 'done';
  }

  /** Decodes `input`; calls `out` with body bytes (views of `input`). Returns bytes consumed. */
  decode(input: Buffer, out: (data: Buffer) => void): number {
    let i = 0;
    while (i < input.length && this.#state !== 'done') {
      switch (this.#state) {
        case 'size':
        case 'data-crlf':
        case 'trailer': {
          const nl = input.indexOf(0x0a, i);
          const end = nl < 0 ? input.length : nl;
          this.#line += input.toString('latin1', i, end);
          if (this.#line.length > 4096) throw protocolError('a chunk header line is too long');
          i = nl < 0 ? input.length : nl + 1;
          if (nl < 0) break;
          const line = this.#line.replace(/\r$/, '');
          this.#line = '';
          if (this.#state === 'data-crlf') {
            if (line !== '') throw protocolError('chunk data not followed by CRLF');
            this.#state = 'size';
          } else if (this.#state === 'trailer') {
            if (line === '') this.#state = 'done';
          } else {
            const m = /^([0-9a-fA-F]{1,12})\s*(?:;.*)?$/.exec(line);
            if (m === null) throw protocolError(`bad chunk size line ${quoteServerText(line, 40)}`);
            this.#left = Number.parseInt(m[1]!, 16);
            this.#state = this.#left === 0 ? 'trailer' : 'data';
          }
          break;
        }
        case 'data': {
          const n = Math.min(this.#left, input.length - i);
          out(input.subarray(i, i + n));
          this.#left -= n;
          i += n;
          if (this.#left === 0) this.#state = 'data-crlf';
          break;
        }
        default: {
          const _exhaustive: never = this.#state;
          return _exhaustive;
        }
      }
    }
    return i;
  }
}

function protocolError(what: string): RoboflowError {
  return new RoboflowError('ERR_BAD_RESPONSE', `malformed HTTP response: ${what}`);
}

/** One request on a connection, from sending to the end of its response body. */
interface Exchange {
  readonly method: 'GET' | 'HEAD';
  resolve(res: Http1Response): void;
  reject(err: Error): void;
  body: Http1Body | undefined;
  keepAlive: boolean;
  /** Any byte of the response seen: a failure now is not a stale keep-alive connection. */
  answered: boolean;
  timer: NodeJS.Timeout | undefined;
  onAbort: (() => void) | undefined;
  signal: AbortSignal | undefined;
}

type ConnectionState = 'idle' | 'busy' | 'closed';

/** One socket: a request is written, its response head parsed, its body framed and handed out. */
class Connection implements BodyOwner {
  state: ConnectionState = 'busy';
  /** Served a response before: a failure before any answer may be the server closing it idle. */
  reused = false;
  readonly socket: Socket;
  readonly #pool: Http1Pool;
  readonly #scratch = Buffer.allocUnsafe(SCRATCH_BYTES);
  readonly #headScratch = this.#scratch.subarray(0, HEAD_READ_BYTES);
  /** Bytes of a response head received so far. */
  #head: Buffer[] = [];
  #headBytes = 0;
  #exchange: Exchange | undefined;
  #idleTimer: NodeJS.Timeout | undefined;
  #keepAliveMs = DEFAULT_KEEP_ALIVE_MS;

  constructor(pool: Http1Pool, origin: URL, opts: Http1PoolOptions) {
    this.#pool = pool;
    const port = Number(origin.port || (origin.protocol === 'https:' ? 443 : 80));
    const host = origin.hostname.replace(/^\[(.*)\]$/, '$1');
    const onread = { buffer: () => this.#nextReadBuffer(), callback: (n: number, buf: Uint8Array) => this.#onRead(n, buf) };
    const lookup = opts.lookup !== undefined ? { lookup: opts.lookup } : {};
    if (origin.protocol === 'https:') {
      const tlsOpts: tls.ConnectionOptions = {
        host,
        port,
        ...(net.isIP(host) === 0 ? { servername: host } : {}),
        ALPNProtocols: ['http/1.1'],
        ...(opts.ca !== undefined ? { ca: [...opts.ca] } : {}),
        ...lookup,
      };
      // A TLS socket takes `onread` as a TCP socket does (its reads are the decrypted bytes);
      // @types/node lists it only for net.
      this.socket = tls.connect(Object.assign(tlsOpts, { onread }));
    } else {
      this.socket = net.connect({ host, port, ...lookup, onread });
    }
    this.socket.setNoDelay(true);
    this.socket.setKeepAlive(true, 60_000);
    // Errors name the origin; the caller knows the object and adds it.
    this.socket.on('error', (err) => {
      const e = toRoboflowError(err, 'ERR_CONNECTION');
      this.#close(err instanceof RoboflowError ? err : new RoboflowError(e.code, `${origin.origin}: ${e.message}`, { cause: err }));
    });
    this.socket.on('end', () => this.#endOfStream(origin.origin));
    this.socket.on('close', () => this.#close(new RoboflowError('ERR_CONNECTION', `connection to ${origin.origin} closed`)));
  }

  /** Sends one request; resolves with the response once its head is in. */
  send(req: Http1Request, hostHeader: string, headersTimeoutMs: number): Promise<Http1Response> {
    return new Promise<Http1Response>((resolve, reject) => {
      if (this.#idleTimer) clearTimeout(this.#idleTimer);
      this.#idleTimer = undefined;
      this.state = 'busy';
      this.socket.ref();
      const ex: Exchange = {
        method: req.method,
        resolve,
        reject,
        body: undefined,
        keepAlive: true,
        answered: false,
        timer: undefined,
        onAbort: undefined,
        signal: req.signal,
      };
      this.#exchange = ex;
      ex.timer = setTimeout(() => {
        this.#close(new RoboflowError('ERR_TIMEOUT', `no response head within ${headersTimeoutMs} ms (${req.method} ${hostHeader})`));
      }, headersTimeoutMs);
      if (req.signal !== undefined) {
        const signal = req.signal;
        ex.onAbort = () => {
          // Without the query: it may carry a presigned URL's signature and credential.
          const err = abortError(signal, `${req.method} ${hostHeader}${req.path.split('?', 1)[0] ?? ''}`);
          if (ex.body !== undefined) ex.body.destroy(err);
          else this.#close(err);
        };
        signal.addEventListener('abort', ex.onAbort, { once: true });
      }
      let head = `${req.method} ${req.path} HTTP/1.1\r\n`;
      let hasHost = false;
      for (const [name, value] of Object.entries(req.headers)) {
        if (value === undefined) continue;
        if (/[\r\n]/.test(name) || /[\r\n]/.test(value)) {
          this.#close(new RoboflowError('ERR_CONFIG', `header ${JSON.stringify(name)} contains a line break`));
          return;
        }
        if (name.toLowerCase() === 'host') hasHost = true;
        head += `${name}: ${value}\r\n`;
      }
      if (!hasHost) head += `host: ${hostHeader}\r\n`;
      this.socket.write(`${head}\r\n`, 'latin1');
      this.socket.resume();
    });
  }

  wantData(): void {
    if (this.state !== 'closed') this.socket.resume();
  }

  abandon(reason: Error): void {
    this.#close(reason);
  }

  /** Closes the connection now; a request or body in progress fails with `reason`. */
  destroy(reason: Error): void {
    this.#close(reason);
  }

  #nextReadBuffer(): Uint8Array {
    const ex = this.#exchange;
    if (ex !== undefined && ex.body === undefined) return this.#headScratch;
    return ex?.body?.directTarget() ?? this.#scratch;
  }

  /** Every socket read. Returns false to stop reading until someone wants more. */
  #onRead(n: number, buf: Uint8Array): boolean {
    const ex = this.#exchange;
    if (ex === undefined) {
      // Nothing was asked: a server talking out of turn. Never reuse such a connection.
      this.#close(protocolError(`${n} bytes arrived on an idle connection`));
      return false;
    }
    ex.answered = true;
    try {
      if (buf !== this.#scratch && buf !== this.#headScratch) {
        const body = ex.body!;
        body.landed(n);
        if (body.complete) this.#bodyDone(ex);
      } else {
        this.#consume(ex, (buf as Buffer).subarray(0, n));
      }
    } catch (err) {
      this.#close(toRoboflowError(err, 'ERR_BAD_RESPONSE'));
      return false;
    }
    if (this.#exchange !== ex) return this.state !== 'closed';
    return ex.body === undefined || ex.body.wantsData;
  }

  /** Bytes in the scratch buffer: head first, then body by its framing. */
  #consume(ex: Exchange, data: Buffer): void {
    let rest = data;
    while (ex.body === undefined) {
      // Look for the end of the head across reads: keep the bytes, search their tail.
      const before = this.#headBytes;
      this.#head.push(Buffer.from(rest));
      this.#headBytes += rest.length;
      const joined = this.#head.length === 1 ? this.#head[0]! : Buffer.concat(this.#head, this.#headBytes);
      this.#head = [joined];
      // The empty line may begin up to 2 bytes before this read (`\n` + `\r\n`).
      const end = findHeadEnd(joined, Math.max(0, before - 2));
      if (end === undefined) {
        if (this.#headBytes > MAX_HEAD_BYTES) throw protocolError(`response head larger than ${MAX_HEAD_BYTES} bytes`);
        return;
      }
      // Checked here too: checked only while the end was missing, a head whose end came in the
      // read that crossed the limit got through, up to twice the limit depending on read sizes.
      if (end.headLength > MAX_HEAD_BYTES) throw protocolError(`response head larger than ${MAX_HEAD_BYTES} bytes`);
      this.#head = [];
      this.#headBytes = 0;
      const after = joined.subarray(end.bodyStart);
      if (!this.#startResponse(ex, joined.toString('latin1', 0, end.headLength))) {
        rest = after; // an informational (1xx) head: the real one follows
        if (rest.length === 0) return;
        continue;
      }
      rest = after;
    }
    this.#bodyBytes(ex, ex.body, rest);
  }

  #bodyBytes(ex: Exchange, body: Http1Body, data: Buffer): void {
    if (data.length === 0) return;
    const framing = body.framing;
    switch (framing.kind) {
      case 'none':
        throw protocolError(`${data.length} bytes after a response without a body`);
      case 'length': {
        const n = Math.min(framing.remaining, data.length);
        framing.remaining -= n;
        body.deliver(data.subarray(0, n));
        // Bytes past the body: the body is whole and is delivered, but what follows on this
        // connection cannot be trusted to start a response, so it closes instead of serving again
        // (as curl does). Throwing here used to fail the complete body with ERR_TRUNCATED_BODY
        // (`#close` fails any unfinished body so) — and only when the extra bytes shared a read
        // with the body's end; in a read of their own they closed the idle connection and the body
        // stood. Both now end the same way.
        if (n < data.length) ex.keepAlive = false;
        if (framing.remaining === 0) this.#bodyDone(ex);
        return;
      }
      case 'chunked': {
        const used = framing.decoder.decode(data, (d) => body.deliver(d));
        if (framing.decoder.done) {
          // Bytes past the last chunk: as past a Content-Length above, the body stands and the
          // connection closes.
          if (used < data.length) ex.keepAlive = false;
          this.#bodyDone(ex);
        }
        return;
      }
      case 'close':
        body.deliver(data);
        return;
      default: {
        const _exhaustive: never = framing;
        return _exhaustive;
      }
    }
  }

  /** Parses a response head. Returns false for an informational response (more heads follow). */
  #startResponse(ex: Exchange, head: string): boolean {
    // `head` ends before the empty line's LF: a CR left there belongs to the last line's CRLF.
    const lines = (head.endsWith('\r') ? head.slice(0, -1) : head).split(/\r?\n/);
    const status = /^HTTP\/1\.([01]) (\d{3})(?: [^\r\0]*)?$/.exec(lines[0] ?? '');
    if (status === null) throw protocolError(`bad status line ${quoteServerText(lines[0] ?? '', 60)}`);
    const statusCode = Number(status[2]);
    if (statusCode >= 100 && statusCode < 200) {
      if (statusCode === 101) throw protocolError('the server switched protocols');
      return false;
    }
    const headers: Record<string, string> = {};
    for (let i = 1; i < lines.length; i++) {
      const line = lines[i]!;
      const colon = line.indexOf(':');
      // A name is a token (no white space before the colon: a smuggling vector); a value holds
      // no bare CR or NUL, which would end up in a message or be sent back (an ETag in If-Match).
      const name = colon > 0 ? line.slice(0, colon).toLowerCase() : '';
      if (!TOKEN.test(name) || BAD_VALUE_CHAR.test(line)) throw protocolError(`bad header line ${quoteServerText(line, 60)}`);
      const value = line.slice(colon + 1).trim();
      headers[name] = headers[name] === undefined ? value : `${headers[name]}, ${value}`;
    }
    const connection = headers['connection'] ?? '';
    ex.keepAlive = status[1] === '1' ? !/\bclose\b/i.test(connection) : /\bkeep-alive\b/i.test(connection);
    const hint = /\btimeout=(\d+)/i.exec(headers['keep-alive'] ?? '');
    if (hint) this.#keepAliveMs = Math.max(1_000, Math.min(DEFAULT_KEEP_ALIVE_MS, Number(hint[1]) * 1000 - 1_000));
    const framing = framingOf(ex.method, statusCode, headers);
    if (framing.kind === 'close') ex.keepAlive = false;
    const body = new Http1Body(framing, this);
    ex.body = body;
    if (ex.timer) clearTimeout(ex.timer);
    ex.timer = undefined;
    ex.resolve({ statusCode, headers, body });
    if (body.complete) this.#bodyDone(ex);
    return true;
  }

  /** The response is complete: the body ends, the connection serves again or closes. */
  #bodyDone(ex: Exchange): void {
    if (ex.body !== undefined && !ex.body.complete) ex.body.markComplete();
    this.#finishExchange(ex);
    if (!ex.keepAlive) {
      this.#close(undefined);
      return;
    }
    this.reused = true;
    this.state = 'idle';
    // Keep reading while idle: a server closing the connection is noticed at once. Unreferenced,
    // so an idle connection never keeps a process alive.
    this.socket.resume();
    this.socket.unref();
    this.#idleTimer = setTimeout(() => this.#close(undefined), this.#keepAliveMs);
    this.#idleTimer.unref();
    this.#pool.released(this);
  }

  #finishExchange(ex: Exchange): void {
    if (ex.timer) clearTimeout(ex.timer);
    ex.timer = undefined;
    if (ex.onAbort && ex.signal) ex.signal.removeEventListener('abort', ex.onAbort);
    ex.onAbort = undefined;
    if (this.#exchange === ex) this.#exchange = undefined;
  }

  /** The server closed its side: the end of a body framed by the connection, else a failure. */
  #endOfStream(origin: string): void {
    const ex = this.#exchange;
    if (ex?.body !== undefined && ex.body.framing.kind === 'close') {
      ex.body.markComplete();
      this.#finishExchange(ex);
      this.#close(undefined);
      return;
    }
    this.#close(new RoboflowError('ERR_CONNECTION', `${origin} closed the connection`));
  }

  /** Closes the socket; an exchange in progress fails (its body too). Idempotent. */
  #close(err: Error | undefined): void {
    const ex = this.#exchange;
    if (ex !== undefined) {
      this.#finishExchange(ex);
      const reason = err ?? new RoboflowError('ERR_CONNECTION', 'the connection closed');
      if (ex.body === undefined) {
        // Only a connection failure can be a server closing an idle connection, not a timeout.
        const stale = this.reused && !ex.answered && reason instanceof RoboflowError && reason.code === 'ERR_CONNECTION';
        ex.reject(stale ? new StaleConnectionError(reason) : reason);
      } else {
        // A connection lost mid-body cut it short (retried from where it stopped); anything
        // else (a malformed response, a closed pool, an abort) keeps its own code.
        const lost = !ex.body.complete && reason instanceof RoboflowError && reason.code === 'ERR_CONNECTION';
        ex.body.fail(lost ? new RoboflowError('ERR_TRUNCATED_BODY', `the response body ended early: ${reason.message}`, { cause: reason }) : reason);
      }
    }
    if (this.state === 'closed') return;
    this.state = 'closed';
    if (this.#idleTimer) clearTimeout(this.#idleTimer);
    this.#idleTimer = undefined;
    this.socket.destroy();
    this.#pool.closed(this);
  }
}

/** A request on a reused connection failed before any answer: the server had closed it while
 * idle. Safe to send again on a new connection (GET and HEAD are idempotent). */
class StaleConnectionError extends RoboflowError {
  constructor(cause: Error) {
    super('ERR_CONNECTION', cause.message, { cause });
  }
}

function framingOf(method: 'GET' | 'HEAD', status: number, headers: Record<string, string>): Framing {
  if (method === 'HEAD' || status === 204 || status === 304) return { kind: 'none' };
  const te = headers['transfer-encoding'];
  if (te !== undefined) {
    // Only chunked is decoded. Anything else, `gzip, chunked` or `chunked, identity` (two
    // headers joined) included, would hand over bytes that are not the body as sent: the
    // request asks for none of it, so such a response is refused before its first byte.
    if (!/^\s*chunked\s*$/i.test(te)) throw protocolError(`Transfer-Encoding ${quoteServerText(te, 60)}: only chunked is read`);
    return { kind: 'chunked', decoder: new ChunkedDecoder() };
  }
  const cl = headers['content-length'];
  if (cl !== undefined) {
    const values = new Set(cl.split(',').map((v) => v.trim()));
    const only = values.size === 1 ? [...values][0]! : '';
    if (!/^\d{1,15}$/.test(only)) throw protocolError(`bad Content-Length ${quoteServerText(cl, 40)}`);
    const n = Number(only);
    return n === 0 ? { kind: 'none' } : { kind: 'length', remaining: n };
  }
  return { kind: 'close' };
}

type PoolState = 'open' | 'closing' | 'destroyed';

interface Waiter {
  readonly resolve: (conn: Connection) => void;
  readonly reject: (err: Error) => void;
  readonly signal: AbortSignal | undefined;
  readonly onAbort: () => void;
}

/** Keep-alive connections to one origin, at most `maxConnections` at once. */
export class Http1Pool {
  readonly origin: URL;
  readonly #opts: Http1PoolOptions;
  readonly #host: string;
  readonly #connections = new Set<Connection>();
  /** Most recently used last: the freshest connection is taken first. */
  readonly #idle: Connection[] = [];
  readonly #waiters: Waiter[] = [];
  #state: PoolState = 'open';
  #drained: (() => void) | undefined;
  #closing: Promise<void> | undefined;

  constructor(origin: string | URL, opts: Http1PoolOptions) {
    this.origin = new URL(typeof origin === 'string' ? origin : origin.href);
    if (this.origin.protocol !== 'http:' && this.origin.protocol !== 'https:') {
      throw new RoboflowError('ERR_CONFIG', `an HTTP connection pool needs an http: or https: origin, got ${this.origin.protocol}`);
    }
    this.#opts = opts;
    this.#host = this.origin.host;
  }

  /** Sends one request; resolves when the response head is in. The body must be read or
   * destroyed, or its connection stays taken. */
  async request(req: Http1Request): Promise<Http1Response> {
    for (let attempt = 1; ; attempt++) {
      const conn = await this.#acquire(req.signal);
      try {
        return await conn.send(req, this.#host, this.#opts.headersTimeoutMs);
      } catch (err) {
        // Once: a second stale connection in a row means something else is wrong.
        if (err instanceof StaleConnectionError && attempt === 1 && !req.signal?.aborted) continue;
        throw err;
      }
    }
  }

  /** Stops taking requests; resolves when every connection has finished its response and closed.
   * Idempotent. */
  close(): Promise<void> {
    switch (this.#state) {
      case 'open': {
        this.#state = 'closing';
        this.#rejectWaiters(new RoboflowError('ERR_CLOSED', `the connection pool for ${this.origin.origin} is closed`));
        for (const conn of this.#idle.splice(0)) conn.destroy(new RoboflowError('ERR_CLOSED', 'pool closed'));
        this.#closing = new Promise<void>((resolve) => {
          this.#drained = resolve;
          this.#checkDrained();
        });
        return this.#closing;
      }
      case 'closing':
      case 'destroyed':
        return this.#closing ?? Promise.resolve();
      default: {
        const _exhaustive: never = this.#state;
        return _exhaustive;
      }
    }
  }

  /** Closes every connection now; requests and bodies in progress fail. Idempotent. */
  destroy(): Promise<void> {
    const closing = this.close();
    this.#state = 'destroyed';
    for (const conn of [...this.#connections]) conn.destroy(new RoboflowError('ERR_CLOSED', `the connection pool for ${this.origin.origin} was destroyed`));
    return closing;
  }

  /** @internal A connection finished a response and may serve again. */
  released(conn: Connection): void {
    if (this.#state !== 'open') {
      conn.destroy(new RoboflowError('ERR_CLOSED', 'pool closed'));
      return;
    }
    const waiter = this.#nextWaiter();
    if (waiter !== undefined) {
      conn.state = 'busy';
      waiter.resolve(conn);
      return;
    }
    this.#idle.push(conn);
  }

  /** @internal A connection closed. */
  closed(conn: Connection): void {
    this.#connections.delete(conn);
    const i = this.#idle.indexOf(conn);
    if (i >= 0) this.#idle.splice(i, 1);
    if (this.#state === 'open' && this.#waiters.length > 0) {
      const waiter = this.#nextWaiter();
      if (waiter !== undefined) waiter.resolve(this.#connect());
    }
    this.#checkDrained();
  }

  #acquire(signal: AbortSignal | undefined): Promise<Connection> {
    if (this.#state !== 'open') return Promise.reject(new RoboflowError('ERR_CLOSED', `the connection pool for ${this.origin.origin} is closed`));
    if (signal?.aborted) return Promise.reject(abortError(signal, `request to ${this.origin.origin}`));
    for (let conn = this.#idle.pop(); conn !== undefined; conn = this.#idle.pop()) {
      if (conn.state === 'idle') {
        conn.state = 'busy';
        return Promise.resolve(conn);
      }
    }
    if (this.#connections.size < this.#opts.maxConnections) return Promise.resolve(this.#connect());
    return new Promise<Connection>((resolve, reject) => {
      const waiter: Waiter = {
        resolve: (c) => {
          signal?.removeEventListener('abort', waiter.onAbort);
          resolve(c);
        },
        reject: (err) => {
          signal?.removeEventListener('abort', waiter.onAbort);
          reject(err);
        },
        signal,
        onAbort: () => {
          const i = this.#waiters.indexOf(waiter);
          if (i >= 0) this.#waiters.splice(i, 1);
          reject(abortError(signal, `request to ${this.origin.origin}`));
        },
      };
      signal?.addEventListener('abort', waiter.onAbort, { once: true });
      this.#waiters.push(waiter);
    });
  }

  #nextWaiter(): Waiter | undefined {
    for (let w = this.#waiters.shift(); w !== undefined; w = this.#waiters.shift()) {
      if (!w.signal?.aborted) return w;
    }
    return undefined;
  }

  #connect(): Connection {
    const conn = new Connection(this, this.origin, this.#opts);
    this.#connections.add(conn);
    return conn;
  }

  #rejectWaiters(err: Error): void {
    for (const w of this.#waiters.splice(0)) w.reject(err);
  }

  #checkDrained(): void {
    if (this.#state !== 'open' && this.#connections.size === 0) this.#drained?.();
  }
}

export function isHttp1Body(body: unknown): body is Http1Body {
  return body instanceof Http1Body;
}
