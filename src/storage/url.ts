/**
 * Object URLs: what a user may write for an input or an output, and what each form means.
 *
 * - `s3://bucket/key` — Amazon S3 or any S3-compatible store (`--endpoint` / `AWS_ENDPOINT_URL`).
 * - `oss://bucket/key` — Alibaba Cloud OSS, through its S3-compatible API (`OSS_ENDPOINT`).
 * - `http://…`, `https://…` — any HTTP server; ranges need `Accept-Ranges: bytes`.
 * - `file:///abs/path` or a plain path (relative to the working directory) — the local disk.
 *
 * Object keys are taken verbatim after the bucket (no percent-decoding, `?` and `#` included),
 * as the AWS CLI does, because S3 keys may contain any character.
 */

import { isIP } from 'node:net';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { RoboflowError } from '../errors.js';
import { redactUrl } from '../redact.js';

export type ParsedUrl =
  | {
      readonly kind: 's3' | 'oss';
      readonly bucket: string;
      /** Empty only for an output prefix naming a whole bucket. */
      readonly key: string;
      readonly display: string;
    }
  | { readonly kind: 'http'; readonly url: URL; readonly display: string }
  | { readonly kind: 'file'; readonly path: string; readonly display: string };

/**
 * - `source`: names one object (the default): the key must be present and not end in `/`.
 * - `prefix`: names a folder outputs are written under: the key may be empty or end in `/`.
 */
export type UrlRole = 'source' | 'prefix';

export const SUPPORTED_SCHEMES = ['s3://', 'oss://', 'http://', 'https://', 'file://'] as const;

const EXAMPLES = {
  s3: 's3://my-bucket/recordings/2024-05-01/run-17.mcap',
  oss: 'oss://my-bucket/recordings/2024-05-01/run-17.mcap',
  http: 'https://data.example.com/recordings/run-17.mcap',
  file: 'file:///data/recordings/run-17.mcap (or the plain path /data/recordings/run-17.mcap)',
} as const;

const PREFIX_EXAMPLES = {
  s3: 's3://my-bucket/results/',
  oss: 'oss://my-bucket/results/',
  file: 'file:///data/results/ (or the plain path /data/results)',
} as const;

function badUrl(input: string, problem: string, example: string): RoboflowError {
  const shown = redactUrl(input);
  return new RoboflowError('ERR_BAD_URL', `invalid URL "${shown}": ${problem}; expected e.g. ${example}`, {
    url: shown,
  });
}

/**
 * S3 bucket naming rules (general purpose buckets): 3–63 characters of lower-case letters,
 * digits, dots and hyphens, starting and ending with a letter or digit, no `..`, not shaped like
 * an IPv4 address, none of the reserved prefixes and suffixes. Returns the broken rule, or null.
 */
export function s3BucketProblem(bucket: string): string | null {
  if (bucket.length < 3 || bucket.length > 63) return `bucket name "${bucket}" must be 3 to 63 characters long`;
  if (!/^[a-z0-9.-]+$/.test(bucket)) {
    return `bucket name "${bucket}" may contain only lower-case letters, digits, dots and hyphens`;
  }
  if (!/^[a-z0-9].*[a-z0-9]$/.test(bucket)) return `bucket name "${bucket}" must start and end with a letter or digit`;
  if (bucket.includes('..')) return `bucket name "${bucket}" must not contain two dots in a row`;
  if (isIP(bucket) === 4) return `bucket name "${bucket}" must not be an IP address`;
  if (bucket.startsWith('xn--') || bucket.startsWith('sthree-')) return `bucket name "${bucket}" uses a reserved prefix`;
  if (bucket.endsWith('-s3alias') || bucket.endsWith('--ol-s3')) return `bucket name "${bucket}" uses a reserved suffix`;
  return null;
}

/**
 * OSS bucket naming rules: 3–63 characters of lower-case letters, digits and hyphens, starting
 * and ending with a letter or digit (no dots, unlike S3). Returns the broken rule, or null.
 */
