/**
 * `roboflow demo`: shows what prefetch buys, on this machine, in under a minute. A thin layer
 * over `runPrefetchComparison()` (comparison.ts), which starts a rate-limited object server on
 * a thread of its own, writes sample MCAP episodes and runs the same jobs with and without prefetch.
 */

import { InvalidArgumentError, type Command } from 'commander';
import { formatComparison, runPrefetchComparison, type ComparisonProcessor } from './comparison.js';
import { toRoboflowError } from '../../errors.js';
import { createLogger, type LogLevel } from '../../log.js';
import { redactText } from '../../redact.js';
import { parseDuration, parseSize } from '../../units.js';

interface DemoFlags {
  readonly jobs: number;
  readonly size: number;
  readonly rate: number | null;
  readonly latency: number;
  readonly connections: number;
  readonly slots: number;
  readonly maxHostConnections?: number;
  readonly process: 'mcap' | 'mcap-cpu' | 'sleep' | 'checksum';
  readonly processMs?: number;
  readonly keep?: boolean;
  readonly json?: boolean;
  readonly logLevel: LogLevel;
}

const LOG_LEVELS: readonly LogLevel[] = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];
const PROCESSES = ['mcap', 'mcap-cpu', 'sleep', 'checksum'] as const;

function wholeNumber(min: number, max: number) {
  return (value: string): number => {
    const n = Number(value);
    if (!/^\d+$/.test(value.trim()) || n < min || n > max) throw new InvalidArgumentError(`use a whole number from ${min} to ${max}`);
    return n;
  };
}

function size(value: string): number {
  try {
    return parseSize(value);
  } catch (err) {
    throw new InvalidArgumentError(toRoboflowError(err).message);
  }
}

/** `25MB/s`, `25MB`, `none`. */
function rate(value: string): number | null {
  if (/^\s*(none|uncapped)\s*$/i.test(value)) return null;
  const bytes = size(value.replace(/\/s\s*$/i, ''));
  if (bytes <= 0) throw new InvalidArgumentError('use a rate above 0, e.g. 25MB/s, or none');
  return bytes;
}

function duration(value: string): number {
  try {
    return parseDuration(value);
  } catch (err) {
    throw new InvalidArgumentError(toRoboflowError(err).message);
  }
}

function processKind(value: string): DemoFlags['process'] {
  if ((PROCESSES as readonly string[]).includes(value)) return value as DemoFlags['process'];
  throw new InvalidArgumentError(`use one of ${PROCESSES.join(', ')}`);
}

function logLevel(value: string): LogLevel {
  if ((LOG_LEVELS as readonly string[]).includes(value)) return value as LogLevel;
  throw new InvalidArgumentError(`use one of ${LOG_LEVELS.join(', ')}`);
}

function processorFrom(flags: DemoFlags): ComparisonProcessor | undefined {
  const ms = flags.processMs;
  switch (flags.process) {
    case 'mcap':
      return ms === undefined ? undefined : { kind: 'mcap-summary', processMs: ms, burn: 'wait' };
    case 'mcap-cpu':
      return ms === undefined ? undefined : { kind: 'mcap-summary', processMs: ms, burn: 'cpu' };
    case 'sleep':
      return { kind: 'sleep', ms: ms ?? 500 };
    case 'checksum':
      return { kind: 'checksum' };
    default: {
      const _exhaustive: never = flags.process;
      return _exhaustive;
    }
  }
}

/** Adds `demo` to the program. */
export function registerDemoCommand(program: Command): Command {
  return program
    .command('demo')
    .description('run the same jobs with and without prefetch against a rate-limited local object server and compare')
    .option('--jobs <n>', 'jobs (one sample MCAP episode each)', wholeNumber(1, 1000), 6)
    .option('--size <size>', 'size of each episode (48MiB, 100MB)', size, 48 * 1024 * 1024)
    .option('--rate <rate>', 'send rate cap per connection (25MB/s), or none', rate, 25e6)
    .option('--latency <duration>', 'first-byte latency of every request', duration, 20)
    .option('--connections <n>', 'range requests in flight per download', wholeNumber(1, 256), 4)
    .option('--slots <n>', 'prefetch slots of the prefetching run', wholeNumber(1, 64), 2)
    .option('--max-host-connections <n>', 'range transfers across all downloads of a worker (default: none, every slot at full speed)', wholeNumber(1, 4096))
    .option(
      '--process <kind>',
      'processing: mcap (summary, then idle until --process-ms), mcap-cpu (summary, then CPU-busy), sleep, checksum',
      processKind,
      'mcap',
    )
    .option('--process-ms <duration>', 'processing time per job for mcap, mcap-cpu and sleep (default: about one download)', duration)
    .option('--keep', 'keep the temporary directory with the episodes and queues')
    .option('--json', 'print the comparison as JSON on stdout')
    .option('--log-level <level>', 'worker log level on stderr', logLevel, 'warn')
    .action(async (flags: DemoFlags) => {
      const log = createLogger({ level: flags.logLevel });
      const stop = new AbortController();
      const onSignal = () => stop.abort();
      process.on('SIGINT', onSignal);
      process.on('SIGTERM', onSignal);
      try {
        const processor = processorFrom(flags);
        const result = await runPrefetchComparison({
          jobs: flags.jobs,
          sizeBytes: flags.size,
          ratePerConn: flags.rate,
          latencyMs: flags.latency,
          connections: flags.connections,
          slots: flags.slots,
          ...(flags.maxHostConnections !== undefined ? { maxHostConnections: flags.maxHostConnections } : {}),
          ...(processor ? { processor } : {}),
          keep: flags.keep ?? false,
          signal: stop.signal,
          log,
          onProgress: (m) => process.stderr.write(`${m}\n`),
        });
        process.stdout.write(flags.json ? `${JSON.stringify(result, null, 2)}\n` : formatComparison(result));
      } catch (err) {
        process.stderr.write(`roboflow demo: ${redactText(toRoboflowError(err).message)}\n`);
        process.exitCode = 1;
      } finally {
        process.off('SIGINT', onSignal);
        process.off('SIGTERM', onSignal);
      }
    });
}
