/**
 * S3 and Alibaba OSS objects as an `ObjectSource`, over the AWS SDK v3.
 *
 * OSS is reached through its S3-compatible API: the same client, its own endpoint
 * (`OSS_ENDPOINT`), credentials (`OSS_ACCESS_KEY_ID` / `OSS_ACCESS_KEY_SECRET`) and always
 * virtual-hosted addressing, because OSS rejects path-style requests (`SecondLevelDomainForbidden`).
 *
 * Client settings that matter, and why:
 * - `requestChecksumCalculation`/`responseChecksumValidation: 'WHEN_REQUIRED'`: by default the SDK
 *   sends uploads in aws-chunked encoding with trailing checksums, which OSS and s3rver do not
 *   understand (s3rver stores the framing as data), and validates whole-object checksums on
 *   GETs, which cannot work for a byte range. The downloader verifies the whole file instead.
 * - `maxAttempts: 1` for reads: the downloader retries ranges with its own table and backoff; SDK
 *   retries underneath would multiply attempts and hide failures from the stall detector.
 * - The SDK has no response timeout by default; every call here runs under `headersTimeoutMs`.
 *
 * A download's HEAD and presigned GETs skip the SDK where it would decide nothing: static
 * credentials and an explicit endpoint (`s3-direct.ts`).
 */

import fs from 'node:fs';
import type { LookupFunction } from 'node:net';
import type { Readable } from 'node:stream';
import tls from 'node:tls';
import type { HeadObjectCommandOutput, S3Client, S3ClientConfig } from '@aws-sdk/client-s3';
import { DEFAULTS } from '../defaults.js';
import { abortError, codeForStatus, retryAfterFromHeaders, RoboflowError, toRoboflowError, withUrl, type ErrorCode } from '../errors.js';
import { escapeControl, redactUrlsInText } from '../redact.js';
import type { ByteRange, Checksum, ChecksumAlgorithm, ObjectSource, ObjectStat, RangeBody, ReadOptions, StorageOptions } from '../types.js';
import { checkRange, expectContentRange, isStrongEtag, rangeHeader } from './range.js';
import { discard, errorBodyText, xmlErrorFields } from './http.js';
import { type Http1Response, isHttp1Body } from './http1.js';
import { ReadHttpHandler } from './read-handler.js';
import { directAddress, DirectS3Reader, staticCredentials, type StaticCredentials } from './s3-direct.js';
import { isPathStyleEndpoint } from './url.js';

/**
 * The SDK, loaded on first use: it costs ~0.3 s of start-up, which an `http://` or `file://`
 * download should not pay.
 */
let sdk: Promise<typeof import('@aws-sdk/client-s3')> | undefined;
function loadSdk(): Promise<typeof import('@aws-sdk/client-s3')> {
  sdk ??= import('@aws-sdk/client-s3');
  return sdk;
}

type Credentials = NonNullable<S3ClientConfig['credentials']>;

/** Everything that decides how an S3 client is built; `cacheKey` holds no secret. */
export interface S3Settings {
  readonly kind: 's3' | 'oss';
  /** Undefined: AWS's own endpoints, chosen by region. */
  readonly endpoint: string | undefined;
  readonly region: string;
  readonly forcePathStyle: boolean;
  /** Undefined: the SDK's default credential chain (environment, profiles, SSO, instance role). */
  readonly credentials: Credentials | undefined;
  /** Extra CA certificates (`AWS_CA_BUNDLE`), added to Node's own. */
  readonly caBundle: string | undefined;
  /**
   * The credentials the SDK's chain would settle on without a lookup (explicit keys, or the
   * environment's with no profile named); undefined when only the chain can tell.
   */
  readonly staticCredentials: StaticCredentials | undefined;
  readonly cacheKey: string;
}

const S3_CREDENTIALS_HINT =
  'set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (plus AWS_SESSION_TOKEN for temporary credentials), ' +
  'or AWS_PROFILE naming a profile in ~/.aws/credentials or ~/.aws/config (AWS_SHARED_CREDENTIALS_FILE, AWS_CONFIG_FILE), ' +
  'or run where an instance or container role provides them';

const OSS_CREDENTIALS_HINT =
  'set OSS_ACCESS_KEY_ID and OSS_ACCESS_KEY_SECRET (plus OSS_SESSION_TOKEN for STS credentials); ' +
  'ALIBABA_CLOUD_ACCESS_KEY_ID / ALIBABA_CLOUD_ACCESS_KEY_SECRET / ALIBABA_CLOUD_SECURITY_TOKEN are read too';

function nonEmpty(v: string | undefined): string | undefined {
  return v === undefined || v.trim() === '' ? undefined : v.trim();
}

