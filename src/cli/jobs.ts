/**
 * `roboflow jobs ...`: submit jobs and look at the queue. A thin layer over `src/jobs`: it turns
 * flags into a `JobSpec` or a query, and records into text. Everything it prints goes through
 * redaction, since input URLs may be presigned and errors may quote them.
 *
 * The queue comes from `--queue`, else `ROBOFLOW_QUEUE`, else `DEFAULTS.queue`. A failure prints
 * one line on stderr and sets exit code 1.
 */

import { createReadStream } from 'node:fs';
import { createInterface } from 'node:readline';
import type { SingleBar } from 'cli-progress';
import { InvalidArgumentError, type Command } from 'commander';
import { DEFAULTS } from '../defaults.js';
import { RoboflowError, toRoboflowError } from '../errors.js';
import {
  checkTemplate,
  expandTemplate,
  globMatcher,
  hasPlaceholder,
  parseJobLine,
  submitBatches,
  templateValues,
} from '../jobs/bulk.js';
import { JOB_STATUSES, openQueue, parseJobSpec, splitCommand } from '../jobs/index.js';
import { redactText, redactUrl } from '../redact.js';
import { StorageClients } from '../storage/index.js';
import { listObjects } from '../storage/list.js';
import type { JobQueue, JobRecord, JobSpec, JobStatus, SubmitOutcome } from '../types.js';

/** Environment variable naming the queue when `--queue` is not given. */
export const QUEUE_ENV = 'ROBOFLOW_QUEUE';

/** Widest a table cell may grow before it is cut with an ellipsis. */
const INPUT_WIDTH = 48;
const ERROR_WIDTH = 60;
/** A derived key is `sha256:` and 64 hex digits; its head tells jobs apart in a listing. */
const KEY_WIDTH = 24;

interface QueueFlag {
  readonly queue?: string;
}

