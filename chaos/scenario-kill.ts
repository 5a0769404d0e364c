/**
 * Scenario `kill`: worker processes killed with SIGKILL at seeded points — while downloading,
 * while processing, while uploading — and restarted, one after another, on the same buffer
 * directory and SQLite queue. Leases are short (1 s, heartbeat 300 ms), so a killed worker's jobs
 * come back quickly.
 *
 * After the last restart the queue must show every job done once, each output written with the
 * right SHA-256, no job reported done twice; partial downloads of the same object version must
 * be resumed (the fixture reports resumed bytes), and the server must not have sent much more
 * than one copy of each object: at most, per kill, the jobs the worker held (the one in hand and
 * the prefetched ones) once more.
 */

import path from 'node:path';
import { jobDirectory, safeLocalName } from '../src/paths.js';
import { partialPaths, planOf, readResumeState } from '../src/prefetch/resume-state.js';
import { CHECKSUM_FILE } from '../src/processors/index.js';
import type { ObjectServer } from '../test/support/object-server.js';
import {
  bytesRefetched,
  checkNothingLeft,
  expectWholeObjects,
  localQueueUrl,
  MiB,
  openLocalQueue,
  putRecordings,
  runScenario,
  serverFaults,
  startObjectServer,
  submitChecksumJobs,
  verifyJobs,
  type ChaosObject,
  type ScenarioContext,
} from './harness.js';
import type { ScenarioOptions, ScenarioReport } from './report.js';
import { checkBuilt, killWorker, spawnWorker, type FixtureSettings, type WorkerProcess } from './worker-process.js';

type Phase = 'download' | 'processing' | 'upload';

/** Where a kill landed, as far as the scenario could see when it sent the signal. */
interface KillPoint {
  readonly observed: string;
  /** For a kill during a download: the object and the bytes its state file recorded durable. */
  readonly url?: string;
  readonly durableBytes?: number;
}

interface KillRecord extends KillPoint {
  readonly phase: Phase;
  /** ms after that worker started. */
  readonly afterMs: number;
}

const SLOTS = 2;
const PROCESS_DELAY_MS = 400;

