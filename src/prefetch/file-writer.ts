/**
 * Positioned writes into the temp file. A lane hands over one batch (up to 2 MiB, one buffer or
 * the buffers of a stream); the batch goes to the file as pieces of at most `WRITE_PIECE_BYTES`,
 * all in flight together on the thread pool, and the next batch starts when the last piece of
 * this one is written.
 *
 * Why pieces: the kernel sizes a page-cache folio after the write that creates it (ext4 with
 * large folios, Linux 6.x), and on a virtual machine whose free memory goes back to the host
 * (virtio-balloon free page reporting) a large folio is built from memory the host has to fault
 * in again. Measured on such a machine (2 vCPUs), 1 GiB into a new file:
 *   - `dd bs=2M` 2.6 s of system time, `bs=64K` 0.45 s, when the memory was returned first;
 *   - roboflow, uncapped, memory returned first: one 2 MiB write per batch 3.0 s wall (2.7 s
 *     system); 1 MiB pieces together 2.1 s; 512 KiB 1.5 s; 256 KiB 0.88 s (0.63 s system);
 *     128 KiB 0.93 s; 64 KiB one after another 1.7 s (a thread-pool round trip each);
 *   - the same with memory just freed by the previous run (nothing returned yet): 0.77 s with
 *     2 MiB writes, 0.87–0.94 s with 256 KiB pieces.
 * 256 KiB pieces cost a little where memory is warm and save two thirds where it is not; on a
 * machine without page reporting they cost eight thread-pool round trips per batch instead of one.
 *
 * Why one batch at a time: writes to one file serialise on its inode lock, and threads waiting
 * for it spin (10 % of a download's CPU in `rwsem_spin_on_owner` with four threads writing 1 MiB
 * each); a batch's pieces hold the lock briefly each.
 */

import type { FileHandle } from 'node:fs/promises';

/** Largest single write (see the top of this file). */
export const WRITE_PIECE_BYTES = 256 * 1024;

/** A run of bytes to write at `position`, as slices of the caller's buffers. */
export interface WritePiece {
  readonly position: number;
  readonly bytes: number;
  readonly bufs: readonly Buffer[];
}

/**
 * Cuts `bufs` (to be written from `position` on) into pieces of at most `pieceBytes`, slicing
 * buffers where a piece boundary falls inside one. No bytes are copied.
 */
export function cutPieces(bufs: readonly Buffer[], position: number, pieceBytes: number): WritePiece[] {
  if (!(pieceBytes > 0)) throw new RangeError(`piece size must be positive, got ${pieceBytes}`);
  const pieces: WritePiece[] = [];
  let current: Buffer[] = [];
  let currentBytes = 0;
  let at = position;
  const close = () => {
    if (currentBytes === 0) return;
    pieces.push({ position: at, bytes: currentBytes, bufs: current });
    at += currentBytes;
    current = [];
    currentBytes = 0;
  };
  for (const buf of bufs) {
    let offset = 0;
    while (offset < buf.length) {
      const take = Math.min(buf.length - offset, pieceBytes - currentBytes);
      current.push(offset === 0 && take === buf.length ? buf : buf.subarray(offset, offset + take));
      currentBytes += take;
      offset += take;
      if (currentBytes === pieceBytes) close();
    }
  }
  close();
  return pieces;
}

/** Writes batches into one open file, one batch at a time, each as concurrent pieces. */
export class FileWriter {
  private queue: Promise<void> = Promise.resolve();

  /**
   * @param fh the open file
   * @param mapError turns a failed write's error into the caller's (say, `ERR_NO_SPACE`)
   * @param pieceBytes largest single write
   */
  constructor(
    private readonly fh: FileHandle,
    private readonly mapError: (err: unknown) => Error,
    private readonly pieceBytes: number = WRITE_PIECE_BYTES,
  ) {}

  /**
   * Writes `bufs` (`total` bytes together) at `position`; resolves when every byte is written,
   * rejects with the first piece's error after all pieces have settled, so no write to the file
   * is still running when the caller sees the failure.
   */
  write(bufs: readonly Buffer[], total: number, position: number): Promise<void> {
    const run = this.queue.then(() => this.writeNow(bufs, total, position));
    this.queue = run.catch(() => undefined);
    return run;
  }

  /** Resolves when the writes handed over so far have settled. */
  async idle(): Promise<void> {
    await this.queue;
  }

  private async writeNow(bufs: readonly Buffer[], total: number, position: number): Promise<void> {
    const pieces = cutPieces(bufs, position, this.pieceBytes);
    const written = pieces.reduce((sum, p) => sum + p.bytes, 0);
    if (written !== total) throw new RangeError(`write of ${total} bytes was given ${written}`);
    const outcomes = await Promise.allSettled(pieces.map((p) => this.writePiece(p)));
    const failed = outcomes.find((o): o is PromiseRejectedResult => o.status === 'rejected');
    if (failed) throw this.mapError(failed.reason);
  }

  /** One piece, completing a short write. */
  private async writePiece(p: WritePiece): Promise<void> {
    let done = (await this.fh.writev(p.bufs as Buffer[], p.position)).bytesWritten;
    if (done === p.bytes) return;
    const rest = Buffer.concat(p.bufs as Buffer[], p.bytes);
    while (done < p.bytes) {
      const n = (await this.fh.write(rest, done, p.bytes - done, p.position + done)).bytesWritten;
      // A file system that accepts nothing and reports no error would otherwise loop forever.
      if (n <= 0) throw new Error(`write at ${p.position + done} wrote nothing`);
      done += n;
    }
  }
}
