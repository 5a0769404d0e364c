/**
 * Scenario 4: prefetch against sequential processing, through `runPrefetchComparison`
 * (`src/cli/demo/comparison.ts`): the same N jobs run by a real `Worker` once with 2 prefetch slots and once with
 * none, against a rate-limited object server.
 *
 * Cases: D ≈ P, D < P (P ≈ 2D) and D > P (P ≈ D/2), each with a pure-wait processor (the `sleep`
 * processor: idle, as processing bound by a GPU or a remote service) and a CPU processor (the
 * real `mcap-summary` of an MCAP episode, then busy on the CPU until P has passed: it competes
 * with the downloads for the two cores). D is calibrated first by timing downloads alone.
 *
 * The worker runs in the bench's process (the comparison is about wall time, not CPU); the object
 * server runs in a process of its own, as in the other scenarios: a store is remote, and serving
 * from the worker's event loop would charge the store's sending to the worker's downloads and
 * processing. It still shares the two cores.
 */

import { runPrefetchComparison, runSlotSweep, type ComparisonProcessor, type StartComparisonStore } from '../../src/cli/demo/comparison.js';
import type { PrefetchCase, PrefetchRun, PrefetchScenario, SlotSweepCase, SlotSweepRun } from './results.js';
import type { BenchContext } from './runner.js';
import { ServerProcess, type ServedFile, type ServedObject } from './server-process.js';

export interface PrefetchPlan {
  readonly jobs: number;
  readonly objectSize: number;
  readonly connections: number;
  readonly ratePerConnection: number;
  readonly latencyMs: number;
  readonly slotSweep: {
    readonly jobs: number;
    readonly objectSize: number;
    readonly chunkSize: number;
    readonly connections: number;
    readonly ratePerConnection: number;
    readonly latencyMs: number;
    readonly slots: readonly number[];
  };
}

/** P as a multiple of the calibrated D, per relation. */
export const RELATIONS: readonly { readonly relation: string; readonly factor: number }[] = [
  { relation: 'D≈P', factor: 1 },
  { relation: 'D<P', factor: 2 },
  { relation: 'D>P', factor: 0.5 },
];

export type PrefetchProcessorKind = 'wait' | 'cpu' | 'checksum';

/** The comparison's processor for a case; `processMs` is ignored by `checksum`, whose cost is
 * the input's size. */
export function processorFor(kind: PrefetchProcessorKind, processMs: number): ComparisonProcessor {
  switch (kind) {
    case 'wait':
      return { kind: 'sleep', ms: processMs };
    case 'cpu':
      return { kind: 'mcap-summary', processMs, burn: 'cpu' };
    case 'checksum':
      return { kind: 'checksum' };
    default: {
      const _exhaustive: never = kind;
      return _exhaustive;
    }
  }
}

/** The comparison's store as a `ServerProcess` of its own (see the module comment). */
export function serverProcessStore(root: string): StartComparisonStore {
  return async ({ objects, ratePerConn, latencyMs }) => {
    const generated: ServedObject[] = [];
    const files: ServedFile[] = [];
    for (const o of objects) {
      if ('file' in o.source) files.push({ bucket: o.bucket, key: o.key, path: o.source.file });
      else generated.push({ bucket: o.bucket, key: o.key, ...o.source.generated });
    }
    const server = await ServerProcess.start({
      root,
      ...(ratePerConn !== null ? { ratePerConnection: ratePerConn } : {}),
      latencyMs,
      objects: generated,
      files,
    });
    return server;
  };
}

