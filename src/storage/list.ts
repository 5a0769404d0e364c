/**
 * Listing the objects under a prefix, for submitting one job per object.
 *
 * - `s3://bucket/prefix` and `oss://bucket/prefix`: ListObjectsV2, every page (a store returns
 *   at most 1,000 keys per page; the continuation token is followed until the listing says it is
 *   complete). The prefix is a key prefix as S3 means it: `s3://b/runs/2024` lists `runs/2024-01/…`
 *   and `runs/2024.mcap` alike; end it with `/` to list a folder. Keys ending in `/` (folder
 *   markers) are skipped.
 * - `file:///dir/` (or a plain path): every regular file below the directory, recursively, in
 *   name order. Symbolic links are not followed, so a link cannot lead the listing out of the tree.
 *
 * Each object comes with its `relative` key (below the prefix, `/`-separated), which `--match`
 * and the `{key}` template see. Pages are yielded as they arrive, so a long listing is submitted
 * while it is still being read.
 */

import { readdir, stat } from 'node:fs/promises';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { RoboflowError, toRoboflowError } from '../errors.js';
import type { StorageClients } from './index.js';
import { mapS3Error } from './s3.js';
import { parseObjectUrl } from './url.js';

export interface ListedObject {
  /** The object's URL, as a job input. */
  readonly url: string;
  /** Its key below the listed prefix, `/`-separated. */
  readonly relative: string;
  /** Bytes, when the listing says. */
  readonly size?: number;
}

export interface ListOptions {
  readonly signal?: AbortSignal;
}

/** Every object under `prefix`, a page at a time. */
export async function* listObjects(prefix: string, clients: StorageClients, opts: ListOptions = {}): AsyncGenerator<ListedObject[]> {
  const parsed = parseObjectUrl(prefix, 'prefix');
  switch (parsed.kind) {
    case 's3':
    case 'oss':
      yield* listBucket(parsed.kind, parsed.bucket, parsed.key, parsed.display, clients, opts);
      return;
    case 'file':
      yield* listDirectory(parsed.path, parsed.display, opts);
      return;
    case 'http':
      throw new RoboflowError(
        'ERR_CONFIG',
        `cannot list ${parsed.display}: HTTP has no listing; use an s3://, oss:// or file:// prefix, or --from with a list of URLs`,
      );
    default: {
      const _exhaustive: never = parsed;
      return _exhaustive;
    }
  }
}

async function* listBucket(
  kind: 's3' | 'oss',
  bucket: string,
  keyPrefix: string,
  display: string,
  clients: StorageClients,
  opts: ListOptions,
): AsyncGenerator<ListedObject[]> {
  // The upload client lets the SDK retry a failed page: a listing request is safe to repeat.
  const lease = clients.s3Client(kind, display, 'upload');
  try {
    const client = await lease.value.client();
    const { ListObjectsV2Command } = await import('@aws-sdk/client-s3');
    let token: string | undefined;
    for (;;) {
      let page;
      try {
        page = await client.send(
          new ListObjectsV2Command({ Bucket: bucket, Prefix: keyPrefix, ...(token !== undefined ? { ContinuationToken: token } : {}) }),
          opts.signal !== undefined ? { abortSignal: opts.signal } : {},
        );
      } catch (err) {
        throw mapS3Error(err, display, 'list', kind);
      }
      const objects: ListedObject[] = [];
      for (const item of page.Contents ?? []) {
        const key = item.Key;
        if (key === undefined || key.endsWith('/')) continue;
        objects.push({
          url: `${kind}://${bucket}/${key}`,
          relative: key.slice(keyPrefix.length),
          ...(item.Size !== undefined ? { size: Number(item.Size) } : {}),
        });
      }
      yield objects;
      if (page.IsTruncated !== true) return;
      token = page.NextContinuationToken;
      if (token === undefined || token === '') {
        throw new RoboflowError('ERR_IO', `listing ${display}: the store said the listing is truncated but gave no continuation token`);
      }
    }
  } finally {
    await lease.release();
  }
}

/** Files per yielded page of a directory listing: the batches a submit writes. */
const FILE_PAGE = 1_000;

async function* listDirectory(dir: string, display: string, opts: ListOptions): AsyncGenerator<ListedObject[]> {
  let info;
  try {
    info = await stat(dir);
  } catch (err) {
    throw listError(err, display);
  }
  if (!info.isDirectory()) {
    throw new RoboflowError('ERR_CONFIG', `cannot list ${display}: it is not a directory; give the folder the files are in`);
  }
  const files: string[] = [];
  // Depth-first by hand rather than readdir's `recursive`, which follows no order and (in Node 20)
  // descends into linked directories.
  const walk = async (at: string): Promise<void> => {
    opts.signal?.throwIfAborted();
    const entries = await readdir(at, { withFileTypes: true });
    entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    for (const entry of entries) {
      const full = path.join(at, entry.name);
      if (entry.isDirectory()) await walk(full);
      else if (entry.isFile()) files.push(full);
    }
  };
  try {
    await walk(dir);
  } catch (err) {
    throw listError(err, display);
  }
  for (let i = 0; i < files.length; i += FILE_PAGE) {
    yield files.slice(i, i + FILE_PAGE).map((file) => ({
      url: pathToFileURL(file).href,
      relative: path.relative(dir, file).split(path.sep).join('/'),
    }));
  }
}

/** A local listing's failure (a missing or unreadable folder), naming the folder. */
function listError(err: unknown, display: string): RoboflowError {
  const e = toRoboflowError(err, 'ERR_IO', display);
  const code = (err as { code?: unknown } | null)?.code;
  const why = code === 'ENOENT' ? 'it does not exist' : code === 'EACCES' ? 'permission denied' : e.message;
  return new RoboflowError(code === 'ENOENT' ? 'ERR_NOT_FOUND' : e.code, `cannot list ${display}: ${why}`, { cause: err, url: display });
}
