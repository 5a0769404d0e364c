/**
 * Direct S3 reads: the HEAD and the presigned GET of an `s3://` object signed here with
 * `@smithy/signature-v4` (the SDK's own SigV4 signer), without loading the SDK's S3 client.
 *
 * Why: the client is the largest module a download loads. Bundled, importing it and building a
 * client took ~40 ms of the ~140 ms a `roboflow download` spent before its first request
 * (2-core VM, 1 GiB uncapped on loopback), in every run, for one HEAD and one signature.
 *
 * Used only where the SDK would decide nothing differently:
 * - static credentials: given explicitly, or `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` in the
 *   process environment with no `AWS_PROFILE` — the SDK's default chain reads these first, and
 *   skips them when a profile is named;
 * - an explicit endpoint: no endpoint rules, no region redirects;
 * - an address that endpoint fixes: path style, or virtual-hosted with a bucket name that is one
 *   DNS label (no dots).
 * Anything else goes through the SDK. So does every HEAD this signer's request does not get a 2xx
 * for: the SDK asks again and reports the store's error as it always has (`S3Source.stat`).
 */

import { createHash, createHmac } from 'node:crypto';
import { buildQueryString } from '@smithy/core/protocols';
import type { SignatureV4 } from '@smithy/signature-v4';
import type { Http1Response } from './http1.js';

/** Credentials that sign without a provider chain. */
export interface StaticCredentials {
  readonly accessKeyId: string;
  readonly secretAccessKey: string;
  readonly sessionToken?: string;
}

/** Where the object's requests go: origin and the path that names bucket and key. */
export interface DirectAddress {
  readonly protocol: 'http:' | 'https:';
  readonly hostname: string;
  readonly port: number | undefined;
  /** `host` header as sent (the port only when it is not the scheme's default). */
  readonly host: string;
  readonly path: string;
}

/** What the direct path needs of an S3 client handle: its transport. */
export interface DirectTransport {
  send(url: string, headers: Readonly<Record<string, string>>, signal?: AbortSignal, method?: 'GET' | 'HEAD'): Promise<Http1Response>;
}

/** The hash constructor `@smithy/signature-v4` wants, over node:crypto (HMAC when given a key). */
export class NodeSha256 {
  private readonly secret: Buffer | undefined;
  private hash: ReturnType<typeof createHash> | ReturnType<typeof createHmac>;

  constructor(secret?: string | ArrayBuffer | ArrayBufferView) {
    this.secret =
      secret === undefined
        ? undefined
        : typeof secret === 'string'
          ? Buffer.from(secret, 'utf8')
          : ArrayBuffer.isView(secret)
            ? Buffer.from(secret.buffer, secret.byteOffset, secret.byteLength)
            : Buffer.from(secret);
    this.hash = this.fresh();
  }

  private fresh(): ReturnType<typeof createHash> | ReturnType<typeof createHmac> {
    return this.secret === undefined ? createHash('sha256') : createHmac('sha256', this.secret);
  }

  update(data: Uint8Array): void {
    this.hash.update(data);
  }

  async digest(): Promise<Uint8Array> {
    return new Uint8Array(this.hash.digest());
  }

  reset(): void {
    this.hash = this.fresh();
  }
}

/**
 * The credentials the SDK's chain would use without looking further, if there are such:
 * `explicit` when static, else the process environment's keys unless `AWS_PROFILE` is set.
 */
export function staticCredentials(
  explicit: StaticCredentials | ((...args: never[]) => unknown) | undefined,
  env: NodeJS.ProcessEnv,
): StaticCredentials | undefined {
  if (typeof explicit === 'function') return undefined;
  if (explicit !== undefined) return explicit;
  const get = (name: string): string | undefined => {
    const v = env[name]?.trim();
    return v === undefined || v === '' ? undefined : v;
  };
  const accessKeyId = get('AWS_ACCESS_KEY_ID');
  const secretAccessKey = get('AWS_SECRET_ACCESS_KEY');
  if (accessKeyId === undefined || secretAccessKey === undefined || get('AWS_PROFILE') !== undefined) return undefined;
  const sessionToken = get('AWS_SESSION_TOKEN');
  return { accessKeyId, secretAccessKey, ...(sessionToken !== undefined ? { sessionToken } : {}) };
}

