/**
 * The `checksum` processor: SHA-256 of every input, streamed, written as `checksums.sha256` in the
 * format `sha256sum` prints and `sha256sum -c` reads.
 */

import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { abortError, RoboflowError, toRoboflowError } from '../errors.js';
import type { Processor, ProcessorContext } from '../types.js';
import { inputName } from './inputs.js';

/**
 * Read size while hashing. Large reads keep the syscall count low (a 4 GB input is ~1000 reads);
 * 4 MiB is still a small, fixed amount of memory.
 */
const READ_CHUNK = 4 * 1024 * 1024;

export interface FileChecksum {
  readonly name: string;
  readonly bytes: number;
  /** Lower-case hexadecimal. */
  readonly sha256: string;
}

export interface ChecksumResult {
  readonly files: readonly FileChecksum[];
}

/** Name of the file the processor writes into the output directory. */
export const CHECKSUM_FILE = 'checksums.sha256';

/** SHA-256 and length of a file, read in `READ_CHUNK` pieces; the signal stops the read. */
export async function sha256File(
  filePath: string,
  opts: { signal?: AbortSignal } = {},
): Promise<{ bytes: number; sha256: string }> {
  const { signal } = opts;
  if (signal?.aborted) throw abortError(signal, `hashing ${filePath}`);
  const hash = createHash('sha256');
  let bytes = 0;
  try {
    const stream = createReadStream(filePath, { highWaterMark: READ_CHUNK, ...(signal ? { signal } : {}) });
    for await (const chunk of stream as AsyncIterable<Buffer>) {
      hash.update(chunk);
      bytes += chunk.length;
    }
  } catch (err) {
    if (signal?.aborted) throw abortError(signal, `hashing ${filePath}`);
    throw toRoboflowError(err, 'ERR_IO');
  }
  return { bytes, sha256: hash.digest('hex') };
}

/**
 * One line of `sha256sum` output. Names with a backslash or a line break are escaped the way GNU
 * coreutils does (a leading `\` marks the line), so `sha256sum -c` reads them back.
 */
export function sha256sumLine(sha256: string, name: string): string {
  if (/[\\\n\r]/.test(name)) {
    const escaped = name.replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/\r/g, '\\r');
    return `\\${sha256}  ${escaped}\n`;
  }
  return `${sha256}  ${name}\n`;
}

export async function runChecksum(ctx: ProcessorContext): Promise<ChecksumResult> {
  const { job, inputPaths, outputDir, signal } = ctx;
  const files: FileChecksum[] = [];
  for (const [i, inputPath] of inputPaths.entries()) {
    const name = inputName(job, i, inputPath);
    try {
      const { bytes, sha256 } = await sha256File(inputPath, { signal });
      files.push({ name, bytes, sha256 });
    } catch (err) {
      const e = toRoboflowError(err, 'ERR_IO');
      if (e.code === 'ERR_ABORTED') throw e;
      throw new RoboflowError(e.code, `job ${job.id}: cannot hash input ${name} (${inputPath}): ${e.message}`, {
        cause: e,
      });
    }
  }
  const text = files.map((f) => sha256sumLine(f.sha256, f.name)).join('');
  await writeFile(path.join(outputDir, CHECKSUM_FILE), text);
  return { files };
}

export const checksumProcessor: Processor = {
  name: 'checksum',
  run: (ctx) => runChecksum(ctx),
};
