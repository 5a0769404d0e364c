/**
 * The `mcap-summary` processor: what is in each input MCAP file — channels, message counts per
 * channel, time span — written as `summary.json` (always an array, one entry per input, in input
 * order) into the output directory.
 *
 * A 4 GB recording is never read whole when it need not be. The file's two ends are checked
 * first (leading magic; footer and trailing magic), which tells a non-MCAP file and a truncated
 * one apart at once. Then, cheapest first:
 * 1. indexed file with a Statistics record: counts and times come from the summary section alone;
 * 2. indexed file without statistics but with message indexes: only the message index records
 *    after each chunk are read (a few bytes per message), never the message data;
 * 3. otherwise (no summary, or chunks without message indexes): the file is streamed once through
 *    `McapStreamReader` in 4 MiB reads, counting messages; memory stays bounded by the largest
 *    record.
 */

import { createReadStream } from 'node:fs';
import { open, writeFile, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { MCAP_MAGIC, McapIndexedReader, McapStreamReader } from '@mcap/core';
import type { DecompressHandlers, IReadable, McapTypes } from '@mcap/core';
import { abortError, RoboflowError, toRoboflowError } from '../errors.js';
import type { Processor, ProcessorContext } from '../types.js';
import { inputName } from './inputs.js';

/** Read size when streaming a file without a usable index. */
const STREAM_CHUNK = 4 * 1024 * 1024;
/**
 * Largest single read the indexed reader may ask for, and the most unparsed bytes the stream
 * reader may hold. A real summary section or record is far smaller (a 4 GB file's summary is well
 * under 1 MiB); a corrupt length field must not make us allocate gigabytes.
 */
const MAX_RECORD_BYTES = 512 * 1024 * 1024;
/** Opcode + length + summaryStart + summaryOffsetStart + CRC + closing magic. */
const FOOTER_AND_MAGIC = 1 + 8 + 8 + 8 + 4 + MCAP_MAGIC.length;
const FOOTER_OPCODE = 0x02;
const FOOTER_CONTENT_LENGTH = 20n;
/** Opening magic + the smallest header record (opcode, length, two empty strings). */
const MIN_HEAD = MCAP_MAGIC.length + 1 + 8 + 4 + 4;

export const SUMMARY_FILE = 'summary.json';

export interface McapChannelSummary {
  readonly id: number;
  readonly topic: string;
  readonly messageEncoding: string;
  /** null when the channel has no schema (schema id 0). */
  readonly schemaName: string | null;
  readonly messageCount: number;
}

/** How the counts were obtained, cheapest first. */
export type McapCountSource = 'statistics' | 'message-index' | 'stream';

export interface McapFileSummary {
  /** The input's name (last segment of its URL, else the local file name). */
  readonly file: string;
  readonly bytes: number;
  readonly profile: string;
  readonly library: string;
  readonly countedFrom: McapCountSource;
  readonly channels: readonly McapChannelSummary[];
  readonly messageCount: number;
  /** Log time of the first message, nanoseconds since the epoch, as a decimal string; null without messages. */
  readonly startTime: string | null;
  /** Log time of the last message, like `startTime`. */
  readonly endTime: string | null;
  readonly durationSeconds: number;
}

/** What the processor returns; the full per-file detail is in `summary.json`. */
export interface McapSummaryResult {
  readonly files: number;
  readonly messageCount: number;
  readonly summaries: readonly {
    readonly file: string;
    readonly messageCount: number;
    readonly channels: number;
    readonly durationSeconds: number;
  }[];
}

type Channel = McapTypes.Channel;
type Schema = McapTypes.Schema;
type Header = McapTypes.Header;

interface Counts {
  readonly perChannel: Map<number, bigint>;
  readonly total: bigint;
  readonly start: bigint | null;
  readonly end: bigint | null;
}

function badFile(name: string, problem: string, cause?: unknown): RoboflowError {
  return new RoboflowError('ERR_BAD_INPUT_FILE', `input ${name}: ${problem}`, {
    ...(cause !== undefined ? { cause } : {}),
  });
}

function hex(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join(' ');
}

function isMagic(bytes: Uint8Array): boolean {
  return bytes.length === MCAP_MAGIC.length && MCAP_MAGIC.every((b, i) => bytes[i] === b);
}

/** Reads exactly `length` bytes at `position`, or throws saying where the file ended. */
async function readExactly(fh: FileHandle, position: number, length: number): Promise<Buffer> {
  const buf = Buffer.allocUnsafe(length);
  let done = 0;
  while (done < length) {
    const { bytesRead } = await fh.read(buf, done, length - done, position + done);
    if (bytesRead === 0) throw new Error(`file ended at byte ${position + done}, expected ${length - done} more bytes`);
    done += bytesRead;
  }
  return buf;
}

/** `IReadable` over a file handle, refusing reads past the end or of implausible size. */
function fileReadable(fh: FileHandle, size: number): IReadable {
  return {
    size: () => Promise.resolve(BigInt(size)),
    read: async (offset: bigint, length: bigint) => {
      if (offset < 0n || length < 0n || offset + length > BigInt(size)) {
        throw new Error(`index points outside the file: ${length} bytes at offset ${offset} (file is ${size} bytes)`);
      }
      if (length > BigInt(MAX_RECORD_BYTES)) {
        throw new Error(`index asks for an implausible ${length}-byte read at offset ${offset}`);
      }
      return readExactly(fh, Number(offset), Number(length));
    },
  };
}

/**
 * No compression can be decompressed here (MCAP uses zstd and lz4; Node 20's zlib has neither),
 * so any compressed chunk met while streaming fails with a clear, permanent error instead of the
 * reader's generic one.
 */
function unsupportedCompression(name: string): DecompressHandlers {
  return new Proxy({} as DecompressHandlers, {
    get: (_target, key) =>
      typeof key === 'string'
        ? () => {
            throw new RoboflowError(
              'ERR_PROCESSOR',
              `input ${name}: has ${key}-compressed chunks and no statistics or message indexes; ` +
                `counting its messages needs a ${key} decompressor, which this build does not have`,
              { retryable: false },
            );
          }
        : undefined,
  });
}

function buildSummary(
  name: string,
  bytes: number,
  header: Header,
  channels: ReadonlyMap<number, Channel>,
  schemas: ReadonlyMap<number, Schema>,
  counts: Counts,
  countedFrom: McapCountSource,
): McapFileSummary {
  const channelSummaries = [...channels.values()]
    .sort((a, b) => a.id - b.id)
    .map((c) => ({
      id: c.id,
      topic: c.topic,
      messageEncoding: c.messageEncoding,
      schemaName: c.schemaId === 0 ? null : (schemas.get(c.schemaId)?.name ?? null),
      messageCount: Number(counts.perChannel.get(c.id) ?? 0n),
    }));
  const hasSpan = counts.total > 0n && counts.start !== null && counts.end !== null;
  return {
    file: name,
    bytes,
    profile: header.profile,
    library: header.library,
    countedFrom,
    channels: channelSummaries,
    messageCount: Number(counts.total),
    startTime: hasSpan ? counts.start!.toString() : null,
    endTime: hasSpan ? counts.end!.toString() : null,
    durationSeconds: hasSpan ? Number(counts.end! - counts.start!) / 1e9 : 0,
  };
}

/** Counts from the message index records that follow each chunk; null if a chunk has none. */
async function countFromMessageIndexes(
  reader: McapIndexedReader,
  readable: IReadable,
  signal: AbortSignal | undefined,
): Promise<Counts | null> {
  if (reader.chunkIndexes.length === 0) return null;
  if (reader.chunkIndexes.some((c) => c.messageIndexLength === 0n)) return null;
  const perChannel = new Map<number, bigint>();
  let total = 0n;
  let start: bigint | null = null;
  let end: bigint | null = null;
  // The message index records of all chunks are a plain sequence of records; one stream reader
  // parses them all.
  const parser = new McapStreamReader({ noMagicPrefix: true });
  for (const chunk of reader.chunkIndexes) {
    if (signal?.aborted) throw abortError(signal, 'summarising MCAP');
    const first = chunk.chunkStartOffset + chunk.chunkLength;
    parser.append(await readable.read(first, chunk.messageIndexLength));
    for (let rec = parser.nextRecord(); rec !== undefined; rec = parser.nextRecord()) {
      if (rec.type !== 'MessageIndex') {
        throw new Error(`expected MessageIndex records after the chunk at offset ${chunk.chunkStartOffset}, found ${rec.type}`);
      }
      const n = BigInt(rec.records.length);
      perChannel.set(rec.channelId, (perChannel.get(rec.channelId) ?? 0n) + n);
      total += n;
    }
    if (start === null || chunk.messageStartTime < start) start = chunk.messageStartTime;
    if (end === null || chunk.messageEndTime > end) end = chunk.messageEndTime;
  }
  if (parser.bytesRemaining() !== 0) throw new Error('message index section ends in the middle of a record');
  return { perChannel, total, start, end };
}

/** Streams the whole file once, counting messages. */
async function streamSummary(
  filePath: string,
  name: string,
  bytes: number,
  signal: AbortSignal | undefined,
): Promise<McapFileSummary> {
  const reader = new McapStreamReader({ decompressHandlers: unsupportedCompression(name) });
  const channels = new Map<number, Channel>();
  const schemas = new Map<number, Schema>();
  const perChannel = new Map<number, bigint>();
  let header: Header | undefined;
  let total = 0n;
  let start: bigint | null = null;
  let end: bigint | null = null;
  let appended = 0;

  const stream = createReadStream(filePath, { highWaterMark: STREAM_CHUNK, ...(signal ? { signal } : {}) });
  try {
    for await (const data of stream as AsyncIterable<Buffer>) {
      if (reader.done()) throw badFile(name, `has ${bytes - appended} bytes after the closing magic`);
      appended += data.length;
      try {
        reader.append(data);
        for (let rec = reader.nextRecord(); rec !== undefined; rec = reader.nextRecord()) {
          switch (rec.type) {
            case 'Header':
              header = rec;
              break;
            case 'Schema':
              schemas.set(rec.id, rec);
              break;
            case 'Channel':
              channels.set(rec.id, rec);
              break;
            case 'Message':
              total += 1n;
              perChannel.set(rec.channelId, (perChannel.get(rec.channelId) ?? 0n) + 1n);
              if (start === null || rec.logTime < start) start = rec.logTime;
              if (end === null || rec.logTime > end) end = rec.logTime;
              break;
            default:
              break;
          }
        }
      } catch (err) {
        if (err instanceof RoboflowError) throw err;
        const at = appended - reader.bytesRemaining();
        // The reader works record by record, so the damage is somewhere in the record ending here.
        throw badFile(name, `is corrupt (detected in the record ending at byte ${at}): ${(err as Error).message}`, err);
      }
      if (reader.bytesRemaining() > MAX_RECORD_BYTES) {
        throw badFile(
          name,
          `is corrupt near byte ${appended - reader.bytesRemaining()}: a record claims more than ${MAX_RECORD_BYTES} bytes`,
        );
      }
    }
  } catch (err) {
    if (signal?.aborted) throw abortError(signal, `summarising ${name}`);
    throw toRoboflowError(err, 'ERR_IO');
  } finally {
    stream.destroy();
  }
  if (!reader.done() || header === undefined) {
    throw badFile(
      name,
      `is truncated: the data ends in the middle of a record at byte ${appended - reader.bytesRemaining()} of ${bytes}`,
    );
  }
  return buildSummary(name, bytes, header, channels, schemas, { perChannel, total, start, end }, 'stream');
}

/**
 * Summarises one MCAP file. Throws `ERR_BAD_INPUT_FILE` naming `name` when the file is not MCAP,
 * is truncated or is corrupt; `ERR_ABORTED` when the signal fires.
 */
export async function summarizeMcap(
  filePath: string,
  opts: { name?: string; signal?: AbortSignal } = {},
): Promise<McapFileSummary> {
  const name = opts.name ?? path.basename(filePath);
  const { signal } = opts;
  if (signal?.aborted) throw abortError(signal, `summarising ${name}`);

  let fh: FileHandle;
  try {
    fh = await open(filePath, 'r');
  } catch (err) {
    const e = toRoboflowError(err, 'ERR_IO');
    throw new RoboflowError(e.code, `input ${name}: cannot open ${filePath}: ${e.message}`, { cause: err });
  }
  try {
    const size = (await fh.stat()).size;
    const head = await readExactly(fh, 0, Math.min(size, MCAP_MAGIC.length));
    if (!isMagic(head)) {
      throw badFile(
        name,
        size < MCAP_MAGIC.length
          ? `is not an MCAP file: only ${size} bytes long`
          : `is not an MCAP file: it starts with ${hex(head)}, not the MCAP magic ${hex(Uint8Array.from(MCAP_MAGIC))}`,
      );
    }
    if (size < MIN_HEAD + FOOTER_AND_MAGIC) {
      throw badFile(name, `is truncated: ${size} bytes is too short for an MCAP header and footer`);
    }
    const tail = await readExactly(fh, size - FOOTER_AND_MAGIC, FOOTER_AND_MAGIC);
    const view = new DataView(tail.buffer, tail.byteOffset, tail.byteLength);
    if (!isMagic(tail.subarray(FOOTER_AND_MAGIC - MCAP_MAGIC.length))) {
      throw badFile(
        name,
        `is truncated: it does not end with the MCAP footer and closing magic (${size} bytes; ` +
          `the recording was cut off or is still being written)`,
      );
    }
    if (view.getUint8(0) !== FOOTER_OPCODE || view.getBigUint64(1, true) !== FOOTER_CONTENT_LENGTH) {
      throw badFile(name, 'is corrupt: the closing magic is not preceded by a footer record');
    }
    const summaryStart = view.getBigUint64(9, true);
    if (summaryStart === 0n) return await streamSummary(filePath, name, size, signal);

    const readable = fileReadable(fh, size);
    let reader: McapIndexedReader;
    try {
      reader = await McapIndexedReader.Initialize({ readable });
    } catch (err) {
      throw badFile(name, `has a corrupt summary section: ${(err as Error).message}`, err);
    }
    if (reader.statistics) {
      const s = reader.statistics;
      const counts: Counts = {
        perChannel: s.channelMessageCounts,
        total: s.messageCount,
        start: s.messageStartTime,
        end: s.messageEndTime,
      };
      return buildSummary(name, size, reader.header, reader.channelsById, reader.schemasById, counts, 'statistics');
    }
    let counts: Counts | null;
    try {
      counts = await countFromMessageIndexes(reader, readable, signal);
    } catch (err) {
      if (err instanceof RoboflowError) throw err;
      throw badFile(name, `has corrupt message indexes: ${(err as Error).message}`, err);
    }
    if (counts === null) return await streamSummary(filePath, name, size, signal);
    return buildSummary(name, size, reader.header, reader.channelsById, reader.schemasById, counts, 'message-index');
  } finally {
    await fh.close();
  }
}

export async function runMcapSummary(ctx: ProcessorContext): Promise<McapSummaryResult> {
  const { job, inputPaths, outputDir, signal } = ctx;
  const summaries: McapFileSummary[] = [];
  for (const [i, inputPath] of inputPaths.entries()) {
    summaries.push(await summarizeMcap(inputPath, { name: inputName(job, i, inputPath), signal }));
  }
  await writeFile(path.join(outputDir, SUMMARY_FILE), `${JSON.stringify(summaries, null, 2)}\n`);
  return {
    files: summaries.length,
    messageCount: summaries.reduce((n, s) => n + s.messageCount, 0),
    summaries: summaries.map((s) => ({
      file: s.file,
      messageCount: s.messageCount,
      channels: s.channels.length,
      durationSeconds: s.durationSeconds,
    })),
  };
}

export const mcapSummaryProcessor: Processor = {
  name: 'mcap-summary',
  run: (ctx) => runMcapSummary(ctx),
};
