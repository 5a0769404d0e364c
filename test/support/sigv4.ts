/**
 * AWS Signature Version 4 as the test object server checks it: from the Authorization header or
 * a presigned URL's query, over the path exactly as sent. The signing context it returns lets
 * `aws-chunked.ts` check the chunk signatures of a streamed upload.
 */

import { createHash, createHmac, timingSafeEqual } from 'node:crypto';
import type { IncomingMessage } from 'node:http';

/** Same tolerance as S3: a signed request older or newer than this is refused. */
const MAX_CLOCK_SKEW_MS = 15 * 60 * 1000;

/** One query parameter, decoded. */
export interface QueryParam {
  readonly name: string;
  readonly value: string;
}

/** RFC 3986 encoding as SigV4 and S3 use it (encodeURIComponent leaves !'()* alone). */
export function uriEncode(s: string): string {
  return encodeURIComponent(s).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
}

export interface SigningContext {
  readonly signingKey: Buffer;
  readonly amzDate: string;
  readonly scope: string;
  readonly signature: string;
}

export type AuthResult =
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

export function sameHex(a: string, b: string): boolean {
  const ba = Buffer.from(a, 'utf8');
  const bb = Buffer.from(b, 'utf8');
  return ba.length === bb.length && timingSafeEqual(ba, bb);
}

/**
 * Verifies an AWS Signature Version 4 request, from the Authorization header or from a
 * presigned URL's query. The canonical request uses the path exactly as sent (S3 does not
 * normalise or re-encode it) and the payload hash header as given.
 */
export function verifySigV4(
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