export async function runPrefetchScenario(ctx: BenchContext, plan: PrefetchPlan): Promise<PrefetchScenario> {
  const common = {
    sizeBytes: plan.objectSize,
    ratePerConn: plan.ratePerConnection,
    latencyMs: plan.latencyMs,
    connections: plan.connections,
    tempDir: ctx.scratch,
    startStore: serverProcessStore(ctx.root),
    signal: ctx.signal,
  };
  ctx.log('prefetch: calibrating D (download time of one job, alone)');
  const calibration = await runPrefetchComparison({ ...common, jobs: 3, slots: 1, processor: { kind: 'sleep', ms: 0 }, content: 'generated' });
  const d = calibration.downloadSeconds;
  ctx.log(`prefetch: D ≈ ${d.toFixed(3)} s per job`);
  const cases: (PrefetchCase & { runs: PrefetchRun[]; factor: number })[] = [];
  for (const kind of ['wait', 'cpu'] as const) {
    for (const { relation, factor } of RELATIONS) {
      cases.push({ id: `${kind}-${relation}`, relation, processor: kind, jobs: plan.jobs, objectSize: plan.objectSize, ratePerConnection: plan.ratePerConnection, connections: plan.connections, runs: [], factor });
    }
  }
  // SHA-256 runs at about 1 GB/s, faster than any download here: checksum only ever has D > P.
  cases.push({ id: 'checksum', relation: 'D>P', processor: 'checksum', jobs: plan.jobs, objectSize: plan.objectSize, ratePerConnection: plan.ratePerConnection, connections: plan.connections, runs: [], factor: Number.NaN });
  for (let rep = 1; rep <= ctx.repeat; rep++) {
    ctx.log(`prefetch: repetition ${rep}/${ctx.repeat}`);
    for (const c of cases) {
      if (ctx.signal.aborted) throw new Error('interrupted');
      const processMs = Math.max(10, Math.round(d * c.factor * 1000));
      const kind = c.processor as PrefetchProcessorKind;
      try {
        const r = await runPrefetchComparison({
          ...common,
          jobs: plan.jobs,
          slots: 2,
          processor: processorFor(kind, processMs),
          // mcap-summary needs real MCAP episodes; the others read bytes only.
          content: kind === 'cpu' ? 'mcap' : 'generated',
        });
        const run: PrefetchRun = {
          repetition: rep,
          downloadSeconds: r.downloadSeconds,
          processSeconds: r.processSeconds,
          sequentialSeconds: r.sequential.wallSeconds,
          prefetchSeconds: r.prefetch.wallSeconds,
          inputWaitShare: r.prefetch.inputWaitShare,
          ok: true,
        };
        c.runs.push(run);
        ctx.log(
          `  ${c.id.padEnd(8)} D ${r.downloadSeconds.toFixed(2)} s, P ${r.processSeconds.toFixed(2)} s: sequential ${run.sequentialSeconds.toFixed(2)} s, ` +
            `prefetch ${run.prefetchSeconds.toFixed(2)} s (${r.speedup.toFixed(2)}×), input wait ${(run.inputWaitShare * 100).toFixed(0)} %`,
        );
      } catch (err) {
        const message = (err as Error).message;
        c.runs.push({ repetition: rep, downloadSeconds: Number.NaN, processSeconds: Number.NaN, sequentialSeconds: Number.NaN, prefetchSeconds: Number.NaN, inputWaitShare: Number.NaN, ok: false, error: message });
        ctx.log(`  ${c.id} FAILED: ${message}`);
      }
    }
  }
  const sweep = await runSlotSweeps(ctx, plan.slotSweep);
  return {
    cases: cases.map(({ factor: _factor, ...c }) => c),
    slotSweeps: sweep.cases,
    slotSweepSource: sweep.source,
    source:
      `Each case runs ${plan.jobs} jobs of ${(plan.objectSize / 2 ** 20).toFixed(0)} MiB through a real Worker (SQLite queue, ${plan.connections} connections at ` +
      `${(plan.ratePerConnection / 1e6).toFixed(0)} MB/s each, ${plan.latencyMs} ms first-byte latency), once with 2 prefetch slots and once with 0 (download, then process), ` +
      `via runPrefetchComparison (src/cli/demo/comparison.ts), the object server in a process of its own. 'wait': the sleep processor idles for P. 'cpu': the real mcap-summary of an MCAP episode, then a child process busy on the CPU until P has passed ` +
      `(heavy processing runs outside the worker's event loop, as exec does), competing with the downloads for the two cores. 'checksum': the real checksum processor (SHA-256 of the input). P is set from D ≈ ${d.toFixed(2)} s, calibrated before the cases; ` +
      'the table shows D and P as measured in each sequential run.',
  };
}

/**
 * Wall time against slots: 0, 1, 2, 3 slots for D ≈ P, D < P and D > P (the sleep processor),
 * and once more at D ≈ P with a host-wide limit of one download's connections, under a
 * per-connection cap low enough that a download is bound by the cap, not by this machine.
 */
