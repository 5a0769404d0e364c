/**
 * An S3-protocol object server for tests, benchmarks and the demo.
 *
 * It speaks enough of path-style S3 (`/<bucket>/<key...>`) for the AWS SDK, undici and plain
 * HTTP clients: HEAD/GET with single byte ranges, ETag and `If-Match`, PUT (including the SDK's
 * aws-chunked streaming encoding), multipart upload, ListObjectsV2, DeleteObject, and AWS SigV4
 * authentication (header or presigned URL) when credentials are configured.
 *
 * What makes it a test server is everything a real store does to a downloader on a bad day,
 * reproducibly: a per-connection send-rate cap, first-byte latency, a concurrency limit that
 * answers 503 SlowDown, and fault rules (status codes, resets, truncations, stalls, an object
 * replaced mid-download, a lying Content-Range, no Content-Length, an HTML error page). Every
 * request is logged with the range asked for, the bytes sent and the fault that hit it, so a
 * test can assert what a client re-fetched.
 *
 * Bodies are streamed in slices with backpressure, and generated bodies are computed slice by
 * slice (`content.ts`), so serving a 4 GiB object costs no memory.
 */

import { createHash, createHmac, timingSafeEqual } from 'node:crypto';
import { closeSync, openSync, readSync, statSync } from 'node:fs';
import { mkdtemp, open, rm, unlink, type FileHandle } from 'node:fs/promises';
import { setMaxListeners } from 'node:events';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { crc32 } from 'node:zlib';

import { RoboflowError } from '../errors.js';
import { generatedContent, generatedDigest, generatedDigestSync } from './content.js';

// ---------------------------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------------------------

export interface ObjectServerOptions {
  /** Interface to listen on. (Default: '127.0.0.1') */
  host?: string;
  /** Port to listen on; 0 picks a free one. (Default: 0) */
  port?: number;
  /** Per-connection (per TCP socket) send rate cap, bytes/s; undefined = uncapped. */
  rateLimitBytesPerSec?: number;
  /** Delay before the response headers of each GET/HEAD (first-byte latency), ms. (Default: 0) */
  firstByteLatencyMs?: number;
  /** When set, requests must carry a valid AWS SigV4 Authorization header (or presigned query)
   * for these credentials (403 otherwise). */
  credentials?: { accessKeyId: string; secretAccessKey: string };
  /** Reject (503 SlowDown) GETs above this many concurrently in flight (throttling store). */
  maxConcurrentRequests?: number;
  /** `Retry-After` seconds sent with the 503 of `maxConcurrentRequests`; undefined sends none,
   * which is what S3 does. (Default: undefined) */
  throttleRetryAfterSeconds?: number;
  /** PUT and part bodies above this many bytes are spooled to a temp file instead of memory,
   * so uploading gigabytes does not grow the heap. (Default: 8 MiB) */
  spoolThresholdBytes?: number;
  /** Clock for SigV4 date checks (ms since the epoch); tests that replay a published signing
   * example pass its fixed time. (Default: Date.now) */
  clock?: () => number;
  /** Smallest allowed multipart part except the last, like S3 (EntityTooSmall below it).
   * (Default: 5 MiB) */
  minPartSizeBytes?: number;
}

/** An object's content: bytes in memory, a generated object named by `(size, seed)` (see
 * `content.ts`), or an existing file served in place (never modified or deleted). */
export type ObjectBody = Buffer | { generated: { size: number; seed: number } } | { file: string };

export type Fault =
  | { kind: 'status'; status: number; retryAfterSeconds?: number; ossDelayMs?: number; body?: string; contentType?: string }
  /** Destroy the socket (TCP RST) after sending n body bytes. On HEAD: instead of answering. */
  | { kind: 'reset'; afterBytes: number }
  /** End the response cleanly after n bytes although Content-Length promised more. */
  | { kind: 'truncate'; afterBytes: number }
  /** Stop sending after n bytes for `ms`, then go on (default: until the client gives up).
   * On HEAD: delays the headers. */
  | { kind: 'stall'; afterBytes: number; ms?: number }
  /** Replace the object (new ETag) before serving this request. */
  | { kind: 'replace'; body: ObjectBody }
  /** 206 whose Content-Range names a different range than the bytes sent. */
  | { kind: 'bad-content-range' }
  /** Body sent chunked, without Content-Length. */
  | { kind: 'no-content-length' }
  /** 200 text/html error page instead of the object (a captive portal or a misrouted proxy). */
  | { kind: 'html-error' };

export interface FaultRule {
  fault: Fault;
  /** Which requests: default all GETs of any object. `method: '*'` matches every object
   * request (GET, HEAD, PUT, POST, DELETE); on PUT/POST/DELETE only `status`, `reset` and
   * `replace` faults act. */
  match?: { method?: string; bucket?: string; key?: string; rangedOnly?: boolean };
  /** Apply to the first `times` matching requests (default 1), or ... */
  times?: number;
  /** ... skip the first `skip` matching requests first (default 0), or ... */
  skip?: number;
  /** ... apply to each matching request with this probability, drawn from a seeded PRNG (then
   * `times` = max applications, default unlimited). */
  probability?: number;
  /** Seed of the rule's PRNG. (Default: 1) */
  seed?: number;
}

export interface RequestLogEntry {
  method: string;
  bucket: string;
  /** Empty for bucket-level requests (list, create bucket). */
  key: string;
  /** The range served (end exclusive); for a missing object, the range asked for when explicit. */
  range?: { start: number; end: number };
  ifMatch?: string;
  /** 0 while the response headers are not sent yet. */
  status: number;
  /** Body bytes handed to the socket so far (updated while the response streams). */
  bytesSent: number;
  fault?: Fault['kind'];
  /** True when `maxConcurrentRequests` turned this request away. */
  throttled?: boolean;
  /** The S3 operation, e.g. 'GetObject', 'UploadPart', 'ListObjectsV2'. */
  operation: string;
  startedAt: number;
}

export interface PutObjectOptions {
  /** ETag to serve instead of the MD5 of the content (quotes are added if missing). */
  etag?: string;
  /** (Default: 'application/octet-stream') */
  contentType?: string;
}

/** What `putObject` returns. `etag` of a generated or file body is computed on first read of
 * the property (MD5, ~2 s/GiB, blocking); the server itself computes it lazily and off the
 * event loop's critical path. Use `objectEtag()` for the asynchronous form. */
export interface PutObjectResult {
  readonly etag: string;
  readonly size: number;
}

// ---------------------------------------------------------------------------------------------
// Stored objects
// ---------------------------------------------------------------------------------------------

type ObjectData =
  | { readonly kind: 'buffer'; readonly buf: Buffer }
  | { readonly kind: 'generated'; readonly seed: number }
  | { readonly kind: 'file'; readonly path: string };

interface StoredObject {
  readonly data: ObjectData;
  readonly size: number;
  etag: string | undefined;
  etagPromise: Promise<string> | undefined;
  readonly lastModified: Date;
  readonly contentType: string;
  /** A temp file this server wrote (PUT, multipart); deleted once replaced and unread. */
  readonly ownedFile: string | undefined;
  /** Responses currently reading the object; an owned file is unlinked only at zero. */
  readers: number;
  removed: boolean;
}

/** Reads slices of one object for one response. Files are opened once per response. */
interface SliceReader {
  read(pos: number, len: number): Promise<Buffer>;
  close(): Promise<void>;
}

const MiB = 1024 * 1024;
/** Uncapped responses are written in slices this big: large enough that per-write overhead is
 * small next to the copy, small enough to keep memory per connection bounded. */
const FAST_SLICE = 256 * 1024;
/** Capped responses use smaller slices so pacing is smooth (~100 slices per second). */
const MIN_PACED_SLICE = 1024;
const MAX_PACED_SLICE = 256 * 1024;
/** A connection may bank this much idle time as send credit. Timers fire late on a busy machine;
 * without some credit every late wake-up would be lost and the effective rate fall far below
 * the cap. 50 ms keeps bursts short next to any transfer worth capping. */
const PACE_BURST_SECONDS = 0.05;
const DIGEST_READ = MiB;
const XML_HEADER = '<?xml version="1.0" encoding="UTF-8"?>\n';
const S3_NS = 'http://s3.amazonaws.com/doc/2006-03-01/';
/** Same tolerance as S3: a signed request older or newer than this is refused. */
const MAX_CLOCK_SKEW_MS = 15 * 60 * 1000;
const EMPTY_SHA256 = createHash('sha256').update('').digest('hex');

function quoteEtag(etag: string): string {
  return etag.startsWith('"') || etag.startsWith('W/') ? etag : `"${etag}"`;
}

function md5Hex(buf: Buffer): string {
  return createHash('md5').update(buf).digest('hex');
}

function fileDigestSync(path: string, algorithm: 'md5' | 'sha256'): string {
  const hash = createHash(algorithm);
  const fd = openSync(path, 'r');
  try {
    const buf = Buffer.allocUnsafe(DIGEST_READ);
    for (;;) {
      const n = readSync(fd, buf, 0, buf.length, null);
      if (n === 0) break;
      hash.update(buf.subarray(0, n));
    }
  } finally {
    closeSync(fd);
  }
  return hash.digest('hex');
}

async function fileDigest(path: string, algorithm: 'md5' | 'sha256'): Promise<string> {
  const hash = createHash(algorithm);
  const fh = await open(path, 'r');
  try {
    for (;;) {
      const buf = Buffer.allocUnsafe(DIGEST_READ);
      const { bytesRead } = await fh.read(buf, 0, buf.length, null);
      if (bytesRead === 0) break;
      hash.update(buf.subarray(0, bytesRead));
    }
  } finally {
    await fh.close();
  }
  return hash.digest('hex');
}

function dataDigestSync(obj: StoredObject, algorithm: 'md5' | 'sha256'): string {
  const d = obj.data;
  switch (d.kind) {
    case 'buffer':
      return createHash(algorithm).update(d.buf).digest('hex');
    case 'generated':
      return generatedDigestSync(algorithm, obj.size, d.seed);
    case 'file':
      return fileDigestSync(d.path, algorithm);
    default: {
      const _exhaustive: never = d;
      return _exhaustive;
    }
  }
}