/** Adds `jobs` and its subcommands to the program. */
export function registerJobsCommand(program: Command): Command {
  const jobs = program.command('jobs').description('submit jobs to the job queue and inspect it');

  queueOption(
    jobs
      .command('submit')
      .description(
        'submit jobs: one whose inputs are the given URLs (prints its id), or one per object under --prefix, ' +
          'or one per line of --from (prints "N new, M already queued"); a job whose key is already queued is not added again',
      )
      .argument('[url...]', 'input URLs of one job (s3://, oss://, http(s)://, file://)')
      .option('--prefix <url>', 'one job per object under this prefix: s3://bucket/path/, oss://bucket/path/, file:///dir/ (recursive)')
      .option('--match <glob>', "with --prefix: only keys matching the glob ('*.mcap' matches base names at any depth; 'a/**/*.mcap' whole keys)")
      .option('--from <file>', "one job per line of this file (- for standard input): an input URL, or a JSON object with the job's fields")
      .option('--processor <name>', `processor to run (default: checksum; --exec implies exec)`)
      .option('--exec <command>', "run a program on the inputs: 'gzip -k {input}' (no shell; quotes group words)")
      .option('--output <url>', 'output prefix the results are uploaded to (default: no upload); per job with {name}, {stem}, {key}: s3://b/out/{stem}/')
      .option('--key <key>', 'job key (default: derived from processor, args, inputs and output); for many jobs a template: ep-{stem}')
      .option('--priority <n>', 'higher is claimed first (default 0)', parseInteger)
      .option('--replace', 're-queue jobs whose key is already there but done or dead (attempts reset)')
      .option('--max-attempts <n>', `attempts before the job is dead (1..100, default ${DEFAULTS.maxAttempts})`, parseWholeNumber)
      .option('--endpoint <url>', 'S3 endpoint for --prefix (default: AWS_ENDPOINT_URL, else AWS)')
      .option('--json', 'print the job record as JSON (for many jobs: counts and ids)'),
  ).action(
    action(async (urls: string[], opts: QueueFlag & SubmitFlags) => {
      const bulk = checkSubmitMode(urls, opts);
      if (bulk) {
        await submitMany(opts);
        return;
      }
      const spec = specFromFlags(urls, opts);
      const replace = opts.replace === true ? { replace: true } : {};
      const { outcome, job } = await withQueue(opts, async (q) => {
        const [outcome] = await q.submitMany([spec], replace);
        if (outcome === undefined) throw new RoboflowError('ERR_QUEUE', 'the queue returned no outcome for the job');
        return { outcome, job: opts.json ? await q.get(outcome.id) : null };
      });
      if (outcome.outcome === 'exists') {
        const hint = outcome.status === 'done' || outcome.status === 'dead' ? '; --replace runs it again' : '';
        process.stderr.write(`roboflow jobs: job ${outcome.id} with this key is already in the queue (${outcome.status})${hint}\n`);
      }
      print(opts.json && job !== null ? json(job) : outcome.id);
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
  readonly prefix?: string;
  readonly match?: string;
  readonly from?: string;
  readonly processor?: string;
  readonly exec?: string;
  readonly output?: string;
  readonly key?: string;
  readonly priority?: number;
  readonly replace?: boolean;
  readonly maxAttempts?: number;
  readonly endpoint?: string;
  readonly json?: boolean;
}

/** Which form of `submit` the flags ask for (true: many jobs); refuses mixtures. */
function checkSubmitMode(urls: readonly string[], flags: SubmitFlags): boolean {
  const forms = [urls.length > 0, flags.prefix !== undefined, flags.from !== undefined].filter(Boolean).length;
  if (forms !== 1) {
    throw new RoboflowError(
      'ERR_CONFIG',
      forms === 0
        ? 'nothing to submit: give input URLs, --prefix <url> or --from <file>'
        : 'give input URLs, --prefix or --from, only one of them',
    );
  }
  if (flags.match !== undefined && flags.prefix === undefined) {
    throw new RoboflowError('ERR_CONFIG', '--match filters the objects of a --prefix listing; give --prefix too');
  }
  if (flags.output !== undefined) checkTemplate(flags.output, '--output');
  if (flags.key !== undefined) checkTemplate(flags.key, '--key');
  const bulk = urls.length === 0;
  // Jobs sharing an output prefix publish over each other's files, and the last `_SUCCESS`
  // lists only its own job's: the output of every other job is lost without an error.
  if (bulk && flags.output !== undefined && !hasPlaceholder(flags.output)) {
    const form = flags.prefix !== undefined ? '--prefix' : '--from';
    throw new RoboflowError(
      'ERR_CONFIG',
      `--output ${JSON.stringify(flags.output)} would give every job of ${form} the same output prefix, so each would ` +
        `publish over the others' files and only the last one's _SUCCESS would remain; put {name}, {stem} or {key} in it ` +
        `(e.g. ${JSON.stringify(`${flags.output.replace(/\/*$/, '')}/{stem}/`)})`,
    );
  }
  if (bulk && flags.key !== undefined && !hasPlaceholder(flags.key)) {
    throw new RoboflowError(
      'ERR_CONFIG',
      `--key ${JSON.stringify(flags.key)} would give every job the same key, so only the first would be added; use {name}, {stem} or {key} in it`,
    );
  }
  return bulk;
}

/**
 * The spec `jobs submit` sends; the queue checks it (`parseJobSpec`) on submit. `{name}`,
 * `{stem}` and `{key}` in `--output` and `--key` are filled from the first input (`relative`:
 * its key below a listed prefix).
 */
export function specFromFlags(urls: readonly string[], flags: SubmitFlags, relative?: string): JobSpec {
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
  const values = urls[0] !== undefined ? templateValues(urls[0], relative) : undefined;
  const fill = (template: string) => (values === undefined ? template : expandTemplate(template, values));
  return {
    inputs: urls.map((url) => ({ url })),
    ...(flags.output !== undefined ? { output: fill(flags.output) } : {}),
    processor,
    args,
    ...(flags.maxAttempts !== undefined ? { maxAttempts: flags.maxAttempts } : {}),
    ...(flags.key !== undefined ? { key: fill(flags.key) } : {}),
    ...(flags.priority !== undefined ? { priority: flags.priority } : {}),
  };
}

/** A `--from` line's JSON object: its own fields win; the flags fill in the rest. */
function specFromFields(fields: Record<string, unknown>, flags: SubmitFlags): JobSpec {
  const inputs = Array.isArray(fields.inputs) ? (fields.inputs as { url?: unknown }[]) : [];
  const first = typeof inputs[0]?.url === 'string' ? inputs[0].url : undefined;
  const base = specFromFlags(first !== undefined ? [first] : [], flags);
  const merged: Record<string, unknown> = { ...base, ...fields };
  // A line naming its own processor brings its own args; the flags' exec command is not for it.
  if ('processor' in fields && !('args' in fields)) delete merged.args;
  return merged as unknown as JobSpec;
}

/** Specs for `--prefix`: one per listed object that `--match` lets through. */
async function* specsFromPrefix(
  prefix: string,
  flags: SubmitFlags,
  clients: StorageClients,
  progress: SubmitProgress | undefined,
): AsyncGenerator<JobSpec> {
  const matches = flags.match !== undefined ? globMatcher(flags.match) : () => true;
  for await (const page of listObjects(prefix, clients)) {
    const kept = page.filter((o) => matches(o.relative));
    progress?.listed(kept.length);
    for (const object of kept) yield checked(specFromFlags([object.url], flags, object.relative), object.url);
  }
}

/** Specs for `--from`: one per line that is not blank or a comment. */
async function* specsFromLines(from: string, flags: SubmitFlags, progress: SubmitProgress | undefined): AsyncGenerator<JobSpec> {
  const source = from === '-' ? 'standard input' : from;
  let input: NodeJS.ReadableStream;
  if (from === '-') {
    input = process.stdin;
  } else {
    const file = createReadStream(from, { encoding: 'utf8' });
    await new Promise<void>((resolve, reject) => {
      file.once('open', () => resolve());
      file.once('error', (err: NodeJS.ErrnoException) =>
        reject(new RoboflowError('ERR_CONFIG', `--from ${JSON.stringify(from)}: cannot read it (${err.code ?? err.message})`)),
      );
    });
    input = file;
  }
  const lines = createInterface({ input, crlfDelay: Infinity });
  let lineNo = 0;
  for await (const line of lines) {
    lineNo++;
    const parsed = parseJobLine(line, lineNo, source);
    if (parsed === null) continue;
    progress?.listed(1);
    const spec = parsed.kind === 'url' ? specFromFlags([parsed.url], flags) : specFromFields(parsed.fields, flags);
    yield checked(spec, `${source} line ${lineNo}`);
  }
}

/** Checks a spec where it was made, so a refusal names its object or line, not a batch index. */
function checked(spec: JobSpec, where: string): JobSpec {
  try {
    parseJobSpec(spec);
  } catch (err) {
    if (err instanceof RoboflowError) throw new RoboflowError(err.code, `${redactText(where)}: ${err.message}`);
    throw err;
  }
  return spec;
}

/** `jobs submit --prefix` and `--from`: batched, idempotent, with a progress bar on a terminal. */
async function submitMany(flags: QueueFlag & SubmitFlags): Promise<void> {
  const progress = !flags.json && process.stderr.isTTY ? new SubmitProgress((await import('cli-progress')).default) : undefined;
  const clients = new StorageClients(flags.endpoint !== undefined ? { endpoint: flags.endpoint } : {});
  const ids: SubmitOutcome[] = [];
  try {
    const specs = flags.prefix !== undefined ? specsFromPrefix(flags.prefix, flags, clients, progress) : specsFromLines(flags.from as string, flags, progress);
    const tally = await withQueue(flags, (q) =>
      submitBatches(q, specs, {
        ...(flags.replace === true ? { replace: true } : {}),
        onBatch: (outcomes) => {
          progress?.submitted(outcomes);
          if (flags.json) ids.push(...outcomes);
        },
      }),
    );
    progress?.stop();
    const total = tally.added + tally.replaced + tally.existing;
    if (total === 0) {
      const what = flags.prefix !== undefined ? `no object under ${redactUrl(flags.prefix)}${flags.match !== undefined ? ` matches ${JSON.stringify(flags.match)}` : ''}` : `no job in ${flags.from === '-' ? 'standard input' : flags.from}`;
      process.stderr.write(`roboflow jobs: nothing to submit: ${what}\n`);
    }
    if (flags.json) {
      print(
        JSON.stringify(
          { new: tally.added, replaced: tally.replaced, alreadyQueued: tally.existing, jobs: ids.map((o) => ({ id: o.id, key: o.key, outcome: o.outcome, status: o.status })) },
          null,
          2,
        ),
      );
      return;
    }
    let line = `${tally.added} new, ${tally.existing} already queued`;
    if (tally.replaced > 0) line += `, ${tally.replaced} re-queued`;
    const finished = tally.existingDone + tally.existingDead;
    if (finished > 0) line += ` (${tally.existingDone} of them done, ${tally.existingDead} dead; --replace runs them again)`;
    print(line);
  } finally {
    progress?.stop();
    await clients.close();
  }
}

/** Listed and submitted jobs on stderr; only used when stderr is a terminal. */
class SubmitProgress {
  private readonly bar: SingleBar;
  private started = false;
  private total = 0;
  private done = 0;
  private added = 0;
  private existing = 0;

  constructor(cliProgress: typeof import('cli-progress')) {
    this.bar = new cliProgress.SingleBar(
      {
        format: '{bar} {value}/{total} jobs | {added} new, {existing} already queued',
        stream: process.stderr,
        hideCursor: true,
        clearOnComplete: true,
      },
      cliProgress.Presets.shades_classic,
    );
  }

  listed(n: number): void {
    this.total += n;
    if (!this.started) {
      this.started = true;
      this.bar.start(Math.max(1, this.total), 0, this.payload());
    }
    this.bar.setTotal(Math.max(1, this.total));
  }

  submitted(outcomes: readonly SubmitOutcome[]): void {
    this.done += outcomes.length;
    for (const o of outcomes) {
      if (o.outcome === 'exists') this.existing++;
      else this.added++;
    }
    if (this.started) this.bar.update(this.done, this.payload());
  }

  stop(): void {
    if (this.started) this.bar.stop();
    this.started = false;
  }

  private payload(): Record<string, number> {
    return { added: this.added, existing: this.existing };
  }
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

function parseInteger(value: string): number {
  const text = value.trim();
  if (!/^-?\d+$/.test(text) || !Number.isSafeInteger(Number(text))) throw new InvalidArgumentError('expected a whole number (may be negative)');
  return Number(text);
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
  const header = ['ID', 'STATUS', 'PRIORITY', 'ATTEMPTS', 'PROCESSOR', 'KEY', 'INPUT', 'UPDATED', 'LAST ERROR'];
  const rows = jobs.map((j) => [
    j.id,
    j.status,
    String(j.priority),
    `${j.attempts}/${j.maxAttempts}`,
    j.processor,
    cut(redactText(j.key), KEY_WIDTH),
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
    ['key', redactText(job.key)],
    ['status', job.status],
    ['priority', String(job.priority)],
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
