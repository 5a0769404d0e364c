/**
 * Scenario 5: what a SIGKILL costs. `roboflow download` is killed several times at random points
 * (each attempt after it received a random 30–50 % of what was still missing, so about 40 %),
 * then allowed to finish; the server counts every byte it sent. Bytes sent beyond one copy of
 * the object were fetched again because of the kills.
 *
 * The server runs in the bench's own process for this scenario only: the byte count is read
 * while the download runs, to kill it at the right moment, and CPU is not measured here.
 */

import { spawn } from 'node:child_process';
import { rm } from 'node:fs/promises';
import path from 'node:path';
import { durableBytes, planOf, readResumeState } from '../../src/prefetch/resume-state.js';
import { generatedSha256, mulberry32 } from '../../src/cli/demo/content.js';
import { ObjectServer } from '../../test/support/object-server.js';
import { runCommand } from './measure.js';
import type { KilledAttempt, ResumeScenario, ResumeTrial } from './results.js';
import { parseLastJsonLine } from './results.js';
import { describeLeftovers, runDir, settle, sha256File, timeoutFor, type BenchContext } from './runner.js';
import { BUCKET } from './scenario-download.js';
import { benchEnv } from './tools.js';

export interface ResumeOptions {
  readonly objectSize: number;
  readonly ratePerConnection: number;
  readonly latencyMs: number;
  readonly connections: readonly number[];
  readonly chunkMiB: readonly number[];
  readonly kills: number;
  /** Seed of the kill points, so a rerun kills at the same fractions. */
  readonly seed: number;
}

const POLL_MS = 2;
/** Time for the server to notice the dead client's sockets, so its byte count is final. */
const SETTLE_MS = 200;

/** Small, seeded PRNG (mulberry32): kill points that are random but reproducible. */
export function seededRandom(seed: number): () => number {
  return mulberry32(seed);
}

export async function runResumeScenario(ctx: BenchContext, opts: ResumeOptions): Promise<ResumeScenario> {
  const key = 'resume.bin';
  const size = opts.objectSize;
  ctx.log('resume: computing SHA-256 of the generated object');
  const sha256 = await generatedSha256(size, 5);
  const server = await ObjectServer.start({ rateLimitBytesPerSec: opts.ratePerConnection, firstByteLatencyMs: opts.latencyMs });
  server.putObject(BUCKET, key, { generated: { size, seed: 5 } });
  await server.objectEtag(BUCKET, key);
  const random = seededRandom(opts.seed);
  const configs: { connections: number; chunkSize: number; trials: ResumeTrial[] }[] = [];
  try {
    for (const connections of opts.connections) {
      for (const mib of opts.chunkMiB) {
        const config = { connections, chunkSize: mib * 2 ** 20, trials: [] as ResumeTrial[] };
        configs.push(config);
        for (let rep = 1; rep <= ctx.repeat; rep++) {
          if (ctx.signal.aborted) throw new Error('interrupted');
          const trial = await runTrial(ctx, server, { key, size, sha256, connections, chunkSize: config.chunkSize, chunkArg: `${mib}MiB` }, opts.kills, random, rep);
          config.trials.push(trial);
          const wasted = (trial.bytesServed - size) / Math.max(1, trial.kills);
          ctx.log(
            `  resume ${connections} × ${mib} MiB: ${trial.kills} kills, re-fetched ${(wasted / 2 ** 20).toFixed(1)} MiB per kill` +
              `${trial.sha256Ok ? '' : `  FAILED: ${trial.error ?? ''}`}`,
          );
        }
      }
    }
  } finally {
    await server.close();
  }
  return { objectSize: size, ratePerConnection: opts.ratePerConnection, latencyMs: opts.latencyMs, configs };
}

interface TrialTarget {
  readonly key: string;
  readonly size: number;
  readonly sha256: string;
  readonly connections: number;
  readonly chunkSize: number;
  readonly chunkArg: string;
}