function checkEndpoint(endpoint: string, source: string, example: string): string {
  let url: URL;
  try {
    url = new URL(endpoint);
  } catch {
    throw new RoboflowError('ERR_CONFIG', `${source} "${endpoint}" is not a URL; expected e.g. ${example}`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new RoboflowError('ERR_CONFIG', `${source} "${endpoint}" must start with http:// or https://; expected e.g. ${example}`);
  }
  return endpoint;
}

/** The OSS region in an endpoint host: `oss-cn-hangzhou.aliyuncs.com` → `cn-hangzhou`. */
export function ossRegionFromEndpoint(endpoint: string): string | undefined {
  let host: string;
  try {
    host = new URL(endpoint).hostname;
  } catch {
    return undefined;
  }
  return /(?:^|\.)oss-([a-z0-9-]+?)(?:-internal)?\.aliyuncs(?:-internal)?\.com$/.exec(host)?.[1];
}

/**
 * Static credentials when `env` is not the process environment: the SDK's own chain only ever
 * reads `process.env`, so an explicit `env` is honoured here — keys first, then the profile files
 * it names. Instance and container metadata are consulted only for the process environment.
 */
function explicitEnvCredentials(env: NodeJS.ProcessEnv): Credentials {
  const accessKeyId = nonEmpty(env['AWS_ACCESS_KEY_ID']);
  const secretAccessKey = nonEmpty(env['AWS_SECRET_ACCESS_KEY']);
  const sessionToken = nonEmpty(env['AWS_SESSION_TOKEN']);
  if (accessKeyId && secretAccessKey && !nonEmpty(env['AWS_PROFILE'])) {
    return { accessKeyId, secretAccessKey, ...(sessionToken ? { sessionToken } : {}) };
  }
  let provider: Credentials | undefined;
  return async (identityProperties) => {
    if (provider === undefined) {
      const { fromIni } = await import('@aws-sdk/credential-provider-ini');
      const profile = nonEmpty(env['AWS_PROFILE']);
      const filepath = nonEmpty(env['AWS_SHARED_CREDENTIALS_FILE']);
      const configFilepath = nonEmpty(env['AWS_CONFIG_FILE']);
      provider = fromIni({
        ...(profile ? { profile } : {}),
        ...(filepath ? { filepath } : {}),
        ...(configFilepath ? { configFilepath } : {}),
      });
    }
    return typeof provider === 'function' ? provider(identityProperties) : provider;
  };
}

/**
 * Resolves endpoint, region, addressing style and credentials for an `s3://` or `oss://` URL.
 * Configuration problems are thrown now (`ERR_CONFIG`, `ERR_MISSING_CREDENTIALS` for OSS);
 * missing S3 credentials surface on the first request, when the SDK's chain has run.
 */
export function resolveS3Settings(kind: 's3' | 'oss', opts: StorageOptions, display: string): S3Settings {
  const env = opts.env ?? process.env;
  const caBundle = nonEmpty(env['AWS_CA_BUNDLE']);
  if (kind === 's3') {
    const endpoint =
      opts.endpoint !== undefined
        ? checkEndpoint(opts.endpoint, '--endpoint', 'http://127.0.0.1:9000')
        : nonEmpty(env['AWS_ENDPOINT_URL_S3']) !== undefined
          ? checkEndpoint(env['AWS_ENDPOINT_URL_S3']!.trim(), 'AWS_ENDPOINT_URL_S3', 'http://127.0.0.1:9000')
          : nonEmpty(env['AWS_ENDPOINT_URL']) !== undefined
            ? checkEndpoint(env['AWS_ENDPOINT_URL']!.trim(), 'AWS_ENDPOINT_URL', 'http://127.0.0.1:9000')
            : undefined;
    const region = opts.region ?? nonEmpty(env['AWS_REGION']) ?? nonEmpty(env['AWS_DEFAULT_REGION']) ?? 'us-east-1';
    const forcePathStyle = opts.forcePathStyle ?? (endpoint !== undefined && isPathStyleEndpoint(endpoint));
    const credentials = env === process.env ? undefined : explicitEnvCredentials(env);
    return {
      kind,
      endpoint,
      region,
      forcePathStyle,
      credentials,
      caBundle,
      staticCredentials: staticCredentials(credentials, env),
      cacheKey: `s3|${endpoint ?? 'aws'}|${region}|${forcePathStyle ? 'path' : 'virtual'}`,
    };
  }

  const rawEndpoint = nonEmpty(env['OSS_ENDPOINT']);
  if (rawEndpoint === undefined) {
    throw new RoboflowError(
      'ERR_CONFIG',
      `OSS_ENDPOINT is not set, so ${display} cannot be reached: set it to the bucket's region endpoint, ` +
        `e.g. OSS_ENDPOINT=https://oss-cn-hangzhou.aliyuncs.com`,
      { url: display },
    );
  }
  // Alibaba's own tools take the endpoint without a scheme; accept that form too.
  const endpoint = checkEndpoint(
    rawEndpoint.includes('://') ? rawEndpoint : `https://${rawEndpoint}`,
    'OSS_ENDPOINT',
    'https://oss-cn-hangzhou.aliyuncs.com',
  );
  const accessKeyId = nonEmpty(env['OSS_ACCESS_KEY_ID']) ?? nonEmpty(env['ALIBABA_CLOUD_ACCESS_KEY_ID']);
  const secretAccessKey = nonEmpty(env['OSS_ACCESS_KEY_SECRET']) ?? nonEmpty(env['ALIBABA_CLOUD_ACCESS_KEY_SECRET']);
  const sessionToken =
    nonEmpty(env['OSS_SESSION_TOKEN']) ?? nonEmpty(env['OSS_SECURITY_TOKEN']) ?? nonEmpty(env['ALIBABA_CLOUD_SECURITY_TOKEN']);
  if (!accessKeyId || !secretAccessKey) {
    throw new RoboflowError('ERR_MISSING_CREDENTIALS', `no OSS credentials for ${display}: ${OSS_CREDENTIALS_HINT}`, { url: display });
  }
  // Alibaba's SDKs name regions `oss-cn-hangzhou`; SigV4 through the S3 API wants `cn-hangzhou`.
  const region = nonEmpty(env['OSS_REGION'])?.replace(/^oss-/, '') ?? ossRegionFromEndpoint(endpoint) ?? 'oss';
  const forcePathStyle = opts.forcePathStyle ?? false;
  const credentials = { accessKeyId, secretAccessKey, ...(sessionToken ? { sessionToken } : {}) };
  return {
    kind,
    endpoint,
    region,
    forcePathStyle,
    credentials,
    caBundle,
    staticCredentials: credentials,
    cacheKey: `oss|${endpoint}|${region}|${forcePathStyle ? 'path' : 'virtual'}`,
  };
}

export interface S3ClientOptions {
  readonly maxConnections?: number;
  readonly headersTimeoutMs?: number;
  /**
   * Name resolution for the client's connections: the security policy's `lookup`, which refuses
   * non-public addresses at connect time. A literal IP endpoint is connected to without a lookup:
   * it is the operator's. (Default: `dns.lookup`)
   */
  readonly lookup?: LookupFunction;
  /**
   * What the client is for. `read`: one SDK attempt per call (the downloader retries ranges with
   * its own table) over `Http1Pool`, whose bodies the downloader reads into its own buffers. `upload`: the SDK
   * retries parts itself, over its own `node:http` handler, which knows request bodies.
   */
  readonly purpose: 'read' | 'upload';
}

/** SDK attempts per upload request: parts are idempotent, and a failed part costs a whole upload. */
const UPLOAD_MAX_ATTEMPTS = 4;
/**
 * Lifetime of a presigned GET (the SDK's default). A source signs again after
 * `PRESIGN_REUSE_MS`, long before it expires, and when the store refuses one with 403 (a clock
 * jump, credentials rotated meanwhile).
 */
const PRESIGN_SECONDS = 900;
const PRESIGN_REUSE_MS = 5 * 60_000;

/** Response headers of each SDK output, for the few headers the SDK does not parse. */
const rawHeaders = new WeakMap<object, Record<string, string>>();

export interface S3ClientHandle {
  readonly settings: S3Settings;
  /** The client, built on first call (loading the SDK then); the same one every time. */
  client(): Promise<S3Client>;
  /**
   * A GetObject URL for `bucket`/`key` signed in its query string (SigV4, valid
   * `PRESIGN_SECONDS`), signed by the SDK with the client's credentials, region and endpoint.
   * Only the host is signed, so one URL serves every range of the object: the caller adds
   * `Range` and `If-Match`. Reading clients only.
   */
  presignGet(bucket: string, key: string): Promise<string>;
  /** One GET (or HEAD) of a signed URL over the reading client's connection pools. */
  send(url: string, headers: Readonly<Record<string, string>>, signal?: AbortSignal, method?: 'GET' | 'HEAD'): Promise<Http1Response>;
  /**
   * Reads of `bucket`/`key` signed without the SDK (`s3-direct.ts`), over the same pools, where
   * the settings allow it; undefined where the SDK must decide (reading clients of `s3://` only).
   */
  direct(bucket: string, key: string): DirectS3Reader | undefined;
  destroy(): void;
}

/**
 * A handle on an S3 client for `settings`. Configuration problems (an unreadable
 * `AWS_CA_BUNDLE`) throw now; the SDK itself is loaded when the client is first asked for.
 */
export function createS3Client(settings: S3Settings, opts: S3ClientOptions): S3ClientHandle {
  const maxSockets = opts.maxConnections ?? DEFAULTS.downloadConnections;
  const headersTimeoutMs = opts.headersTimeoutMs ?? DEFAULTS.headersTimeoutMs;
  let ca: string[] | undefined;
  if (settings.caBundle !== undefined) {
    try {
      ca = [...tls.rootCertificates, fs.readFileSync(settings.caBundle, 'utf8')];
    } catch (err) {
      throw new RoboflowError('ERR_CONFIG', `AWS_CA_BUNDLE names "${settings.caBundle}", which cannot be read: ${(err as Error).message}`, {
        cause: err,
      });
    }
  }
  const { lookup } = opts;
  let destroyed = false;
  let destroyTransport: (() => void) | undefined;
  // Built now, not with the client: direct reads use it without ever loading the SDK.
  const readHandler =
    opts.purpose === 'read'
      ? new ReadHttpHandler({
          connections: maxSockets,
          headersTimeoutMs,
          ...(lookup !== undefined ? { lookup } : {}),
          ...(ca !== undefined ? { ca } : {}),
        })
      : undefined;
  const directCredentials = opts.purpose === 'read' && settings.kind === 's3' ? settings.staticCredentials : undefined;
  let built: Promise<S3Client> | undefined;
  const build = async (): Promise<S3Client> => {
    const { S3Client } = await loadSdk();
    let requestHandler: S3ClientConfig['requestHandler'];
    if (readHandler !== undefined) {
      requestHandler = readHandler;
    } else {
      const [{ NodeHttpHandler }, http, https] = await Promise.all([
        import('@smithy/node-http-handler'),
        import('node:http'),
        import('node:https'),
      ]);
      const httpAgent = new http.Agent({ keepAlive: true, maxSockets, ...(lookup !== undefined ? { lookup } : {}) });
      const httpsAgent = new https.Agent({
        keepAlive: true,
        maxSockets,
        ...(ca ? { ca } : {}),
        ...(lookup !== undefined ? { lookup } : {}),
      });
      destroyTransport = () => {
        httpAgent.destroy();
        httpsAgent.destroy();
      };
      requestHandler = new NodeHttpHandler({ httpAgent, httpsAgent, connectionTimeout: headersTimeoutMs });
    }
    const client = new S3Client({
      region: settings.region,
      ...(settings.endpoint !== undefined ? { endpoint: settings.endpoint } : {}),
      forcePathStyle: settings.forcePathStyle,
      ...(settings.credentials !== undefined ? { credentials: settings.credentials } : {}),
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
      maxAttempts: opts.purpose === 'read' ? 1 : UPLOAD_MAX_ATTEMPTS,
      // On AWS a wrong region answers 301 with the right one; follow it rather than fail.
      followRegionRedirects: settings.endpoint === undefined,
      requestHandler,
    });
    client.middlewareStack.add(
      (next) => async (args) => {
        const result = await next(args);
        const headers = (result.response as { headers?: Record<string, string> } | undefined)?.headers;
        if (headers && result.output && typeof result.output === 'object') rawHeaders.set(result.output, headers);
        return result;
      },
      { step: 'build', name: 'roboflowRawResponseHeaders' },
    );
    if (destroyed) {
      // Destroyed while the SDK was loading: nothing may be left open.
      client.destroy();
      destroyTransport?.();
      throw new RoboflowError('ERR_CLOSED', `the S3 client for ${settings.endpoint ?? settings.region} is closed`);
    }
    return client;
  };
  const client = (): Promise<S3Client> => {
    if (destroyed) return Promise.reject(new RoboflowError('ERR_CLOSED', `the S3 client for ${settings.endpoint ?? settings.region} is closed`));
    built ??= build();
    return built;
  };
  const handle: S3ClientHandle = {
    settings,
    client,
    async presignGet(bucket, key) {
      const [c, { GetObjectCommand }, { getSignedUrl }] = await Promise.all([client(), loadSdk(), import('@aws-sdk/s3-request-presigner')]);
      // The SDK's correction for this machine's clock, learnt from earlier responses.
      const signingDate = new Date(Date.now() + (c.config.systemClockOffset ?? 0));
      // A string, never a `URL`: WHATWG parsing would resolve `..` segments a key may contain.
      return getSignedUrl(c, new GetObjectCommand({ Bucket: bucket, Key: key }), { expiresIn: PRESIGN_SECONDS, signingDate });
    },
    send(url, headers, signal, method) {
      if (readHandler === undefined) return Promise.reject(new RoboflowError('ERR_CONFIG', 'presigned GETs are sent by reading S3 clients only'));
      if (destroyed) return Promise.reject(new RoboflowError('ERR_CLOSED', `the S3 client for ${settings.endpoint ?? settings.region} is closed`));
      return readHandler.send(url, headers, signal, method);
    },
    direct(bucket, key) {
      if (directCredentials === undefined || settings.endpoint === undefined || readHandler === undefined) return undefined;
      const address = directAddress(settings.endpoint, settings.forcePathStyle, bucket, key);
      return address === undefined ? undefined : new DirectS3Reader(address, settings.region, directCredentials, handle);
    },
    destroy() {
      if (destroyed) return;
      destroyed = true;
      readHandler?.destroy();
      void built?.then(
        (client) => {
          client.destroy();
          destroyTransport?.();
        },
        () => undefined,
      );
    },
  };
  return handle;
}

interface SdkError {
  name?: string;
  message?: string;
  code?: string;
  Code?: string;
  $metadata?: { httpStatusCode?: number };
  $response?: { headers?: Record<string, string | undefined>; statusCode?: number };
}

const S3_ERROR_CODES: Readonly<Record<string, ErrorCode>> = {
  NoSuchKey: 'ERR_NOT_FOUND',
  NotFound: 'ERR_NOT_FOUND',
  NoSuchBucket: 'ERR_NOT_FOUND',
  NoSuchVersion: 'ERR_NOT_FOUND',
  AccessDenied: 'ERR_ACCESS_DENIED',
  Forbidden: 'ERR_ACCESS_DENIED',
  SignatureDoesNotMatch: 'ERR_ACCESS_DENIED',
  InvalidAccessKeyId: 'ERR_ACCESS_DENIED',
  ExpiredToken: 'ERR_ACCESS_DENIED',
  InvalidToken: 'ERR_ACCESS_DENIED',
  TokenRefreshRequired: 'ERR_ACCESS_DENIED',
  AllAccessDisabled: 'ERR_ACCESS_DENIED',
  InvalidObjectState: 'ERR_ACCESS_DENIED',
  PreconditionFailed: 'ERR_SOURCE_CHANGED',
  SlowDown: 'ERR_THROTTLED',
  Throttling: 'ERR_THROTTLED',
  ThrottlingException: 'ERR_THROTTLED',
  RequestLimitExceeded: 'ERR_THROTTLED',
  TooManyRequests: 'ERR_THROTTLED',
  ServiceUnavailable: 'ERR_THROTTLED',
  InvalidRange: 'ERR_RANGE_NOT_SUPPORTED',
  RequestTimeout: 'ERR_TIMEOUT',
  InternalError: 'ERR_SERVER',
};

/** What the SDK calls an S3 error reply without a body to read the code from (a HEAD's). */
const UNNAMED_HEAD_ERRORS = new Set(['NotFound', 'Forbidden', 'Unknown', 'UnknownError']);

/** Codes whose server message may echo request signing material; only the code is shown. */
const SIGNING_ERRORS = new Set(['SignatureDoesNotMatch', 'InvalidAccessKeyId', 'ExpiredToken', 'InvalidToken']);

/** Turns an AWS SDK failure into a `RoboflowError` naming the operation and the object. */
export function mapS3Error(err: unknown, url: string, what: string, kind: 's3' | 'oss' = 's3'): RoboflowError {
  // The read handler's transport errors name only the origin.
  if (err instanceof RoboflowError) return withUrl(err, url);
  const e = (err ?? {}) as SdkError;
  const name = e.name ?? e.Code ?? 'Error';
  if (name === 'CredentialsProviderError') {
    return new RoboflowError(
      'ERR_MISSING_CREDENTIALS',
      `no credentials for ${url}: ${kind === 's3' ? S3_CREDENTIALS_HINT : OSS_CREDENTIALS_HINT}`,
      { url, cause: err },
    );
  }
  const status = e.$metadata?.httpStatusCode ?? e.$response?.statusCode;
  if (status === undefined) return toRoboflowError(err, 'ERR_CONNECTION', url);
  const headers = e.$response?.headers ?? {};
  const retryAfterMs = retryAfterFromHeaders((n) => {
    const hit = Object.keys(headers).find((k) => k.toLowerCase() === n);
    return hit === undefined ? undefined : headers[hit];
  });
  let code: ErrorCode = S3_ERROR_CODES[name] ?? codeForStatus(status);
  if (status >= 200 && status < 300) code = 'ERR_BAD_RESPONSE';
  const hint =
    code === 'ERR_NOT_FOUND'
      ? name === 'NoSuchBucket'
        ? ' — the bucket does not exist; check the bucket name and the endpoint'
        : ' — check the bucket and key'
      : code === 'ERR_ACCESS_DENIED'
        ? ` — check the credentials and that they may read this object${name === 'SignatureDoesNotMatch' ? ' (and the region)' : ''}`
        : '';
  const serverMessage =
    !SIGNING_ERRORS.has(name) && e.message && e.message !== name && e.message !== 'UnknownError'
      ? `: ${escapeControl(redactUrlsInText(e.message.split('\n', 1)[0] ?? '').slice(0, 300))}`
      : '';
  // A reply without a code to read (a HEAD's) gets no name: "Unknown" would say nothing.
  const named = name === 'Unknown' || name === 'UnknownError' ? `HTTP ${status}` : `${escapeControl(name.slice(0, 100))} (HTTP ${status})`;
  return new RoboflowError(code, `${what} ${url}: ${named}${serverMessage}${hint}`, {
    url,
    status,
    cause: err,
    ...(retryAfterMs !== undefined ? { retryAfterMs } : {}),
  });
}

/** What a source reads of a HEAD, from the SDK's output or from the headers themselves. */
type HeadFields = Pick<
  HeadObjectCommandOutput,
  | 'ContentLength'
  | 'ETag'
  | 'LastModified'
  | 'ServerSideEncryption'
  | 'SSECustomerAlgorithm'
  | 'ChecksumType'
  | 'ChecksumSHA256'
  | 'ChecksumSHA1'
  | 'ChecksumCRC32C'
  | 'ChecksumCRC32'
>;

/** The HEAD fields the SDK would have parsed from these response headers (names lower-case). */
function headFieldsFromHeaders(headers: Readonly<Record<string, string | undefined>>): HeadFields {
  const text = (name: string): string | undefined => headers[name] ?? undefined;
  const length = text('content-length');
  const modified = text('last-modified');
  const date = modified === undefined ? undefined : new Date(modified);
  const fields: Record<string, unknown> = {
    ContentLength: length !== undefined && /^\d+$/.test(length) ? Number(length) : undefined,
    ETag: text('etag'),
    LastModified: date !== undefined && !Number.isNaN(date.getTime()) ? date : undefined,
    ServerSideEncryption: text('x-amz-server-side-encryption'),
    SSECustomerAlgorithm: text('x-amz-server-side-encryption-customer-algorithm'),
    ChecksumType: text('x-amz-checksum-type'),
    ChecksumSHA256: text('x-amz-checksum-sha256'),
    ChecksumSHA1: text('x-amz-checksum-sha1'),
    ChecksumCRC32C: text('x-amz-checksum-crc32c'),
    ChecksumCRC32: text('x-amz-checksum-crc32'),
  };
  return Object.fromEntries(Object.entries(fields).filter(([, v]) => v !== undefined)) as HeadFields;
}

const CHECKSUM_FIELDS: readonly [keyof HeadFields, ChecksumAlgorithm, number][] = [
  ['ChecksumSHA256', 'sha256', 32],
  ['ChecksumSHA1', 'sha1', 20],
  ['ChecksumCRC32C', 'crc32c', 4],
  ['ChecksumCRC32', 'crc32', 4],
];

/**
 * Whole-object checksums an S3/OSS HEAD vouches for. A single-part ETag is the MD5 of the
 * content, except under SSE-KMS or SSE-C (and, on OSS, for appendable and multipart objects,
 * reported in `x-oss-object-type`). `x-amz-checksum-*` values count only when the checksum type
 * is FULL_OBJECT; composite ones are checksums of part checksums.
 */
export function checksumsFromHead(out: HeadFields, kind: 's3' | 'oss'): Checksum[] {
  const list: Checksum[] = [];
  const md5 = /^"?([0-9a-fA-F]{32})"?$/.exec(out.ETag ?? '')?.[1];
  const encrypted =
    out.ServerSideEncryption === 'aws:kms' || out.ServerSideEncryption === 'aws:kms:dsse' || out.SSECustomerAlgorithm !== undefined;
  const ossType = rawHeaders.get(out)?.['x-oss-object-type'];
  const ossPlain = kind === 's3' || ossType === undefined || ossType.toLowerCase() === 'normal';
  if (md5 !== undefined && !encrypted && ossPlain) list.push({ algorithm: 'md5', hex: md5.toLowerCase() });
  if (out.ChecksumType === 'FULL_OBJECT') {
    for (const [field, algorithm, bytes] of CHECKSUM_FIELDS) {
      const value = out[field];
      if (typeof value !== 'string') continue;
      const digest = Buffer.from(value, 'base64');
      if (digest.length === bytes) list.push({ algorithm, hex: digest.toString('hex') });
    }
  }
  return list;
}

export interface S3SourceDeps {
  readonly client: () => Promise<S3Client>;
  /**
   * Ranged reads through one presigned URL instead of an SDK call per range. Each SDK call costs
   * ~1.7 ms of CPU (middleware, endpoint rules, signing; measured: 1 GiB in 1 MiB ranges, 2.85
   * against 1.0–1.26 CPU s over plain HTTP) — 0.3 CPU s per GiB at the default chunk plan.
   * Given for `s3://`; `oss://` keeps the SDK path.
   */
  readonly presigned?: Pick<S3ClientHandle, 'presignGet' | 'send'>;
  /**
   * The HEAD and the presigned GET signed without the SDK (`s3-direct.ts`), where the settings
   * allow it. A HEAD it gets no 2xx for is asked again through the SDK, which then signs the GETs too.
   */
  readonly direct?: DirectS3Reader;
  readonly headersTimeoutMs?: number;
  /** Called once, by the first `close()`. */
  readonly onClose?: () => Promise<void>;
}

type SourceState = 'open' | 'closed';
/** Who signs this source's requests: `direct` until the store refuses a direct HEAD, then the SDK. */
type Signing = 'direct' | 'sdk';

export class S3Source implements ObjectSource {
  readonly kind: 's3' | 'oss';
  readonly url: string;
  readonly bucket: string;
  readonly key: string;
  private readonly deps: S3SourceDeps;
  private readonly headersTimeoutMs: number;
  private state: SourceState = 'open';
  private closing: Promise<void> | undefined;
  /** The presigned GET in use and when it was signed (`performance.now()`). */
  private presignedUrl: { readonly url: string; readonly at: number } | undefined;
  private presigning: Promise<string> | undefined;
  private signing: Signing;

  constructor(kind: 's3' | 'oss', bucket: string, key: string, display: string, deps: S3SourceDeps) {
    this.kind = kind;
    this.bucket = bucket;
    this.key = key;
    this.url = display;
    this.deps = deps;
    this.headersTimeoutMs = deps.headersTimeoutMs ?? DEFAULTS.headersTimeoutMs;
    this.signing = deps.direct !== undefined ? 'direct' : 'sdk';
  }

  async stat(opts: { signal?: AbortSignal } = {}): Promise<ObjectStat> {
    const direct = this.signing === 'direct' ? await this.directHead(opts.signal) : undefined;
    if (direct !== undefined) return this.statFrom(direct);
    const { HeadObjectCommand } = await loadSdk();
    let out: HeadObjectCommandOutput;
    try {
      out = await this.call('HEAD', opts.signal, async (abortSignal) =>
        (await this.deps.client()).send(new HeadObjectCommand({ Bucket: this.bucket, Key: this.key, ChecksumMode: 'ENABLED' }), {
          abortSignal,
        }),
      );
    } catch (err) {
      throw await this.explainRefusedHead(err, opts.signal);
    }
    this.checkHeadStatus(out.$metadata.httpStatusCode ?? 200);
    return this.statFrom(out);
  }

  /**
   * A HEAD reply has no body, so a refused HEAD tells only its status: the SDK calls a 404
   * `NotFound` whether the key or the whole bucket is missing, and a 403 `Unknown` whether the
   * secret is wrong or the permission missing (Ceph RGW, like AWS). A GET of the first byte asks
   * the store for its XML error code (`NoSuchBucket`, `NoSuchKey`, `SignatureDoesNotMatch`,
   * `AccessDenied`…), reported as the HEAD's error when the GET got the same status and a named
   * code. Anything else — the GET succeeding because the object appeared meanwhile, another
   * status, a transport error — leaves the HEAD's error as it was. Costs one request, on failure only.
   */
  private async explainRefusedHead(err: unknown, signal: AbortSignal | undefined): Promise<unknown> {
    if (!(err instanceof RoboflowError) || (err.status !== 403 && err.status !== 404) || signal?.aborted) return err;
    if (!UNNAMED_HEAD_ERRORS.has((err.cause as SdkError | undefined)?.name ?? '')) return err;
    const { GetObjectCommand } = await loadSdk();
    try {
      const probe = await this.call('GET', signal, async (abortSignal) =>
        (await this.deps.client()).send(new GetObjectCommand({ Bucket: this.bucket, Key: this.key, Range: 'bytes=0-0' }), { abortSignal }),
      );
      if (probe.Body !== undefined) await discard(probe.Body as Readable);
      return err;
    } catch (probeErr) {
      const named =
        probeErr instanceof RoboflowError &&
        probeErr.status === err.status &&
        !UNNAMED_HEAD_ERRORS.has((probeErr.cause as SdkError | undefined)?.name ?? '');
      // Reported as the HEAD's failure (what the caller asked for), with the GET's code.
      return named ? mapS3Error(probeErr.cause, this.url, 'HEAD', this.kind) : err;
    }
  }

  /**
   * The HEAD signed without the SDK: its fields when the store answered 2xx, undefined (and the
   * SDK signs from now on) when it answered anything else, so that the SDK reports the error.
   */
  private async directHead(signal: AbortSignal | undefined): Promise<HeadFields | undefined> {
    const direct = this.deps.direct;
    if (direct === undefined) return undefined;
    if (this.state === 'closed') throw new RoboflowError('ERR_CLOSED', `source ${this.url} is closed`, { url: this.url });
    if (signal?.aborted) throw abortError(signal, `HEAD ${this.url}`);
    let res: Http1Response;
    try {
      res = await direct.head(signal);
    } catch (err) {
      if (signal?.aborted) throw abortError(signal, `HEAD ${this.url}`);
      throw mapS3Error(err, this.url, 'HEAD', this.kind);
    }
    await discard(res.body);
    if (res.statusCode >= 200 && res.statusCode < 300) {
      this.checkHeadStatus(res.statusCode);
      return headFieldsFromHeaders(res.headers);
    }
    // The only change of `signing`; a URL signed directly is not reused after it.
    this.signing = 'sdk';
    this.presignedUrl = undefined;
    return undefined;
  }

  /** Only a 200 describes the whole object; a 206 or another success says nothing sure of its size. */
  private checkHeadStatus(status: number): void {
    if (status !== 200) {
      throw new RoboflowError('ERR_BAD_RESPONSE', `HEAD ${this.url}: HTTP ${status}, expected 200; the store's answer does not describe the object`, {
        url: this.url,
        status,
      });
    }
  }

  private statFrom(out: HeadFields): ObjectStat {
    const size = out.ContentLength;
    if (size === undefined || !Number.isSafeInteger(size) || size < 0) {
      throw new RoboflowError('ERR_BAD_RESPONSE', `HEAD ${this.url}: the store did not report the object's size`, { url: this.url });
    }
    return {
      url: this.url,
      size,
      ...(isStrongEtag(out.ETag) ? { etag: out.ETag } : {}),
      ...(out.LastModified ? { lastModified: out.LastModified } : {}),
      checksums: checksumsFromHead(out, this.kind),
      rangesSupported: true,
    };
  }

  async read(range: ByteRange, opts: ReadOptions = {}): Promise<RangeBody> {
    checkRange(range, this.url);
    if (this.deps.presigned) return this.readPresigned(this.deps.presigned, range, opts);
    const { GetObjectCommand } = await loadSdk();
    const out = await this.call('GET', opts.signal, async (abortSignal) =>
      (await this.deps.client()).send(
        new GetObjectCommand({
          Bucket: this.bucket,
          Key: this.key,
          Range: rangeHeader(range),
          ...(opts.ifMatch !== undefined ? { IfMatch: opts.ifMatch } : {}),
        }),
        { abortSignal },
      ),
    );
    const body = out.Body as Readable | undefined;
    if (body === undefined) {
      throw new RoboflowError('ERR_BAD_RESPONSE', `GET ${this.url}: the store answered without a body`, { url: this.url });
    }
    let total: number | undefined;
    try {
      total = this.checkRangeReply(range, opts.ifMatch, { contentRange: out.ContentRange, contentLength: out.ContentLength, etag: out.ETag });
    } catch (err) {
      // Unread bodies are destroyed; a listener keeps the resulting stream error from escaping.
      body.on('error', () => undefined);
      body.destroy();
      throw err;
    }
    const { signal } = opts;
    if (signal) {
      // The SDK's own abort wiring ends with the response headers; the body must stop too.
      const onAbort = () => body.destroy(abortError(signal, `GET ${this.url}`));
      signal.addEventListener('abort', onAbort, { once: true });
      body.once('close', () => signal.removeEventListener('abort', onAbort));
    }
    // Proven only by the framing the transport reads by (the reading client's `Http1Pool`), not
    // by the Content-Length the SDK parsed: beside `Transfer-Encoding: chunked` that bounds
    // nothing. A body of another transport is not seen into, so it proves its length at its end.
    const lengthProven = isHttp1Body(body) && body.length === range.end - range.start;
    return { range, body, lengthProven, ...(total !== undefined ? { total } : {}) };
  }

  /** A ranged GET of the presigned URL; a 403 signs again once, for a URL that went stale. */
  private async readPresigned(p: NonNullable<S3SourceDeps['presigned']>, range: ByteRange, opts: ReadOptions): Promise<RangeBody> {
    const headers: Record<string, string> = {
      range: rangeHeader(range),
      // Ranges index the stored bytes; a compressed representation has other offsets.
      'accept-encoding': 'identity',
      ...(opts.ifMatch !== undefined ? { 'if-match': opts.ifMatch } : {}),
    };
    let refused: string | undefined;
    for (;;) {
      if (this.state === 'closed') throw new RoboflowError('ERR_CLOSED', `source ${this.url} is closed`, { url: this.url });
      if (opts.signal?.aborted) throw abortError(opts.signal, `GET ${this.url}`);
      const url = await this.signedUrl(p, refused).catch((err: unknown) => {
        throw mapS3Error(err, this.url, 'GET', this.kind);
      });
      let res: Http1Response;
      try {
        res = await p.send(url, headers, opts.signal);
      } catch (err) {
        if (opts.signal?.aborted) throw abortError(opts.signal, `GET ${this.url}`);
        throw mapS3Error(err, this.url, 'GET', this.kind);
      }
      const status = res.statusCode;
      if (status === 206 || status === 200) {
        let total: number | undefined;
        try {
          const length = res.headers['content-length'];
          total = this.checkRangeReply(range, opts.ifMatch, {
            contentRange: res.headers['content-range'],
            contentLength: length === undefined ? undefined : Number(length),
            etag: res.headers['etag'],
          });
        } catch (err) {
          res.body.on('error', () => undefined);
          res.body.destroy();
          throw err;
        }
        return { range, body: res.body, lengthProven: res.body.length === range.end - range.start, ...(total !== undefined ? { total } : {}) };
      }
      if (status === 403 && refused === undefined) {
        await discard(res.body);
        refused = url;
        continue;
      }
      throw await this.presignedError(res);
    }
  }

  /** The current presigned URL; a new one when it is old or is `refused`. Concurrent callers share one signing. */
  private signedUrl(p: NonNullable<S3SourceDeps['presigned']>, refused: string | undefined): Promise<string> {
    const current = this.presignedUrl;
    if (current !== undefined && current.url !== refused && performance.now() - current.at < PRESIGN_REUSE_MS) {
      return Promise.resolve(current.url);
    }
    const direct = this.signing === 'direct' ? this.deps.direct : undefined;
    this.presigning ??= (direct !== undefined ? direct.presignGet(PRESIGN_SECONDS) : p.presignGet(this.bucket, this.key))
      .then((url) => {
        this.presignedUrl = { url, at: performance.now() };
        return url;
      })
      .finally(() => {
        this.presigning = undefined;
      });
    return this.presigning;
  }

  /** The store's XML error of a presigned GET, as the SDK would have reported it. */
  private async presignedError(res: Http1Response): Promise<RoboflowError> {
    const { code, message } = xmlErrorFields(await errorBodyText(res.body));
    const name = code ?? (res.statusCode === 412 ? 'PreconditionFailed' : res.statusCode === 404 ? 'NotFound' : 'UnknownError');
    const sdkShaped: SdkError = {
      name,
      message: message ?? name,
      $metadata: { httpStatusCode: res.statusCode },
      $response: { headers: res.headers, statusCode: res.statusCode },
    };
    return mapS3Error(sdkShaped, this.url, 'GET', this.kind);
  }

  /**
   * What a ranged reply must say before its body is trusted (either transport); returns the
   * object's size it states (the Content-Range total, or a whole-object reply's length).
   */
  private checkRangeReply(
    range: ByteRange,
    ifMatch: string | undefined,
    reply: { readonly contentRange: string | undefined; readonly contentLength: number | undefined; readonly etag: string | undefined },
  ): number | undefined {
    const want = range.end - range.start;
    let total: number | undefined;
    if (reply.contentRange !== undefined) {
      total = expectContentRange(reply.contentRange, range, this.url).total;
    } else if (range.start === 0 && reply.contentLength === range.end) {
      total = reply.contentLength;
    } else {
      throw new RoboflowError(
        'ERR_RANGE_NOT_SUPPORTED',
        `GET ${this.url}: the store ignored the Range header (${rangeHeader(range)}) and sent ${reply.contentLength ?? 'an unknown number of'} bytes`,
        { url: this.url },
      );
    }
    if (reply.contentLength !== undefined && reply.contentLength !== want) {
      throw new RoboflowError(
        'ERR_BAD_RESPONSE',
        `GET ${this.url}: range ${rangeHeader(range)} came with Content-Length ${reply.contentLength}, expected ${want}`,
        { url: this.url },
      );
    }
    if (ifMatch !== undefined && isStrongEtag(reply.etag) && reply.etag !== ifMatch) {
      throw new RoboflowError(
        'ERR_SOURCE_CHANGED',
        `${this.url} changed since it was first read (ETag ${escapeControl(ifMatch)}, now ${escapeControl(reply.etag)})`,
        { url: this.url },
      );
    }
    return total;
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
   * Runs one SDK call under the caller's signal and the headers timeout (the SDK has none of its
   * own); the timer stops once the response headers are in, so a long body is not cut.
   */
  private async call<T>(what: string, signal: AbortSignal | undefined, fn: (abortSignal: AbortSignal) => Promise<T>): Promise<T> {
    if (this.state === 'closed') throw new RoboflowError('ERR_CLOSED', `source ${this.url} is closed`, { url: this.url });
    if (signal?.aborted) throw abortError(signal, `${what} ${this.url}`);
    const timeout = new AbortController();
    const timer = setTimeout(() => timeout.abort(), this.headersTimeoutMs);
    const abortSignal = signal ? AbortSignal.any([signal, timeout.signal]) : timeout.signal;
    try {
      return await fn(abortSignal);
    } catch (err) {
      if (signal?.aborted) throw abortError(signal, `${what} ${this.url}`);
      if (timeout.signal.aborted) {
        throw new RoboflowError('ERR_TIMEOUT', `${what} ${this.url}: no response within ${this.headersTimeoutMs} ms`, {
          url: this.url,
          cause: err,
        });
      }
      throw mapS3Error(err, this.url, what, this.kind);
    } finally {
      clearTimeout(timer);
    }
  }
}
