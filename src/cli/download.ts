/**
 * `roboflow download <url> <dest>`: one object to one local file through the `ParallelDownloader`.
 * A thin layer: flags become downloader options, the result becomes a JSON line or a progress bar.
 *
 * Exit codes: 0 done; 1 failed; 2 usage (bad flag, bad URL); 130/143 interrupted by SIGINT/SIGTERM.
 * An interrupted download keeps its partial files, so running the same command again resumes it.
 * A failure prints one line on stderr: `roboflow: <message> [<code>]`.
 *
 * The limits of a download come from the configuration (src/config.ts: its file named by
 * `ROBOFLOW_CONFIG`, then the environment), flags first: `headersTimeoutMs`, `stallTimeoutMs`,
 * `lowSpeedLimitBytes`, `lowSpeedTimeMs`, `rangeMaxAttempts`, `retryBaseDelayMs`,
 * `retryMaxDelayMs`. The configuration is loaded only when a `ROBOFLOW_` variable is set: without
 * one it holds the defaults, and loading it costs every download ~0.1 CPU s at start-up.
 */

import { mkdir, stat } from 'node:fs/promises';
import path from 'node:path';
import type { SingleBar } from 'cli-progress';
import type { Command } from 'commander';
import { DEFAULTS } from '../defaults.js';
import { RoboflowError, toRoboflowError } from '../errors.js';
import { ParallelDownloader } from '../prefetch/downloader.js';
import { redactText } from '../redact.js';
import { type ParsedUrl, parseObjectUrl } from '../storage/index.js';
import type { ParallelDownloaderOptions } from '../prefetch/downloader.js';
import { DURABILITIES, isDurability, type DownloadOptions, type DownloadProgress, type DownloadResult, type Durability, type StorageOptions } from '../types.js';
import { formatBytes, formatDuration, formatSize, parseDuration, parseSize } from '../units.js';

interface DownloadFlags {
  readonly connections?: number;
  readonly chunkSize?: number;
  readonly endpoint?: string;
  readonly pathStyle?: boolean;
  readonly stallTimeout?: number;
  readonly json?: boolean;
  readonly resume?: boolean;
  /** False with `--no-checksum`. */
  readonly checksum?: boolean;
  readonly durability?: Durability;
}

/** Exit status of a process ended by a signal, as shells report it (128 + signal number). */
const SIGNAL_EXIT: Readonly<Record<'SIGINT' | 'SIGTERM', number>> = { SIGINT: 130, SIGTERM: 143 };

/** Error codes that mean the command line itself is wrong (exit 2, not 1). */
const USAGE_CODES: ReadonlySet<string> = new Set(['ERR_CONFIG', 'ERR_BAD_URL', 'ERR_UNSUPPORTED_SCHEME']);

function parseConnections(value: string): number {
  const n = Number(value);
  if (!/^\s*\d+\s*$/.test(value) || !Number.isSafeInteger(n) || n < 1 || n > 1024) {
    throw new RoboflowError('ERR_CONFIG', `--connections: invalid number ${JSON.stringify(value)} (a whole number from 1 to 1024)`);
  }
  return n;
}

function parseChunkSize(value: string): number {
  const n = parseSize(value, '--chunk-size');
  if (n < 1) throw new RoboflowError('ERR_CONFIG', `--chunk-size: must be at least 1 byte, got ${JSON.stringify(value)}`);
  return n;
}

function parseDurability(value: string): Durability {
  if (isDurability(value)) return value;
  throw new RoboflowError('ERR_CONFIG', `--durability: must be ${DURABILITIES.join(' or ')}, got ${JSON.stringify(value)}`);
}

function parseStallTimeout(value: string): number {
  const n = parseDuration(value, '--stall-timeout');
  if (n < 1) throw new RoboflowError('ERR_CONFIG', `--stall-timeout: must be at least 1ms, got ${JSON.stringify(value)}`);
  return n;
}

