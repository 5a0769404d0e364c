/**
 * Local files as an `ObjectSource`. Useful for NFS/FUSE-mounted datasets and for tests: the
 * downloader treats a local file exactly like a remote object (ranges, ETag guard, verification).
 */

import type { Stats } from 'node:fs';
import fs from 'node:fs/promises';
import { abortError, RoboflowError, toRoboflowError } from '../errors.js';
import type { ByteRange, ObjectSource, ObjectStat, RangeBody, ReadOptions } from '../types.js';
import { checkRange } from './range.js';

/** Read buffer of a range stream: large enough to keep syscalls per GiB low. */
const READ_HIGH_WATER_MARK = 256 * 1024;

/**
 * A change detector for local files, in ETag form (quoted). Inode, size and modification time
 * together change whenever the file is replaced (new inode) or rewritten (mtime, size); it is not
 * a content hash, so it vouches for no checksum.
 */
export function fileEtag(st: Stats): string {
  return `"${st.ino}-${st.size}-${st.mtimeMs}"`;
}

export class FileSource implements ObjectSource {
  readonly kind = 'file' as const;
  readonly url: string;
  readonly path: string;

  constructor(filePath: string, display: string) {
    this.path = filePath;
    this.url = display;
  }

  async stat(opts: { signal?: AbortSignal } = {}): Promise<ObjectStat> {
    if (opts.signal?.aborted) throw abortError(opts.signal, `stat of ${this.url}`);
    let st: Stats;
    try {
      st = await fs.stat(this.path);
    } catch (err) {
      throw this.mapError(err);
    }
    this.checkRegular(st);
    return {
      url: this.url,
      size: st.size,
      etag: fileEtag(st),
      lastModified: st.mtime,
      checksums: [],
      rangesSupported: true,
    };
  }

  async read(range: ByteRange, opts: ReadOptions = {}): Promise<RangeBody> {
    checkRange(range, this.url);
    const { signal } = opts;
    if (signal?.aborted) throw abortError(signal, `read of ${this.url}`);
    let size = 0;
    let handle: fs.FileHandle;
    try {
      handle = await fs.open(this.path, 'r');
    } catch (err) {
      throw this.mapError(err);
    }
    try {
      // Stat the open descriptor, not the path: what we compare is then what we read, even if
      // the path is replaced between the two calls.
      const st = await handle.stat();
      this.checkRegular(st);
      if (opts.ifMatch !== undefined && fileEtag(st) !== opts.ifMatch) {
        throw new RoboflowError(
          'ERR_SOURCE_CHANGED',
          `${this.url} changed since it was first read (ETag ${opts.ifMatch}, now ${fileEtag(st)})`,
          { url: this.url },
        );
      }
      if (range.end > st.size) {
        throw new RoboflowError(
          'ERR_RANGE_NOT_SUPPORTED',
          `range [${range.start}, ${range.end}) lies beyond the end of ${this.url} (size ${st.size})`,
          { url: this.url },
        );
      }
      if (signal?.aborted) throw abortError(signal, `read of ${this.url}`);
      size = st.size;
    } catch (err) {
      await handle.close().catch(() => undefined);
      throw err instanceof RoboflowError ? err : this.mapError(err);
    }
    const body = handle.createReadStream({
      start: range.start,
      end: range.end - 1,
      highWaterMark: READ_HIGH_WATER_MARK,
      autoClose: true,
    });
    if (signal) {
      const onAbort = () => body.destroy(abortError(signal, `read of ${this.url}`));
      signal.addEventListener('abort', onAbort, { once: true });
      body.once('close', () => signal.removeEventListener('abort', onAbort));
    }
    // The read stream ends at the range's end: it cannot yield a byte past it.
    return { range, body, total: size, lengthProven: true };
  }

  async close(): Promise<void> {
    // Nothing pooled: every read opens and closes its own descriptor.
  }

  private checkRegular(st: Stats): void {
    if (!st.isFile()) {
      throw new RoboflowError('ERR_BAD_URL', `${this.url} is not a regular file (a directory or a device); name a file`, {
        url: this.url,
      });
    }
  }

  private mapError(err: unknown): RoboflowError {
    const code = (err as { code?: string } | undefined)?.code;
    if (code === 'ENOENT' || code === 'ENOTDIR') {
      return new RoboflowError('ERR_NOT_FOUND', `no such file: ${this.url} — check the path`, { url: this.url, cause: err });
    }
    if (code === 'EACCES' || code === 'EPERM') {
      return new RoboflowError('ERR_ACCESS_DENIED', `permission denied reading ${this.url} — check the file's permissions`, {
        url: this.url,
        cause: err,
      });
    }
    if (code === 'EISDIR') {
      return new RoboflowError('ERR_BAD_URL', `${this.url} is a directory; name a file`, { url: this.url, cause: err });
    }
    return toRoboflowError(err, 'ERR_IO', this.url);
  }
}
