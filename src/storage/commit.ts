/**
 * The output commit protocol: only the winning attempt's output is ever published.
 *
 * A worker cut off from the job queue may still reach the bucket, and a job whose lease expired
 * runs again elsewhere; so two attempts of one job can write outputs at the same time. Modelled on
 * Hadoop's S3A staging committer and Spark's OutputCommitCoordinator (tasks write to an
 * attempt-scoped place; a coordinator authorises exactly one attempt per task to commit; the
 * commit publishes; a success marker is written last):
 *
 * 1. **Stage.** Each attempt uploads its output directory under its own prefix
 *    `<output>/_attempts/<job id>/<attempt>/`, where `<attempt>` is
 *    `<attempt number>-<8 random hex>`. Nothing is written under the published names yet. The job
 *    id keeps the staging of jobs that were given the same output prefix apart.
 * 2. **Authorise.** The job queue's `commit(job, owner, attempt)` records the attempt as the job's
 *    `commitAttempt`, but only for the lease holder of a running job whose lease has not expired
 *    by the queue's clock, and renews the lease. A fenced worker (its own deadline passed, see
 *    src/lease.ts) never asks; one whose lease expired is refused.
 * 3. **Publish** (this module, `publishAttempt`): each staged file is moved to its published name
 *    (`<output>/<name>`), this job's staging `_attempts/<job id>/` is removed (this attempt's and
 *    any stale ones a fenced attempt of the same job left; other jobs' staging is not touched),
 *    and the marker `<output>/_SUCCESS` is written last: JSON naming the job,
 *    the attempt, the owner and every published file with its size. A previous attempt that had
 *    been authorised (it lost its lease while publishing) may have left a marker: it is deleted
 *    first, so no marker ever names a mix of two attempts' files.
 * 4. **Complete.** `complete` in the job queue (fenced by the lease owner); the job's result lists
 *    the files and the attempt, and the record's `commitAttempt` names it too.
 *
 * The worker stops publishing as soon as its lease can no longer be trusted (the signal aborts);
 * the next attempt then publishes over it. A consumer knows an output is complete when
 * `_SUCCESS` exists (and the job is `done`); the files it lists are the output. A file under the
 * prefix that `_SUCCESS` does not list can only be left by an attempt that lost its lease midway
 * through publishing, and is not part of the output. One output prefix per job: jobs sharing one
 * publish into the same names, and the last `_SUCCESS` written names only its own job's files.
 *
 * Costs, per job with an output of N files:
 * - `file://`: N renames within one file system (no data copied), one or two directory removals
 *   (the job's staging, then `_attempts/` if no other job stages there), one small marker file
 *   (written, fsynced, renamed); the staging directory sits inside the output directory, so a
 *   rename never crosses file systems.
 * - `s3://` and `oss://`: N server-side `CopyObject` requests (no bytes through the worker, but the
 *   store copies every byte once: time proportional to the output size at the store's internal
 *   copy rate), one `ListObjectsV2` per 1000 staged objects, N `DeleteObject`s, one marker `PUT`.
 *   A single `CopyObject` takes objects up to 5 GiB on S3 and 1 GiB on OSS; larger outputs are
 *   refused by the store (multipart copy is not implemented). A bucket lifecycle rule expiring
 *   `_attempts/` after a day or two catches staging a crashed worker never cleaned up.
 * The cheaper alternative for buckets, a manifest naming the winning attempt's prefix without
 * copying, would make every consumer resolve the manifest before reading anything; copying keeps
 * the published names where they always were.
 */