export function runKillScenario(opts: ScenarioOptions): Promise<ScenarioReport> {
  return runScenario('kill', opts, async (ctx) => {
    checkBuilt();
    const kills = ctx.short ? 2 : 5;
    const jobsWanted = ctx.short ? 6 : 12;
    const [minSize, maxSize] = ctx.short ? [3 * MiB, 5 * MiB] : [8 * MiB, 12 * MiB];
    const chunkSize = ctx.short ? 512 * 1024 : 1 * MiB;
    const dir = await ctx.tempDir('run');
    const bufferDir = path.join(dir, 'buffer');
    // Capped so a download lasts about a second: long enough to be killed in, resumably.
    const server = await startObjectServer(ctx, { rateLimitBytesPerSec: 2 * MiB });
    const queueUrl = localQueueUrl(dir);
    const queue = await openLocalQueue(ctx, dir);

    const objects = await putRecordings(ctx, server, {
      count: jobsWanted,
      key: (i) => `killed-${String(i).padStart(2, '0')}.mcap`,
      size: () => ctx.rng.int(minSize, maxSize),
      seedLabel: (i) => `kill/object/${i}`,
    });
    server.createBucket('out');
    const outputKey = (i: number) => `job-${i}/${CHECKSUM_FILE}`;
    // Kills during processing spend attempts; the job must survive all of them.
    const submitted = await submitChecksumJobs(queue, objects, (i) => `s3://out/job-${i}/`, kills + 3);

    const phases: Phase[] = ctx.rng.shuffle(Array.from({ length: kills }, (_, i) => (['download', 'processing', 'upload'] as const)[i % 3] as Phase));
    ctx.details['killPlan'] = phases;
    ctx.log(`${jobsWanted} jobs of ${minSize / MiB}-${maxSize / MiB} MiB; ${kills} kills: ${phases.join(', ')}`);

    const workers: WorkerProcess[] = [];
    ctx.cleanup.defer('kill the worker processes', async () => {
      for (const w of workers) await killWorker(w);
    });
    const settings = (n: number): FixtureSettings => ({
      queue: queueUrl,
      bufferDir,
      owner: `chaos-kill-${n}`,
      endpoint: server.endpoint,
      slots: SLOTS,
      connections: 4,
      chunkSize,
      leaseMs: 1_000,
      heartbeatMs: 300,
      pollIntervalMs: 50,
      processDelayMs: PROCESS_DELAY_MS,
    });

    const killed: KillRecord[] = [];
    const targets = objects.map((object, i) => ({ object, jobId: submitted[i]?.id ?? '' }));
    for (const [n, phase] of phases.entries()) {
      const w = spawnWorker(settings(n));
      workers.push(w);
      ctx.counts.runs++;
      const started = Date.now();
      const point = await killAt(ctx, w, server, targets, bufferDir, phase);
      if (point === null) {
        ctx.log(`worker ${n} ran out of work before the ${phase} kill`);
        break;
      }
      await killWorker(w);
      killed.push({ phase, ...point, afterMs: Date.now() - started });
      ctx.log(`killed worker ${n} during ${point.observed}`);
    }
    ctx.counts.faultsInjected = killed.length;

    const last = spawnWorker(settings(phases.length));
    workers.push(last);
    ctx.counts.runs++;
    const onDeadline = () => last.proc.kill('SIGKILL');
    ctx.deadline.addEventListener('abort', onDeadline, { once: true });
    const exit = await last.exited;
    ctx.deadline.removeEventListener('abort', onDeadline);
    ctx.checks.check('the last worker drained the queue and exited cleanly', exit.code === 0, `exit ${exit.code ?? exit.signal}${exit.code === 0 ? '' : `: ${last.stderr().slice(-500)}`}`);
    ctx.counts.faultsInjected += serverFaults(server);

    const events = workers.flatMap((w) => w.events);
    const doneReports = (id: string) => events.filter((e) => e.kind === 'finished' && e.jobId === id && e.outcome === 'done').length;
    const readOutput = async (i: number) => (server.hasObject('out', outputKey(i)) ? server.objectBytes('out', outputKey(i)).toString('utf8') : null);
    await verifyJobs(ctx, queue, expectWholeObjects(submitted, objects, readOutput), { doneReports, allReportsSeen: false, codes: () => [] });

    const total = objects.reduce((n, o) => n + o.size, 0);
    const served = server.bytesServed('recordings');
    ctx.counts.bytesRefetched = bytesRefetched(server, objects);
    const resumed = events.filter((e) => e.kind === 'downloadStart' && e.resumedBytes > 0);
    const resumedBytes = resumed.reduce((n, e) => n + (e.kind === 'downloadStart' ? e.resumedBytes : 0), 0);
    const largest = Math.max(...objects.map((o) => o.size));
    const bound = total + killed.length * (SLOTS + 1) * largest;
    ctx.checks.check('the kills happened as planned', killed.length === kills, `${killed.length} of ${kills}: ${killed.map((k) => k.observed).join('; ')}`);
    ctx.checks.check(
      'bytes served stay within one copy plus, per kill, the jobs the worker held',
      served <= bound,
      `${(served / MiB).toFixed(1)} MiB served for ${(total / MiB).toFixed(1)} MiB of objects (bound ${(bound / MiB).toFixed(1)} MiB); ${(resumedBytes / MiB).toFixed(1)} MiB resumed in ${resumed.length} download(s)`,
    );
    // A download killed with durable chunks on disk must be resumed with at least those bytes.
    const notResumed = killed
      .filter((k) => k.url !== undefined)
      .filter((k) => !events.some((e) => e.kind === 'downloadStart' && e.url === k.url && e.resumedBytes >= (k.durableBytes ?? 0) && e.resumedBytes > 0));
    if (killed.some((k) => k.url !== undefined)) {
      ctx.checks.check(
        'downloads killed midway were resumed from their durable chunks',
        notResumed.length === 0,
        notResumed.length === 0 ? `${resumed.length} resumed download(s), ${(resumedBytes / MiB).toFixed(1)} MiB not fetched again` : `started over: ${notResumed.map((k) => k.observed).join('; ')}`,
      );
    }
    const writes = objects.map((_, i) => server.requests.filter((r) => r.method === 'PUT' && r.bucket === 'out' && r.key === outputKey(i) && r.status === 200).length);
    const extraWrites = writes.reduce((n, w) => n + Math.max(0, w - 1), 0);
    ctx.checks.check(
      'each output was written once, a kill between upload and completion at most once more',
      writes.every((w) => w >= 1) && extraWrites <= killed.length,
      `writes per job: ${writes.join(', ')}`,
    );
    await checkNothingLeft(ctx, 'nothing is left in the buffer directory', bufferDir, 10);
    ctx.details['kills'] = killed;
    ctx.details['workers'] = workers.map((w) => ({
      owner: w.owner,
      downloads: w.events.flatMap((e) => (e.kind === 'downloadStart' ? [`${e.url.slice(e.url.lastIndexOf('/') + 1)}${e.resumedBytes > 0 ? ` (resumed ${e.resumedBytes})` : ''}`] : [])),
      processed: w.events.flatMap((e) => (e.kind === 'processing' ? [e.jobId] : [])),
      finished: w.events.flatMap((e) => (e.kind === 'finished' ? [`${e.jobId}:${e.outcome}`] : [])),
    }));
    ctx.details['bytesServed'] = served;
    ctx.details['objectBytes'] = total;
    ctx.details['resumedBytes'] = resumedBytes;
    ctx.details['outputWrites'] = writes;
  });
}

