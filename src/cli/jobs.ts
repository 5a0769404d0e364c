/**
 * `roboflow jobs ...`: submit jobs and look at the queue. A thin layer over `src/jobs`: it turns
 * flags into a `JobSpec` or a query, and records into text. Everything it prints goes through
 * redaction, since input URLs may be presigned and errors may quote them.
 *
 * The queue comes from `--queue`, else `ROBOFLOW_QUEUE`, else `DEFAULTS.queue`. A failure prints
 * one line on stderr and sets exit code 1.
 */

import { InvalidArgumentError, type Command } from 'commander';
import { DEFAULTS } from '../defaults.js';
import { RoboflowError, toRoboflowError } from '../errors.js';
import { JOB_STATUSES, openQueue, splitCommand } from '../jobs/index.js';
import { redactText, redactUrl } from '../redact.js';
import type { JobQueue, JobRecord, JobSpec, JobStatus } from '../types.js';

/** Environment variable naming the queue when `--queue` is not given. */
export const QUEUE_ENV = 'ROBOFLOW_QUEUE';

/** Widest a table cell may grow before it is cut with an ellipsis. */
const INPUT_WIDTH = 48;
const ERROR_WIDTH = 60;

interface QueueFlag {
  readonly queue?: string;
}

/** Adds `jobs` and its subcommands to the program. */
export function registerJobsCommand(program: Command): Command {
  const jobs = program.command('jobs').description('submit jobs to the job queue and inspect it');

  queueOption(
    jobs
      .command('submit')
      .description('submit one job whose inputs are the given URLs; prints its id')
      .argument('<url...>', 'input URLs (s3://, oss://, http(s)://, file://)')
      .option('--processor <name>', `processor to run (default: checksum; --exec implies exec)`)
      .option('--exec <command>', "run a program on the inputs: 'gzip -k {input}' (no shell; quotes group words)")
      .option('--output <url>', 'output prefix the results are uploaded to (default: no upload)')
      .option('--max-attempts <n>', `attempts before the job is dead (1..100, default ${DEFAULTS.maxAttempts})`, parseWholeNumber)
      .option('--json', 'print the job record as JSON'),
  ).action(
    action(async (urls: string[], opts: QueueFlag & SubmitFlags) => {
      const spec = specFromFlags(urls, opts);
      const job = await withQueue(opts, (q) => q.submit(spec));
      print(opts.json ? json(job) : job.id);
    }),
  );

  queueOption(
    jobs
      .command('list')
      .description('list jobs, newest first')
      .option('--status <status>', `only jobs in this status (${JOB_STATUSES.join(', ')})`, parseStatus)
      .option('--limit <n>', 'most jobs to list (default 100)', parseWholeNumber)
      .option('--json', 'print the records as JSON'),
  ).action(
    action(async (opts: QueueFlag & { status?: JobStatus; limit?: number; json?: boolean }) => {
      const filter = {
        ...(opts.status !== undefined ? { status: opts.status } : {}),
        ...(opts.limit !== undefined ? { limit: opts.limit } : {}),
      };
      const list = await withQueue(opts, (q) => q.list(filter));
      print(opts.json ? json(list) : table(list));
    }),
  );

  queueOption(
    jobs.command('show').description('show one job').argument('<id>', 'job id').option('--json', 'print the record as JSON'),
  ).action(
    action(async (id: string, opts: QueueFlag & { json?: boolean }) => {
      const job = await withQueue(opts, async (q) => {
        const found = await q.get(id);
        if (found === null) throw new RoboflowError('ERR_JOB_NOT_FOUND', `no job ${id} in ${redactUrl(queueUrlFrom(opts))}`);
        return found;
      });
      print(opts.json ? json(job) : details(job));
    }),
  );

  queueOption(
    jobs
      .command('retry')
      .description('send a dead job back to pending with its attempts reset')
      .argument('<id>', 'job id')
      .option('--json', 'print the record as JSON'),
  ).action(
    action(async (id: string, opts: QueueFlag & { json?: boolean }) => {
      const job = await withQueue(opts, (q) => q.retry(id));
      print(opts.json ? json(job) : `job ${job.id}: dead -> pending (attempts reset to 0 of ${job.maxAttempts})`);
    }),
  );

  queueOption(
    jobs.command('counts').description('count jobs per status').option('--json', 'print the counts as JSON'),
  ).action(
    action(async (opts: QueueFlag & { json?: boolean }) => {
      const counts = await withQueue(opts, (q) => q.counts());
      if (opts.json) {
        print(JSON.stringify(counts, null, 2));
        return;
      }
      const total = JOB_STATUSES.reduce((sum, s) => sum + counts[s], 0);
      const rows = [...JOB_STATUSES.map((s) => [s, String(counts[s])]), ['total', String(total)]];
      print(rows.map(([k, v]) => `${(k ?? '').padEnd(8)} ${(v ?? '').padStart(8)}`).join('\n'));
    }),
  );

  return jobs;
}

interface SubmitFlags {
  readonly processor?: string;
  readonly exec?: string;
  readonly output?: string;
  readonly maxAttempts?: number;
  readonly json?: boolean;
}

/** The spec `jobs submit` sends; the queue checks it (`parseJobSpec`) on submit. */
export function specFromFlags(urls: readonly string[], flags: SubmitFlags): JobSpec {
  let processor = flags.processor ?? 'checksum';
  let args: Record<string, unknown> = {};
  if (flags.exec !== undefined) {
    if (flags.processor !== undefined && flags.processor !== 'exec') {
      throw new RoboflowError(
        'ERR_CONFIG',
        `--exec runs the exec processor; it cannot be combined with --processor ${flags.processor}`,
      );
    }
    processor = 'exec';
    args = { command: splitCommand(flags.exec) };
  }
  return {
    inputs: urls.map((url) => ({ url })),
    ...(flags.output !== undefined ? { output: flags.output } : {}),
    processor,
    args,
    ...(flags.maxAttempts !== undefined ? { maxAttempts: flags.maxAttempts } : {}),
  };
}

