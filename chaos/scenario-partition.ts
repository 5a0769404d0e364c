/**
 * Scenario `partition`: a worker cut off from the job queue while it runs a job, and another
 * worker taking the job over. Always a private PostgreSQL cluster (`postgres-cluster.ts`).
 *
 * Worker A is a `roboflow worker` process that reaches PostgreSQL only through a TCP proxy
 * (`partition-proxy.ts`); worker B, another process, connects directly. For an output on
 * `file://` and one on `s3://` (the test object server), in turn:
 *
 * 1. A claims the job and starts its program (exec, a long `sleep`); a second later the proxy
 *    partitions: A's packets stop, with no reset — A's heartbeats hang until its query time
 *    limit, and it hears nothing.
 * 2. B is started; it claims the job once A's lease has expired in the database, runs its own
 *    program (which writes `B`) and completes the job.
 * 3. The proxy heals; A, which gave the job up, must record nothing for it. Then A is stopped.
 *
 * In the `file://` round A also holds a second job, prefetched (`--slots 1`) but not started:
 * it must be dropped when its lease can no longer be valid, its downloaded input kept in A's
 * buffer for a resume, and B runs it.
 *
 * Checks: A's program is stopped within lease + margin of the partition (its last confirmed
 * renewal was before it), and before B's program starts; A uploads nothing, not even to its
 * staging prefix (the published location, watched throughout, only ever shows B's output); the
 * job is done once, by B, and `_SUCCESS` and the record name B's attempt; A said that its
 * renewals failed, with the time left, and that it gave the job up.
 */

