/**
 * Local paths derived from untrusted names. Job ids come from a shared database and input names
 * from URLs anyone may submit; neither may place a file outside the buffer directory, so both are
 * reduced to one safe path component before they touch the file system.
 *
 * A safe name is not enough when something else writes into the buffer directory: a program run
 * by an earlier job (or a sandboxed one that sees only its output directory) can leave a symbolic
 * link where a job or output directory will be. Following it would download into, delete under,
 * or upload from a directory outside the buffer. So directories the worker creates, and the ones
 * it uploads from, are checked with `lstat` (`checkRealDirectory`).
 */

import { createHash } from 'node:crypto';
import { lstat, mkdir, readlink } from 'node:fs/promises';
import path from 'node:path';
import { RoboflowError, toRoboflowError } from './errors.js';

/** Longest local file name we produce; well under the 255-byte limit of common file systems. */
const MAX_NAME = 200;
/** Characters kept as they are; everything else becomes `_`. */
const UNSAFE_CHARS = /[^A-Za-z0-9._-]/g;

function shortHash(text: string): string {
  return createHash('sha256').update(text).digest('hex').slice(0, 12);
}

/** The last path segment of a URL (or of a plain path), percent-decoded when that is valid. */
function lastSegment(url: string): string {
  let pathname = url;
  try {
    pathname = new URL(url).pathname;
  } catch {
    // Not a URL (a bare key or path): its text is the path.
    pathname = url.split(/[?#]/, 1)[0] ?? '';
  }
  const segments = pathname.split('/').filter((s) => s !== '');
  const raw = segments[segments.length - 1] ?? '';
  try {
    return decodeURIComponent(raw);
  } catch {
    return raw;
  }
}

/**
 * The local file name of input number `index` of a job: `<index>-<safe basename of the URL>`.
 * The name is one path component: no separator, no NUL, never `.` or `..` (it starts with the
 * index), at most 200 characters. Two inputs of one job never collide because the index differs.
 */
export function safeLocalName(url: string, index: number): string {
  if (!Number.isSafeInteger(index) || index < 0) {
    throw new RangeError(`input index must be a non-negative integer, got ${index}`);
  }
  const prefix = `${index}-`;
  let base = lastSegment(url).replace(UNSAFE_CHARS, '_').replace(/^[._]+/, '');
  if (base === '') base = 'input';
  const room = MAX_NAME - prefix.length;
  if (base.length > room) {
    // Keep the extension: processors (and people) recognise files by it.
    const ext = path.extname(base).slice(0, 16);
    const tag = `~${shortHash(base)}`;
    base = base.slice(0, room - ext.length - tag.length) + tag + ext;
  }
  return prefix + base;
}

/**
 * The directory name of a job inside the buffer directory. Ids that are already a safe
 * component are kept, so an operator can find a job's files by its id; anything else is hashed.
 */
export function safeJobDirName(jobId: string): string {
  if (/^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$/.test(jobId)) return jobId;
  return `job-${shortHash(jobId)}`;
}

/** `<bufferDir>/<safe job dir>`. */
export function jobDirectory(bufferDir: string, jobId: string): string {
  return path.join(bufferDir, safeJobDirName(jobId));
}

/**
 * Throws unless `dir` is a real directory: `ERR_POLICY_DENIED` (not retryable) when it is a
 * symbolic link or another kind of file, `ERR_IO` when it cannot be examined. `what` names it.
 */
export async function checkRealDirectory(dir: string, what: string): Promise<void> {
  let st;
  try {
    st = await lstat(dir);
  } catch (err) {
    throw toRoboflowError(err, 'ERR_IO', dir);
  }
  if (st.isSymbolicLink()) {
    const target = await readlink(dir).catch(() => '(unreadable)');
    throw new RoboflowError(
      'ERR_POLICY_DENIED',
      `refusing to use ${what} ${dir}: it is a symbolic link (to ${target}), which could lead outside the buffer ` +
        `directory; this worker did not make it, so something else writes into the buffer directory — inspect it`,
    );
  }
  if (!st.isDirectory()) {
    throw new RoboflowError('ERR_POLICY_DENIED', `refusing to use ${what} ${dir}: it is not a directory; inspect the buffer directory`);
  }
}

/**
 * Creates `<bufferDir>/<safe job dir>` (or keeps it, for a resume) and returns its path, after
 * checking that it is a real directory and not a link planted to lead elsewhere.
 */
export async function ensureJobDirectory(bufferDir: string, jobId: string): Promise<string> {
  const dir = jobDirectory(bufferDir, jobId);
  try {
    // The buffer directory is the operator's, and may itself be a link (to a local NVMe).
    await mkdir(bufferDir, { recursive: true });
    await mkdir(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw toRoboflowError(err, 'ERR_IO', dir);
  }
  await checkRealDirectory(dir, `the directory of job ${jobId}`);
  return dir;
}