async function runTrial(
  ctx: BenchContext,
  server: ObjectServer,
  t: TrialTarget,
  kills: number,
  random: () => number,
  repetition: number,
): Promise<ResumeTrial> {
  const dir = await runDir(ctx);
  const dest = path.join(dir, 'object.bin');
  const stateFile = `${dest}.roboflow-state.json`;
  const args = [
    path.join(ctx.root, 'dist/bin/roboflow.js'),
    'download',
    `s3://${BUCKET}/${t.key}`,
    dest,
    '--connections',
    String(t.connections),
    '--chunk-size',
    t.chunkArg,
    '--endpoint',
    server.endpoint,
    '--json',
  ];
  server.clearRequests();
  const served = (): number => server.bytesServed(BUCKET, t.key);
  const attempts: KilledAttempt[] = [];
  let durable = 0;
  let error: string | undefined;
  let finishedEarly = false;
  for (let k = 0; k < kills; k++) {
    const before = served();
    const target = (0.3 + 0.2 * random()) * (t.size - durable);
    const outcome = await runUntil(process.execPath, args, () => served() - before >= target, timeoutFor(t.size), ctx.signal);
    if (outcome === 'exited') {
      // It finished (or failed) before reaching the kill point: no kill to count.
      finishedEarly = true;
      break;
    }
    await new Promise((r) => setTimeout(r, SETTLE_MS));
    const state = await readResumeState(stateFile);
    const durableAfter = state ? durableBytes(planOf(state), state.completed, state.partial) : 0;
    attempts.push({ sentBytes: served() - before, durableBefore: durable, durableAfter });
    durable = durableAfter;
  }
  let resumedBytes: number | null = null;
  if (!finishedEarly) {
    const res = await runCommand(process.execPath, args, { env: benchEnv(), timeoutMs: timeoutFor(t.size), signal: ctx.signal });
    const reported = parseLastJsonLine(res.stdout);
    if (typeof reported?.resumedBytes === 'number') resumedBytes = reported.resumedBytes;
    if (res.exitCode !== 0) error = res.stderr.trim().split(/\r?\n/).slice(-2).join(' | ') || `exit code ${res.exitCode}`;
    else if (reported === null) error = `the final run exited 0 without printing its --json result${await describeLeftovers(dir)}`;
  }
  let sha256Ok = false;
  if (error === undefined) {
    try {
      sha256Ok = (await sha256File(dest)) === t.sha256;
      if (!sha256Ok) error = 'SHA-256 of the resumed file differs from the object';
    } catch (err) {
      error = `no output file: ${(err as Error).message}`;
    }
  }
  await new Promise((r) => setTimeout(r, SETTLE_MS));
  const bytesServed = served();
  await rm(dir, { recursive: true, force: true });
  await settle(ctx);
  return { repetition, kills: attempts.length, attempts, bytesServed, resumedBytes, sha256Ok, ...(error !== undefined ? { error } : {}) };
}

/** Runs the command until `shouldKill()` turns true (then SIGKILLs it) or it exits on its own. */
function runUntil(
  cmd: string,
  args: readonly string[],
  shouldKill: () => boolean,
  timeoutMs: number,
  signal: AbortSignal,
): Promise<'killed' | 'exited'> {
  return new Promise((resolve) => {
    const child = spawn(cmd, [...args], { env: benchEnv(), stdio: 'ignore' });
    let killed = false;
    const kill = (): void => {
      if (killed) return;
      killed = true;
      child.kill('SIGKILL');
    };
    const poll = setInterval(() => {
      if (shouldKill()) kill();
    }, POLL_MS);
    const timer = setTimeout(kill, timeoutMs);
    signal.addEventListener('abort', kill, { once: true });
    child.once('error', () => {
      clearInterval(poll);
      clearTimeout(timer);
      signal.removeEventListener('abort', kill);
      resolve('exited');
    });
    child.once('exit', () => {
      clearInterval(poll);
      clearTimeout(timer);
      signal.removeEventListener('abort', kill);
      resolve(killed ? 'killed' : 'exited');
    });
  });
}
