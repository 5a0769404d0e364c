/**
 * Uploading outputs. S3 and OSS go through `@aws-sdk/lib-storage` (multipart above one part);
 * local destinations are written atomically: a temp file in the target directory, fsync, rename,
 * fsync of the directory, so a crash leaves either the old file or the complete new one.
 */

import { randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { Upload } from '@aws-sdk/lib-storage';
import { channels } from '../diagnostics.js';
import { abortError, RoboflowError, toRoboflowError } from '../errors.js';
import { defaultStorageClients, type StorageClients } from './index.js';
import { mapS3Error } from './s3.js';
import { joinOutputUrl, parseObjectUrl } from './url.js';

const MiB = 1024 * 1024;
/** Parts in flight per upload: with 8 MiB parts, 32 MiB of memory per file. */
const UPLOAD_QUEUE_SIZE = 4;
/** Part size: the AWS CLI's, and the chunk size downloads use. */
const UPLOAD_PART_SIZE = 8 * MiB;
/** Files uploaded at once by `uploadDirectory`: small outputs are latency-bound, big ones use parts. */
const DIRECTORY_CONCURRENCY = 4;

export interface UploadOptions {
  readonly signal?: AbortSignal;
  /** Where S3 clients come from (default: the process-wide clients behind `openSource`). */
  readonly clients?: StorageClients;
  readonly contentType?: string;
}

export interface UploadResult {
  readonly bytes: number;
  readonly seconds: number;
  /** The destination, without secrets. */
  readonly url: string;
}

export interface DirectoryUploadResult extends UploadResult {
  /** Path relative to the uploaded directory, `/`-separated. */
  readonly name: string;
}

/** Uploads one local file to `destUrl` (`s3://`, `oss://`, `file://` or a plain path). */
export async function uploadFile(localPath: string, destUrl: string, opts: UploadOptions = {}): Promise<UploadResult> {
  const started = performance.now();
  const dest = parseObjectUrl(destUrl, 'source');
  const { signal } = opts;
  if (signal?.aborted) throw abortError(signal, `upload to ${dest.display}`);
  let bytes: number;
  try {
    const st = await fs.stat(localPath);
    if (!st.isFile()) throw new RoboflowError('ERR_UPLOAD', `cannot upload ${localPath}: not a regular file`, { retryable: false });
    bytes = st.size;
  } catch (err) {
    if (err instanceof RoboflowError) throw err;
    if ((err as { code?: string }).code === 'ENOENT') {
      throw new RoboflowError('ERR_NOT_FOUND', `cannot upload ${localPath}: no such file`, { cause: err });
    }
    throw toRoboflowError(err, 'ERR_IO', localPath);
  }
  switch (dest.kind) {
    case 's3':
    case 'oss':
      await uploadToBucket(localPath, dest.kind, dest.bucket, dest.key, dest.display, opts);
      break;
    case 'file':
      await copyAtomically(localPath, dest.path, signal);
      break;
    case 'http':
      throw new RoboflowError(
        'ERR_UNSUPPORTED_SCHEME',
        `cannot upload to ${dest.display}: HTTP URLs are read-only here; use an s3://, oss:// or file:// destination`,
        { url: dest.display },
      );
    default: {
      const _exhaustive: never = dest;
      return _exhaustive;
    }
  }
  const seconds = (performance.now() - started) / 1000;
  channels.uploadDone.publish({ bytes, seconds });
  return { bytes, seconds, url: dest.display };
}

async function uploadToBucket(
  localPath: string,
  kind: 's3' | 'oss',
  bucket: string,
  key: string,
  display: string,
  opts: UploadOptions,
): Promise<void> {
  const clients = opts.clients ?? defaultStorageClients();
  const lease = clients.s3Client(kind, display, 'upload');
  const controller = new AbortController();
  const { signal } = opts;
  const onAbort = () => controller.abort();
  signal?.addEventListener('abort', onAbort, { once: true });
  const body = createReadStream(localPath, { highWaterMark: MiB });
  try {
    const upload = new Upload({
      client: lease.value.client,
      params: {
        Bucket: bucket,
        Key: key,
        Body: body,
        ...(opts.contentType !== undefined ? { ContentType: opts.contentType } : {}),
      },
      queueSize: UPLOAD_QUEUE_SIZE,
      partSize: UPLOAD_PART_SIZE,
      // Parts of a failed upload cost storage until a lifecycle rule removes them; abort it.
      leavePartsOnError: false,
      abortController: controller,
    });
    await upload.done();
  } catch (err) {
    if (signal?.aborted) throw abortError(signal, `upload to ${display}`);
    const mapped = mapS3Error(err, display, 'upload to', kind);
    // Not-found (no bucket), access and credential problems stay permanent; the rest is worth
    // another try of the whole upload.
    if (mapped.retryable || mapped.code === 'ERR_BAD_RESPONSE' || mapped.code === 'ERR_SOURCE_CHANGED') {
      throw new RoboflowError('ERR_UPLOAD', mapped.message, { url: display, cause: err, ...statusOf(mapped) });
    }
    throw mapped;
  } finally {
    signal?.removeEventListener('abort', onAbort);
    body.destroy();
    await lease.release();
  }
}

function statusOf(err: RoboflowError): { status?: number; retryAfterMs?: number } {
  return {
    ...(err.status !== undefined ? { status: err.status } : {}),
    ...(err.retryAfterMs !== undefined ? { retryAfterMs: err.retryAfterMs } : {}),
  };
}

/** Copies `src` to `dest` through a temp file in `dest`'s directory, durably. */
async function copyAtomically(src: string, dest: string, signal: AbortSignal | undefined): Promise<void> {
  const dir = path.dirname(dest);
  const temp = path.join(dir, `.${path.basename(dest)}.roboflow-upload-${randomBytes(6).toString('hex')}`);
  try {
    await fs.mkdir(dir, { recursive: true });
    await pipeline(
      createReadStream(src, { highWaterMark: MiB }),
      createWriteStream(temp, { flags: 'wx', highWaterMark: MiB }),
      ...(signal ? [{ signal }] : []),
    );
    const handle = await fs.open(temp, 'r+');
    try {
      await handle.sync();
    } finally {
      await handle.close();
    }
    await fs.rename(temp, dest);
  } catch (err) {
    await fs.rm(temp, { force: true }).catch(() => undefined);
    if (signal?.aborted) throw abortError(signal, `copy to ${dest}`);
    throw toRoboflowError(err, 'ERR_IO', dest);
  }
  await syncDirectory(dir);
}

async function syncDirectory(dir: string): Promise<void> {
  const handle = await fs.open(dir, 'r');
  try {
    await handle.sync();
  } catch (err) {
    // Some file systems cannot fsync a directory; the rename itself is still atomic there.
    const code = (err as { code?: string }).code;
    if (code !== 'EINVAL' && code !== 'ENOTSUP' && code !== 'EISDIR') throw toRoboflowError(err, 'ERR_IO', dir);
  } finally {
    await handle.close();
  }
}

/** Every regular file under `dir` (symbolic links are not followed), relative, sorted. */
async function listFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (rel: string): Promise<void> => {
    const entries = await fs.readdir(path.join(dir, rel), { withFileTypes: true });
    for (const entry of entries) {
      const name = rel === '' ? entry.name : `${rel}/${entry.name}`;
      if (entry.isDirectory()) await walk(name);
      else if (entry.isFile()) out.push(name);
    }
  };
  await walk('');
  return out.sort();
}