/** Adds `download` to the program. */
export function registerDownloadCommand(program: Command): Command {
  return program
    .command('download')
    .description(
      'download one object (s3://, oss://, http(s)://, file://) to a local file with parallel range requests; ' +
        'an interrupted download resumes when run again',
    )
    .argument('<url>', 'the object to download')
    .argument('<dest>', 'the local file to create (an existing directory gets the object name)')
    .option('--connections <n>', `parallel range requests (default ${DEFAULTS.downloadConnections})`, parseConnections)
    .option('--chunk-size <size>', `bytes per range request, e.g. 8MiB, 8MB, 8388608 (default ${formatSize(DEFAULTS.chunkSize)})`, parseChunkSize)
    .option('--endpoint <url>', 'S3 endpoint (default: AWS_ENDPOINT_URL, else AWS)')
    .option('--path-style', 'use path-style S3 addressing (automatic for IP and localhost endpoints)')
    .option('--stall-timeout <duration>', `retry a range that receives nothing for this long, e.g. 30s (default ${DEFAULTS.stallTimeoutMs / 1000}s)`, parseStallTimeout)
    .option('--no-checksum', "don't verify the store's whole-object checksum (MD5 ETag, x-amz-checksum-*); the size is still checked. Saves ~1.5 CPU s per GB")
    .option(
      '--durability <mode>',
      `disk: the file survives a power cut once the command returns (fdatasync); process: it survives this process being killed, ` +
        `not the machine, and is written back by the kernel later: no waiting for a disk slower than the network (default ${DEFAULTS.durability})`,
      parseDurability,
    )
    .option('--json', 'print one JSON object on stdout when done: bytes, seconds, resumedBytes, retries, restarts, etag, verified, url, dest, mbPerSec')
    .option('--resume', 'continue a partial download; without one, download everything (the default resumes too)')
    .action(async (url: string, dest: string, flags: DownloadFlags) => {
      process.exitCode = await runDownload(url, dest, flags);
    });
}