export function ossBucketProblem(bucket: string): string | null {
  if (bucket.length < 3 || bucket.length > 63) return `bucket name "${bucket}" must be 3 to 63 characters long`;
  if (!/^[a-z0-9-]+$/.test(bucket)) {
    return `bucket name "${bucket}" may contain only lower-case letters, digits and hyphens (OSS allows no dots)`;
  }
  if (!/^[a-z0-9].*[a-z0-9]$/.test(bucket)) return `bucket name "${bucket}" must start and end with a letter or digit`;
  return null;
}

function parseBucketUrl(input: string, kind: 's3' | 'oss', role: UrlRole): ParsedUrl {
  const example = role === 'source' ? EXAMPLES[kind] : PREFIX_EXAMPLES[kind];
  const rest = input.slice(input.indexOf('://') + 3);
  const slash = rest.indexOf('/');
  const bucket = slash < 0 ? rest : rest.slice(0, slash);
  const key = slash < 0 ? '' : rest.slice(slash + 1);
  if (bucket === '') return throwing(badUrl(input, 'the bucket name is missing', example));
  if (bucket.includes('@')) {
    return throwing(badUrl(input, 'credentials do not belong in the URL; set them in the environment', example));
  }
  const problem = kind === 's3' ? s3BucketProblem(bucket) : ossBucketProblem(bucket);
  if (problem) return throwing(badUrl(input, problem, example));
  if (role === 'source') {
    if (key === '') return throwing(badUrl(input, 'the object key is missing', example));
    if (key.endsWith('/')) return throwing(badUrl(input, 'the key ends with "/", which names a folder, not an object', example));
  }
  return { kind, bucket, key, display: redactUrl(`${kind}://${bucket}/${key}`) };
}

function throwing(err: RoboflowError): never {
  throw err;
}

function parseFileUrl(input: string, role: UrlRole): ParsedUrl {
  const example = role === 'source' ? EXAMPLES.file : PREFIX_EXAMPLES.file;
  let url: URL;
  try {
    url = new URL(input);
  } catch {
    return throwing(badUrl(input, 'it is not a valid file URL', example));
  }
  if (url.hostname !== '' && url.hostname !== 'localhost') {
    return throwing(
      badUrl(
        input,
        `file URLs must not name a host ("${url.hostname}"); an absolute path needs three slashes, file:///${url.hostname}${url.pathname}`,
        example,
      ),
    );
  }
  if (url.search !== '' || url.hash !== '') {
    return throwing(badUrl(input, 'a file URL has no query or fragment (encode "?" as %3F and "#" as %23)', example));
  }
  let p: string;
  try {
    p = fileURLToPath(url);
  } catch (err) {
    return throwing(badUrl(input, (err as Error).message, example));
  }
  if (p.includes('\0')) return throwing(badUrl(input, 'the path contains a NUL byte', example));
  return filePath(input, p, role, url.href);
}

function filePath(input: string, p: string, role: UrlRole, display: string): ParsedUrl {
  const example = role === 'source' ? EXAMPLES.file : PREFIX_EXAMPLES.file;
  const last = p.split('/').pop();
  if (role === 'source' && (last === '' || last === '.' || last === '..')) {
    return throwing(badUrl(input, 'the path names a directory, not a file', example));
  }
  return { kind: 'file', path: path.resolve(p), display };
}

/**
 * Parses an object URL (see the module comment for the accepted forms). Throws `ERR_BAD_URL` for
 * malformed input (the message names the URL, without secrets, and shows a correct example) and
 * `ERR_UNSUPPORTED_SCHEME` for schemes this library cannot read.
 */