/**
 * Uploads every regular file under `dir` to `prefixUrl` (names relative to `dir`, joined with
 * `joinOutputUrl`), a few files at a time. Stops at the first failure, after the uploads in
 * flight have settled, and throws it. Returns the uploads in name order.
 */
export async function uploadDirectory(dir: string, prefixUrl: string, opts: UploadOptions = {}): Promise<DirectoryUploadResult[]> {
  let names: string[];
  try {
    names = await listFiles(dir);
  } catch (err) {
    throw toRoboflowError(err, 'ERR_IO', dir);
  }
  const targets = names.map((name) => ({ name, url: joinOutputUrl(prefixUrl, name) }));
  const stop = new AbortController();
  const signal = opts.signal ? AbortSignal.any([opts.signal, stop.signal]) : stop.signal;
  const results: (DirectoryUploadResult | undefined)[] = new Array(targets.length);
  let next = 0;
  let firstError: unknown;
  const worker = async (): Promise<void> => {
    while (firstError === undefined && !signal.aborted) {
      const i = next++;
      const target = targets[i];
      if (target === undefined) return;
      try {
        const r = await uploadFile(path.join(dir, target.name), target.url, { ...opts, signal });
        results[i] = { ...r, name: target.name };
      } catch (err) {
        if (firstError === undefined) {
          firstError = err;
          stop.abort();
        }
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(DIRECTORY_CONCURRENCY, targets.length) }, worker));
  if (opts.signal?.aborted) throw abortError(opts.signal, `upload of ${dir}`);
  if (firstError !== undefined) throw firstError;
  return results.filter((r): r is DirectoryUploadResult => r !== undefined);
}