import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { CopyObjectCommand, DeleteObjectCommand, ListObjectsV2Command, PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { abortError, RoboflowError, toRoboflowError } from '../errors.js';
import { defaultStorageClients, type StorageClients } from './index.js';
import { mapS3Error } from './s3.js';
import { syncDirectory } from './upload.js';
import { joinOutputUrl, parseObjectUrl } from './url.js';

/** Folder under the output prefix that holds every attempt's staged output. */
export const ATTEMPTS_FOLDER = '_attempts';
/** The completion marker, written last under the output prefix. */
export const SUCCESS_MARKER = '_SUCCESS';
/** Moves or copies in flight while publishing. */
const PUBLISH_CONCURRENCY = 4;

/** A fresh attempt name for attempt number `attempts` (the job record's count after `start`). */
export function newAttemptName(attempts: number): string {
  return `${attempts}-${randomBytes(4).toString('hex')}`;
}

/** Where attempt `attempt` of job `jobId` stages its output. */
export function stagingPrefix(output: string, jobId: string, attempt: string): string {
  return joinOutputUrl(output, `${jobStagingFolder(jobId)}/${attempt}`);
}

/** `_attempts/<job id>`: every attempt of one job stages below it, and only there. */
function jobStagingFolder(jobId: string): string {
  // The id becomes one path segment that publishing removes recursively: nothing that could
  // name another folder. Queue backends hand out positive integers.
  if (typeof jobId !== 'string' || !/^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$/.test(jobId)) {
    throw new RoboflowError(
      'ERR_CONFIG',
      `job id ${JSON.stringify(jobId)} cannot name a staging folder: it must be letters, digits, '.', '_' and '-'`,
    );
  }
  return `${ATTEMPTS_FOLDER}/${jobId}`;
}

/** What `_SUCCESS` holds. */
export interface CommitMarker {
  readonly version: 1;
  readonly job: string;
  readonly attempt: string;
  readonly owner: string;
  /** Published names relative to the output prefix, `/`-separated, with their sizes. */
  readonly files: readonly { readonly name: string; readonly bytes: number }[];
  readonly publishedAt: string;
}

export interface PublishOptions {
  readonly output: string;
  readonly jobId: string;
  readonly owner: string;
  /** The attempt the job queue authorised. */
  readonly attempt: string;
  /** The staged files: names relative to the staging prefix. */
  readonly files: readonly { readonly name: string; readonly bytes: number }[];
  /** An earlier attempt that was authorised too (`commitAttempt` when this one started), if any. */
  readonly previousAttempt: string | null;
  /** Aborts publishing: the worker's lease can no longer be trusted. */
  readonly signal: AbortSignal;
  readonly clients?: StorageClients;
}

export interface PublishedFile {
  readonly name: string;
  readonly bytes: number;
  /** The published location, without secrets. */
  readonly url: string;
}

/** Steps 3 of the protocol: moves the staged files into place, cleans up, writes `_SUCCESS` last. */
export async function publishAttempt(opts: PublishOptions): Promise<PublishedFile[]> {
  // A fenced worker must not even delete the old marker: check before any write.
  if (opts.signal.aborted) throw abortError(opts.signal, 'publishing the output');
  const dest = parseObjectUrl(opts.output, 'prefix');
  jobStagingFolder(opts.jobId);
  const marker: CommitMarker = {
    version: 1,
    job: opts.jobId,
    attempt: opts.attempt,
    owner: opts.owner,
    files: opts.files.map((f) => ({ name: f.name, bytes: f.bytes })),
    publishedAt: new Date().toISOString(),
  };
  const body = `${JSON.stringify(marker, null, 2)}\n`;
  switch (dest.kind) {
    case 'file':
      await publishFiles(dest.path, opts, body);
      break;
    case 's3':
    case 'oss':
      await publishObjects(dest.kind, dest.bucket, dest.key, dest.display, opts, body);
      break;
    case 'http':
      throw new RoboflowError('ERR_UNSUPPORTED_SCHEME', `cannot publish to ${dest.display}: HTTP URLs are read-only here`, {
        url: dest.display,
      });
    default: {
      const _exhaustive: never = dest;
      return _exhaustive;
    }
  }
  return opts.files.map((f) => ({ name: f.name, bytes: f.bytes, url: parseObjectUrl(joinOutputUrl(opts.output, f.name), 'prefix').display }));
}

/** Runs `fn` over `items`, a few at a time, stopping at the first failure. */
async function eachLimited<T>(items: readonly T[], signal: AbortSignal, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  let failed: unknown;
  const lane = async () => {
    while (failed === undefined) {
      const item = items[next++];
      if (item === undefined) return;
      if (signal.aborted) throw abortError(signal, 'publishing the output');
      try {
        await fn(item);
      } catch (err) {
        failed ??= err;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(PUBLISH_CONCURRENCY, items.length) }, lane));
  if (signal.aborted) throw abortError(signal, 'publishing the output');
  if (failed !== undefined) throw failed;
}

// ---------------------------------------------------------------------------------------------
// file://
// ---------------------------------------------------------------------------------------------

async function publishFiles(dir: string, opts: PublishOptions, marker: string): Promise<void> {
  const { signal } = opts;
  const markerPath = path.join(dir, SUCCESS_MARKER);
  try {
    // An output of no files stages nothing, so nothing has created the directory yet.
    await fs.mkdir(dir, { recursive: true });
    if (signal.aborted) throw abortError(signal, 'publishing the output');
    if (opts.previousAttempt !== null) await fs.rm(markerPath, { force: true });
    const jobStaging = path.join(dir, jobStagingFolder(opts.jobId));
    const staging = path.join(jobStaging, opts.attempt);
    const dirs = new Set<string>([dir]);
    await eachLimited(opts.files, signal, async (f) => {
      const target = path.join(dir, f.name);
      await fs.mkdir(path.dirname(target), { recursive: true });
      dirs.add(path.dirname(target));
      // Same file system (staging is inside the output directory): atomic, replaces a file there.
      await fs.rename(path.join(staging, f.name), target);
    });
    for (const d of dirs) await syncDirectory(d);
    if (signal.aborted) throw abortError(signal, 'publishing the output');
    await fs.rm(jobStaging, { recursive: true, force: true });
    await removeIfEmpty(path.join(dir, ATTEMPTS_FOLDER));
    if (signal.aborted) throw abortError(signal, 'publishing the output');
    const temp = path.join(dir, `.${SUCCESS_MARKER}.roboflow-${randomBytes(6).toString('hex')}`);
    const handle = await fs.open(temp, 'wx');
    try {
      await handle.writeFile(marker);
      await handle.sync();
    } finally {
      await handle.close();
    }
    await fs.rename(temp, markerPath);
    await syncDirectory(dir);
  } catch (err) {
    if (signal.aborted) throw abortError(signal, `publishing the output to ${dir}`);
    throw toRoboflowError(err, 'ERR_UPLOAD', dir);
  }
}

/** Removes `dir` if nothing is in it: another job sharing the output may be staging there. */
async function removeIfEmpty(dir: string): Promise<void> {
  try {
    await fs.rmdir(dir);
  } catch (err) {
    const code = (err as { code?: string }).code;
    if (code !== 'ENOTEMPTY' && code !== 'EEXIST' && code !== 'ENOENT') throw err;
  }
}


// ---------------------------------------------------------------------------------------------
// s3:// and oss://
// ---------------------------------------------------------------------------------------------

async function publishObjects(
  kind: 's3' | 'oss',
  bucket: string,
  prefixKey: string,
  display: string,
  opts: PublishOptions,
  marker: string,
): Promise<void> {
  const { signal } = opts;
  const folder = prefixKey === '' || prefixKey.endsWith('/') ? prefixKey : `${prefixKey}/`;
  const clients = opts.clients ?? defaultStorageClients();
  const lease = clients.s3Client(kind, display, 'upload');
  let step = 'publish to';
  try {
    const client: S3Client = await lease.value.client();
    const abortSignal = signal;
    if (signal.aborted) throw abortError(signal, `publishing the output to ${display}`);
    if (opts.previousAttempt !== null) {
      step = 'delete the old marker of';
      await client.send(new DeleteObjectCommand({ Bucket: bucket, Key: `${folder}${SUCCESS_MARKER}` }), { abortSignal });
    }
    const jobStaging = `${folder}${jobStagingFolder(opts.jobId)}/`;
    const staging = `${jobStaging}${opts.attempt}/`;
    step = 'copy a staged file into';
    await eachLimited(opts.files, signal, async (f) => {
      await client.send(
        new CopyObjectCommand({ Bucket: bucket, Key: `${folder}${f.name}`, CopySource: copySource(bucket, `${staging}${f.name}`) }),
        { abortSignal },
      );
    });
    step = 'remove the staged outputs under';
    const stale: string[] = [];
    let token: string | undefined;
    do {
      const page = await client.send(
        new ListObjectsV2Command({ Bucket: bucket, Prefix: jobStaging, ...(token ? { ContinuationToken: token } : {}) }),
        { abortSignal },
      );
      for (const o of page.Contents ?? []) if (o.Key !== undefined) stale.push(o.Key);
      token = page.IsTruncated === true ? page.NextContinuationToken : undefined;
    } while (token !== undefined);
    await eachLimited(stale, signal, async (key) => {
      await client.send(new DeleteObjectCommand({ Bucket: bucket, Key: key }), { abortSignal });
    });
    if (signal.aborted) throw abortError(signal, `publishing the output to ${display}`);
    step = 'write the completion marker of';
    await client.send(
      new PutObjectCommand({ Bucket: bucket, Key: `${folder}${SUCCESS_MARKER}`, Body: marker, ContentType: 'application/json' }),
      { abortSignal },
    );
  } catch (err) {
    if (signal.aborted) throw abortError(signal, `publishing the output to ${display}`);
    const mapped = mapS3Error(err, display, step, kind);
    if (mapped.retryable || mapped.code === 'ERR_BAD_RESPONSE') {
      throw new RoboflowError('ERR_UPLOAD', mapped.message, { url: display, cause: err });
    }
    throw mapped;
  } finally {
    await lease.release();
  }
}

/** `x-amz-copy-source`: the bucket and the URL-encoded key, `/` kept. */
function copySource(bucket: string, key: string): string {
  return `${bucket}/${key.split('/').map(encodeURIComponent).join('/')}`;
}