export function parseObjectUrl(input: string, role: UrlRole = 'source'): ParsedUrl {
  if (typeof input !== 'string' || input.trim() === '') {
    throw new RoboflowError('ERR_BAD_URL', `empty URL; expected e.g. ${role === 'source' ? EXAMPLES.s3 : PREFIX_EXAMPLES.s3}`);
  }
  if (input.includes('\0')) {
    throw badUrl(input.replace(/\0/g, '\\0'), 'it contains a NUL byte', EXAMPLES.s3);
  }
  const scheme = /^([a-zA-Z][a-zA-Z0-9+.-]*):\/\//.exec(input)?.[1]?.toLowerCase() ?? (/^file:/i.test(input) ? 'file' : null);
  switch (scheme) {
    case null:
      return filePath(input, input, role, path.resolve(input));
    case 's3':
    case 'oss':
      return parseBucketUrl(input, scheme, role);
    case 'file':
      return parseFileUrl(input, role);
    case 'http':
    case 'https': {
      let url: URL;
      try {
        url = new URL(input);
      } catch {
        throw badUrl(input, 'it is not a valid HTTP URL', EXAMPLES.http);
      }
      if (url.hostname === '') throw badUrl(input, 'the host is missing', EXAMPLES.http);
      if (role === 'source' && (url.pathname === '' || url.pathname === '/') && url.search === '') {
        throw badUrl(input, 'the URL names no object (its path is empty)', EXAMPLES.http);
      }
      return { kind: 'http', url, display: redactUrl(url.href) };
    }
    default: {
      const shown = redactUrl(input);
      throw new RoboflowError(
        'ERR_UNSUPPORTED_SCHEME',
        `unsupported URL scheme "${scheme}://" in "${shown}"; supported: ${SUPPORTED_SCHEMES.join(', ')} and plain paths` +
          ` (e.g. ${EXAMPLES.s3})`,
        { url: shown },
      );
    }
  }
}

/**
 * Whether an S3 endpoint needs path-style addressing (`http://host/bucket/key`): IP addresses and
 * `localhost` cannot carry the bucket as a subdomain, and local S3 servers (s3rver, MinIO) listen
 * there.
 */
export function isPathStyleEndpoint(endpoint: string): boolean {
  let host: string;
  try {
    host = new URL(endpoint).hostname;
  } catch {
    return false;
  }
  const bare = host.startsWith('[') && host.endsWith(']') ? host.slice(1, -1) : host;
  return isIP(bare) !== 0 || bare === 'localhost' || bare.endsWith('.localhost');
}

/**
 * Checks a relative output name (a path below the output directory, `/`-separated). Refuses what
 * could escape the prefix or confuse a store: empty names, absolute paths, `..` and `.`
 * segments, empty segments and NUL bytes (`ERR_UNSAFE_PATH`).
 */
export function checkRelativeName(relativeName: string): string {
  const unsafe = (why: string) =>
    new RoboflowError('ERR_UNSAFE_PATH', `refusing output name "${relativeName.replace(/\0/g, '\\0')}": ${why}`);
  if (relativeName === '') throw unsafe('it is empty');
  if (relativeName.includes('\0')) throw unsafe('it contains a NUL byte');
  if (relativeName.startsWith('/') || relativeName.startsWith('\\') || /^[a-zA-Z]:[\\/]/.test(relativeName)) {
    throw unsafe('it is an absolute path');
  }
  const segments = relativeName.split(/[\\/]/);
  if (segments.includes('..')) throw unsafe('it contains a ".." segment');
  if (segments.includes('.')) throw unsafe('it contains a "." segment');
  if (segments.includes('')) throw unsafe('it contains an empty segment');
  return relativeName;
}

/**
 * The URL of an output named `relativeName` under the output prefix `prefix`: the prefix is
 * always treated as a folder (`s3://b/out` and `s3://b/out/` both give `s3://b/out/<name>`). A
 * plain-path prefix gives a plain path, a `file://` prefix a `file://` URL. HTTP prefixes are
 * refused with `ERR_UNSUPPORTED_SCHEME`: outputs need a writable store.
 */
export function joinOutputUrl(prefix: string, relativeName: string): string {
  const name = checkRelativeName(relativeName);
  const parsed = parseObjectUrl(prefix, 'prefix');
  switch (parsed.kind) {
    case 's3':
    case 'oss': {
      const folder = parsed.key === '' || parsed.key.endsWith('/') ? parsed.key : `${parsed.key}/`;
      return `${parsed.kind}://${parsed.bucket}/${folder}${name}`;
    }
    case 'file': {
      const joined = path.join(parsed.path, name);
      return /^file:/i.test(prefix) ? pathToFileURL(joined).href : joined;
    }
    case 'http':
      throw new RoboflowError(
        'ERR_UNSUPPORTED_SCHEME',
        `cannot write outputs to "${parsed.display}": HTTP URLs are read-only here; use an s3://, oss:// or file:// prefix (e.g. ${PREFIX_EXAMPLES.s3})`,
        { url: parsed.display },
      );
    default: {
      const _exhaustive: never = parsed;
      return _exhaustive;
    }
  }
}
