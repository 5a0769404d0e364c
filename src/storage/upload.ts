/**
 * Uploading outputs. S3 and OSS go through `@aws-sdk/lib-storage` (multipart above one part);
 * local destinations are written atomically: a temp file in the target directory, fsync, rename,
 * fsync of the directory, so a crash leaves either the old file or the complete new one.
 *
 * A directory upload reads only what is really inside the directory. Its output directory is
 * written by a processor that may be hostile (or sandboxed, seeing nothing but that directory),
 * and a symbolic link there must not make the worker upload a file from outside, such as its own
 * credentials. So: the directory itself must not be a link; links inside it are skipped; each file
 * is opened without following a link (`O_NOFOLLOW`) and must still be the file that was listed
 * (same device and inode) and, where `/proc` shows it, lie inside the directory — a file or a
 * directory on its path swapped for a link after the listing is refused, not followed.
 */

import { randomBytes } from 'node:crypto';
import { constants as fsConstants, createWriteStream } from 'node:fs';
import fs, { type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { Upload } from '@aws-sdk/lib-storage';
import { channels } from '../diagnostics.js';
import { abortError, RoboflowError, toRoboflowError } from '../errors.js';
import { defaultStorageClients, type StorageClients } from './index.js';
import { mapS3Error } from './s3.js';
import { joinOutputUrl, parseObjectUrl, type ParsedUrl } from './url.js';

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

/** A local file opened for upload; the handle is read from start to end, then closed. */
interface OpenedFile {
  readonly path: string;
  readonly handle: FileHandle;
  readonly size: number;
}

/** Uploads one local file to `destUrl` (`s3://`, `oss://`, `file://` or a plain path). */
export async function uploadFile(localPath: string, destUrl: string, opts: UploadOptions = {}): Promise<UploadResult> {
  const dest = parseObjectUrl(destUrl, 'source');
  const { signal } = opts;
  if (signal?.aborted) throw abortError(signal, `upload to ${dest.display}`);
  // The caller named this path, so a link in it is followed; directory uploads are stricter.
  let handle: FileHandle;
  try {
    handle = await fs.open(localPath, 'r');
  } catch (err) {
    if ((err as { code?: string }).code === 'ENOENT') {
      throw new RoboflowError('ERR_NOT_FOUND', `cannot upload ${localPath}: no such file`, { cause: err });
    }
    throw toRoboflowError(err, 'ERR_IO', localPath);
  }
  let st;
  try {
    st = await handle.stat();
  } catch (err) {
    await handle.close();
    throw toRoboflowError(err, 'ERR_IO', localPath);
  }
  if (!st.isFile()) {
    await handle.close();
    throw new RoboflowError('ERR_UPLOAD', `cannot upload ${localPath}: not a regular file`, { retryable: false });
  }
  return uploadOpened({ path: localPath, handle, size: st.size }, dest, opts);
}

/** Uploads an opened file; always closes its handle. */
async function uploadOpened(file: OpenedFile, dest: ParsedUrl, opts: UploadOptions): Promise<UploadResult> {
  const started = performance.now();
  const { signal } = opts;
  const bytes = file.size;
  try {
    if (signal?.aborted) throw abortError(signal, `upload to ${dest.display}`);
    await uploadTo(file, dest, opts);
  } finally {
    await file.handle.close().catch(() => undefined);
  }
  const seconds = (performance.now() - started) / 1000;
  channels.uploadDone.publish({ bytes, seconds });
  return { bytes, seconds, url: dest.display };
}

async function uploadTo(file: OpenedFile, dest: ParsedUrl, opts: UploadOptions): Promise<void> {
  switch (dest.kind) {
    case 's3':
    case 'oss':
      await uploadToBucket(file, dest.kind, dest.bucket, dest.key, dest.display, opts);
      break;
    case 'file':
      await copyAtomically(file, dest.path, opts.signal);
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
}

/** A stream over the whole of an opened file that leaves closing the handle to its owner. */
function readAll(file: OpenedFile) {
  return file.handle.createReadStream({ start: 0, highWaterMark: MiB, autoClose: false });
}

async function uploadToBucket(
  file: OpenedFile,
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
  const body = readAll(file);
  try {
    const upload = new Upload({
      client: await lease.value.client(),
      params: {
        Bucket: bucket,
        Key: key,
        Body: body,
        // Read from the open file, not from its path: lib-storage would otherwise stat the path.
        ContentLength: file.size,
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
async function copyAtomically(src: OpenedFile, dest: string, signal: AbortSignal | undefined): Promise<void> {
  const dir = path.dirname(dest);
  const temp = path.join(dir, `.${path.basename(dest)}.roboflow-upload-${randomBytes(6).toString('hex')}`);
  try {
    await fs.mkdir(dir, { recursive: true });
    await pipeline(
      readAll(src),
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
  await syncDirectory(dir).catch((err: unknown) => {
    throw toRoboflowError(err, 'ERR_IO', dir);
  });
}

/**
 * fsyncs a directory so a rename or unlink in it survives a power cut. Some file systems cannot
 * fsync a directory; a rename is still atomic there, so that is not an error.
 */
export async function syncDirectory(dir: string): Promise<void> {
  const handle = await fs.open(dir, 'r');
  try {
    await handle.sync();
  } catch (err) {
    // Some file systems cannot fsync a directory; the rename itself is still atomic there.
    const code = (err as { code?: string }).code;
    if (code !== 'EINVAL' && code !== 'ENOTSUP' && code !== 'EISDIR') throw err;
  } finally {
    await handle.close();
  }
}

/** A regular file found under a directory: its relative name and the identity `lstat` saw. */
export interface ListedFile {
  /** Relative to the directory, `/`-separated. */
  readonly name: string;
  readonly dev: number;
  readonly ino: number;
}

/** Every regular file under `dir` (symbolic links are skipped, never followed), relative, sorted. */
async function listFiles(dir: string): Promise<ListedFile[]> {
  const out: ListedFile[] = [];
  const walk = async (rel: string): Promise<void> => {
    const entries = await fs.readdir(path.join(dir, rel), { withFileTypes: true });
    for (const entry of entries) {
      const name = rel === '' ? entry.name : `${rel}/${entry.name}`;
      if (entry.isDirectory()) await walk(name);
      else if (entry.isFile()) {
        const st = await fs.lstat(path.join(dir, name));
        if (st.isFile()) out.push({ name, dev: st.dev, ino: st.ino });
      }
    }
  };
  await walk('');
  return out.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
}

/** The directory's identity and real path, after checking it is a directory and not a link. */
async function examineRoot(dir: string): Promise<string> {
  let st;
  try {
    st = await fs.lstat(dir);
  } catch (err) {
    throw toRoboflowError(err, 'ERR_IO', dir);
  }
  if (st.isSymbolicLink() || !st.isDirectory()) {
    throw new RoboflowError(
      'ERR_POLICY_DENIED',
      `refusing to upload ${dir}: it is ${st.isSymbolicLink() ? 'a symbolic link' : 'not a directory'}, and an output directory must be a real one`,
    );
  }
  try {
    return await fs.realpath(dir);
  } catch (err) {
    throw toRoboflowError(err, 'ERR_IO', dir);
  }
}

/** Where an open file really is, from `/proc/self/fd` (Linux); undefined where that is not shown. */
async function openedPath(handle: FileHandle): Promise<string | undefined> {
  try {
    return await fs.readlink(`/proc/self/fd/${handle.fd}`);
  } catch {
    return undefined;
  }
}

/**
 * @internal Opens a file `listFiles` found, for reading, refusing it (`ERR_POLICY_DENIED`) unless
 * it is still that very file, reached without a link: no link followed at the last component
 * (`O_NOFOLLOW`), the same device and inode, and, where `/proc` shows it, inside `realRoot`.
 */
export async function openListedFile(dir: string, realRoot: string, file: ListedFile): Promise<OpenedFile> {
  const full = path.join(dir, file.name);
  const refuse = (why: string) =>
    new RoboflowError('ERR_POLICY_DENIED', `refusing to upload ${file.name} from ${dir}: ${why}; something changed the output directory while it was uploaded`);
  let handle: FileHandle;
  try {
    handle = await fs.open(full, fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW);
  } catch (err) {
    if ((err as { code?: string }).code === 'ELOOP') throw refuse('it became a symbolic link after it was listed');
    throw toRoboflowError(err, 'ERR_IO', full);
  }
  try {
    const st = await handle.stat();
    if (!st.isFile() || st.dev !== file.dev || st.ino !== file.ino) {
      throw refuse('it is no longer the file that was listed (replaced, or a directory on its path became a symbolic link)');
    }
    const real = await openedPath(handle);
    if (real !== undefined && !real.startsWith(realRoot + path.sep)) {
      throw refuse(`it resolves to ${real}, outside the directory`);
    }
    return { path: full, handle, size: st.size };
  } catch (err) {
    await handle.close().catch(() => undefined);
    throw toRoboflowError(err, 'ERR_IO', full);
  }
}

/**
 * Uploads every regular file under `dir` to `prefixUrl` (names relative to `dir`, joined with
 * `joinOutputUrl`), a few files at a time. `dir` must be a real directory, not a symbolic link;
 * links inside it are skipped (see the module comment). Stops at the first failure, after the
 * uploads in flight have settled, and throws it. Returns the uploads in name order.
 */
export async function uploadDirectory(dir: string, prefixUrl: string, opts: UploadOptions = {}): Promise<DirectoryUploadResult[]> {
  const realRoot = await examineRoot(dir);
  let files: ListedFile[];
  try {
    files = await listFiles(dir);
  } catch (err) {
    throw toRoboflowError(err, 'ERR_IO', dir);
  }
  const targets = files.map((file) => ({ file, name: file.name, url: parseObjectUrl(joinOutputUrl(prefixUrl, file.name), 'source') }));
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
        if (signal.aborted) throw abortError(signal, `upload to ${target.url.display}`);
        const opened = await openListedFile(dir, realRoot, target.file);
        const r = await uploadOpened(opened, target.url, { ...opts, signal });
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