async function dataDigest(obj: StoredObject, algorithm: 'md5' | 'sha256'): Promise<string> {
  const d = obj.data;
  switch (d.kind) {
    case 'buffer':
      return createHash(algorithm).update(d.buf).digest('hex');
    case 'generated':
      return generatedDigest(algorithm, obj.size, d.seed);
    case 'file':
      return fileDigest(d.path, algorithm);
    default: {
      const _exhaustive: never = d;
      return _exhaustive;
    }
  }
}

async function openReader(obj: StoredObject): Promise<SliceReader> {
  const d = obj.data;
  switch (d.kind) {
    case 'buffer':
      return { read: async (pos, len) => d.buf.subarray(pos, pos + len), close: async () => {} };
    case 'generated':
      return { read: async (pos, len) => generatedContent(d.seed, pos, pos + len), close: async () => {} };
    case 'file': {
      const fh = await open(d.path, 'r');
      return {
        read: async (pos, len) => {
          // A fresh buffer per slice: the socket keeps a reference until the bytes are sent.
          const buf = Buffer.allocUnsafe(len);
          let filled = 0;
          while (filled < len) {
            const { bytesRead } = await fh.read(buf, filled, len - filled, pos + filled);
            if (bytesRead === 0) throw new RoboflowError('ERR_IO', `file ${d.path} is shorter than when it was put; put it again`);
            filled += bytesRead;
          }
          return buf;
        },
        close: () => fh.close(),
      };
    }
    default: {
      const _exhaustive: never = d;
      return _exhaustive;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------------

/** Resolves after `ms` or as soon as `signal` aborts (never rejects); `Infinity` waits for the
 * signal only. */
function sleep(ms: number, signal: AbortSignal): Promise<void> {
  if (signal.aborted) return Promise.resolve();
  return new Promise((resolve) => {
    let timer: NodeJS.Timeout | undefined;
    const done = (): void => {
      if (timer !== undefined) clearTimeout(timer);
      signal.removeEventListener('abort', done);
      resolve();
    };
    if (Number.isFinite(ms)) timer = setTimeout(done, Math.max(0, ms));
    signal.addEventListener('abort', done, { once: true });
  });
}

/** Waits for 'drain' or for the response to go away, whichever comes first. */
function drained(res: ServerResponse, signal: AbortSignal): Promise<void> {
  if (signal.aborted) return Promise.resolve();
  return new Promise((resolve) => {
    const done = (): void => {
      res.off('drain', done);
      signal.removeEventListener('abort', done);
      resolve();
    };
    res.on('drain', done);
    signal.addEventListener('abort', done, { once: true });
  });
}

/** mulberry32: a tiny seeded PRNG, enough for reproducible fault probabilities. */
function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function xmlEscape(s: string): string {
  return s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function xmlUnescape(s: string): string {
  return s
    .replace(/&quot;/g, '"')
    .replace(/&apos;/g, "'")
    .replace(/&lt;/g, '<')
    .replace(/&gt;/g, '>')
    .replace(/&#x([0-9a-fA-F]+);/g, (_m, h: string) => String.fromCodePoint(parseInt(h, 16)))
    .replace(/&#(\d+);/g, (_m, d: string) => String.fromCodePoint(Number(d)))
    .replace(/&amp;/g, '&');
}

/** RFC 3986 encoding as SigV4 and S3 use it (encodeURIComponent leaves !'()* alone). */
function uriEncode(s: string): string {
  return encodeURIComponent(s).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
}

function safeDecode(s: string): string | undefined {
  try {
    return decodeURIComponent(s);
  } catch {
    return undefined;
  }
}

interface QueryParam {
  readonly name: string;
  readonly value: string;
}

function parseQuery(raw: string): QueryParam[] | undefined {
  if (raw === '') return [];
  const out: QueryParam[] = [];
  for (const part of raw.split('&')) {
    if (part === '') continue;
    const eq = part.indexOf('=');
    const name = safeDecode(eq < 0 ? part : part.slice(0, eq));
    const value = safeDecode(eq < 0 ? '' : part.slice(eq + 1));
    if (name === undefined || value === undefined) return undefined;
    out.push({ name, value });
  }
  return out;
}

function s3Error(code: string, message: string, resource: string, requestId: string, extra = ''): string {
  return (
    `${XML_HEADER}<Error><Code>${xmlEscape(code)}</Code><Message>${xmlEscape(message)}</Message>` +
    `<Resource>${xmlEscape(resource)}</Resource><RequestId>${requestId}</RequestId>${extra}</Error>`
  );
}

/** S3's error code for a status, for status faults without a body of their own. */
function errorCodeForStatus(status: number): string {
  switch (status) {
    case 400:
      return 'InvalidRequest';
    case 403:
      return 'AccessDenied';
    case 404:
      return 'NoSuchKey';
    case 409:
      return 'OperationAborted';
    case 412:
      return 'PreconditionFailed';
    case 416:
      return 'InvalidRange';
    case 429:
    case 503:
      return 'SlowDown';
    case 500:
      return 'InternalError';
    case 501:
      return 'NotImplemented';
    default:
      return status >= 500 ? 'ServiceUnavailable' : 'InvalidRequest';
  }
}

// ---------------------------------------------------------------------------------------------
// Ranges
// ---------------------------------------------------------------------------------------------

type RangeSpec =
  | { readonly kind: 'none' }
  | { readonly kind: 'bounded'; readonly first: number; readonly last: number }
  | { readonly kind: 'open'; readonly first: number }
  | { readonly kind: 'suffix'; readonly length: number };

/** Parses a single `bytes=` range. Anything else (multiple ranges, other units, garbage) is
 * ignored and the whole object served, as RFC 9110 allows and S3 does. */
function parseRange(header: string | undefined): RangeSpec {
  if (header === undefined) return { kind: 'none' };
  const m = /^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$/i.exec(header);
  if (m === null) return { kind: 'none' };
  const a = m[1] ?? '';
  const b = m[2] ?? '';
  if (a === '' && b === '') return { kind: 'none' };
  if (a === '') return { kind: 'suffix', length: Number(b) };
  if (b === '') return { kind: 'open', first: Number(a) };
  const first = Number(a);
  const last = Number(b);
  if (last < first) return { kind: 'none' };
  return { kind: 'bounded', first, last };
}

/** `[start, end)` to serve, 'unsatisfiable' for 416, or undefined for the whole object (200). */
function resolveRange(spec: RangeSpec, size: number): { start: number; end: number } | 'unsatisfiable' | undefined {
  switch (spec.kind) {
    case 'none':
      return undefined;
    case 'bounded':
      if (spec.first >= size) return 'unsatisfiable';
      return { start: spec.first, end: Math.min(size, spec.last + 1) };
    case 'open':
      if (spec.first >= size) return 'unsatisfiable';
      return { start: spec.first, end: size };
    case 'suffix':
      if (spec.length === 0 || size === 0) return 'unsatisfiable';
      return { start: Math.max(0, size - spec.length), end: size };
    default: {
      const _exhaustive: never = spec;
      return _exhaustive;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// SigV4
// ---------------------------------------------------------------------------------------------

interface SigningContext {
  readonly signingKey: Buffer;
  readonly amzDate: string;
  readonly scope: string;
  readonly signature: string;
}

type AuthResult =
  | { readonly ok: true; readonly ctx: SigningContext; readonly payloadHash: string }
  | { readonly ok: false; readonly status: number; readonly code: string; readonly message: string };

function hmac(key: Buffer | string, data: string): Buffer {
  return createHmac('sha256', key).update(data, 'utf8').digest();
}

function sha256Hex(data: string | Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

function parseAmzDate(s: string): number | undefined {
  const m = /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$/.exec(s);
  if (m === null) return undefined;
  return Date.UTC(Number(m[1]), Number(m[2]) - 1, Number(m[3]), Number(m[4]), Number(m[5]), Number(m[6]));
}

function sameHex(a: string, b: string): boolean {
  const ba = Buffer.from(a, 'utf8');
  const bb = Buffer.from(b, 'utf8');
  return ba.length === bb.length && timingSafeEqual(ba, bb);
}

/**
 * Verifies an AWS Signature Version 4 request, from the Authorization header or from a
 * presigned URL's query. The canonical request uses the path exactly as sent (S3 does not
 * normalise or re-encode it) and the payload hash header as given.
 */
function verifySigV4(
  req: IncomingMessage,
  rawPath: string,
  query: readonly QueryParam[],
  creds: { accessKeyId: string; secretAccessKey: string },
  now: number,
): AuthResult {
  const deny = (code: string, message: string): AuthResult => ({ ok: false, status: 403, code, message });
  const qget = (name: string): string | undefined => query.find((p) => p.name === name)?.value;
  const presigned = qget('X-Amz-Signature') !== undefined;
  let algorithm: string | undefined;
  let credential: string | undefined;
  let signedHeadersRaw: string | undefined;
  let signature: string | undefined;
  let amzDate: string | undefined;
  let payloadHash: string;
  if (presigned) {
    algorithm = qget('X-Amz-Algorithm');
    credential = qget('X-Amz-Credential');
    signedHeadersRaw = qget('X-Amz-SignedHeaders');
    signature = qget('X-Amz-Signature');
    amzDate = qget('X-Amz-Date');
    payloadHash = qget('X-Amz-Content-Sha256') ?? 'UNSIGNED-PAYLOAD';
    const expires = Number(qget('X-Amz-Expires'));
    const signedAt = amzDate === undefined ? undefined : parseAmzDate(amzDate);
    if (signedAt === undefined || !Number.isFinite(expires)) return deny('AuthorizationQueryParametersError', 'X-Amz-Date or X-Amz-Expires is missing or malformed');
    if (now > signedAt + expires * 1000) return deny('AccessDenied', 'Request has expired');
  } else {
    const auth = req.headers.authorization;
    if (auth === undefined) return deny('AccessDenied', 'Access Denied: the request carries no Authorization header');
    const m = /^(\S+)\s+(.*)$/.exec(auth.trim());
    if (m === null) return deny('AccessDenied', 'malformed Authorization header');
    algorithm = m[1];
    for (const part of (m[2] ?? '').split(',')) {
      const eq = part.indexOf('=');
      if (eq < 0) continue;
      const name = part.slice(0, eq).trim();
      const value = part.slice(eq + 1).trim();
      if (name === 'Credential') credential = value;
      else if (name === 'SignedHeaders') signedHeadersRaw = value;
      else if (name === 'Signature') signature = value;
    }
    const dateHeader = req.headers['x-amz-date'];
    amzDate = typeof dateHeader === 'string' ? dateHeader : undefined;
    const hashHeader = req.headers['x-amz-content-sha256'];
    if (typeof hashHeader !== 'string') return deny('InvalidRequest', 'Missing required header for this request: x-amz-content-sha256');
    payloadHash = hashHeader;
    const signedAt = amzDate === undefined ? undefined : parseAmzDate(amzDate);
    if (signedAt === undefined) return deny('AccessDenied', 'x-amz-date header is missing or malformed');
    if (Math.abs(now - signedAt) > MAX_CLOCK_SKEW_MS) return deny('RequestTimeTooSkewed', 'The difference between the request time and the current time is too large.');
  }
  if (algorithm !== 'AWS4-HMAC-SHA256') return deny('AccessDenied', `unsupported signing algorithm ${algorithm ?? '(none)'}`);
  if (credential === undefined || signedHeadersRaw === undefined || signature === undefined || amzDate === undefined) {
    return deny('AccessDenied', 'incomplete SigV4 authorization (Credential, SignedHeaders, Signature, date)');
  }
  const credParts = credential.split('/');
  if (credParts.length !== 5 || credParts[4] !== 'aws4_request') return deny('AccessDenied', 'malformed credential scope');
  const [accessKeyId, date, region, service] = credParts as [string, string, string, string, string];
  if (accessKeyId !== creds.accessKeyId) return deny('InvalidAccessKeyId', 'The AWS Access Key Id you provided does not exist in our records.');
  if (!amzDate.startsWith(date)) return deny('AccessDenied', 'credential scope date does not match the request date');

  const signedHeaders = signedHeadersRaw.split(';');
  if (!signedHeaders.includes('host')) return deny('AccessDenied', 'SignedHeaders must include host');
  const values = new Map<string, string[]>();
  for (let i = 0; i + 1 < req.rawHeaders.length; i += 2) {
    const name = (req.rawHeaders[i] ?? '').toLowerCase();
    const list = values.get(name) ?? [];
    list.push((req.rawHeaders[i + 1] ?? '').trim().replace(/\s+/g, ' '));
    values.set(name, list);
  }
  const canonicalHeaders = signedHeaders.map((h) => `${h}:${(values.get(h) ?? []).join(',')}\n`).join('');
  const canonicalQuery = query
    .filter((p) => !(presigned && p.name === 'X-Amz-Signature'))
    .map((p) => [uriEncode(p.name), uriEncode(p.value)] as const)
    .sort((x, y) => (x[0] < y[0] ? -1 : x[0] > y[0] ? 1 : x[1] < y[1] ? -1 : x[1] > y[1] ? 1 : 0))
    .map(([k, v]) => `${k}=${v}`)
    .join('&');
  const canonicalRequest = [req.method ?? 'GET', rawPath, canonicalQuery, canonicalHeaders, signedHeadersRaw, payloadHash].join('\n');
  const scope = `${date}/${region}/${service}/aws4_request`;
  const stringToSign = ['AWS4-HMAC-SHA256', amzDate, scope, sha256Hex(canonicalRequest)].join('\n');
  const signingKey = hmac(hmac(hmac(hmac(`AWS4${creds.secretAccessKey}`, date), region), service), 'aws4_request');
  const expected = createHmac('sha256', signingKey).update(stringToSign, 'utf8').digest('hex');
  if (!sameHex(expected, signature)) {
    return deny('SignatureDoesNotMatch', 'The request signature we calculated does not match the signature you provided. Check your key and signing method.');
  }
  return { ok: true, ctx: { signingKey, amzDate, scope, signature }, payloadHash };
}

// ---------------------------------------------------------------------------------------------
// aws-chunked request bodies
// ---------------------------------------------------------------------------------------------

class BadRequest extends Error {
  constructor(
    readonly s3Code: string,
    message: string,
    readonly status = 400,
  ) {
    super(message);
  }
}

/**
 * Decodes the `aws-chunked` content encoding the AWS SDK uses for streamed uploads
 * (`<hex-size>[;chunk-signature=<sig>]\r\n<data>\r\n ... 0\r\n<trailers>\r\n\r\n`). When
 * `signing` is given, each chunk signature is checked against the previous one, starting from
 * the request's seed signature (STREAMING-AWS4-HMAC-SHA256-PAYLOAD).
 */
async function* decodeAwsChunked(
  src: AsyncIterable<Buffer>,
  signing: SigningContext | undefined,
  trailers: Map<string, string>,
): AsyncGenerator<Buffer> {
  type State = 'size' | 'data' | 'data-crlf' | 'trailer' | 'done';
  let state: State = 'size';
  let pending: Buffer | undefined;
  let remaining = 0;
  let chunkSig: string | undefined;
  let chunkHash = signing === undefined ? undefined : createHash('sha256');
  let prevSig = signing?.signature;

  const checkChunk = (): void => {
    if (signing === undefined || chunkHash === undefined) return;
    if (chunkSig === undefined) throw new BadRequest('SignatureDoesNotMatch', 'aws-chunked chunk without chunk-signature', 403);
    const sts = ['AWS4-HMAC-SHA256-PAYLOAD', signing.amzDate, signing.scope, prevSig, EMPTY_SHA256, chunkHash.digest('hex')].join('\n');
    const expected = createHmac('sha256', signing.signingKey).update(sts, 'utf8').digest('hex');
    if (!sameHex(expected, chunkSig)) throw new BadRequest('SignatureDoesNotMatch', 'aws-chunked chunk signature does not match', 403);
    prevSig = chunkSig;
    chunkHash = createHash('sha256');
  };

  for await (const incoming of src) {
    const buf: Buffer = pending === undefined ? incoming : Buffer.concat([pending, incoming]);
    pending = undefined;
    let i = 0;
    while (i < buf.length) {
      switch (state) {
        case 'size':
        case 'trailer': {
          const nl = buf.indexOf('\r\n', i);
          if (nl < 0) {
            if (buf.length - i > 16 * 1024) throw new BadRequest('IncompleteBody', 'aws-chunked header line too long');
            pending = buf.subarray(i);
            i = buf.length;
            break;
          }
          const line = buf.toString('latin1', i, nl);
          i = nl + 2;
          if (state === 'trailer') {
            // An empty line ends the trailers; the checksum trailers are checked by the caller.
            if (line === '') {
              state = 'done';
            } else {
              const colon = line.indexOf(':');
              if (colon > 0) trailers.set(line.slice(0, colon).trim().toLowerCase(), line.slice(colon + 1).trim());
            }
            break;
          }
          const m = /^([0-9a-fA-F]+)(?:;chunk-signature=([0-9a-f]+))?/.exec(line);
          if (m === null) throw new BadRequest('IncompleteBody', `malformed aws-chunked chunk header ${JSON.stringify(line.slice(0, 80))}`);
          remaining = parseInt(m[1] ?? '0', 16);
          chunkSig = m[2];
          if (remaining === 0) {
            checkChunk();
            state = 'trailer';
          } else {
            state = 'data';
          }
          break;
        }
        case 'data': {
          const n = Math.min(remaining, buf.length - i);
          const piece = buf.subarray(i, i + n);
          chunkHash?.update(piece);
          yield piece;
          remaining -= n;
          i += n;
          if (remaining === 0) {
            checkChunk();
            state = 'data-crlf';
          }
          break;
        }
        case 'data-crlf': {
          if (buf.length - i < 2) {
            pending = buf.subarray(i);
            i = buf.length;
            break;
          }
          if (buf[i] !== 13 || buf[i + 1] !== 10) throw new BadRequest('IncompleteBody', 'aws-chunked chunk not followed by CRLF');
          i += 2;
          state = 'size';
          break;
        }
        case 'done':
          // Some encoders end with one more CRLF; anything else after the trailers is ignored.
          i = buf.length;
          break;
        default: {
          const _exhaustive: never = state;
          throw new Error(`unreachable ${String(_exhaustive)}`);
        }
      }
    }
  }
  // Without trailers an encoder may stop right after the final `0\r\n` (+ optional CRLF).
  if (state !== 'done' && state !== 'trailer') throw new BadRequest('IncompleteBody', 'aws-chunked body ended inside a chunk');
}

// ---------------------------------------------------------------------------------------------
// Upload bodies
// ---------------------------------------------------------------------------------------------

/** The flexible checksums the SDK sends (`x-amz-checksum-*` header or trailer) that node can
 * compute; others (crc32c, crc64nvme) are accepted unchecked. */
type FlexibleChecksum = 'crc32' | 'sha1' | 'sha256';

class ChecksumAccumulator {
  private crc = 0;
  private readonly hash: ReturnType<typeof createHash> | undefined;

  constructor(readonly algorithm: FlexibleChecksum) {
    this.hash = algorithm === 'crc32' ? undefined : createHash(algorithm);
  }

  update(buf: Buffer): void {
    if (this.hash === undefined) this.crc = crc32(buf, this.crc);
    else this.hash.update(buf);
  }

  base64(): string {
    if (this.hash !== undefined) return this.hash.digest('base64');
    const out = Buffer.alloc(4);
    out.writeUInt32BE(this.crc >>> 0);
    return out.toString('base64');
  }
}

function flexibleChecksumOf(req: IncomingMessage): FlexibleChecksum | undefined {
  const trailer = req.headers['x-amz-trailer'];
  for (const alg of ['crc32', 'sha1', 'sha256'] as const) {
    const name = `x-amz-checksum-${alg}`;
    if (req.headers[name] !== undefined) return alg;
    if (typeof trailer === 'string' && trailer.toLowerCase().split(',').some((t) => t.trim() === name)) return alg;
  }
  return undefined;
}

interface ReceivedBody {
  readonly data: ObjectData;
  readonly size: number;
  readonly md5: Buffer;
  readonly sha256Hex: string;
  readonly ownedFile: string | undefined;
}

/** Collects an upload in memory and spools it to a temp file once it outgrows the threshold. */
class BodySink {
  private chunks: Buffer[] = [];
  private size = 0;
  private fh: FileHandle | undefined;
  private path: string | undefined;
  private readonly md5 = createHash('md5');
  private readonly sha = createHash('sha256');

  constructor(
    private readonly threshold: number,
    private readonly tempPath: () => Promise<string>,
  ) {}

  async write(buf: Buffer): Promise<void> {
    this.md5.update(buf);
    this.sha.update(buf);
    this.size += buf.length;
    if (this.fh !== undefined) {
      await this.fh.write(buf);
      return;
    }
    this.chunks.push(buf);
    if (this.size > this.threshold) {
      this.path = await this.tempPath();
      this.fh = await open(this.path, 'w');
      for (const c of this.chunks) await this.fh.write(c);
      this.chunks = [];
    }
  }

  async finish(): Promise<ReceivedBody> {
    const md5 = this.md5.digest();
    const sha256Hex = this.sha.digest('hex');
    if (this.fh !== undefined && this.path !== undefined) {
      await this.fh.close();
      this.fh = undefined;
      return { data: { kind: 'file', path: this.path }, size: this.size, md5, sha256Hex, ownedFile: this.path };
    }
    return { data: { kind: 'buffer', buf: Buffer.concat(this.chunks) }, size: this.size, md5, sha256Hex, ownedFile: undefined };
  }

  async discard(): Promise<void> {
    this.chunks = [];
    if (this.fh !== undefined) await this.fh.close().catch(() => {});
    this.fh = undefined;
    if (this.path !== undefined) await unlink(this.path).catch(() => {});
  }
}

interface UploadPart {
  readonly body: ReceivedBody;
}

interface MultipartUpload {
  readonly bucket: string;
  readonly key: string;
  readonly contentType: string;
  readonly parts: Map<number, UploadPart>;
}

// ---------------------------------------------------------------------------------------------
// Faults and pacing
// ---------------------------------------------------------------------------------------------

interface RuleState {
  readonly rule: FaultRule;
  matched: number;
  applied: number;
  readonly random: () => number;
}

/** Token bucket of one connection; the debt form (tokens may go negative) paces exactly. */
interface TokenBucket {
  tokens: number;
  last: number;
}

function pacedSlice(rate: number): number {
  return Math.max(MIN_PACED_SLICE, Math.min(MAX_PACED_SLICE, Math.floor(rate / 100)));
}

// ---------------------------------------------------------------------------------------------
// The server
// ---------------------------------------------------------------------------------------------

interface RequestTarget {
  readonly bucket: string;
  readonly key: string;
  readonly rawPath: string;
  readonly query: readonly QueryParam[];
}

/** The server. Start with `ObjectServer.start()`, stop with `close()`; objects, faults and
 * shaping can be changed at any time and act from the next request (or slice) on. */
export class ObjectServer {
  /** `http://host:port`, without a trailing slash. */
  readonly endpoint: string;
  private readonly server: Server;
  private readonly opts: ObjectServerOptions;
  private readonly buckets = new Map<string, Map<string, StoredObject>>();
  private readonly uploads = new Map<string, MultipartUpload>();
  private readonly sockets = new Set<Socket>();
  private readonly connectionBuckets = new WeakMap<Socket, TokenBucket>();
  private readonly requestIds = new WeakMap<RequestLogEntry, string>();
  private readonly rules: RuleState[] = [];
  private readonly log: RequestLogEntry[] = [];
  private readonly handlers = new Set<Promise<void>>();
  private readonly closing = new AbortController();
  private rateLimit: number | undefined;
  private firstByteLatencyMs: number;
  private getsInFlight = 0;
  private requestSeq = 0;
  private uploadSeq = 0;
  private tempDir: Promise<string> | undefined;
  private tempSeq = 0;
  private closed: Promise<void> | undefined;

  private constructor(server: Server, endpoint: string, opts: ObjectServerOptions) {
    this.server = server;
    this.endpoint = endpoint;
    this.opts = opts;
    this.rateLimit = opts.rateLimitBytesPerSec;
    this.firstByteLatencyMs = opts.firstByteLatencyMs ?? 0;
    // Every response in flight listens for the server closing; hundreds at once are normal.
    setMaxListeners(0, this.closing.signal);
  }

  /** Starts listening; resolves once the port is bound. */
  static async start(opts: ObjectServerOptions = {}): Promise<ObjectServer> {
    for (const [name, value] of [
      ['rateLimitBytesPerSec', opts.rateLimitBytesPerSec],
      ['maxConcurrentRequests', opts.maxConcurrentRequests],
    ] as const) {
      if (value !== undefined && !(value > 0)) throw new RoboflowError('ERR_CONFIG', `ObjectServer option ${name} must be > 0, got ${value}`);
    }
    const server = createServer({ requestTimeout: 0, headersTimeout: 60_000, keepAliveTimeout: 5_000 });
    // Uploads of gigabytes at a capped rate take long; the server must not cut them off.
    server.timeout = 0;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(opts.port ?? 0, opts.host ?? '127.0.0.1', () => {
        server.off('error', reject);
        resolve();
      });
    });
    const addr = server.address() as AddressInfo;
    const host = addr.family === 'IPv6' || addr.address.includes(':') ? `[${addr.address}]` : addr.address;
    const self = new ObjectServer(server, `http://${host}:${addr.port}`, opts);
    server.on('connection', (socket: Socket) => {
      self.sockets.add(socket);
      socket.once('close', () => self.sockets.delete(socket));
    });
    server.on('request', (req: IncomingMessage, res: ServerResponse) => {
      const p = self.handle(req, res).catch((err: unknown) => self.failResponse(res, err));
      self.handlers.add(p);
      void p.finally(() => self.handlers.delete(p));
    });
    return self;
  }

  // ----- URLs --------------------------------------------------------------------------------

  /** Path-style URL of an object, each key segment percent-encoded. */
  httpUrl(bucket: string, key: string): string {
    return `${this.endpoint}/${uriEncode(bucket)}/${key.split('/').map(uriEncode).join('/')}`;
  }

  /** `s3://bucket/key`, for code that takes S3 URLs plus an endpoint override. */
  s3Url(bucket: string, key: string): string {
    return `s3://${bucket}/${key}`;
  }

  // ----- Objects -----------------------------------------------------------------------------

  /** Stores (or replaces) an object. See `PutObjectResult` on when the ETag is computed. */
  putObject(bucket: string, key: string, body: ObjectBody, options: PutObjectOptions = {}): PutObjectResult {
    let data: ObjectData;
    let size: number;
    if (Buffer.isBuffer(body)) {
      data = { kind: 'buffer', buf: body };
      size = body.length;
    } else if ('generated' in body) {
      const { size: s, seed } = body.generated;
      if (!Number.isSafeInteger(s) || s < 0 || !Number.isSafeInteger(seed)) {
        throw new RoboflowError('ERR_CONFIG', `generated body for ${bucket}/${key} needs an integer size >= 0 and seed, got ${s}, ${seed}`);
      }
      data = { kind: 'generated', seed };
      size = s;
    } else {
      let st;
      try {
        st = statSync(body.file);
      } catch (err) {
        throw new RoboflowError('ERR_NOT_FOUND', `file ${body.file} for object ${bucket}/${key} cannot be read; create it first`, { cause: err });
      }
      if (!st.isFile()) throw new RoboflowError('ERR_CONFIG', `${body.file} for object ${bucket}/${key} is not a regular file`);
      data = { kind: 'file', path: body.file };
      size = st.size;
    }
    let etag = options.etag === undefined ? undefined : quoteEtag(options.etag);
    if (etag === undefined && data.kind === 'buffer') etag = `"${md5Hex(data.buf)}"`;
    const obj = this.store(bucket, key, { data, size, etag, contentType: options.contentType, ownedFile: undefined });
    return {
      size,
      get etag(): string {
        if (obj.etag === undefined) obj.etag = `"${dataDigestSync(obj, 'md5')}"`;
        return obj.etag;
      },
    };
  }

  deleteObject(bucket: string, key: string): void {
    const objects = this.buckets.get(bucket);
    const obj = objects?.get(key);
    if (obj === undefined || objects === undefined) return;
    objects.delete(key);
    this.retire(obj);
  }

  /** Creates an empty bucket (objects create their bucket implicitly). */
  createBucket(bucket: string): void {
    if (!this.buckets.has(bucket)) this.buckets.set(bucket, new Map());
  }

  hasObject(bucket: string, key: string): boolean {
    return this.buckets.get(bucket)?.has(key) ?? false;
  }

  /** Keys of a bucket, sorted. */
  listKeys(bucket: string): string[] {
    return [...(this.buckets.get(bucket)?.keys() ?? [])].sort();
  }

  objectSize(bucket: string, key: string): number {
    return this.mustGet(bucket, key).size;
  }

  /** The quoted ETag the server sends for the object (computed and cached on first use). */
  objectEtag(bucket: string, key: string): Promise<string> {
    return this.etagOf(this.mustGet(bucket, key));
  }

  /** Hex SHA-256 of the object's content; streams generated and file bodies. */
  async objectSha256(bucket: string, key: string): Promise<string> {
    return dataDigest(this.mustGet(bucket, key), 'sha256');
  }

  /** The whole content in memory, for small objects in tests. */
  objectBytes(bucket: string, key: string): Buffer {
    const obj = this.mustGet(bucket, key);
    const d = obj.data;
    switch (d.kind) {
      case 'buffer':
        return d.buf;
      case 'generated':
        return generatedContent(d.seed, 0, obj.size);
      case 'file': {
        const buf = Buffer.allocUnsafe(obj.size);
        const fd = openSync(d.path, 'r');
        try {
          let filled = 0;
          while (filled < obj.size) {
            const n = readSync(fd, buf, filled, obj.size - filled, filled);
            if (n === 0) break;
            filled += n;
          }
          return buf.subarray(0, filled);
        } finally {
          closeSync(fd);
        }
      }
      default: {
        const _exhaustive: never = d;
        return _exhaustive;
      }
    }
  }

  // ----- Faults and shaping ------------------------------------------------------------------

  /** Adds a fault rule. A request is offered to the rules in the order they were added; the
   * first rule that takes it applies its fault, and the rules after it do not see the request
   * (their `skip`/`times` counts are not touched). */
  addFault(rule: FaultRule): void {
    if (rule.probability !== undefined && !(rule.probability >= 0 && rule.probability <= 1)) {
      throw new RoboflowError('ERR_CONFIG', `fault rule probability must be within [0, 1], got ${rule.probability}`);
    }
    this.rules.push({ rule, matched: 0, applied: 0, random: mulberry32(rule.seed ?? 1) });
  }

  /** Removes every fault rule (and with them their counts). */
  clearFaults(): void {
    this.rules.length = 0;
  }

  /** Changes the per-connection cap; responses already streaming follow it from their next slice. */
  setRateLimit(bytesPerSec: number | undefined): void {
    if (bytesPerSec !== undefined && !(bytesPerSec > 0)) throw new RoboflowError('ERR_CONFIG', `rate limit must be > 0 bytes/s or undefined, got ${bytesPerSec}`);
    this.rateLimit = bytesPerSec;
  }

  /** Changes the delay before the headers of each GET/HEAD; 0 turns it off. */
  setFirstByteLatency(ms: number): void {
    this.firstByteLatencyMs = Math.max(0, ms);
  }

  // ----- Request log -------------------------------------------------------------------------

  get requests(): readonly RequestLogEntry[] {
    return this.log;
  }

  clearRequests(): void {
    this.log.length = 0;
  }

  /** Sum of body bytes sent for GETs of an object (or of a bucket, or of all objects) since the
   * log was last cleared. */
  bytesServed(bucket?: string, key?: string): number {
    let sum = 0;
    for (const e of this.log) {
      if (e.method !== 'GET' || e.key === '') continue;
      if (bucket !== undefined && e.bucket !== bucket) continue;
      if (key !== undefined && e.key !== key) continue;
      sum += e.bytesSent;
    }
    return sum;
  }

  // ----- Life cycle --------------------------------------------------------------------------

  /** Stops listening, destroys every connection (stalled responses included), waits for the
   * request handlers to finish and removes temp files. Idempotent. */
  close(): Promise<void> {
    this.closed ??= (async () => {
      this.closing.abort();
      const listening = new Promise<void>((resolve) => this.server.close(() => resolve()));
      for (const s of this.sockets) s.destroy();
      await listening;
      while (this.handlers.size > 0) await Promise.allSettled([...this.handlers]);
      for (const upload of this.uploads.values()) for (const part of upload.parts.values()) this.unlinkOwned(part.body.ownedFile);
      this.uploads.clear();
      if (this.tempDir !== undefined) {
        const dir = await this.tempDir.catch(() => undefined);
        if (dir !== undefined) await rm(dir, { recursive: true, force: true });
      }
    })();
    return this.closed;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  // ----- Internals: storage ------------------------------------------------------------------

  private store(
    bucket: string,
    key: string,
    init: { data: ObjectData; size: number; etag: string | undefined; contentType: string | undefined; ownedFile: string | undefined },
  ): StoredObject {
    let objects = this.buckets.get(bucket);
    if (objects === undefined) {
      objects = new Map();
      this.buckets.set(bucket, objects);
    }
    const obj: StoredObject = {
      data: init.data,
      size: init.size,
      etag: init.etag,
      etagPromise: undefined,
      // S3 reports whole seconds; so do we, so Last-Modified round-trips exactly.
      lastModified: new Date(Math.floor(Date.now() / 1000) * 1000),
      contentType: init.contentType ?? 'application/octet-stream',
      ownedFile: init.ownedFile,
      readers: 0,
      removed: false,
    };
    const previous = objects.get(key);
    objects.set(key, obj);
    if (previous !== undefined) this.retire(previous);
    return obj;
  }

  private retire(obj: StoredObject): void {
    obj.removed = true;
    if (obj.readers === 0) this.unlinkOwned(obj.ownedFile);
  }

  private unlinkOwned(path: string | undefined): void {
    if (path !== undefined) void unlink(path).catch(() => {});
  }

  private mustGet(bucket: string, key: string): StoredObject {
    const obj = this.buckets.get(bucket)?.get(key);
    if (obj === undefined) throw new RoboflowError('ERR_NOT_FOUND', `object ${bucket}/${key} does not exist on the test server; putObject it first`);
    return obj;
  }

  private etagOf(obj: StoredObject): Promise<string> {
    if (obj.etag !== undefined) return Promise.resolve(obj.etag);
    obj.etagPromise ??= dataDigest(obj, 'md5').then((hex) => {
      obj.etag ??= `"${hex}"`;
      return obj.etag;
    });
    return obj.etagPromise;
  }

  private tempPath(): Promise<string> {
    this.tempDir ??= mkdtemp(join(tmpdir(), 'roboflow-objsrv-'));
    return this.tempDir.then((dir) => join(dir, `body-${++this.tempSeq}`));
  }

  // ----- Internals: requests -----------------------------------------------------------------

  private newEntry(method: string, target: RequestTarget, operation: string): RequestLogEntry {
    const entry: RequestLogEntry = { method, bucket: target.bucket, key: target.key, status: 0, bytesSent: 0, operation, startedAt: Date.now() };
    this.log.push(entry);
    return entry;
  }

  private pickFault(method: string, bucket: string, key: string, ranged: boolean): Fault | undefined {
    for (const st of this.rules) {
      const m = st.rule.match ?? {};
      const wanted = (m.method ?? 'GET').toUpperCase();
      if (wanted !== '*' && wanted !== method) continue;
      if (m.bucket !== undefined && m.bucket !== bucket) continue;
      if (m.key !== undefined && m.key !== key) continue;
      if (m.rangedOnly === true && !ranged) continue;
      const index = st.matched++;
      if (index < (st.rule.skip ?? 0)) continue;
      if (st.rule.probability !== undefined) {
        if (st.rule.times !== undefined && st.applied >= st.rule.times) continue;
        if (st.random() >= st.rule.probability) continue;
      } else if (st.applied >= (st.rule.times ?? 1)) {
        continue;
      }
      st.applied++;
      return st.rule.fault;
    }
    return undefined;
  }

  private sendXml(res: ServerResponse, entry: RequestLogEntry, status: number, xml: string | undefined, headers: Record<string, string> = {}): void {
    entry.status = status;
    const body = xml === undefined || entry.method === 'HEAD' ? undefined : Buffer.from(xml, 'utf8');
    res.writeHead(status, {
      'x-amz-request-id': this.requestIdOf(entry),
      ...(body === undefined ? {} : { 'Content-Type': 'application/xml', 'Content-Length': String(body.length) }),
      ...headers,
    });
    res.end(body);
  }

  private sendError(res: ServerResponse, entry: RequestLogEntry, status: number, code: string, message: string, headers: Record<string, string> = {}): void {
    const resource = entry.key === '' ? `/${entry.bucket}` : `/${entry.bucket}/${entry.key}`;
    this.sendXml(res, entry, status, s3Error(code, message, resource, this.requestIdOf(entry)), headers);
  }

  private requestIdOf(entry: RequestLogEntry): string {
    let id = this.requestIds.get(entry);
    if (id === undefined) {
      id = (++this.requestSeq).toString(16).toUpperCase().padStart(16, '0');
      this.requestIds.set(entry, id);
    }
    return id;
  }

  private failResponse(res: ServerResponse, err: unknown): void {
    if (res.headersSent || res.destroyed) {
      res.destroy();
      return;
    }
    const message = err instanceof Error ? err.message : String(err);
    const body = Buffer.from(s3Error('InternalError', message, '', 'internal'));
    res.writeHead(500, { 'Content-Type': 'application/xml', 'Content-Length': String(body.length), Connection: 'close' });
    res.end(body);
  }

  private parseTarget(req: IncomingMessage): RequestTarget | undefined {
    const url = req.url ?? '/';
    const q = url.indexOf('?');
    const rawPath = q < 0 ? url : url.slice(0, q);
    const query = parseQuery(q < 0 ? '' : url.slice(q + 1));
    if (query === undefined || !rawPath.startsWith('/')) return undefined;
    const slash = rawPath.indexOf('/', 1);
    const bucket = safeDecode(slash < 0 ? rawPath.slice(1) : rawPath.slice(1, slash));
    const key = slash < 0 ? '' : safeDecode(rawPath.slice(slash + 1));
    if (bucket === undefined || key === undefined) return undefined;
    return { bucket, key, rawPath, query };
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const method = (req.method ?? 'GET').toUpperCase();
    const target = this.parseTarget(req);
    if (target === undefined) {
      const entry = this.newEntry(method, { bucket: '', key: '', rawPath: '', query: [] }, 'Invalid');
      req.resume();
      this.sendError(res, entry, 400, 'InvalidURI', `could not parse the request URI ${JSON.stringify(req.url)}`);
      return;
    }
    const has = (name: string): boolean => target.query.some((p) => p.name === name);
    const qv = (name: string): string | undefined => target.query.find((p) => p.name === name)?.value;
    const operation = this.operationOf(method, target, has);
    const entry = this.newEntry(method, target, operation);

    let signing: SigningContext | undefined;
    let payloadHash = typeof req.headers['x-amz-content-sha256'] === 'string' ? req.headers['x-amz-content-sha256'] : undefined;
    if (this.opts.credentials !== undefined) {
      const auth = verifySigV4(req, target.rawPath, target.query, this.opts.credentials, (this.opts.clock ?? Date.now)());
      if (!auth.ok) {
        req.resume();
        this.sendError(res, entry, auth.status, auth.code, auth.message);
        return;
      }
      signing = auth.ctx;
      payloadHash = auth.payloadHash;
    }

    switch (operation) {
      case 'GetObject':
      case 'HeadObject':
        return this.serveObject(req, res, entry, target);
      case 'PutObject':
      case 'UploadPart':
      case 'CreateMultipartUpload':
      case 'CompleteMultipartUpload':
      case 'AbortMultipartUpload':
      case 'DeleteObject':
        return this.mutateObject(req, res, entry, target, operation, { signing, payloadHash, qv });
      case 'ListObjectsV2':
      case 'ListObjects':
        req.resume();
        return this.listObjects(res, entry, target.bucket, operation, qv);
      case 'ListBuckets': {
        req.resume();
        const names = [...this.buckets.keys()].sort();
        const xml =
          `${XML_HEADER}<ListAllMyBucketsResult xmlns="${S3_NS}"><Owner><ID>roboflow</ID><DisplayName>roboflow</DisplayName></Owner><Buckets>` +
          names.map((n) => `<Bucket><Name>${xmlEscape(n)}</Name><CreationDate>${new Date(0).toISOString()}</CreationDate></Bucket>`).join('') +
          `</Buckets></ListAllMyBucketsResult>`;
        return this.sendXml(res, entry, 200, xml);
      }
      case 'HeadBucket':
        req.resume();
        if (!this.buckets.has(target.bucket)) return this.sendError(res, entry, 404, 'NoSuchBucket', 'The specified bucket does not exist');
        return this.sendXml(res, entry, 200, undefined);
      case 'CreateBucket':
        req.resume();
        this.createBucket(target.bucket);
        return this.sendXml(res, entry, 200, undefined, { Location: `/${target.bucket}` });
      case 'DeleteBucket': {
        req.resume();
        const objects = this.buckets.get(target.bucket);
        if (objects === undefined) return this.sendError(res, entry, 404, 'NoSuchBucket', 'The specified bucket does not exist');
        if (objects.size > 0) return this.sendError(res, entry, 409, 'BucketNotEmpty', 'The bucket you tried to delete is not empty');
        this.buckets.delete(target.bucket);
        return this.sendXml(res, entry, 204, undefined);
      }
      default:
        req.resume();
        return this.sendError(res, entry, 501, 'NotImplemented', `${method} ${target.rawPath} with these parameters is not supported by the test object server`);
    }
  }

  private operationOf(method: string, target: RequestTarget, has: (name: string) => boolean): string {
    if (target.bucket === '') return method === 'GET' ? 'ListBuckets' : 'Unsupported';
    if (target.key === '') {
      switch (method) {
        case 'GET':
          if (has('uploads') || has('location') || has('versioning') || has('policy')) return 'Unsupported';
          return target.query.find((p) => p.name === 'list-type')?.value === '2' ? 'ListObjectsV2' : 'ListObjects';
        case 'HEAD':
          return 'HeadBucket';
        case 'PUT':
          return 'CreateBucket';
        case 'DELETE':
          return 'DeleteBucket';
        default:
          return 'Unsupported';
      }
    }
    switch (method) {
      case 'GET':
        return has('uploadId') || has('acl') || has('tagging') ? 'Unsupported' : 'GetObject';
      case 'HEAD':
        return 'HeadObject';
      case 'PUT':
        if (has('partNumber') && has('uploadId')) return 'UploadPart';
        return has('acl') || has('tagging') ? 'Unsupported' : 'PutObject';
      case 'POST':
        if (has('uploads')) return 'CreateMultipartUpload';
        if (has('uploadId')) return 'CompleteMultipartUpload';
        return 'Unsupported';
      case 'DELETE':
        return has('uploadId') ? 'AbortMultipartUpload' : 'DeleteObject';
      default:
        return 'Unsupported';
    }
  }

  /** An AbortSignal for one response: aborts when the response closes (finished or the client
   * went away) or the server closes. */
  private responseSignal(res: ServerResponse): { signal: AbortSignal; dispose: () => void } {
    const ac = new AbortController();
    const abort = (): void => ac.abort();
    res.once('close', abort);
    this.closing.signal.addEventListener('abort', abort, { once: true });
    if (this.closing.signal.aborted) ac.abort();
    return {
      signal: ac.signal,
      dispose: () => {
        res.off('close', abort);
        this.closing.signal.removeEventListener('abort', abort);
      },
    };
  }

  private async serveObject(req: IncomingMessage, res: ServerResponse, entry: RequestLogEntry, target: RequestTarget): Promise<void> {
    req.resume();
    const { bucket, key } = target;
    const isGet = entry.method === 'GET';
    const rangeHeader = req.headers.range;
    const ifMatch = req.headers['if-match'];
    if (ifMatch !== undefined) entry.ifMatch = ifMatch;

    if (isGet) {
      const max = this.opts.maxConcurrentRequests;
      if (max !== undefined && this.getsInFlight >= max) {
        entry.throttled = true;
        const retry = this.opts.throttleRetryAfterSeconds;
        this.sendError(res, entry, 503, 'SlowDown', 'Please reduce your request rate.', retry === undefined ? {} : { 'Retry-After': String(retry) });
        return;
      }
      this.getsInFlight++;
      res.once('close', () => this.getsInFlight--);
    }

    const fault = this.pickFault(entry.method, bucket, key, rangeHeader !== undefined);
    if (fault !== undefined) entry.fault = fault.kind;
    const { signal, dispose } = this.responseSignal(res);
    try {
      if (this.firstByteLatencyMs > 0) await sleep(this.firstByteLatencyMs, signal);
      if (signal.aborted) return;

      if (fault !== undefined) {
        switch (fault.kind) {
          case 'replace':
            this.putObject(bucket, key, fault.body);
            break;
          case 'status':
            this.sendStatusFault(res, entry, fault);
            return;
          case 'html-error': {
            const html = Buffer.from('<!DOCTYPE html>\n<html><head><title>Service Unavailable</title></head><body><h1>Service Unavailable</h1><p>The server is temporarily unable to service your request.</p></body></html>\n');
            entry.status = 200;
            res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8', 'Content-Length': String(html.length) });
            if (entry.method === 'HEAD') {
              res.end();
            } else {
              entry.bytesSent = html.length;
              res.end(html);
            }
            return;
          }
          case 'reset':
            if (!isGet) {
              res.socket?.resetAndDestroy();
              return;
            }
            break;
          case 'stall':
            if (!isGet) await sleep(fault.ms ?? Infinity, signal);
            if (signal.aborted) return;
            break;
          case 'truncate':
          case 'bad-content-range':
          case 'no-content-length':
            break;
          default: {
            const _exhaustive: never = fault;
            return _exhaustive;
          }
        }
      }

      const obj = this.buckets.get(bucket)?.get(key);
      if (obj === undefined) {
        const spec = parseRange(rangeHeader);
        if (spec.kind === 'bounded') entry.range = { start: spec.first, end: spec.last + 1 };
        if (!this.buckets.has(bucket)) this.sendError(res, entry, 404, 'NoSuchBucket', 'The specified bucket does not exist');
        else this.sendError(res, entry, 404, 'NoSuchKey', 'The specified key does not exist.');
        return;
      }
      obj.readers++;
      try {
        await this.serveFound(res, entry, obj, fault, rangeHeader, ifMatch, req.headers['if-none-match'], signal);
      } finally {
        obj.readers--;
        if (obj.removed && obj.readers === 0) this.unlinkOwned(obj.ownedFile);
      }
    } finally {
      dispose();
    }
  }

  private sendStatusFault(res: ServerResponse, entry: RequestLogEntry, fault: Extract<Fault, { kind: 'status' }>): void {
    const headers: Record<string, string> = {};
    if (fault.retryAfterSeconds !== undefined) headers['Retry-After'] = String(fault.retryAfterSeconds);
    if (fault.ossDelayMs !== undefined) headers['x-oss-qos-delay-time'] = String(fault.ossDelayMs);
    if (fault.body === undefined) {
      const code = errorCodeForStatus(fault.status);
      this.sendError(res, entry, fault.status, code, `injected ${fault.status} ${code}`, headers);
      return;
    }
    entry.status = fault.status;
    const body = Buffer.from(fault.body, 'utf8');
    res.writeHead(fault.status, {
      ...headers,
      'Content-Type': fault.contentType ?? 'application/xml',
      'Content-Length': String(body.length),
    });
    res.end(entry.method === 'HEAD' ? undefined : body);
  }

  private async serveFound(
    res: ServerResponse,
    entry: RequestLogEntry,
    obj: StoredObject,
    fault: Fault | undefined,
    rangeHeader: string | undefined,
    ifMatch: string | undefined,
    ifNoneMatch: string | undefined,
    signal: AbortSignal,
  ): Promise<void> {
    // A big generated object's first ETag takes seconds; a client or server going away must
    // not wait for it.
    const etag = obj.etag ?? (await Promise.race([this.etagOf(obj), sleep(Infinity, signal).then(() => undefined)]));
    if (etag === undefined || signal.aborted) return;
    const etagMatches = (header: string): boolean =>
      header
        .split(',')
        .map((s) => s.trim())
        .some((t) => t === '*' || t === etag || quoteEtag(t) === etag);
    if (ifMatch !== undefined && !etagMatches(ifMatch)) {
      this.sendError(res, entry, 412, 'PreconditionFailed', 'At least one of the pre-conditions you specified did not hold');
      return;
    }
    if (ifNoneMatch !== undefined && etagMatches(ifNoneMatch)) {
      entry.status = 304;
      res.writeHead(304, { ETag: etag, 'Last-Modified': obj.lastModified.toUTCString() });
      res.end();
      return;
    }

    const size = obj.size;
    const resolved = resolveRange(parseRange(rangeHeader), size);
    if (resolved === 'unsatisfiable') {
      this.sendError(res, entry, 416, 'InvalidRange', 'The requested range is not satisfiable', { 'Content-Range': `bytes */${size}` });
      return;
    }
    const start = resolved?.start ?? 0;
    const end = resolved?.end ?? size;
    if (resolved !== undefined) entry.range = { start, end };

    let status = resolved === undefined ? 200 : 206;
    const headers: Record<string, string> = {
      'Accept-Ranges': 'bytes',
      ETag: etag,
      'Last-Modified': obj.lastModified.toUTCString(),
      'Content-Type': obj.contentType,
      'x-amz-request-id': this.requestIdOf(entry),
    };
    if (resolved !== undefined) headers['Content-Range'] = `bytes ${start}-${end - 1}/${size}`;
    if (fault?.kind === 'bad-content-range') {
      // Name a range shifted by one byte (down when up would run past the end).
      status = 206;
      const shift = end < size ? 1 : -1;
      const s = Math.max(0, start + shift);
      const e = Math.max(s + 1, end + shift);
      headers['Content-Range'] = size === 0 ? 'bytes 0-0/1' : `bytes ${s}-${e - 1}/${size}`;
    }
    if (fault?.kind !== 'no-content-length') headers['Content-Length'] = String(end - start);
    if (fault?.kind === 'truncate' || fault?.kind === 'reset') headers.Connection = 'close';
    entry.status = status;
    if (entry.method === 'HEAD') {
      res.writeHead(status, headers);
      res.end();
      return;
    }
    const reader = await openReader(obj);
    try {
      res.writeHead(status, headers);
      await this.sendBody(res, entry, reader, start, end, fault, signal);
    } finally {
      await reader.close();
    }
  }

  private async sendBody(
    res: ServerResponse,
    entry: RequestLogEntry,
    reader: SliceReader,
    start: number,
    end: number,
    fault: Fault | undefined,
    signal: AbortSignal,
  ): Promise<void> {
    const socket = res.socket;
    if (socket === null) return;
    const bodyFault = fault?.kind === 'reset' || fault?.kind === 'truncate' || fault?.kind === 'stall' ? fault : undefined;
    const limit = bodyFault === undefined ? Infinity : Math.max(0, bodyFault.afterBytes);
    let stalled = false;
    let pos = start;
    for (;;) {
      if (signal.aborted || res.destroyed) return;
      const sent = pos - start;
      if (bodyFault !== undefined && sent >= limit) {
        switch (bodyFault.kind) {
          case 'reset':
            // Let the bytes already written reach the kernel, then abort with an RST.
            res.flushHeaders();
            await new Promise<void>((resolve) => socket.write(Buffer.alloc(0), () => resolve()));
            socket.resetAndDestroy();
            return;
          case 'truncate':
            // `Connection: close` was sent, so ending here closes the socket: a clean EOF short
            // of the promised Content-Length.
            res.end();
            return;
          case 'stall':
            if (!stalled) {
              stalled = true;
              res.flushHeaders();
              await sleep(bodyFault.ms ?? Infinity, signal);
              continue;
            }
            break;
          default: {
            const _exhaustive: never = bodyFault;
            return _exhaustive;
          }
        }
      }
      if (pos >= end) break;
      const rate = this.rateLimit;
      let len = Math.min(rate === undefined ? FAST_SLICE : pacedSlice(rate), end - pos);
      if (sent < limit) len = Math.min(len, limit - sent);
      if (rate !== undefined) {
        await this.pace(socket, len, rate, signal);
        if (signal.aborted) return;
      }
      const buf = await reader.read(pos, len);
      if (signal.aborted || res.destroyed) return;
      pos += len;
      entry.bytesSent += len;
      if (!res.write(buf)) await drained(res, signal);
    }
    res.end();
  }

  /** Takes `len` tokens from the connection's bucket, sleeping off any debt. */
  private async pace(socket: Socket, len: number, rate: number, signal: AbortSignal): Promise<void> {
    const now = performance.now();
    const burst = Math.max(pacedSlice(rate), rate * PACE_BURST_SECONDS);
    let b = this.connectionBuckets.get(socket);
    if (b === undefined) {
      b = { tokens: burst, last: now };
      this.connectionBuckets.set(socket, b);
    }
    b.tokens = Math.min(burst, b.tokens + ((now - b.last) / 1000) * rate);
    b.last = now;
    b.tokens -= len;
    if (b.tokens < 0) await sleep((-b.tokens / rate) * 1000, signal);
  }

  // ----- Writes ------------------------------------------------------------------------------

  private async mutateObject(
    req: IncomingMessage,
    res: ServerResponse,
    entry: RequestLogEntry,
    target: RequestTarget,
    operation: string,
    ctx: { signing: SigningContext | undefined; payloadHash: string | undefined; qv: (name: string) => string | undefined },
  ): Promise<void> {
    const { bucket, key } = target;
    const fault = this.pickFault(entry.method, bucket, key, false);
    if (fault !== undefined) {
      switch (fault.kind) {
        case 'status':
          entry.fault = fault.kind;
          req.resume();
          this.sendStatusFault(res, entry, fault);
          return;
        case 'reset':
          entry.fault = fault.kind;
          req.socket.resetAndDestroy();
          return;
        case 'replace':
          entry.fault = fault.kind;
          this.putObject(bucket, key, fault.body);
          break;
        case 'truncate':
        case 'stall':
        case 'bad-content-range':
        case 'no-content-length':
        case 'html-error':
          // Response-body faults have nothing to act on for writes.
          break;
        default: {
          const _exhaustive: never = fault;
          return _exhaustive;
        }
      }
    }

    switch (operation) {
      case 'PutObject': {
        if (req.headers['x-amz-copy-source'] !== undefined) {
          req.resume();
          this.sendError(res, entry, 501, 'NotImplemented', 'CopyObject is not supported by the test object server');
          return;
        }
        const body = await this.receiveBody(req, res, entry, ctx);
        if (body === undefined) return;
        const contentType = typeof req.headers['content-type'] === 'string' ? req.headers['content-type'] : undefined;
        const obj = this.store(bucket, key, { data: body.data, size: body.size, etag: `"${body.md5.toString('hex')}"`, contentType, ownedFile: body.ownedFile });
        this.sendXml(res, entry, 200, undefined, { ETag: obj.etag ?? '' });
        return;
      }
      case 'DeleteObject':
        req.resume();
        this.deleteObject(bucket, key);
        this.sendXml(res, entry, 204, undefined);
        return;
      case 'CreateMultipartUpload': {
        req.resume();
        const uploadId = `upload-${++this.uploadSeq}-${Date.now().toString(36)}`;
        const contentType = typeof req.headers['content-type'] === 'string' ? req.headers['content-type'] : 'application/octet-stream';
        this.uploads.set(uploadId, { bucket, key, contentType, parts: new Map() });
        this.sendXml(
          res,
          entry,
          200,
          `${XML_HEADER}<InitiateMultipartUploadResult xmlns="${S3_NS}"><Bucket>${xmlEscape(bucket)}</Bucket><Key>${xmlEscape(key)}</Key><UploadId>${uploadId}</UploadId></InitiateMultipartUploadResult>`,
        );
        return;
      }
      case 'UploadPart': {
        const upload = this.findUpload(ctx.qv('uploadId'), bucket, key);
        const partNumber = Number(ctx.qv('partNumber'));
        if (upload === undefined) {
          req.resume();
          this.sendError(res, entry, 404, 'NoSuchUpload', 'The specified multipart upload does not exist.');
          return;
        }
        if (!Number.isInteger(partNumber) || partNumber < 1 || partNumber > 10_000) {
          req.resume();
          this.sendError(res, entry, 400, 'InvalidArgument', 'Part number must be an integer between 1 and 10000, inclusive');
          return;
        }
        const body = await this.receiveBody(req, res, entry, ctx);
        if (body === undefined) return;
        const previous = upload.parts.get(partNumber);
        upload.parts.set(partNumber, { body });
        if (previous !== undefined) this.unlinkOwned(previous.body.ownedFile);
        this.sendXml(res, entry, 200, undefined, { ETag: `"${body.md5.toString('hex')}"` });
        return;
      }
      case 'CompleteMultipartUpload':
        return this.completeUpload(req, res, entry, ctx.qv('uploadId'), bucket, key);
      case 'AbortMultipartUpload': {
        req.resume();
        const id = ctx.qv('uploadId');
        const upload = this.findUpload(id, bucket, key);
        if (upload === undefined || id === undefined) {
          this.sendError(res, entry, 404, 'NoSuchUpload', 'The specified multipart upload does not exist.');
          return;
        }
        this.uploads.delete(id);
        for (const part of upload.parts.values()) this.unlinkOwned(part.body.ownedFile);
        this.sendXml(res, entry, 204, undefined);
        return;
      }
      default:
        req.resume();
        this.sendError(res, entry, 501, 'NotImplemented', `${operation} is not supported by the test object server`);
    }
  }

  private findUpload(id: string | undefined, bucket: string, key: string): MultipartUpload | undefined {
    const upload = id === undefined ? undefined : this.uploads.get(id);
    return upload !== undefined && upload.bucket === bucket && upload.key === key ? upload : undefined;
  }

  /** Reads a request body (decoding aws-chunked), checks its declared hashes and lengths, and
   * returns it; on a bad body answers the error itself and returns undefined. */
  private async receiveBody(
    req: IncomingMessage,
    res: ServerResponse,
    entry: RequestLogEntry,
    ctx: { signing: SigningContext | undefined; payloadHash: string | undefined },
  ): Promise<ReceivedBody | undefined> {
    const sink = new BodySink(this.opts.spoolThresholdBytes ?? 8 * MiB, () => this.tempPath());
    const payloadHash = ctx.payloadHash;
    const encoding = String(req.headers['content-encoding'] ?? '');
    const chunked = payloadHash?.startsWith('STREAMING-') === true || encoding.split(',').some((e) => e.trim() === 'aws-chunked');
    const signedChunks = payloadHash?.startsWith('STREAMING-AWS4-HMAC-SHA256-PAYLOAD') === true ? ctx.signing : undefined;
    const trailers = new Map<string, string>();
    const algorithm = flexibleChecksumOf(req);
    const checksum = algorithm === undefined ? undefined : new ChecksumAccumulator(algorithm);
    try {
      const source: AsyncIterable<Buffer> = chunked ? decodeAwsChunked(req, signedChunks, trailers) : req;
      for await (const piece of source) {
        checksum?.update(piece);
        await sink.write(piece);
      }
      const body = await sink.finish();
      if (checksum !== undefined) {
        const name = `x-amz-checksum-${checksum.algorithm}`;
        const header = req.headers[name];
        const declared = typeof header === 'string' ? header : trailers.get(name);
        if (declared === undefined) throw new BadRequest('InvalidRequest', `${name} was announced in x-amz-trailer but not sent`);
        if (declared !== checksum.base64()) {
          throw new BadRequest('BadDigest', `The ${checksum.algorithm.toUpperCase()} you specified did not match the calculated checksum.`);
        }
      }
      const decodedLength = req.headers['x-amz-decoded-content-length'];
      if (chunked && typeof decodedLength === 'string' && Number(decodedLength) !== body.size) {
        throw new BadRequest('IncompleteBody', `x-amz-decoded-content-length says ${decodedLength} bytes, the aws-chunked body had ${body.size}`);
      }
      if (payloadHash !== undefined && /^[0-9a-f]{64}$/.test(payloadHash) && payloadHash !== body.sha256Hex) {
        throw new BadRequest('XAmzContentSHA256Mismatch', "The provided 'x-amz-content-sha256' header does not match what was computed.");
      }
      const md5Header = req.headers['content-md5'];
      if (typeof md5Header === 'string' && md5Header !== body.md5.toString('base64')) {
        throw new BadRequest('BadDigest', 'The Content-MD5 you specified did not match what we received.');
      }
      return body;
    } catch (err) {
      await sink.discard();
      if (err instanceof BadRequest) {
        req.resume();
        if (!res.headersSent && !res.destroyed) this.sendError(res, entry, err.status, err.s3Code, err.message, { Connection: 'close' });
        return undefined;
      }
      if (req.destroyed || this.closing.signal.aborted) return undefined; // the client went away
      throw err;
    }
  }

  private async completeUpload(req: IncomingMessage, res: ServerResponse, entry: RequestLogEntry, id: string | undefined, bucket: string, key: string): Promise<void> {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const upload = this.findUpload(id, bucket, key);
    if (upload === undefined || id === undefined) {
      this.sendError(res, entry, 404, 'NoSuchUpload', 'The specified multipart upload does not exist.');
      return;
    }
    const xml = Buffer.concat(chunks).toString('utf8');
    const listed: { partNumber: number; etag: string }[] = [];
    for (const m of xml.matchAll(/<Part>([\s\S]*?)<\/Part>/g)) {
      const inner = m[1] ?? '';
      const num = /<PartNumber>\s*(\d+)\s*<\/PartNumber>/.exec(inner)?.[1];
      const etag = /<ETag>([\s\S]*?)<\/ETag>/.exec(inner)?.[1];
      if (num === undefined || etag === undefined) {
        this.sendError(res, entry, 400, 'MalformedXML', 'The XML you provided was not well-formed or did not validate against our published schema');
        return;
      }
      listed.push({ partNumber: Number(num), etag: quoteEtag(xmlUnescape(etag.trim())) });
    }
    if (listed.length === 0) {
      this.sendError(res, entry, 400, 'MalformedXML', 'The XML you provided was not well-formed or did not validate against our published schema');
      return;
    }
    const minPart = this.opts.minPartSizeBytes ?? 5 * MiB;
    const chosen: ReceivedBody[] = [];
    for (let i = 0; i < listed.length; i++) {
      const l = listed[i];
      if (l === undefined) continue;
      if (i > 0 && l.partNumber <= (listed[i - 1]?.partNumber ?? 0)) {
        this.sendError(res, entry, 400, 'InvalidPartOrder', 'The list of parts was not in ascending order.');
        return;
      }
      const part = upload.parts.get(l.partNumber);
      if (part === undefined || `"${part.body.md5.toString('hex')}"` !== l.etag) {
        this.sendError(res, entry, 400, 'InvalidPart', `One or more of the specified parts could not be found (part ${l.partNumber}).`);
        return;
      }
      if (i < listed.length - 1 && part.body.size < minPart) {
        this.sendError(res, entry, 400, 'EntityTooSmall', `Your proposed upload is smaller than the minimum allowed object size (part ${l.partNumber}: ${part.body.size} bytes).`);
        return;
      }
      chosen.push(part.body);
    }
    const total = chosen.reduce((n, b) => n + b.size, 0);
    const etag = `"${createHash('md5').update(Buffer.concat(chosen.map((b) => b.md5))).digest('hex')}-${chosen.length}"`;
    let data: ObjectData;
    let ownedFile: string | undefined;
    if (total <= (this.opts.spoolThresholdBytes ?? 8 * MiB)) {
      const bufs: Buffer[] = [];
      for (const b of chosen) bufs.push(b.data.kind === 'buffer' ? b.data.buf : await this.readWhole(b));
      data = { kind: 'buffer', buf: Buffer.concat(bufs) };
    } else {
      ownedFile = await this.tempPath();
      const out = await open(ownedFile, 'w');
      try {
        for (const b of chosen) await this.appendBody(out, b);
      } finally {
        await out.close();
      }
      data = { kind: 'file', path: ownedFile };
    }
    this.uploads.delete(id);
    for (const part of upload.parts.values()) this.unlinkOwned(part.body.ownedFile);
    this.store(bucket, key, { data, size: total, etag, contentType: upload.contentType, ownedFile });
    this.sendXml(
      res,
      entry,
      200,
      `${XML_HEADER}<CompleteMultipartUploadResult xmlns="${S3_NS}"><Location>${xmlEscape(this.httpUrl(bucket, key))}</Location>` +
        `<Bucket>${xmlEscape(bucket)}</Bucket><Key>${xmlEscape(key)}</Key><ETag>${xmlEscape(etag)}</ETag></CompleteMultipartUploadResult>`,
    );
  }

  private async readWhole(body: ReceivedBody): Promise<Buffer> {
    const chunks: Buffer[] = [];
    await this.forEachSlice(body, async (b) => {
      chunks.push(Buffer.from(b));
    });
    return Buffer.concat(chunks);
  }

  private async appendBody(out: FileHandle, body: ReceivedBody): Promise<void> {
    await this.forEachSlice(body, async (b) => {
      await out.write(b);
    });
  }

  private async forEachSlice(body: ReceivedBody, fn: (b: Buffer) => Promise<void>): Promise<void> {
    const d = body.data;
    if (d.kind === 'buffer') return fn(d.buf);
    if (d.kind === 'generated') {
      for (let p = 0; p < body.size; p += MiB) await fn(generatedContent(d.seed, p, Math.min(body.size, p + MiB)));
      return;
    }
    const fh = await open(d.path, 'r');
    try {
      const buf = Buffer.allocUnsafe(MiB);
      for (;;) {
        const { bytesRead } = await fh.read(buf, 0, buf.length, null);
        if (bytesRead === 0) break;
        await fn(buf.subarray(0, bytesRead));
      }
    } finally {
      await fh.close();
    }
  }

  // ----- Listing -----------------------------------------------------------------------------

  private async listObjects(res: ServerResponse, entry: RequestLogEntry, bucket: string, operation: 'ListObjectsV2' | 'ListObjects', qv: (name: string) => string | undefined): Promise<void> {
    const objects = this.buckets.get(bucket);
    if (objects === undefined) {
      this.sendError(res, entry, 404, 'NoSuchBucket', 'The specified bucket does not exist');
      return;
    }
    const v2 = operation === 'ListObjectsV2';
    const prefix = qv('prefix') ?? '';
    const delimiter = qv('delimiter') ?? '';
    const maxKeysRaw = qv('max-keys');
    const maxKeys = maxKeysRaw === undefined ? 1000 : Math.max(0, Math.min(1000, Number(maxKeysRaw) || 0));
    const urlEncode = qv('encoding-type') === 'url';
    const enc = (s: string): string => xmlEscape(urlEncode ? uriEncode(s).replace(/%2F/g, '/') : s);
    const token = qv('continuation-token');
    let after = v2 ? (qv('start-after') ?? '') : (qv('marker') ?? '');
    if (v2 && token !== undefined) after = Buffer.from(token, 'base64url').toString('utf8');

    const keys = [...objects.keys()].filter((k) => k.startsWith(prefix) && k > after).sort();
    const contents: string[] = [];
    const prefixes: string[] = [];
    let last = '';
    let truncated = false;
    for (const k of keys) {
      const d = delimiter === '' ? -1 : k.indexOf(delimiter, prefix.length);
      const commonPrefix = d < 0 ? undefined : k.slice(0, d + delimiter.length);
      // Keys under the common prefix just listed roll up into it and do not count.
      if (commonPrefix !== undefined && commonPrefix === prefixes[prefixes.length - 1]) {
        last = k;
        continue;
      }
      if (contents.length + prefixes.length >= maxKeys) {
        truncated = true;
        break;
      }
      last = k;
      if (commonPrefix !== undefined) {
        prefixes.push(commonPrefix);
        continue;
      }
      const obj = objects.get(k);
      if (obj === undefined) continue;
      const etag = await this.etagOf(obj);
      contents.push(
        `<Contents><Key>${enc(k)}</Key><LastModified>${obj.lastModified.toISOString()}</LastModified><ETag>${xmlEscape(etag)}</ETag>` +
          `<Size>${obj.size}</Size><StorageClass>STANDARD</StorageClass></Contents>`,
      );
    }
    const parts = [`${XML_HEADER}<ListBucketResult xmlns="${S3_NS}">`, `<Name>${xmlEscape(bucket)}</Name>`, `<Prefix>${enc(prefix)}</Prefix>`];
    if (v2) {
      parts.push(`<KeyCount>${contents.length + prefixes.length}</KeyCount>`);
      if (token !== undefined) parts.push(`<ContinuationToken>${xmlEscape(token)}</ContinuationToken>`);
      if (truncated) parts.push(`<NextContinuationToken>${Buffer.from(last, 'utf8').toString('base64url')}</NextContinuationToken>`);
      const startAfter = qv('start-after');
      if (startAfter !== undefined) parts.push(`<StartAfter>${enc(startAfter)}</StartAfter>`);
    } else {
      parts.push(`<Marker>${enc(qv('marker') ?? '')}</Marker>`);
      if (truncated && delimiter !== '') parts.push(`<NextMarker>${enc(last)}</NextMarker>`);
    }
    parts.push(`<MaxKeys>${maxKeys}</MaxKeys>`);
    if (delimiter !== '') parts.push(`<Delimiter>${enc(delimiter)}</Delimiter>`);
    if (urlEncode) parts.push('<EncodingType>url</EncodingType>');
    parts.push(`<IsTruncated>${truncated}</IsTruncated>`, ...contents, ...prefixes.map((p) => `<CommonPrefixes><Prefix>${enc(p)}</Prefix></CommonPrefixes>`), '</ListBucketResult>');
    this.sendXml(res, entry, 200, parts.join(''));
  }
}
