/**
 * Positioned writes into the temp file from a thread of their own. A lane hands over a batch (up
 * to 2 MiB); the thread writes it with `writeSync` in pieces of `THREAD_WRITE_PIECE_BYTES` and
 * says when it is done: one message each way per batch, however many pieces.
 *
 * Why a thread: on a virtual machine whose free memory goes back to the host, a page-cache folio
 * costs less the smaller the write that creates it (`file-writer.ts`), down to 16–32 KiB, where
 * the system-call count starts to dominate. Measured there, 1 GiB into a new file by one writer:
 * 32 KiB writes 0.5–0.9 s of system time, 64 KiB 0.84–1.13 s, 256 KiB 1.38–1.53 s (at other times
 * the same machine charged ~1.4 s for both 32 and 256 KiB: the difference comes and goes with the
 * host, the cost never favours large writes). Through the thread pool every write is a round trip
 * of the event loop (64 KiB one at a time: 1.7 s for 1 GiB), so `FileWriter` stops at 256 KiB; a
 * thread that loops over `writeSync` pays no round trip per piece and leaves the event loop to the
 * sockets. Writes to one file serialise on its inode lock, so one thread is enough. 1 GiB
 * uncapped, same machine, alternating runs: system time 2.5–2.8 s through the thread pool against
 * 1.34–1.4 s from the thread while small writes were cheap; 3.23–3.71 s wall against 3.80–3.83 s
 * (both bound by the disk's fdatasync) when they were not.
 *
 * Bytes cross by shared memory: the lanes' buffers are `SharedArrayBuffer`s (`sharedBuffer`),
 * which the message shares instead of copying. Any other buffer (a stream's) is copied into a
 * pooled shared buffer first.
 */

import { Worker } from 'node:worker_threads';
import { RoboflowError } from '../errors.js';
import { nativeCrcModule, THREAD_CRC_SOURCE } from './crc.js';

/** Largest single write from the thread (see the top of this file). */
export const THREAD_WRITE_PIECE_BYTES = 32 * 1024;

/** A buffer the writer thread reads without a copy. Zero-filled. */
export function sharedBuffer(bytes: number): Buffer {
  return Buffer.from(new SharedArrayBuffer(bytes));
}

function isShared(buf: Buffer): boolean {
  return buf.buffer instanceof SharedArrayBuffer;
}

/**
 * The thread's program: plain CommonJS given as source (`eval`), so the same code runs from the
 * compiled library and under a TypeScript test runner. It writes through the caller's file
 * descriptor (threads share the process's descriptors); the caller keeps the file open until
 * `close()` has resolved.
 */
const WORKER_SOURCE = `
'use strict';
const { workerData, parentPort } = require('node:worker_threads');
const { writeSync } = require('node:fs');
${THREAD_CRC_SOURCE}
const { fd, pieceBytes, withCrc32 } = workerData;
parentPort.on('message', (m) => {
  let at = m.position;
  let crc = 0;
  try {
    for (const part of m.parts) {
      if (withCrc32) crc = crc32(part, crc);
      let off = 0;
      while (off < part.length) {
        const n = writeSync(fd, part, off, Math.min(pieceBytes, part.length - off), at);
        // A file system that accepts nothing and reports no error would otherwise loop forever.
        if (n <= 0) throw Object.assign(new Error('write at ' + at + ' wrote nothing'), { code: 'EIO' });
        off += n;
        at += n;
      }
    }
    parentPort.postMessage(withCrc32 ? { id: m.id, crc } : { id: m.id });
  } catch (err) {
    const e = err || {};
    parentPort.postMessage({ id: m.id, error: { message: String(e.message || e), code: e.code, errno: e.errno, syscall: e.syscall } });
  }
});
`;

interface Outcome {
  readonly id: number;
  readonly crc?: number;
  readonly error?: { readonly message: string; readonly code?: string; readonly errno?: number; readonly syscall?: string };
}

interface Pending {
  readonly resolve: (crc: number | undefined) => void;
  readonly reject: (err: Error) => void;
  readonly staged: Buffer | undefined;
}

