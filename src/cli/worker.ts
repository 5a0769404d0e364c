/**
 * `roboflow worker`: a thin layer over `Worker` (src/worker.ts). It loads the configuration
 * (flags < environment < file < defaults, see src/config.ts), opens the queue, serves metrics when
 * asked, and maps signals onto the worker's shutdown:
 *
 * - the first SIGINT or SIGTERM stops claiming, hands prefetched jobs back and lets the job in
 *   progress finish (`--shutdown finish`) or cancels and releases it (`--shutdown cancel`);
 *   the process then exits 0;
 * - a second signal destroys the worker at once (leases expire, partial downloads stay for a
 *   resume) and exits 130.
 *
 * The summary goes to the log (stderr); `--json` also prints it on stdout.
 */

import { InvalidArgumentError, type Command } from 'commander';
import { storageOptionsFrom } from '../config/load.js';
import { addConfigFlags, configFromCommand } from './config-flags.js';
import { toRoboflowError } from '../errors.js';
import { openQueue, queryTimeoutFor } from '../jobs/index.js';
import { createLogger, type Logger } from '../log.js';
import { Metrics, type MetricsServer } from '../metrics.js';
import { redactText, redactUrl } from '../redact.js';
import type { JobQueue } from '../types.js';
import { Worker, type ShutdownMode } from '../worker.js';

interface WorkerFlags {
  readonly drain?: boolean;
  readonly shutdown?: ShutdownMode;
  readonly keepPartial?: boolean;
  readonly json?: boolean;
}

/** How long a destroyed worker may take to settle before the process exits anyway. */
const DESTROY_GRACE_MS = 2_000;

function parseShutdown(value: string): ShutdownMode {
  if (value === 'finish' || value === 'cancel') return value;
  throw new InvalidArgumentError('use finish (let the job in progress complete) or cancel (abort and release it)');
}

/** Adds `worker` to the program. */
export function registerWorkerCommand(program: Command): Command {
  const cmd = program
    .command('worker')
    .description('claim jobs, download the next ones while the current one is processed, upload results')
    .option('--drain', 'exit once the queue has no unfinished job left')
    .option('--shutdown <mode>', 'on SIGINT/SIGTERM: finish or cancel the job in progress (default: finish)', parseShutdown)
    .option('--keep-partial', 'keep partial downloads of jobs handed back at shutdown, to resume them here')
    .option('--json', 'print the summary as JSON on stdout');
  addConfigFlags(cmd);
  cmd.action(async (flags: WorkerFlags, command: Command) => {
    process.exitCode = await runWorkerCommand(flags, command);
  });
  return cmd;
}

async function runWorkerCommand(flags: WorkerFlags, command: Command): Promise<number> {
  let log: Logger | undefined;
  let queue: JobQueue | undefined;
  let metrics: Metrics | undefined;
  let metricsServer: MetricsServer | undefined;
  const stop = new AbortController();
  let worker: Worker | undefined;
  let signals = 0;
  const onSignal = (name: NodeJS.Signals) => {
    signals++;
    if (signals === 1) {
      log?.info({ signal: name }, 'shutting down; send it again to stop at once');
      stop.abort();
      return;
    }
    log?.warn({ signal: name }, 'stopping at once; leases of held jobs expire, partial downloads stay');
    const exit = () => process.exit(130);
    setTimeout(exit, DESTROY_GRACE_MS).unref();
    void (worker?.destroy() ?? Promise.resolve()).finally(exit);
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  try {
    const { config } = await configFromCommand(command);
    log = createLogger({ level: config.logLevel });
    // A renewal stuck in a network partition must fail before the next one is due.
    queue = await openQueue(config.queue, { queryTimeoutMs: queryTimeoutFor(config.heartbeatMs), log });
    // The config carries the exec limits, the processor rules and the allowlists; the worker
    // compiles its security policy from them (loadConfig has already refused bad patterns).
    worker = new Worker({
      queue,
      config,
      storage: storageOptionsFrom(config),
      log,
      drain: flags.drain ?? false,
      shutdown: flags.shutdown ?? 'finish',
      keepPartial: flags.keepPartial ?? false,
    });
    if (config.metricsAddr !== null) {
      metrics = new Metrics({ defaultLabels: { worker: worker.owner } });
      metrics.subscribe();
      const w = worker;
      metricsServer = await metrics.serve(config.metricsAddr, () => w.state === 'running');
      log.info({ address: metricsServer.address }, 'serving /metrics, /healthz and /readyz');
    }
    log.info({ queue: redactUrl(config.queue) }, 'job queue opened');
    const summary = await worker.run(stop.signal);
    if (flags.json) process.stdout.write(`${JSON.stringify(summary)}\n`);
    return 0;
  } catch (err) {
    const e = toRoboflowError(err);
    if (log) log.error({ err: e }, 'worker failed');
    else process.stderr.write(`roboflow worker: ${redactText(e.message)}\n`);
    return e.code === 'ERR_CONFIG' ? 2 : 1;
  } finally {
    await metrics?.close();
    await queue?.close();
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}