/** The queue URL a command uses: the flag, else the environment, else the default. */
export function queueUrlFrom(flags: QueueFlag, env: NodeJS.ProcessEnv = process.env): string {
  if (flags.queue !== undefined && flags.queue !== '') return flags.queue;
  const fromEnv = env[QUEUE_ENV];
  if (fromEnv !== undefined && fromEnv !== '') return fromEnv;
  return DEFAULTS.queue;
}

function queueOption(command: Command): Command {
  return command.option('--queue <url>', `job queue URL (default: $${QUEUE_ENV}, else ${DEFAULTS.queue})`);
}

async function withQueue<T>(flags: QueueFlag, fn: (q: JobQueue) => Promise<T>): Promise<T> {
  const queue = await openQueue(queueUrlFrom(flags));
  try {
    return await fn(queue);
  } finally {
    await queue.close();
  }
}

/** Wraps an action so that any failure is one line on stderr and exit code 1. */
function action<A extends unknown[]>(fn: (...args: A) => Promise<void>): (...args: A) => Promise<void> {
  return async (...args: A) => {
    try {
      await fn(...args);
    } catch (err) {
      const e = toRoboflowError(err, 'ERR_QUEUE');
      const line = redactText(`roboflow jobs: ${e.code}: ${e.message}`).replace(/\s*\n\s*/g, ' ');
      process.stderr.write(`${line}\n`);
      process.exitCode = 1;
    }
  };
}

function parseWholeNumber(value: string): number {
  if (!/^\d+$/.test(value.trim())) throw new InvalidArgumentError('expected a whole number');
  return Number(value.trim());
}

function parseStatus(value: string): JobStatus {
  const status = JOB_STATUSES.find((s) => s === value);
  if (status === undefined) throw new InvalidArgumentError(`expected one of ${JOB_STATUSES.join(', ')}`);
  return status;
}

function print(text: string): void {
  process.stdout.write(`${text}\n`);
}

/** A record as printed: input URLs and errors redacted, times in ISO form. */
function redactedRecord(job: JobRecord): Record<string, unknown> {
  return {
    ...job,
    inputs: job.inputs.map((i) => ({ ...i, url: redactUrl(i.url) })),
    output: job.output === null ? null : redactUrl(job.output),
    lastError: job.lastError === null ? null : redactText(job.lastError),
  };
}

function json(value: JobRecord | JobRecord[]): string {
  return JSON.stringify(Array.isArray(value) ? value.map(redactedRecord) : redactedRecord(value), null, 2);
}

function cut(text: string, width: number): string {
  const flat = text.replace(/\s+/g, ' ').trim();
  return flat.length <= width ? flat : `${flat.slice(0, width - 1)}…`;
}

function time(d: Date | null): string {
  return d === null ? '-' : d.toISOString().replace(/\.\d{3}Z$/, 'Z');
}

function firstInput(job: JobRecord): string {
  const first = job.inputs[0];
  if (first === undefined) return '-';
  const more = job.inputs.length > 1 ? ` (+${job.inputs.length - 1})` : '';
  return cut(redactUrl(first.url), INPUT_WIDTH - more.length) + more;
}

function table(jobs: readonly JobRecord[]): string {
  if (jobs.length === 0) return 'no jobs';
  const header = ['ID', 'STATUS', 'ATTEMPTS', 'PROCESSOR', 'INPUT', 'UPDATED', 'LAST ERROR'];
  const rows = jobs.map((j) => [
    j.id,
    j.status,
    `${j.attempts}/${j.maxAttempts}`,
    j.processor,
    firstInput(j),
    time(j.updatedAt),
    j.lastError === null ? '' : cut(redactText(j.lastError), ERROR_WIDTH),
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  return [header, ...rows]
    .map((r) =>
      r
        .map((cell, i) => (i === r.length - 1 ? cell : cell.padEnd(widths[i] ?? 0)))
        .join('  ')
        .trimEnd(),
    )
    .join('\n');
}

function details(job: JobRecord): string {
  const lines: [string, string][] = [
    ['id', job.id],
    ['status', job.status],
    ['attempts', `${job.attempts} of ${job.maxAttempts}`],
    ['processor', job.processor],
    ['args', JSON.stringify(job.args)],
  ];
  job.inputs.forEach((input, i) => {
    const extra = [
      input.size !== undefined ? `${input.size} bytes` : '',
      input.checksum !== undefined ? `${input.checksum.algorithm}:${input.checksum.hex}` : '',
    ]
      .filter((s) => s !== '')
      .join(', ');
    lines.push([i === 0 ? 'inputs' : '', redactUrl(input.url) + (extra ? ` (${extra})` : '')]);
  });
  lines.push(
    ['output', job.output === null ? '-' : redactUrl(job.output)],
    ['lease', job.leaseOwner === null ? '-' : `${job.leaseOwner} until ${time(job.leaseExpiresAt)}`],
    ['run at', time(job.runAt)],
    ['created', time(job.createdAt)],
    ['updated', time(job.updatedAt)],
    ['last error', job.lastError === null ? '-' : redactText(job.lastError)],
    ['result', job.result === null || job.result === undefined ? '-' : JSON.stringify(job.result)],
  );
  return lines.map(([k, v]) => `${k.padEnd(11)} ${v}`).join('\n');
}