/** The SDK's encoding of a path label: `encodeURIComponent` plus the characters it leaves alone. */
function encodeSegment(segment: string): string {
  return encodeURIComponent(segment).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
}

/**
 * The address of `bucket`/`key` at `endpoint` as the SDK would form it, or undefined where the
 * SDK's rules could choose otherwise (an endpoint with a path or query, a dotted bucket name
 * addressed virtual-hosted).
 */
export function directAddress(endpoint: string, forcePathStyle: boolean, bucket: string, key: string): DirectAddress | undefined {
  let url: URL;
  try {
    url = new URL(endpoint);
  } catch {
    return undefined;
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') return undefined;
  if ((url.pathname !== '/' && url.pathname !== '') || url.search !== '' || url.username !== '' || url.password !== '') return undefined;
  // Each segment on its own, as the SDK does for `{Key+}`: `/` stays, `..` is sent as is.
  const encodedKey = key.split('/').map(encodeSegment).join('/');
  const port = url.port === '' ? undefined : Number(url.port);
  if (forcePathStyle) {
    return { protocol: url.protocol, hostname: url.hostname, port, host: url.host, path: `/${bucket}/${encodedKey}` };
  }
  if (!/^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$/.test(bucket)) return undefined;
  const hostname = `${bucket}.${url.hostname}`;
  return { protocol: url.protocol, hostname, port, host: `${bucket}.${url.host}`, path: `/${encodedKey}` };
}

let signerModule: Promise<typeof import('@smithy/signature-v4')> | undefined;

/** Requests for one object, signed with static credentials, sent over the client's transport. */
export class DirectS3Reader {
  private signer: Promise<SignatureV4> | undefined;

  constructor(
    private readonly address: DirectAddress,
    private readonly region: string,
    private readonly credentials: StaticCredentials,
    private readonly transport: DirectTransport,
  ) {}

  private origin(): string {
    const a = this.address;
    return `${a.protocol}//${a.host}`;
  }

  private signerFor(): Promise<SignatureV4> {
    this.signer ??= (signerModule ??= import('@smithy/signature-v4')).then(
      ({ SignatureV4 }) =>
        // `uriEscapePath: false`: S3 signs the path as sent, not encoded a second time.
        new SignatureV4({ credentials: this.credentials, region: this.region, service: 's3', sha256: NodeSha256, uriEscapePath: false }),
    );
    return this.signer;
  }

  private request(method: 'GET' | 'HEAD', headers: Record<string, string>, query: Record<string, string> = {}) {
    const a = this.address;
    return {
      method,
      protocol: a.protocol,
      hostname: a.hostname,
      ...(a.port !== undefined ? { port: a.port } : {}),
      path: a.path,
      query,
      headers: { host: a.host, ...headers },
    };
  }

  /** A HEAD signed in its headers, asking for the object's stored checksums. */
  async head(signal?: AbortSignal): Promise<Http1Response> {
    const signer = await this.signerFor();
    const signed = await signer.sign(
      // The hash of an empty payload, as the SDK sends for requests without a body.
      this.request('HEAD', {
        'x-amz-checksum-mode': 'ENABLED',
        'x-amz-content-sha256': 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855',
      }),
    );
    return this.transport.send(`${this.origin()}${this.address.path}`, signed.headers, signal, 'HEAD');
  }

  /**
   * A GET URL signed in its query string for `expiresIn` seconds, the same URL the SDK's
   * presigner makes (`UNSIGNED-PAYLOAD`, only `host` signed, its `x-id`), so every range reuses it.
   */
  async presignGet(expiresIn: number, signingDate = new Date()): Promise<string> {
    const signer = await this.signerFor();
    const signed = await signer.presign(
      this.request('GET', { 'X-Amz-Content-Sha256': 'UNSIGNED-PAYLOAD' }, { 'x-id': 'GetObject' }),
      { expiresIn, signingDate },
    );
    const query = buildQueryString(signed.query ?? {});
    // A string, never a `URL`: WHATWG parsing would resolve `..` segments a key may contain.
    return `${this.origin()}${this.address.path}?${query}`;
  }
}
