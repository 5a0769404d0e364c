/**
 * Positioned writes into the temp file. A lane hands over one batch (up to 2 MiB, one buffer or
 * the buffers of a stream); the batch goes to the file as pieces of at most `WRITE_PIECE_BYTES`,
 * `WRITES_IN_FLIGHT` at a time on the thread pool, and the next batch starts when the last piece
 * of this one is written.
 *
 * Why pieces: the kernel sizes a page-cache folio after the write that creates it (ext4 with
 * large folios, Linux 6.x), and on a virtual machine whose free memory goes back to the host
 * (virtio-balloon free page reporting) a large folio is built from memory the host has to fault
 * in again. Measured on such a machine (2 vCPUs), 1 GiB into a new file after the memory had gone
 * back: `dd bs=2M` 2.6 s of system time, `bs=64K` 0.45 s; roboflow, uncapped, one 2 MiB write
 * per batch 3.0 s wall (2.7 s system), 1 MiB pieces 2.1 s, 512 KiB 1.5 s, 256 KiB 0.9 s (0.6 s
 * system). With memory just freed by the run before (not yet returned), 2 MiB writes took 0.77 s
 * and 256 KiB pieces 0.87–0.94 s: pieces cost a little where memory is warm and save two thirds
 * where it is not. Smaller pieces pay more thread-pool round trips than they save (64 KiB one at
 * a time: 1.7 s).
 *
 * Why two in flight: one piece copies while the next waits, so the file never waits for a
 * thread-pool round trip; but writes to one file serialise on its inode lock, and more waiters
 * only spin on it. Eight at once spent 10 % of a download's CPU in `rwsem_spin_on_owner`; capped
 * 1 GiB into a new directory: one at a time 2.61 s (0.6 s system), two 2.59–2.63 s (0.55 s), all
 * eight 2.77 s (1.04 s); uncapped: one 1.05–1.14 s, two 0.92–0.96 s, eight 0.91–0.97 s.
 */

import type { FileHandle } from 'node:fs/promises';

/** Largest single write (see the top of this file). */
export const WRITE_PIECE_BYTES = 256 * 1024;
/** Pieces of a batch written at the same time (see the top of this file). */
export const WRITES_IN_FLIGHT = 2;

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

/** Writes batches into one open file, one batch at a time, each as pieces (two at a time). */
export class FileWriter {
  private queue: Promise<void> = Promise.resolve();

  /**
   * @param fh the open file
   * @param mapError turns a failed write's error into the caller's (say, `ERR_NO_SPACE`)
   * @param pieceBytes largest single write
   * @param inFlight pieces written at the same time
   */
  constructor(
    private readonly fh: FileHandle,
    private readonly mapError: (err: unknown) => Error,
    private readonly pieceBytes: number = WRITE_PIECE_BYTES,
    private readonly inFlight: number = WRITES_IN_FLIGHT,
  ) {
    if (!(inFlight >= 1)) throw new RangeError(`writes in flight must be at least 1, got ${inFlight}`);
  }

  /**
   * Writes `bufs` (`total` bytes together) at `position`; resolves when every byte is written,
   * rejects with the first piece's error once no piece is being written any more, so no write to
   * the file is still running when the caller sees the failure.
   */
  write(bufs: readonly Buffer[], total: number, position: number): Promise<void> {
    const run = this.queue.then(() => this.writeNow(bufs, total, position));
    this.queue = run.catch(() => undefined);
    return run;
  }

  private async writeNow(bufs: readonly Buffer[], total: number, position: number): Promise<void> {
    const pieces = cutPieces(bufs, position, this.pieceBytes);
    const written = pieces.reduce((sum, p) => sum + p.bytes, 0);
    if (written !== total) throw new RangeError(`write of ${total} bytes was given ${written}`);
    let next = 0;
    let failure: { reason: unknown } | undefined;
    const stream = async () => {
      // After a failure the other stream finishes its piece and stops: the batch failed anyway.
      while (next < pieces.length && !failure) {
        const piece = pieces[next++] as WritePiece;
        try {
          await this.writePiece(piece);
        } catch (reason) {
          failure ??= { reason };
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(this.inFlight, pieces.length) }, stream));
    if (failure) throw this.mapError(failure.reason);
  }

  /** Resolves when every batch given so far has been written (or has failed). */
  async close(): Promise<void> {
    await this.queue;
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