/**
 * Waits for the moment to kill `w` in `phase`; returns what was seen then, or null when the
 * worker exits first (it ran out of work).
 */
async function killAt(
  ctx: ScenarioContext,
  w: WorkerProcess,
  server: ObjectServer,
  targets: readonly { readonly object: ChaosObject; readonly jobId: string }[],
  bufferDir: string,
  phase: Phase,
): Promise<KillPoint | null> {
  const since = Date.now();
  const gone = () => !w.alive();
  switch (phase) {
    case 'download': {
      // Somewhere between a third and four fifths through one object's bytes, with a range in
      // flight, once the downloader's state file records at least one durable chunk: then the
      // next worker has something to resume, and must.
      const fraction = ctx.rng.between(0.35, 0.8);
      let hit: KillPoint | undefined;
      await ctx.waitFor('a download to kill in', async () => {
        if (gone()) return true;
        for (const t of targets) {
          const o = t.object;
          const entries = server.requests.filter((r) => r.method === 'GET' && r.key === o.key && r.startedAt >= since);
          const sent = entries.reduce((n, r) => n + r.bytesSent, 0);
          const inFlight = entries.some((r) => r.range !== undefined && r.status === 206 && r.bytesSent < r.range.end - r.range.start);
          if (!inFlight || sent < fraction * o.size || sent >= o.size) continue;
          const state = await readResumeState(partialPaths(path.join(jobDirectory(bufferDir, t.jobId), safeLocalName(o.url, 0))).state);
          if (state === undefined || state.completed.size === 0 || state.completed.size === state.completed.count) continue;
          const durable = planOf(state).bytesIn(state.completed);
          hit = { observed: `download of ${o.key} at ${Math.round((100 * sent) / o.size)} %, ${durable} bytes durable`, url: o.url, durableBytes: durable };
          return true;
        }
        return false;
      }, 3);
      return gone() ? null : (hit ?? null);
    }
    case 'processing': {
      const seen = w.events.length;
      let jobId: string | undefined;
      await ctx.waitFor('a job to kill in processing', () => {
        if (gone()) return true;
        const e = w.events.slice(seen).find((x) => x.kind === 'processing');
        if (e?.kind === 'processing') jobId = e.jobId;
        return jobId !== undefined;
      }, 3);
      if (gone() || jobId === undefined) return null;
      await ctx.pause(ctx.rng.int(0, PROCESS_DELAY_MS - 100));
      return gone() ? null : { observed: `processing of job ${jobId}` };
    }
    case 'upload': {
      // The next two uploads meet 503 SlowDown; the SDK retries after a pause, and the kill
      // lands in that pause, after the processor finished and before the output is stored.
      const before = server.requests.length;
      server.addFault({ fault: { kind: 'status', status: 503 }, match: { method: 'PUT', bucket: 'out' }, times: 2 });
      let key: string | undefined;
      await ctx.waitFor('an upload to kill in', () => {
        if (gone()) return true;
        const e = server.requests.slice(before).find((r) => r.method === 'PUT' && r.bucket === 'out' && r.status === 503);
        key = e?.key;
        return key !== undefined;
      }, 2);
      if (gone() || key === undefined) return null;
      return { observed: `upload of ${key}${server.hasObject('out', key) ? ' (already stored)' : ''}` };
    }
    default: {
      const _exhaustive: never = phase;
      throw new Error(`unknown phase ${String(_exhaustive)}`);
    }
  }
}