async function runDownload(url: string, destArg: string, flags: DownloadFlags): Promise<number> {
  const stop = new AbortController();
  let caught: 'SIGINT' | 'SIGTERM' | undefined;
  const onSignal = (name: 'SIGINT' | 'SIGTERM') => {
    if (caught !== undefined) process.exit(SIGNAL_EXIT[name]); // a second signal: stop at once
    caught = name;
    stop.abort(new RoboflowError('ERR_ABORTED', `interrupted by ${name}; run the same command again to resume`, { url }));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  // cli-progress is loaded only for a terminal: every run without one would pay for it at start-up.
  const bar = !flags.json && process.stderr.isTTY ? new ProgressBar((await import('cli-progress')).default) : undefined;
  let downloader: ParallelDownloader | undefined;
  try {
    const limits = await configuredLimits();
    const storage: StorageOptions = {
      ...(flags.endpoint !== undefined ? { endpoint: flags.endpoint } : {}),
      ...(flags.pathStyle ? { forcePathStyle: true } : {}),
      // A look-ahead request needs a socket beside the body its lane is reading.
      maxConnections: 2 * (flags.connections ?? DEFAULTS.downloadConnections),
      ...(limits.headersTimeoutMs !== undefined ? { headersTimeoutMs: limits.headersTimeoutMs } : {}),
    };
    downloader = new ParallelDownloader({ ...limits.downloader, storage });
    const dest = await resolveDest(url, destArg);
    const opts: DownloadOptions = {
      signal: stop.signal,
      ...(flags.connections !== undefined ? { connections: flags.connections } : {}),
      ...(flags.chunkSize !== undefined ? { chunkSize: flags.chunkSize } : {}),
      ...(flags.stallTimeout !== undefined ? { stallTimeoutMs: flags.stallTimeout } : {}),
      ...(flags.checksum === false ? { verifySourceChecksums: false } : {}),
      ...(flags.durability !== undefined ? { durability: flags.durability } : {}),
      ...(bar ? { onProgress: (p: DownloadProgress) => bar.update(p) } : {}),
    };
    const result = flags.resume ? await downloader.resume(url, dest, opts) : await downloader.download(url, dest, opts);
    bar?.stop();
    if (flags.json) process.stdout.write(`${JSON.stringify(summary(result))}\n`);
    else if (bar) process.stderr.write(`${describe(result)}\n`);
    return 0;
  } catch (err) {
    bar?.stop();
    const e = toRoboflowError(err);
    const message = redactText(`roboflow: ${e.message} [${e.code}]`).replace(/\s*\n\s*/g, ' ');
    process.stderr.write(`${message}\n`);
    if (caught !== undefined) return SIGNAL_EXIT[caught];
    return USAGE_CODES.has(e.code) ? 2 : 1;
  } finally {
    await downloader?.close();
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

/** The download's limits from the configuration (see the module comment); none without a `ROBOFLOW_` variable. */
async function configuredLimits(): Promise<{ headersTimeoutMs?: number; downloader: ParallelDownloaderOptions }> {
  if (!Object.keys(process.env).some((name) => name.startsWith('ROBOFLOW_') && process.env[name] !== '')) return { downloader: {} };
  const { loadConfig } = await import('../config/load.js');
  const { config: c } = await loadConfig();
  return {
    headersTimeoutMs: c.headersTimeoutMs,
    downloader: {
      stallTimeoutMs: c.stallTimeoutMs,
      lowSpeedLimitBytes: c.lowSpeedLimitBytes,
      lowSpeedTimeMs: c.lowSpeedTimeMs,
      retry: { maxAttempts: c.rangeMaxAttempts, baseDelayMs: c.retryBaseDelayMs, maxDelayMs: c.retryMaxDelayMs },
    },
  };
}

/** `dest` as given, or `<dest>/<object name>` when it names a directory; creates the parent. */
async function resolveDest(url: string, dest: string): Promise<string> {
  const isDir = dest.endsWith('/') || (await stat(dest).then((s) => s.isDirectory(), () => false));
  let file = dest;
  if (isDir) {
    const parsed = parseObjectUrl(url, 'source');
    const name = objectName(parsed);
    if (!name || name === '.' || name === '..') {
      throw new RoboflowError('ERR_CONFIG', `<dest> ${dest} is a directory and ${parsed.display} names no file in it; give a file name`);
    }
    file = path.join(dest, name);
  }
  await mkdir(path.dirname(path.resolve(file)), { recursive: true });
  return file;
}

/** The last path segment of the object, as a local file name. */
function objectName(parsed: ParsedUrl): string {
  switch (parsed.kind) {
    case 'file':
      return path.basename(parsed.path);
    case 'http':
      return decodeURIComponent(path.posix.basename(parsed.url.pathname));
    case 's3':
    case 'oss':
      return path.posix.basename(parsed.key);
    default: {
      const _exhaustive: never = parsed;
      return _exhaustive;
    }
  }
}

/** The `--json` line. `mbPerSec` counts the bytes fetched in this run (resumed bytes excluded), in 10^6 B/s. */
function summary(r: DownloadResult) {
  const fetched = r.bytes - r.resumedBytes;
  return {
    bytes: r.bytes,
    seconds: round(r.seconds, 3),
    resumedBytes: r.resumedBytes,
    retries: r.retries,
    restarts: r.restarts,
    etag: r.etag ?? null,
    verified: r.verified,
    url: r.url,
    dest: r.dest,
    mbPerSec: r.seconds > 0 ? round(fetched / r.seconds / 1e6, 2) : 0,
  };
}

function describe(r: DownloadResult): string {
  const s = summary(r);
  const resumed = r.resumedBytes > 0 ? `, ${formatBytes(r.resumedBytes)} resumed` : '';
  return `${r.dest}: ${formatBytes(r.bytes)} in ${s.seconds} s (${s.mbPerSec} MB/s${resumed}), verified ${r.verified.join(', ')}`;
}

function round(n: number, digits: number): number {
  const f = 10 ** digits;
  return Math.round(n * f) / f;
}

/** A progress bar on stderr: bytes, rate, ETA. Only used when stderr is a terminal. */
class ProgressBar {
  private readonly bar: SingleBar;
  private started = false;

  constructor(cliProgress: typeof import('cli-progress')) {
    this.bar = new cliProgress.SingleBar(
      {
        format: '{bar} {percentage}% | {done} / {size} | {speed} | ETA {remaining}',
        stream: process.stderr,
        hideCursor: true,
        clearOnComplete: true,
      },
      cliProgress.Presets.shades_classic,
    );
  }

  update(p: DownloadProgress): void {
    // Our own ETA from the downloader's windowed rate; none until bytes have moved.
    const left = p.rate > 0 ? Math.ceil((p.total - p.bytesDone) / p.rate) : undefined;
    const payload = {
      done: formatBytes(p.bytesDone),
      size: formatBytes(p.total),
      speed: `${formatBytes(Math.round(p.rate))}/s`,
      remaining: left === undefined ? '--' : left <= 0 ? '0s' : formatDuration(left * 1000),
    };
    if (!this.started) {
      this.started = true;
      this.bar.start(Math.max(1, p.total), p.bytesDone, payload);
    }
    this.bar.setTotal(Math.max(1, p.total));
    this.bar.update(p.bytesDone, payload);
  }

  stop(): void {
    if (this.started) this.bar.stop();
    this.started = false;
  }
}
