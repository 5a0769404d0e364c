/**
 * The program of the demo store's thread (`startThreadStore` in comparison.ts): a `FileServer`
 * with the rate cap, latency and files it is given, on the thread's own event loop.
 *
 * Why a thread: a remote store's sending costs the worker nothing, but a `FileServer` on the
 * worker's event loop makes every paced slice a timer and a socket write that queue behind the
 * worker's own callbacks (range reads, state writes, mcap-summary). With prefetch, downloads run
 * while a job is processed, so they paid for that and sequential downloads never did: the demo
 * showed prefetched downloads slower than sequential ones for a reason a real store does not
 * have. This module runs only as a thread entry; it is compiled to dist/cli/demo/ and bundled to
 * dist/bin/ beside the chunk that starts it (scripts/bundle-cli.mjs).
 */

import { parentPort, workerData } from 'node:worker_threads';
import { FileServer } from './file-server.js';

/** What the thread is started with (`workerData`). */
export interface FileServerThreadData {
  readonly rateLimitBytesPerSec: number | null;
  readonly firstByteLatencyMs: number;
  readonly files: readonly { readonly bucket: string; readonly key: string; readonly file: string }[];
}

/** Thread → starter: listening at `endpoint`, or could not start. */
export type FileServerThreadReply = { readonly endpoint: string } | { readonly error: string };

/** Starter → thread: stop serving, then exit. (A type only: importing a value from this module
 * would run it.) */
export type FileServerThreadStop = 'stop';

async function main(): Promise<void> {
  const port = parentPort;
  if (port === null) throw new Error('file-server-thread.js runs as a worker thread only');
  const data = workerData as FileServerThreadData;
  let server: FileServer;
  try {
    server = await FileServer.start({
      ...(data.rateLimitBytesPerSec !== null ? { rateLimitBytesPerSec: data.rateLimitBytesPerSec } : {}),
      firstByteLatencyMs: data.firstByteLatencyMs,
    });
  } catch (err) {
    port.postMessage({ error: err instanceof Error ? err.message : String(err) } satisfies FileServerThreadReply);
    return;
  }
  for (const f of data.files) server.putFile(f.bucket, f.key, f.file);
  port.on('message', (m: unknown) => {
    if (m !== ('stop' satisfies FileServerThreadStop)) return;
    // Closing the port ends the thread once the server is closed: nothing else keeps it alive.
    void server.close().finally(() => port.close());
  });
  port.postMessage({ endpoint: server.endpoint } satisfies FileServerThreadReply);
}

void main();