import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { readdir, readFile, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { RoboflowError } from '../src/errors.js';
import { openQueue } from '../src/jobs/index.js';
import { leaseSafetyMarginMs } from '../src/lease.js';
import { jobDirectory } from '../src/paths.js';
import type { ObjectServer } from '../test/support/object-server.js';
import type { JobQueue } from '../src/types.js';
import { packageRoot } from '../test/support/package-root.js';
import { runScenario, startObjectServer, type ScenarioContext } from './harness.js';
import { PartitionProxy } from './partition-proxy.js';
import { PrivateCluster } from './postgres-cluster.js';
import type { ScenarioOptions, ScenarioReport } from './report.js';

const ROOT = packageRoot(import.meta.url);
const CLI = path.join(ROOT, 'dist', 'bin', 'roboflow.js');
const SCHEMA = 'partition';
const LEASE_MS = 4_000;
const HEARTBEAT_MS = 1_000;
const BUCKET = 'results';

type OutputKind = 'file' | 's3';

export function runPartitionScenario(opts: ScenarioOptions): Promise<ScenarioReport> {
  return runScenario('partition', opts, async (ctx) => {
    if (!existsSync(CLI)) throw new RoboflowError('ERR_CONFIG', `${CLI} is missing: build first (npm run build; npm test and npm run chaos do)`);
    const cluster = await PrivateCluster.create();
    ctx.cleanup.defer(`remove the private PostgreSQL cluster in ${cluster.dir}`, () => cluster.destroy());
    const direct = cluster.url(SCHEMA);
    const admin = await openQueue(direct);
    ctx.cleanup.defer('close the admin queue', () => admin.close());
    const proxy = await PartitionProxy.start('127.0.0.1', cluster.port);
    ctx.cleanup.defer('close the partition proxy', () => proxy.close());
    const proxied = direct.replace(`:${cluster.port}/`, `:${proxy.port}/`);
    ctx.log(`private PostgreSQL cluster on port ${cluster.port}; worker A reaches it through a proxy on port ${proxy.port}`);
    const server = await startObjectServer(ctx);
    server.createBucket(BUCKET);
    const kinds: OutputKind[] = ['file', 's3'];
    for (const kind of kinds) await round(ctx, kind, { admin, proxy, proxied, direct, server });
  });
}

interface Setup {
  readonly admin: JobQueue;
  readonly proxy: PartitionProxy;
  readonly proxied: string;
  readonly direct: string;
  readonly server: ObjectServer;
}

/** A `roboflow worker` process, its log lines (JSON, stderr) kept. */
interface CliWorker {
  readonly proc: ChildProcess;
  readonly lines: Record<string, unknown>[];
  readonly exited: Promise<void>;
}

function spawnCli(ctx: ScenarioContext, name: string, args: readonly string[], endpoint: string): CliWorker {
  const proc = spawn(process.execPath, [CLI, 'worker', ...args], {
    stdio: ['ignore', 'ignore', 'pipe'],
    env: {
      ...process.env,
      AWS_ACCESS_KEY_ID: 'chaos',
      AWS_SECRET_ACCESS_KEY: 'chaos-secret-key',
      AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true',
      ROBOFLOW_ENDPOINT: endpoint,
      ROBOFLOW_POLL_INTERVAL: '100ms',
      ROBOFLOW_EXEC_KILL_GRACE: '1s',
      ROBOFLOW_LOG_LEVEL: 'info',
    },
  });
  const lines: Record<string, unknown>[] = [];
  let buf = '';
  proc.stderr?.setEncoding('utf8').on('data', (chunk: string) => {
    buf += chunk;
    let nl: number;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      try {
        lines.push(JSON.parse(line) as Record<string, unknown>);
      } catch {
        lines.push({ msg: line });
      }
    }
  });
  const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
  ctx.cleanup.defer(`stop worker ${name}`, async () => {
    if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
    await exited;
  });
  return { proc, lines, exited };
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function readPid(file: string): Promise<number | null> {
  try {
    const n = Number((await readFile(file, 'utf8')).trim());
    return Number.isSafeInteger(n) && n > 0 ? n : null;
  } catch {
    return null;
  }
}

async function round(ctx: ScenarioContext, kind: OutputKind, s: Setup): Promise<void> {
  const dir = await ctx.tempDir(kind);
  const input = path.join(dir, 'input.bin');
  await writeFile(input, `input of the ${kind} round\n`);
  const outDir = path.join(dir, 'out');
  const s3Prefix = `${kind}-round/`;
  const output = kind === 'file' ? `${pathToFileURL(outDir).href}/` : `s3://${BUCKET}/${s3Prefix}`;
  const job = await s.admin.submit({ inputs: [{ url: pathToFileURL(input).href }], output, processor: 'exec', maxAttempts: 3 });
  const prefetching = kind === 'file';
  const second = prefetching
    ? await s.admin.submit({ inputs: [{ url: pathToFileURL(input).href }], output: `${pathToFileURL(path.join(dir, 'out-second')).href}/`, processor: 'exec', maxAttempts: 3 })
    : null;
  const common = ['--lease', `${LEASE_MS}ms`, '--heartbeat', `${HEARTBEAT_MS}ms`, '--path-style'];
  // Each worker runs its own operator command: A's would write `A` after a long while, B's writes `B`.
  const program = (name: string, seconds: number) =>
    `sh -c 'echo $$ > ${path.join(dir, `${name}.pid`)}; sleep ${seconds}; echo ${name} > {output}/result.txt'`;
  const requestsBefore = s.server.requests.length;

  const a = spawnCli(ctx, `A (${kind})`, ['--queue', s.proxied, '--buffer-dir', path.join(dir, 'buffer-a'), '--exec-command', program('A', 60), '--slots', prefetching ? '1' : '0', ...common], s.server.endpoint);
  let aPid: number | null = null;
  await ctx.waitFor(`worker A to start its program (${kind})`, async () => (aPid = await readPid(path.join(dir, 'A.pid'))) !== null, 20);
  const secondDir = second === null ? null : jobDirectory(path.join(dir, 'buffer-a'), second.id);
  if (second !== null && secondDir !== null) {
    await ctx.waitFor(`worker A to prefetch the second job (${kind})`, async () => (await listTree(secondDir)).length > 0, 20);
  }
  // At least one heartbeat after the start gets through before the partition.
  await ctx.pause(HEARTBEAT_MS + 200);
  const partitionedAt = Date.now();
  s.proxy.partition();
  ctx.counts.faultsInjected++;
  ctx.log(`${kind}: partitioned worker A from PostgreSQL while its program (pid ${aPid}) runs`);

  // Watch the program and the published location until the job is done.
  let aStoppedAt: number | null = null;
  const seen = new Set<string>();
  const contents = new Set<string>();
  const watch = async (): Promise<void> => {
    if (aStoppedAt === null && aPid !== null && !alive(aPid)) aStoppedAt = Date.now();
    if (kind === 'file') {
      for (const name of await listTree(outDir)) seen.add(name);
      const r = await readFile(path.join(outDir, 'result.txt'), 'utf8').catch(() => null);
      if (r !== null) contents.add(r.trim());
    } else {
      for (const key of s.server.listKeys(BUCKET)) {
        if (!key.startsWith(s3Prefix)) continue;
        const name = key.slice(s3Prefix.length);
        seen.add(name);
        if (name === 'result.txt') contents.add(s.server.objectBytes(BUCKET, key).toString().trim());
      }
    }
  };
  const b = spawnCli(ctx, `B (${kind})`, ['--queue', s.direct, '--buffer-dir', path.join(dir, 'buffer-b'), '--exec-command', program('B', 1), '--drain', '--slots', '0', ...common], s.server.endpoint);
  await ctx.waitFor(`the job to be done by worker B (${kind})`, async () => {
    await watch();
    return (await s.admin.get(job.id))?.status === 'done' && (second === null || (await s.admin.get(second.id))?.status === 'done');
  }, 25);
  await ctx.waitFor(`worker A's program to stop (${kind})`, async () => {
    await watch();
    return aStoppedAt !== null;
  }, 25);
  const bStartedAt = (await stat(path.join(dir, 'B.pid'))).mtimeMs;
  await b.exited;

  s.proxy.heal();
  ctx.log(`${kind}: healed the partition`);
  // A, back in touch, finishes its given-up job: it must record nothing for it.
  await ctx.waitFor(`worker A to report the job lost after the heal (${kind})`, () => a.lines.some((l) => /lease lost: another worker holds the job/.test(String(l['msg']))), 25);
  await watch();
  a.proc.kill('SIGTERM');
  await a.exited;

  const record = await s.admin.get(job.id);
  const result = record?.result as { worker?: string; attempt?: string } | null;
  const aLog = a.lines.map((l) => String(l['msg']));
  const failedRenewals = a.lines.filter((l) => isWarning(l) && /lease renewal failed/.test(String(l['msg'])) && typeof l['leaseLeftMs'] === 'number');
  const fencedLine = aLog.find((m) => /lease can no longer be valid/.test(m));
  const stopMs = aStoppedAt === null ? Infinity : (aStoppedAt as number) - partitionedAt;
  const bound = LEASE_MS + leaseSafetyMarginMs(LEASE_MS);
  const requests = s.server.requests.slice(requestsBefore);
  // A's is the job's first attempt: staged under `_attempts/<job id>/1-<hex>/`.
  const aStaging = `_attempts/${job.id}/1-`;
  const aStaged = kind === 'file' ? [...seen].filter((n) => n.startsWith(aStaging)) : requests.filter((r) => r.key.includes(aStaging)).map((r) => `${r.operation} ${r.key}`);
  const marker = kind === 'file'
    ? await readFile(path.join(outDir, '_SUCCESS'), 'utf8').catch(() => 'null')
    : s.server.hasObject(BUCKET, `${s3Prefix}_SUCCESS`) ? s.server.objectBytes(BUCKET, `${s3Prefix}_SUCCESS`).toString() : 'null';
  const markerAttempt = (JSON.parse(marker) as { attempt?: string } | null)?.attempt;

  ctx.checks.check(
    `${kind}: A's program is stopped within lease + margin of the partition`,
    stopMs <= bound,
    `stopped ${stopMs} ms after the partition (bound ${bound} ms: lease ${LEASE_MS} + margin ${leaseSafetyMarginMs(LEASE_MS)})`,
  );
  ctx.checks.check(
    `${kind}: A's program is stopped before B's starts`,
    aStoppedAt !== null && aStoppedAt <= bStartedAt,
    `A stopped ${aStoppedAt === null ? 'never' : `${Math.round(bStartedAt - aStoppedAt)} ms before`} B's program started`,
  );
  ctx.checks.check(
    `${kind}: A uploads nothing, not even to its staging prefix`,
    aStaged.length === 0,
    aStaged.length === 0 ? `nothing under ${aStaging}*` : aStaged.join(', '),
  );
  ctx.checks.check(
    `${kind}: the published location only ever shows B's output`,
    [...contents].every((c) => c === 'B') && contents.has('B'),
    `result.txt seen as ${JSON.stringify([...contents])}; names seen: ${[...seen].sort().join(', ')}`,
  );
  ctx.checks.check(
    `${kind}: the job is done once, by B's attempt, and _SUCCESS names it`,
    record?.status === 'done' &&
      record.attempts === 2 &&
      result?.attempt === record.commitAttempt &&
      /^2-/.test(record.commitAttempt ?? '') &&
      markerAttempt === record.commitAttempt,
    `status ${record?.status}, attempts ${record?.attempts}, commitAttempt ${record?.commitAttempt}, result.attempt ${result?.attempt}, _SUCCESS attempt ${markerAttempt}`,
  );
  if (second !== null && secondDir !== null) {
    const kept = await listTree(secondDir);
    const secondRecord = await s.admin.get(second.id);
    const dropped = aLog.find((m) => /dropping the prefetched job, its partial files kept/.test(m));
    ctx.checks.check(
      `${kind}: A drops its prefetched job, keeps its downloaded input for a resume, and B runs it`,
      dropped !== undefined && kept.length > 0 && secondRecord?.status === 'done' && (secondRecord.result as { worker?: string } | null)?.worker !== undefined && secondRecord.attempts === 1,
      `${dropped ?? 'no drop line'}; kept in A's buffer: ${kept.join(', ') || 'nothing'}; second job ${secondRecord?.status}, attempts ${secondRecord?.attempts}`,
    );
    if (secondRecord?.status === 'done') ctx.counts.jobsCompleted++;
  }
  ctx.checks.check(
    `${kind}: A warns of failed renewals with the time left, then gives the job up`,
    failedRenewals.length >= 1 && fencedLine !== undefined,
    `${failedRenewals.length} failed-renewal warnings (left: ${failedRenewals.map((l) => l['leaseLeftMs']).join(', ')} ms); ${fencedLine ?? 'no fencing line'}`,
  );
  if (record?.status === 'done') ctx.counts.jobsCompleted++;
  // Two worker runs per round: A, cut off, and B, which takes over.
  ctx.counts.runs += 2;
  ctx.details[kind] = {
    stopMsAfterPartition: stopMs,
    boundMs: bound,
    failedRenewalsLeftMs: failedRenewals.map((l) => l['leaseLeftMs']),
    published: [...seen].sort(),
    commitAttempt: record?.commitAttempt,
    workerA: a.lines.filter(isWarning).map((l) => `${String(l['level'])} ${String(l['msg'])}${l['leaseLeftMs'] !== undefined ? ` (left ${String(l['leaseLeftMs'])} ms)` : ''}`),
  };
}

/** A warning or worse (the CLI logs level labels; a number where pino's default is used). */
function isWarning(line: Record<string, unknown>): boolean {
  const level = line['level'];
  return typeof level === 'number' ? level >= 40 : ['warn', 'error', 'fatal'].includes(String(level));
}

/** Relative names of every file under `dir` (none when it does not exist). */
async function listTree(dir: string, rel = ''): Promise<string[]> {
  let entries;
  try {
    entries = await readdir(path.join(dir, rel), { withFileTypes: true });
  } catch {
    return [];
  }
  const out: string[] = [];
  for (const e of entries) {
    const name = rel === '' ? e.name : `${rel}/${e.name}`;
    if (e.isDirectory()) out.push(...(await listTree(dir, name)));
    else out.push(name);
  }
  return out;
}
