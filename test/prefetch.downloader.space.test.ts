import { execFileSync } from 'node:child_process';
import { mkdtemp, open, rm, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RoboflowError } from '../src/errors.js';
import { ParallelDownloader } from '../src/prefetch/downloader.js';
import { ObjectServer } from './support/object-server.js';

const MiB = 1024 * 1024;
let server: ObjectServer;
let mountDir: string;
/** Why the tmpfs could not be mounted (not root, no mount permission in this container). */
let unavailable: string | undefined;

beforeAll(async () => {
  server = await ObjectServer.start();
  mountDir = await mkdtemp(path.join(os.tmpdir(), 'roboflow-'));
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=8m', 'tmpfs', mountDir], { stdio: 'pipe' });
  } catch (err) {
    unavailable = `cannot mount an 8 MiB tmpfs here (${(err as Error).message.split('\n')[0]}); needs root`;
  }
});
afterAll(async () => {
  await server.close();
  if (unavailable === undefined) execFileSync('umount', [mountDir], { stdio: 'pipe' });
  await rm(mountDir, { recursive: true, force: true });
});

async function failure(p: Promise<unknown>): Promise<RoboflowError | undefined> {
  try {
    await p;
    return undefined;
  } catch (err) {
    expect(err).toBeInstanceOf(RoboflowError);
    return err as RoboflowError;
  }
}

describe('a full disk', () => {
  it('is refused before the first request when free space is short (statfs)', async (ctx) => {
    if (unavailable) return ctx.skip(unavailable);
    server.putObject('b', 'big.bin', { generated: { size: 16 * MiB, seed: 1 } });
    server.clearRequests();
    const d = new ParallelDownloader({ connections: 4, chunkSize: MiB });
    try {
      const dest = path.join(mountDir, 'big.bin');
      const err = await failure(d.download(server.httpUrl('b', 'big.bin'), dest));
      expect(err?.code).toBe('ERR_NO_SPACE');
      expect(err?.message).toContain(mountDir);
      expect(err?.message).toContain(`need ${16 * MiB} bytes`);
      expect(err?.message).toMatch(/\d+ available/);
      expect(server.requests.filter((r) => r.method === 'GET')).toHaveLength(0);
      await expect(stat(dest)).rejects.toThrow();
    } finally {
      await d.close();
    }
  });

  it('fails a write that hits ENOSPC with ERR_NO_SPACE and promotes nothing', async (ctx) => {
    if (unavailable) return ctx.skip(unavailable);
    server.putObject('b', 'slow.bin', { generated: { size: 4 * MiB, seed: 2 } });
    server.setRateLimit(MiB);
    const d = new ParallelDownloader({ connections: 2, chunkSize: 512 * 1024, retry: { baseDelayMs: 1, maxDelayMs: 5 } });
    const dest = path.join(mountDir, 'slow.bin');
    const filler = path.join(mountDir, 'filler');
    try {
      const running = failure(d.download(server.httpUrl('b', 'slow.bin'), dest));
      // The free-space check has passed once the temp file exists; now take the rest of the disk.
      while (!(await stat(`${dest}.roboflow-partial`).then(() => true, () => false))) await new Promise((r) => setTimeout(r, 10));
      const fh = await open(filler, 'w');
      try {
        const block = Buffer.alloc(256 * 1024);
        for (;;) await fh.write(block);
      } catch (err) {
        expect((err as NodeJS.ErrnoException).code).toBe('ENOSPC');
      } finally {
        await fh.close();
      }
      const err = await running;
      expect(err?.code).toBe('ERR_NO_SPACE');
      expect(err?.message).toContain(`no space left in ${mountDir} while writing ${dest}.roboflow-partial`);
      await expect(stat(dest)).rejects.toThrow();
    } finally {
      server.setRateLimit(undefined);
      await rm(filler, { force: true });
      await d.close();
    }
  });
});