async function runSlotSweeps(ctx: BenchContext, plan: PrefetchPlan['slotSweep']): Promise<{ cases: SlotSweepCase[]; source: string }> {
  const common = {
    jobs: plan.jobs,
    sizeBytes: plan.objectSize,
    chunkSize: plan.chunkSize,
    ratePerConn: plan.ratePerConnection,
    latencyMs: plan.latencyMs,
    connections: plan.connections,
    tempDir: ctx.scratch,
    startStore: serverProcessStore(ctx.root),
    signal: ctx.signal,
    content: 'generated' as const,
  };
  ctx.log('prefetch slots: calibrating D');
  const calibration = await runSlotSweep({ ...common, jobs: 2, slotCounts: [0], processor: { kind: 'sleep', ms: 0 } });
  const d = calibration.downloadSeconds;
  ctx.log(`prefetch slots: D ≈ ${d.toFixed(3)} s per job`);
  const specs = [
    ...RELATIONS.map((r) => ({ ...r, hostLimit: null as number | null })),
    { relation: 'D≈P', factor: 1, hostLimit: plan.connections as number | null },
  ];
  const cases: (SlotSweepCase & { runs: SlotSweepRun[] })[] = specs.map((x) => ({
    id: x.hostLimit === null ? x.relation : `${x.relation}, host limit ${x.hostLimit}`,
    relation: x.relation,
    maxHostConnections: x.hostLimit,
    jobs: plan.jobs,
    objectSize: plan.objectSize,
    chunkSize: plan.chunkSize,
    ratePerConnection: plan.ratePerConnection,
    latencyMs: plan.latencyMs,
    connections: plan.connections,
    runs: [],
  }));
  for (let rep = 1; rep <= ctx.repeat; rep++) {
    for (const [i, x] of specs.entries()) {
      if (ctx.signal.aborted) throw new Error('interrupted');
      const c = cases[i]!;
      const processMs = Math.max(10, Math.round(d * x.factor * 1000));
      try {
        const r = await runSlotSweep({ ...common, slotCounts: plan.slots, hostLimits: [x.hostLimit], processor: { kind: 'sleep', ms: processMs } });
        for (const run of r.runs) {
          c.runs.push({
            repetition: rep,
            slots: run.slots,
            wallSeconds: run.wallSeconds,
            firstReadySeconds: run.firstReadySeconds,
            downloadSeconds: r.downloadSeconds,
            processSeconds: r.processSeconds,
            boundSeconds: r.boundSeconds,
            ok: true,
          });
        }
        const walls = r.runs.map((run) => `${run.slots}: ${run.wallSeconds.toFixed(2)} s`).join(', ');
        const first = r.runs.map((run) => run.firstReadySeconds.toFixed(2)).join('/');
        ctx.log(`  slots ${c.id.padEnd(18)} D ${r.downloadSeconds.toFixed(2)} s, P ${r.processSeconds.toFixed(2)} s, bound ${r.boundSeconds.toFixed(2)} s; ${walls}; first job ready ${first} s`);
      } catch (err) {
        const message = (err as Error).message;
        for (const slots of plan.slots) {
          c.runs.push({ repetition: rep, slots, wallSeconds: Number.NaN, firstReadySeconds: Number.NaN, downloadSeconds: Number.NaN, processSeconds: Number.NaN, boundSeconds: Number.NaN, ok: false, error: message });
        }
        ctx.log(`  slots ${c.id} FAILED: ${message}`);
      }
    }
  }
  return {
    cases,
    source:
      `Each case runs ${plan.jobs} jobs of ${(plan.objectSize / 2 ** 20).toFixed(0)} MiB through a real Worker (SQLite queue, ${plan.connections} connections at ` +
      `${(plan.ratePerConnection / 1e6).toFixed(0)} MB/s each, ${plan.latencyMs} ms first-byte latency, ${(plan.chunkSize / 2 ** 20).toFixed(0)} MiB chunks, the sleep processor) with ${plan.slots.join(', ')} prefetch slots, ` +
      `via runSlotSweep (src/cli/demo/comparison.ts), the object server in a process of its own. D and P are measured alone in each case's 0-slot run; P is set from D ≈ ${d.toFixed(2)} s calibrated first. ` +
      `The host-limit case sets maxHostConnections to one download's connections (${plan.connections}) for its prefetching runs.`,
  };
}