/**
 * Writes batches into one open file from a thread of its own, in the order they are given. The
 * thread is referenced only while a write is pending, so an idle writer never keeps the process
 * alive; `close()` waits for pending writes and ends the thread (idempotent).
 */
export class WriterThread {
  private readonly worker: Worker;
  private readonly pending = new Map<number, Pending>();
  /** Shared buffers for batches that arrive in unshared memory, reused. */
  private readonly stages: Buffer[] = [];
  /** `close()` waiting for the pending writes. */
  private readonly idleWaiters: (() => void)[] = [];
  private nextId = 0;
  private broken: Error | undefined;
  private closing: Promise<void> | undefined;

  /**
   * @param fd the open file's descriptor; it must stay open until `close()` resolves
   * @param mapError turns a failed write's error into the caller's (say, `ERR_NO_SPACE`)
   * @param pieceBytes largest single write
   * @param withCrc32 also compute each batch's CRC-32 (`crc.ts`) on the thread, from the bytes it
   *   writes, and resolve `write()` with it (`SegmentCrc32Hasher` combines them)
   */
  constructor(
    fd: number,
    private readonly mapError: (err: unknown) => Error,
    pieceBytes: number = THREAD_WRITE_PIECE_BYTES,
    withCrc32 = false,
  ) {
    if (!(pieceBytes > 0)) throw new RangeError(`piece size must be positive, got ${pieceBytes}`);
    this.worker = new Worker(WORKER_SOURCE, { eval: true, workerData: { fd, pieceBytes, withCrc32, crcModule: nativeCrcModule } });
    this.worker.unref();
    this.worker.on('message', (m: Outcome) => this.settle(m));
    this.worker.on('error', (err) => this.breakDown(err));
    this.worker.on('exit', (code) => this.breakDown(new Error(`the writer thread exited with code ${code}`)));
  }

  /**
   * Writes `bufs` (`total` bytes together) at `position`; resolves when every byte is written
   * (with the batch's CRC-32 when the thread computes them), rejects with the mapped error of
   * the write that failed.
   */
  write(bufs: readonly Buffer[], total: number, position: number): Promise<number | undefined> {
    const written = bufs.reduce((sum, b) => sum + b.length, 0);
    if (written !== total) return Promise.reject(new RangeError(`write of ${total} bytes was given ${written}`));
    if (this.closing) return Promise.reject(new RoboflowError('ERR_ABORTED', 'the writer is closed'));
    if (this.broken) return Promise.reject(this.mapError(this.broken));
    let parts: Buffer[];
    let staged: Buffer | undefined;
    if (bufs.every(isShared)) {
      parts = [...bufs];
    } else {
      staged = this.stages.pop();
      if (staged === undefined || staged.length < total) staged = sharedBuffer(total);
      let at = 0;
      for (const b of bufs) at += b.copy(staged, at);
      parts = [staged.subarray(0, total)];
    }
    const id = this.nextId++;
    return new Promise<number | undefined>((resolve, reject) => {
      if (this.pending.size === 0) this.worker.ref();
      this.pending.set(id, { resolve, reject, staged });
      this.worker.postMessage({ id, position, parts });
    });
  }

  private settle(m: Outcome): void {
    const p = this.pending.get(m.id);
    if (!p) return;
    this.forget(m.id, p);
    if (m.error === undefined) {
      p.resolve(m.crc);
      return;
    }
    p.reject(this.mapError(Object.assign(new Error(m.error.message), m.error)));
  }

  private forget(id: number, p: Pending): void {
    this.pending.delete(id);
    if (p.staged) this.stages.push(p.staged);
    if (this.pending.size > 0) return;
    this.worker.unref();
    for (const resolve of this.idleWaiters.splice(0)) resolve();
  }

  /** The thread failed or ended: every pending write fails with it. */
  private breakDown(err: Error): void {
    this.broken ??= err;
    for (const [id, p] of this.pending) {
      this.forget(id, p);
      p.reject(this.mapError(err));
    }
  }

  /** Waits for the pending writes (whatever their outcome) and ends the thread. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      if (this.pending.size > 0) await new Promise<void>((resolve) => this.idleWaiters.push(resolve));
      await this.worker.terminate();
    })();
    return this.closing;
  }
}
