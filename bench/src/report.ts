/**
 * BENCHMARKS.md, generated from the results files only (pure: results in, markdown out). Every
 * figure is a median over the repetitions of one run, every ratio compares tools measured in
 * that same run, and the "where roboflow loses" section is derived from the figures, not
 * written by hand.
 */

import { queueSection } from './scenario-queue.js';
import type { BenchResults, DownloadCondition, PhaseTimeline, ScenarioName, ToolInfo, ToolRun } from './results.js';
import type { ComparedSummary } from './stats.js';
import { compareTo, GB, median, MiB, prefetchBound, ratio, refetchedPerKill, summarise } from './stats.js';
import { ROBOFLOW_ID, ROBOFLOW_NO_CHECKSUM_ID, ROBOFLOW_PROCESS_ID } from './tools.js';

export type Picked = Partial<Record<ScenarioName, { file: string; results: BenchResults }>>;

export interface ReportInput {
  readonly picked: Picked;
  /** Plot files written beside BENCHMARKS.md, relative to the repository root. */
  readonly plots: readonly { readonly file: string; readonly title: string }[];
}

// ---------------------------------------------------------------------------------------------
// Formatting
// ---------------------------------------------------------------------------------------------

export function fmt(n: number | null | undefined, digits = 0): string {
  return n === null || n === undefined || !Number.isFinite(n) ? '—' : n.toFixed(digits);
}

export function fmtRatio(r: number): string {
  return Number.isFinite(r) ? `${r.toFixed(2)}×` : '—';
}

function mib(bytes: number): string {
  return bytes >= 1024 * MiB && bytes % (1024 * MiB) === 0 ? `${bytes / (1024 * MiB)} GiB` : `${fmt(bytes / MiB, bytes % MiB === 0 ? 0 : 1)} MiB`;
}

function percent(x: number, digits = 0): string {
  return Number.isFinite(x) ? `${(x * 100).toFixed(digits)} %` : '—';
}

/** A markdown table. `align` has one letter per column (`l` or `r`); by default the first column
 * is left-aligned and the others, figures, right-aligned. */
export function table(header: readonly string[], rows: readonly (readonly string[])[], align?: string): string {
  const esc = (c: string): string => c.replace(/\|/g, '\\|').replace(/\n/g, ' ');
  const rule = header.map((_, i) => ((align?.[i] ?? (i === 0 ? 'l' : 'r')) === 'r' ? '---:' : '---'));
  const lines = [`| ${header.map(esc).join(' | ')} |`, `| ${rule.join(' | ')} |`];
  for (const r of rows) lines.push(`| ${r.map(esc).join(' | ')} |`);
  return lines.join('\n');
}

function conditionTitle(c: DownloadCondition): string {
  return c.id === 'capped'
    ? `capped: ${fmt((c.ratePerConnection ?? 0) / 1e6)} MB/s per connection, ${c.latencyMs} ms first-byte latency`
    : 'uncapped loopback';
}

function toolLabel(tools: readonly ToolInfo[], id: string): string {
  return tools.find((t) => t.id === id)?.label ?? id;
}

// ---------------------------------------------------------------------------------------------
// Derived figures
// ---------------------------------------------------------------------------------------------

/** Summaries of every tool in a condition, in the order the tools were listed, with ratios to
 * roboflow (16 × 8 MiB). */
export function conditionSummaries(c: DownloadCondition, order: readonly string[]): ComparedSummary[] {
  const ids = [...new Set(c.runs.map((r) => r.tool))].sort((a, b) => rank(order, a) - rank(order, b));
  const ref = summarise(ROBOFLOW_ID, c.runs.filter((r) => r.tool === ROBOFLOW_ID));
  return ids.map((id) => compareTo(ref, summarise(id, c.runs.filter((r) => r.tool === id))));
}

function rank(order: readonly string[], id: string): number {
  const i = order.indexOf(id);
  return i === -1 ? order.length : i;
}

export function serverAloneMBps(c: DownloadCondition): number {
  const alone = c.serverAlone;
  if (!alone) return Number.NaN;
  return median(alone.runs.filter((r) => r.ok).map((r) => alone.bytes / 1e6 / r.wallSeconds));
}

/** Median MB/s of the disk-alone runs (`dd` + `fdatasync`), NaN when not measured. */
export function diskAloneMBps(c: DownloadCondition): number {
  const disk = c.diskAlone;
  if (!disk) return Number.NaN;
  return median(disk.runs.filter((r) => r.ok).map((r) => disk.bytes / 1e6 / r.wallSeconds));
}

function isPeer(id: string): boolean {
  return !id.startsWith(ROBOFLOW_ID);
}

/** The peer with the highest median throughput among those whose every run was correct. */
export function bestPeer(summaries: readonly ComparedSummary[]): ComparedSummary | undefined {
  return summaries
    .filter((s) => isPeer(s.tool) && s.sha256Ok && Number.isFinite(s.mbPerSecond))
    .reduce<ComparedSummary | undefined>((best, s) => (best === undefined || s.mbPerSecond > best.mbPerSecond ? s : best), undefined);
}

export interface Goal {
  readonly description: string;
  readonly target: string;
  readonly measured: string;
  /** null when the run did not measure it. */
  readonly met: boolean | null;
}

export interface PrefetchCaseSummary {
  readonly id: string;
  readonly relation: string;
  readonly processor: string;
  readonly jobs: number;
  readonly downloadSeconds: number;
  readonly processSeconds: number;
  readonly sequentialSeconds: number;
  readonly prefetchSeconds: number;
  readonly bound: number;
  /** prefetch / bound: 1.00 is the ideal, 1.05 the goal. */
  readonly boundRatio: number;
  readonly speedUp: number;
  readonly inputWaitShare: number;
  readonly ok: number;
  readonly runs: number;
  readonly error?: string;
}

export function prefetchSummaries(r: BenchResults): PrefetchCaseSummary[] {
  const s = r.scenarios.prefetch;
  if (!s) return [];
  return s.cases.map((c) => {
    const good = c.runs.filter((x) => x.ok);
    const d = median(good.map((x) => x.downloadSeconds));
    const p = median(good.map((x) => x.processSeconds));
    const seq = median(good.map((x) => x.sequentialSeconds));
    const pre = median(good.map((x) => x.prefetchSeconds));
    const bound = prefetchBound(c.jobs, d, p);
    const failed = c.runs.find((x) => !x.ok);
    return {
      id: c.id,
      relation: c.relation,
      processor: c.processor,
      jobs: c.jobs,
      downloadSeconds: d,
      processSeconds: p,
      sequentialSeconds: seq,
      prefetchSeconds: pre,
      bound,
      boundRatio: ratio(pre, bound),
      speedUp: ratio(seq, pre),
      inputWaitShare: median(good.map((x) => x.inputWaitShare)),
      ok: good.length,
      runs: c.runs.length,
      ...(failed?.error !== undefined ? { error: failed.error } : {}),
    };
  });
}

/** One slot count of one slot sweep case, medians over its repetitions. */
export interface SlotSweepPoint {
  readonly slots: number;
  readonly wallSeconds: number;
  readonly firstReadySeconds: number;
  readonly ok: number;
  readonly runs: number;
}

export interface SlotSweepSummary {
  readonly id: string;
  readonly relation: string;
  readonly maxHostConnections: number | null;
  readonly jobs: number;
  readonly downloadSeconds: number;
  readonly processSeconds: number;
  /** D + (N−1)·max(D,P) + P. */
  readonly bound: number;
  readonly points: readonly SlotSweepPoint[];
  readonly error?: string;
}

export function slotSweepSummaries(r: BenchResults): SlotSweepSummary[] {
  const sweeps = r.scenarios.prefetch?.slotSweeps ?? [];
  return sweeps.map((c) => {
    const good = c.runs.filter((x) => x.ok);
    const slots = [...new Set(c.runs.map((x) => x.slots))].sort((a, b) => a - b);
    const failed = c.runs.find((x) => !x.ok);
    return {
      id: c.id,
      relation: c.relation,
      maxHostConnections: c.maxHostConnections,
      jobs: c.jobs,
      downloadSeconds: median(good.map((x) => x.downloadSeconds)),
      processSeconds: median(good.map((x) => x.processSeconds)),
      bound: median(good.map((x) => x.boundSeconds)),
      points: slots.map((n) => {
        const at = c.runs.filter((x) => x.slots === n);
        const ok = at.filter((x) => x.ok);
        return {
          slots: n,
          wallSeconds: median(ok.map((x) => x.wallSeconds)),
          firstReadySeconds: median(ok.map((x) => x.firstReadySeconds)),
          ok: ok.length,
          runs: at.length,
        };
      }),
      ...(failed?.error !== undefined ? { error: failed.error } : {}),
    };
  });
}

/** Wall time at `slots`, NaN when not measured. */
function wallAt(s: SlotSweepSummary, slots: number): number {
  return s.points.find((p) => p.slots === slots)?.wallSeconds ?? Number.NaN;
}

/** The worst "more slots slower" ratio of a case: wall(n) over the best wall with fewer slots (≥ 1). */
export function worstMoreSlots(s: SlotSweepSummary): { ratio: number; slots: number } {
  let worst = { ratio: Number.NaN, slots: Number.NaN };
  let best = Number.POSITIVE_INFINITY;
  for (const p of s.points.filter((x) => x.slots >= 1 && Number.isFinite(x.wallSeconds))) {
    if (Number.isFinite(best)) {
      const r = p.wallSeconds / best;
      if (!(r <= worst.ratio)) worst = { ratio: r, slots: p.slots };
    }
    best = Math.min(best, p.wallSeconds);
  }
  return worst;
}

function slotSweepGoals(picked: Picked): Goal[] {
  const pre = picked.prefetch?.results;
  const sums = pre ? slotSweepSummaries(pre) : [];
  if (sums.length === 0) {
    return [{ description: 'Prefetch slots: more slots never slower (slot sweep)', target: '—', measured: 'not measured in this run', met: null }];
  }
  const goals: Goal[] = [];
  const balanced = sums.find((s) => s.relation === 'D≈P' && s.maxHostConnections === null);
  if (balanced) {
    const one = wallAt(balanced, 1);
    const r2 = ratio(wallAt(balanced, 2), one);
    const r3 = ratio(wallAt(balanced, 3), one);
    goals.push({
      description: 'Prefetch slots, D ≈ P: slots 2 and 3 within 3 % of slots 1 or faster',
      target: '≤ 1.03 × slots 1',
      measured: `slots 2 ${fmtRatio(r2)}, slots 3 ${fmtRatio(r3)}`,
      met: Number.isFinite(r2) && Number.isFinite(r3) ? r2 <= 1.03 && r3 <= 1.03 : false,
    });
    const rb = ratio(wallAt(balanced, 2), balanced.bound);
    goals.push({
      description: 'Prefetch slots, D ≈ P: slots 2 within 3 % of D + (N−1)·max(D,P) + P',
      target: '≤ 1.03 × bound',
      measured: `${fmt(wallAt(balanced, 2), 2)} s against ${fmt(balanced.bound, 2)} s (${fmtRatio(rb)})`,
      met: Number.isFinite(rb) ? rb <= 1.03 : false,
    });
  }
  const worst = sums.map((s) => ({ s, w: worstMoreSlots(s) })).filter((x) => Number.isFinite(x.w.ratio));
  if (worst.length > 0) {
    const w = worst.reduce((a, b) => (b.w.ratio > a.w.ratio ? b : a));
    goals.push({
      description: 'Prefetch slots: in every case, more slots never more than 3 % slower than fewer (1 and up)',
      target: '≤ 1.03×',
      measured: `worst ${fmtRatio(w.w.ratio)} (${w.s.id}, ${w.w.slots} slots)`,
      met: worst.every((x) => x.w.ratio <= 1.03),
    });
  }
  const limited = sums.find((s) => s.maxHostConnections !== null);
  if (limited) {
    // Slots compete for the limit from 2 slots on; with 1, the next download starts only once
    // the first job is handed out, so its first job shows the run's noise, not the limit.
    const firsts = limited.points.filter((p) => p.slots >= 2 && Number.isFinite(p.firstReadySeconds));
    const worstFirst = firsts.reduce((a, b) => (b.firstReadySeconds > a.firstReadySeconds ? b : a), firsts[0]!);
    const r = ratio(worstFirst?.firstReadySeconds ?? Number.NaN, limited.downloadSeconds);
    const all = limited.points.filter((p) => p.slots >= 1).map((p) => `${p.slots}: ${fmt(p.firstReadySeconds, 2)} s`).join(', ');
    goals.push({
      description: `Prefetch slots, host-wide limit of ${limited.maxHostConnections} transfers (one download's connections), 2 and more slots competing for it: first job handed out within 10 % of D alone`,
      target: '≤ 1.10 × D',
      measured: `worst ${fmt(worstFirst?.firstReadySeconds, 2)} s (${worstFirst?.slots} slots) against D = ${fmt(limited.downloadSeconds, 2)} s (${fmtRatio(r)}); first job by slots ${all}`,
      met: Number.isFinite(r) ? r <= 1.1 : false,
    });
  }
  return goals;
}

/** The goals set for the downloader and the prefetch queue, checked against the results. */
export function evaluateGoals(picked: Picked): Goal[] {
  const goals: Goal[] = [];
  const dl = picked.download?.results;
  const order = dl?.tools.map((t) => t.id) ?? [];
  const capped = dl?.scenarios.download?.conditions.find((c) => c.id === 'capped');
  if (capped) {
    const sums = conditionSummaries(capped, order);
    const rf = sums.find((s) => s.tool === ROBOFLOW_ID);
    const best = bestPeer(sums);
    const mine = likeForLike(sums, best);
    const cap16 = (16 * (capped.ratePerConnection ?? 0)) / 1e6;
    const floor = 0.95 * cap16;
    const target = Math.max(floor, best?.mbPerSecond ?? 0);
    goals.push({
      description: `Capped: roboflow at least as fast as the best peer and ≥ 0.95 × 16 × cap (${mine ? toolLabel(dl!.tools, mine.tool) : 'roboflow'}: it checks what that peer checks)`,
      target: `≥ ${fmt(target)} MB/s (0.95 × 16 × cap = ${fmt(floor)}${best ? `; best peer ${toolLabel(dl!.tools, best.tool)} ${fmt(best.mbPerSecond)}` : ''})`,
      measured: `${fmt(mine?.mbPerSecond)} MB/s`,
      met: mine && mine.sha256Ok && Number.isFinite(mine.mbPerSecond) ? mine.mbPerSecond >= target : false,
    });
    goals.push({
      description: `Capped: roboflow (16 × 8 MiB, verifying ${verifiedBy(capped).filter((a) => a !== 'size').join(' and ') || 'the store\'s checksum'}) ≥ 90 % of 16 × cap`,
      target: `≥ ${fmt(0.9 * cap16)} MB/s`,
      measured: `${fmt(rf?.mbPerSecond)} MB/s`,
      met: rf && rf.sha256Ok && Number.isFinite(rf.mbPerSecond) ? rf.mbPerSecond >= 0.9 * cap16 : false,
    });
  } else {
    goals.push({ description: 'Capped: roboflow ≥ best peer and ≥ 0.95 × 16 × cap', target: '—', measured: 'not measured in this run', met: null });
  }
  const uncapped = dl?.scenarios.download?.conditions.find((c) => c.id === 'uncapped');
  if (uncapped) {
    const sums = conditionSummaries(uncapped, order);
    const best = bestPeer(sums);
    // The issue's goal: the best peer's speed *while roboflow still verifies integrity*, so a run
    // that verifies the store's cheapest checksum, whatever the peer checks; held to the peer's
    // durability: a peer that returns with its bytes in the page cache meets roboflow with
    // `--durability process` (when that ran), one timed until its file is on disk the default.
    const mine = likeForLikeDurability(sums, best);
    const checks = verifiedBy(uncapped).filter((a) => a !== 'size');
    goals.push({
      description: `Uncapped: roboflow at least as fast as the best peer while verifying integrity${checks.length > 0 ? ` (${checks.join(' and ')})` : ''}, at no more CPU per GB than that peer (${mine ? toolLabel(dl!.tools, mine.tool) : 'roboflow'}${mine?.tool === ROBOFLOW_PROCESS_ID ? ': it leaves its bytes in the page cache, as that peer does' : ''})`,
      target: best ? `≥ ${fmt(best.mbPerSecond)} MB/s and ≤ ${fmt(best.cpuSecondsPerGB, 2)} CPU s/GB (${toolLabel(dl!.tools, best.tool)})` : 'no peer measured',
      measured: `${fmt(mine?.mbPerSecond)} MB/s, ${fmt(mine?.cpuSecondsPerGB, 2)} CPU s/GB`,
      met:
        mine && mine.sha256Ok && best
          ? mine.mbPerSecond >= best.mbPerSecond && mine.cpuSecondsPerGB <= best.cpuSecondsPerGB
          : best
            ? false
            : null,
    });
  } else {
    goals.push({ description: 'Uncapped: roboflow ≥ best peer at ≤ its CPU/GB', target: '—', measured: 'not measured in this run', met: null });
  }
  const pre = picked.prefetch?.results;
  const cases = pre ? prefetchSummaries(pre).filter((c) => c.ok > 0) : [];
  if (cases.length > 0) {
    const worst = cases.reduce((w, c) => (c.boundRatio > w.boundRatio ? c : w));
    goals.push({
      description: 'Prefetch: total time within 5 % of D + N·max(D, P) in every case',
      target: '≤ 1.05 × bound',
      measured: `worst ${fmtRatio(worst.boundRatio)} (${worst.processor}, ${worst.relation})`,
      met: cases.every((c) => c.boundRatio <= 1.05),
    });
    const balanced = cases.filter((c) => c.relation === 'D≈P');
    if (balanced.length > 0) {
      const least = balanced.reduce((w, c) => (c.speedUp < w.speedUp ? c : w));
      goals.push({
        description: 'Prefetch: speed-up over sequential at D ≈ P',
        target: '≥ 1.40×',
        measured: balanced.map((c) => `${fmtRatio(c.speedUp)} (${c.processor})`).join(', '),
        met: least.speedUp >= 1.4,
      });
    }
  } else {
    goals.push({ description: 'Prefetch: within 5 % of the bound, ≥ 1.4× at D ≈ P', target: '—', measured: 'not measured in this run', met: null });
  }
  goals.push(...slotSweepGoals(picked));
  return goals;
}

/**
 * Every place where a peer beat roboflow in a download condition, or a goal was missed, with the
 * reason the measurements support. Empty when roboflow won everywhere.
 */
/** The run started on a machine with more runnable work than half its cores. */
function busyMachine(r: BenchResults): boolean {
  return r.load !== undefined && (r.load.atStart[0] ?? 0) > 0.5 * r.machine.nproc;
}

/**
 * The roboflow run to hold against `peer`: `--no-checksum` when the peer verifies nothing (and
 * that variant ran), else the default, which verifies the store's cheapest checksum.
 */
function likeForLike(sums: readonly ComparedSummary[], peer: ComparedSummary | undefined): ComparedSummary | undefined {
  const plain = sums.find((s) => s.tool === ROBOFLOW_NO_CHECKSUM_ID && s.sha256Ok);
  const verifiesNothing = peer !== undefined && (PEER_VERIFICATION[peer.tool] ?? '').startsWith('no checksum');
  return verifiesNothing && plain ? plain : sums.find((s) => s.tool === ROBOFLOW_ID);
}

/** The phases of a timeline as durations (ms), and the transfer's rate (MB/s). */
export function phaseSpans(t: PhaseTimeline): {
  boot: number;
  loadAndStat: number;
  firstBatch: number;
  transfer: number;
  transferMBps: number;
  finish: number;
  exit: number;
} {
  const m = t.marks;
  const transfer = m.lastBatch - m.firstBatch;
  return {
    boot: m.loaded,
    loadAndStat: m.stat - m.loaded,
    firstBatch: m.firstBatch - m.stat,
    transfer,
    // Over every byte, from the stat on: the first batch's wait included.
    transferMBps: m.lastBatch > m.stat ? t.bytes / 1e3 / (m.lastBatch - m.stat) : Number.NaN,
    finish: m.done - m.lastBatch,
    exit: m.exit - m.done,
  };
}

/** Peers timed until their file is on disk, as roboflow's default (`disk`) is. */
const DURABLE_PEERS: ReadonlySet<string> = new Set(['rclone-ignore-checksum-sync']);

/**
 * The verifying roboflow run to hold against `peer`: `--durability process` when the peer
 * returns with its bytes in the page cache (and that variant ran), else the default.
 */
function likeForLikeDurability(sums: readonly ComparedSummary[], peer: ComparedSummary | undefined): ComparedSummary | undefined {
  const process = sums.find((s) => s.tool === ROBOFLOW_PROCESS_ID && s.sha256Ok);
  return peer !== undefined && !DURABLE_PEERS.has(peer.tool) && process ? process : sums.find((s) => s.tool === ROBOFLOW_ID);
}

/** What each peer checks after (or while) downloading, where we know it for certain. */
const PEER_VERIFICATION: Readonly<Record<string, string>> = {
  curl: 'no checksum',
  axel: 'no checksum',
  aria2c: 'no checksum (plain HTTP has none to check)',
  rclone: 'MD5, by re-reading the whole file after the download',
  'rclone-ignore-checksum': 'no checksum',
  'rclone-ignore-checksum-sync': 'no checksum; timed until its file is on disk, as roboflow is',
};

function listPeers(dl: BenchResults, peers: readonly ComparedSummary[], value: (s: ComparedSummary) => string): string {
  return peers.map((s) => `${toolLabel(dl.tools, s.tool)} ${value(s)}`).join(', ');
}

/**
 * Every place where peers beat roboflow in a download condition (grouped by metric), every
 * prefetch case over its bound, and every missed goal, each with the reason the measurements
 * support. Empty when roboflow won everywhere.
 */
export function losses(picked: Picked): string[] {
  const out: string[] = [];
  const dl = picked.download?.results;
  const scenario = dl?.scenarios.download;
  if (dl && scenario) {
    const order = dl.tools.map((t) => t.id);
    const nodeRss = median((dl.nodeBaseline ?? []).map((b) => b.maxRssKiB / 1024));
    const md5Cost = dl.machine.md5SecondsPerGB ?? Number.NaN;
    const startupRuns = scenario.conditions.flatMap((c) => c.startup?.runs ?? []);
    const rfStartupCpu = median(startupRuns.filter((r) => r.tool === ROBOFLOW_ID && r.sha256Ok).map((r) => r.measurement.userSeconds + r.measurement.sysSeconds));
    for (const c of scenario.conditions) {
      const sums = conditionSummaries(c, order);
      const rf = sums.find((s) => s.tool === ROBOFLOW_ID);
      if (!rf || !Number.isFinite(rf.mbPerSecond)) {
        out.push(`**${c.id}**: roboflow produced no valid result${rf?.error ? ` (${rf.error})` : ''}.`);
        continue;
      }
      const peers = sums.filter((x) => isPeer(x.tool) && x.sha256Ok);
      const verifiesMd5 = verifiedBy(c).includes('md5');
      const gb = rf.bytes / 1e9;
      const rfCpuSeconds = rf.cpuSecondsPerGB * gb;
      const cores = rfCpuSeconds / rf.wallSeconds;

      const faster = peers.filter((s) => s.throughputRatio > 1.02).sort((a, b) => b.mbPerSecond - a.mbPerSecond);
      if (faster.length > 0) {
        const why: string[] = [];
        const alone = serverAloneMBps(c);
        if (Number.isFinite(alone)) why.push(`16 plain curls to /dev/null get ${fmt(alone)} MB/s from this server, so roboflow reached ${percent(rf.mbPerSecond / alone)} of that ceiling`);
        const disk = diskAloneMBps(c);
        const synced = sums.find((x) => x.tool === 'rclone-ignore-checksum-sync' && x.sha256Ok);
        // Held against the disk: the fastest roboflow run, which verification does not slow.
        const durable = sums.find((x) => x.tool === ROBOFLOW_NO_CHECKSUM_ID && x.sha256Ok) ?? rf;
        if (Number.isFinite(disk) && durable.mbPerSecond >= 0.7 * disk) {
          why.push(
            `roboflow returns once its file is on disk (fdatasync, then rename), and this disk takes ${fmt(disk)} MB/s durably (dd + fdatasync), so roboflow${durable === rf ? '' : ' --no-checksum'} reached ${fmt(durable.mbPerSecond)} MB/s, ${percent(durable.mbPerSecond / disk)} of that ceiling; ` +
              'peers that return with their bytes still in the page cache are not held to it' +
              (synced ? ` (rclone --ignore-checksum timed until its file is on disk: ${fmt(synced.mbPerSecond)} MB/s)` : ''),
          );
        }
        const cached = sums.find((x) => x.tool === ROBOFLOW_PROCESS_ID && x.sha256Ok);
        if (cached) {
          why.push(
            `held to the same durability (--durability process: no fdatasync, the bytes left in the page cache as those peers leave theirs) roboflow reached ${fmt(cached.mbPerSecond)} MB/s at ${fmt(cached.cpuSecondsPerGB, 2)} CPU s/GB, still verifying`,
          );
        }
        const timeline = c.timelines?.find((t) => t.tool === ROBOFLOW_PROCESS_ID) ?? c.timelines?.find((t) => t.tool === ROBOFLOW_ID);
        const top = faster[0];
        if (timeline && top) {
          const p = phaseSpans(timeline);
          const peerFixed = median((c.startup?.runs ?? []).filter((x) => x.tool === top.tool && x.sha256Ok).map((x) => x.measurement.wallSeconds * 1000));
          why.push(
            `taken apart (phase table above), ${toolLabel(dl.tools, timeline.tool)} moved the bytes at ${fmt(p.transferMBps)} MB/s from its stat to its last batch, against ${fmt(top.mbPerSecond)} MB/s for ${toolLabel(dl.tools, top.tool)}'s whole run; ` +
              `before its stat returned it spent ${fmt(timeline.marks.stat)} ms (Node.js start-up ${fmt(p.boot)} ms, then loading the CLI and the HEAD ${fmt(p.loadAndStat)} ms)` +
              (Number.isFinite(peerFixed) ? `, where ${toolLabel(dl.tools, top.tool)} takes ${fmt(peerFixed)} ms for a whole 1 MiB run` : ''),
          );
        }
        if (cores >= 0.85) {
          const idle = dl.profiles?.find((p) => p.condition === c.id)?.top.find((t) => t.name === '(idle)')?.share;
          const sys = median(c.runs.filter((r) => r.tool === ROBOFLOW_ID && r.sha256Ok).map((r) => r.measurement.sysSeconds));
          why.push(
            `roboflow's process was busy ${fmt(cores, 2)} cores on average (${fmt(rfCpuSeconds, 1)} CPU s in ${fmt(rf.wallSeconds, 1)} s${verifiesMd5 ? ', its MD5 thread included' : ''}; ` +
              `${fmt(sys, 1)} s of it in the kernel: socket and page-cache copies)` +
              (idle !== undefined
                ? `, while its JavaScript thread was idle ${percent(idle)} of the time (CPU profile below): on ${dl.machine.nproc} cores shared with the server, CPU per byte decides, not JavaScript`
                : ': it is CPU-bound, not waiting on the network'),
          );
        } else if (busyMachine(dl)) {
          why.push(
            `roboflow's process was busy ${fmt(cores, 2)} cores on average while the machine's load average was ${dl.load!.atStart.map((l) => l.toFixed(1)).join('/')} on ${dl.machine.nproc} cores: it may have waited for a core as much as for the network, so this run cannot tell CPU from latency`,
          );
        } else if (c.id === 'capped') {
          why.push(
            `roboflow's process was busy only ${fmt(cores, 2)} cores on average, so it waited on the network: a tool that keeps one long range per connection pays the ${c.latencyMs} ms first-byte latency once, roboflow once per chunk unless its look-ahead request arrives in time`,
          );
        } else {
          why.push(`uncapped, client and server share ${dl.machine.nproc} cores, so CPU per byte decides (table above)`);
        }
        out.push(`**${c.id}, throughput**: roboflow ${fmt(rf.mbPerSecond)} MB/s; faster: ${listPeers(dl, faster, (s) => `${fmt(s.mbPerSecond)} MB/s (${fmtRatio(s.throughputRatio)})`)}. ${why.join('; ')}.`);
      }

      const plain = sums.find((x) => x.tool === ROBOFLOW_NO_CHECKSUM_ID && x.sha256Ok);
      if (verifiesMd5 && plain && plain.mbPerSecond > 1.02 * rf.mbPerSecond) {
        out.push(
          `**${c.id}, the cost of MD5**: verifying the MD5 ETag took roboflow from ${fmt(plain.mbPerSecond)} MB/s (--no-checksum) to ${fmt(rf.mbPerSecond)} MB/s. ` +
            `MD5 runs in byte order on its own thread${Number.isFinite(md5Cost) ? ` (${fmt(md5Cost, 2)} CPU s/GB on this CPU: one core hashes at most ${fmt(1000 / md5Cost)} MB/s)` : ''}: the chunks of the last round, up to (connections − 1) × chunk, ` +
            'are hashed after their last byte arrives, and the thread takes CPU that the download and the server also need.',
        );
      }

      const cheaper = peers.filter((s) => s.cpuRatio < 0.98).sort((a, b) => a.cpuSecondsPerGB - b.cpuSecondsPerGB);
      if (cheaper.length > 0) {
        const parts: string[] = [];
        let explained = 0;
        if (verifiesMd5 && Number.isFinite(md5Cost)) {
          parts.push(`MD5 verification while downloading ≈ ${fmt(md5Cost, 2)} (MD5 alone on this CPU)`);
          explained += md5Cost;
        }
        if (Number.isFinite(rfStartupCpu)) {
          parts.push(`start-up ≈ ${fmt(rfStartupCpu / gb, 2)} (${fmt(rfStartupCpu, 2)} CPU s per run, measured on a 1 MiB object, spread over ${mib(rf.bytes)})`);
          explained += rfStartupCpu / gb;
        }
        const rest = rf.cpuSecondsPerGB - explained;
        if (parts.length > 0) parts.push(`the remaining ≈ ${fmt(rest, 2)} is receiving and writing the bytes in Node.js${dl.profiles?.some((p) => p.condition === c.id) ? ' (CPU profile below)' : ''}`);
        const checks = cheaper.filter((s) => PEER_VERIFICATION[s.tool] !== undefined).map((s) => `${toolLabel(dl.tools, s.tool)}: ${PEER_VERIFICATION[s.tool]}`);
        out.push(
          `**${c.id}, CPU per GB**: roboflow ${fmt(rf.cpuSecondsPerGB, 2)} CPU s/GB; cheaper: ${listPeers(dl, cheaper, (s) => `${fmt(s.cpuSecondsPerGB, 2)} (${fmtRatio(s.cpuRatio)})`)}.` +
            (parts.length > 0 ? ` roboflow's CPU s/GB break down as: ${parts.join('; ')}.` : '') +
            (checks.length > 0 ? ` What the cheaper peers verify: ${checks.join('; ')}.` : ''),
        );
      }

      const smaller = peers.filter((s) => s.rssRatio < 0.9).sort((a, b) => a.peakRssMiB - b.peakRssMiB);
      if (smaller.length > 0) {
        out.push(
          `**${c.id}, memory**: roboflow peaked at ${fmt(rf.peakRssMiB)} MiB; less: ${listPeers(dl, smaller, (s) => `${fmt(s.peakRssMiB)} MiB`)}.` +
            (Number.isFinite(nodeRss) ? ` An empty Node.js process already peaks at ${fmt(nodeRss)} MiB here; the rest is roboflow's modules and its buffers in flight.` : ''),
        );
      }
    }
  }
  const pre = picked.prefetch?.results;
  if (pre) {
    const sums = prefetchSummaries(pre).filter((c) => c.ok > 0);
    for (const c of sums.filter((x) => x.boundRatio > 1.05)) {
      const twin = sums.find((x) => x.processor === 'wait' && x.relation === c.relation);
      let why = `the worker waited for inputs ${percent(c.inputWaitShare)} of the prefetched run`;
      if (c.processor === 'cpu') {
        why +=
          '; this processor summarises the MCAP episode and then keeps a child process busy on one core until P has passed, while the prefetching download (its MD5 thread included) ' +
          `and the object server share the other core${pre.machine.nproc === 2 ? '' : 's'}: both stretch, and the bound adds D and P measured alone`;
        if (twin && twin.boundRatio <= 1.05) why += `; the idle processor with the same D and P reached ${fmtRatio(twin.boundRatio)} of the bound`;
      } else if (c.processor === 'checksum') {
        why += '; the checksum processor hashes on the worker’s event loop, which the prefetching downloads share';
      }
      out.push(`**prefetch, ${c.processor} ${c.relation}**: ${fmt(c.prefetchSeconds, 2)} s against a bound of ${fmt(c.bound, 2)} s (${fmtRatio(c.boundRatio)}); ${why}.`);
    }
  }
  for (const g of evaluateGoals(picked)) {
    if (g.met === false) out.push(`**Goal missed**: ${g.description}: measured ${g.measured}, target ${g.target}.`);
  }
  for (const p of picked.download?.results.profiles ?? []) {
    const top = p.top.slice(0, 5).map((t) => `${t.name} (${t.where}) ${percent(t.share)}`);
    out.push(`**CPU profile, ${p.condition}** (roboflow under \`node --cpu-prof\`, ${fmt(p.totalMs)} ms sampled): ${top.join('; ')}.`);
  }
  return out;
}

/** What roboflow said it verified, from its `--json` line in this condition. */
function verifiedBy(c: DownloadCondition): string[] {
  return reportedVerified(c.runs.find((r) => r.tool === ROBOFLOW_ID && Array.isArray(r.reported?.verified)));
}

function reportedVerified(run: ToolRun | undefined): string[] {
  return ((run?.reported?.verified as unknown[]) ?? []).map(String);
}

/** ", verifying X" for what a scenario's roboflow runs checked beyond the size (they all run the same way). */
function verifyingClause(runs: readonly ToolRun[]): string {
  const checks = reportedVerified(runs.find((r) => Array.isArray(r.reported?.verified))).filter((a) => a !== 'size');
  if (checks.length === 0) return '';
  return `, verifying ${checks.map((a) => (a === 'md5' ? 'the MD5 ETag (the only checksum these objects carry; MD5 costs far more CPU than a CRC32)' : a)).join(' and ')}`;
}

// ---------------------------------------------------------------------------------------------
// Sections
// ---------------------------------------------------------------------------------------------

function sourceLine(entry: { file: string; results: BenchResults }): string {
  const r = entry.results;
  return `_From \`${entry.file}\` (${r.startedAt}${r.quick ? ', **quick run: smaller objects, 1 repetition, not representative**' : `, ${r.repeat} repetitions, medians`})._`;
}

function machineSection(r: BenchResults): string {
  const m = r.machine;
  return [
    '## Machine',
    '',
    table(
      ['', ''],
      [
        ['CPU', `${m.cpuModel} (${m.nproc} cores online)`],
        ['Memory', `${fmt(m.memoryBytes / 2 ** 30, 1)} GiB`],
        ['Kernel', m.kernel],
        ['Node.js', m.node],
        ...(r.revision ? [['Code measured', `commit ${r.revision.commit}${r.revision.dirtyFiles > 0 ? ` plus ${r.revision.dirtyFiles} changed or new files in the working tree` : ''}`]] : []),
        ['Download directory', m.downloadDir],
        ...(r.load ? [['Load average (1, 5, 15 min)', `${r.load.atStart.map((l) => l.toFixed(2)).join(', ')} at the start, ${r.load.atEnd.map((l) => l.toFixed(2)).join(', ')} at the end`]] : []),
        ['Page cache between runs', m.dropCaches ? '`sync`, then dropped (`echo 1 > /proc/sys/vm/drop_caches`): cold starts' : 'output deleted, `sync`; kept otherwise: warm starts'],
        ...(m.pageReporting
          ? [['Free memory returned to the host', 'yes (virtio-balloon free page reporting): after each run the bench waits until the kernel has stopped handing the freed output back, so no run pays for the one before']]
          : []),
        ...(m.md5SecondsPerGB !== undefined ? [['MD5 / SHA-256 in Node, one core', `${fmt(m.md5SecondsPerGB, 2)} / ${fmt(m.sha256SecondsPerGB, 2)} CPU s per GB`]] : []),
      ],
      'll',
    ),
  ].join('\n');
}

function toolsSection(r: BenchResults): string {
  const rows = r.tools.map((t) => [t.label, t.available ? (t.version ?? 'unknown version') : `**missing**: ${t.reason ?? ''}`, `\`${t.command}\``]);
  return ['## Tools and exact commands', '', table(['tool', 'version', 'command'], rows, 'lll')].join('\n');
}

function downloadSection(entry: { file: string; results: BenchResults }, plots: ReportInput['plots']): string {
  const r = entry.results;
  const s = r.scenarios.download!;
  const order = r.tools.map((t) => t.id);
  const parts = ['## 1. Downloader against peers', '', sourceLine(entry), ''];
  parts.push(
    'Each tool downloads the same generated object from the benchmark server (its own process) into a fresh directory; the SHA-256 of every output is checked. ' +
      'MB/s is the object size over the wall time of the whole process (start-up included); CPU is user + system of the process; RSS is its peak. ' +
      'Ratios are to roboflow (16 × 8 MiB) in the same condition: > 1 means more MB/s, more CPU, more memory.',
    '',
  );
  for (const c of s.conditions) {
    parts.push(`### ${conditionTitle(c)}`, '');
    const notes: string[] = [`Object: ${mib(c.objectSize)}.`];
    if (c.singleStreamObjectSize !== c.objectSize) {
      notes.push(
        `Single-stream tools (roboflow 1 connection, SDK GetObject, curl) used a ${mib(c.singleStreamObjectSize)} object here: one capped connection needs ${fmt(c.objectSize / (c.ratePerConnection ?? 1))} s for ${mib(c.objectSize)}. MB/s stays comparable; the 1-connection ceiling is the cap.`,
      );
    }
    parts.push(notes.join(' '), '');
    const rows = conditionSummaries(c, order).map((x) => [
      x.tool === ROBOFLOW_ID ? `**${toolLabel(r.tools, x.tool)}**` : toolLabel(r.tools, x.tool),
      mib(x.bytes),
      fmt(x.mbPerSecond),
      fmtRatio(x.throughputRatio),
      fmt(x.cpuSecondsPerGB, 2),
      fmtRatio(x.cpuRatio),
      fmt(x.peakRssMiB),
      fmtRatio(x.rssRatio),
      x.sha256Ok ? 'ok' : `**failed** (${x.error ?? ''})`,
      `${x.ok}/${x.runs}`,
    ]);
    const alone = serverAloneMBps(c);
    if (c.serverAlone) {
      const cpu = median(c.serverAlone.runs.map((x) => x.cpuSeconds / (c.serverAlone!.bytes / GB)));
      rows.push([`_server alone: ${c.serverAlone.connections} curls of 1/${c.serverAlone.connections} each → /dev/null_`, mib(c.serverAlone.bytes), fmt(alone), '', fmt(cpu, 2), '', '', '', '', `${c.serverAlone.runs.filter((x) => x.ok).length}/${c.serverAlone.runs.length}`]);
    }
    if (c.diskAlone) {
      const cpu = median(c.diskAlone.runs.map((x) => x.cpuSeconds / (c.diskAlone!.bytes / GB)));
      rows.push([`_disk alone: dd of zeros in ${c.diskAlone.blockBytes / 1024} KiB blocks + fdatasync_`, mib(c.diskAlone.bytes), fmt(diskAloneMBps(c)), '', fmt(cpu, 2), '', '', '', '', `${c.diskAlone.runs.filter((x) => x.ok).length}/${c.diskAlone.runs.length}`]);
    }
    parts.push(table(['tool', 'object', 'MB/s', '× roboflow', 'CPU s/GB', '× roboflow', 'peak RSS MiB', '× roboflow', 'SHA-256', 'runs ok'], rows), '');
    const cap = c.ratePerConnection;
    const overCap = cap === null ? [] : conditionSummaries(c, order).filter((x) => x.bytes === c.singleStreamObjectSize && x.mbPerSecond > (1.05 * cap) / 1e6 && x.bytes !== c.objectSize);
    if (cap !== null && overCap.length > 0) {
      parts.push(
        `Caveat: ${overCap.map((x) => `${toolLabel(r.tools, x.tool)} reached ${fmt(x.mbPerSecond)} MB/s`).join(', ')}, above the ${fmt(cap / 1e6)} MB/s per-connection cap. ` +
          "The server's cap applies to each response from its first byte, with no credit for idle time before it. A client that sends its next range's request before the current body ends " +
          "(roboflow's look-ahead, on a second socket) gets that body's first bytes into its socket buffer while it still reads the current one, so one lane briefly carries two capped bodies. " +
          'That is what the look-ahead is for, and a real store with a per-connection limit behaves the same way.',
        '',
      );
    }
    for (const p of plots.filter((x) => x.file.endsWith(`download-${c.id}.svg`))) parts.push(`![${p.title}](${p.file})`, '');
  }
  const startup = s.conditions.find((c) => c.startup !== undefined)?.startup;
  if (startup) {
    const ids = [...new Set(startup.runs.map((x) => x.tool))].sort((a, b) => rank(order, a) - rank(order, b));
    const rows = ids.map((id) => {
      const runs = startup.runs.filter((x) => x.tool === id);
      const good = runs.filter((x) => x.measurement.exitCode === 0 && x.sha256Ok);
      return [
        id === ROBOFLOW_ID ? `**${toolLabel(r.tools, id)}**` : toolLabel(r.tools, id),
        fmt(median(good.map((x) => x.measurement.wallSeconds)), 2),
        fmt(median(good.map((x) => x.measurement.userSeconds + x.measurement.sysSeconds)), 2),
        fmt(median(good.map((x) => x.measurement.maxRssKiB / 1024))),
        `${good.length}/${runs.length}`,
      ];
    });
    parts.push(
      `### Fixed cost of one run (${mib(startup.objectSize)} object, uncapped)`,
      '',
      'What a run costs before the bytes matter: process start-up, module loading, the first request. It is included in every figure above.',
      '',
      table(['tool', 'wall s', 'CPU s', 'peak RSS MiB', 'runs ok'], rows),
      '',
    );
  }
  const timed = s.conditions.filter((c) => (c.timelines ?? []).length > 0);
  if (timed.length > 0) {
    const rows = timed.flatMap((c) =>
      (c.timelines ?? []).map((t) => {
        const p = phaseSpans(t);
        return [
          c.id,
          toolLabel(r.tools, t.tool),
          fmt(p.boot),
          fmt(p.loadAndStat),
          fmt(p.firstBatch),
          fmt(p.transfer),
          fmt(p.transferMBps),
          fmt(p.finish),
          fmt(p.exit),
          fmt(t.marks.exit),
          String(t.runs),
        ];
      }),
    );
    parts.push(
      '### Where the time of one roboflow run goes',
      '',
      'Each phase of a roboflow download of the same object, from the downloader\'s diagnostics-channel events (`node --import build/bench/src/phase-hook.js`, separate runs, medians; ms). Start-up: Node.js until a preloaded module runs. Load + stat: the CLI\'s modules and the stat (a HEAD; with static credentials and an explicit endpoint, as here, signed without loading the AWS SDK\'s client). First batch: until the first 2 MiB batch is on the file (connections, first bytes, the writer thread). Transfer: from then to the last batch; its MB/s counts every byte from the stat on. Finish: verification, the last state write and the rename (and, by default, the last fdatasync).',
      '',
      table(['condition', 'tool', 'start-up', 'load + stat', 'first batch', 'transfer', 'transfer MB/s', 'finish', 'exit', 'whole run', 'runs'], rows, 'llrrrrrrrrr'),
      '',
    );
  }
  if (r.nodeBaseline && r.nodeBaseline.length > 0) {
    parts.push(
      `For scale: an empty Node.js process (\`node -e 0\`) peaks at ${fmt(median(r.nodeBaseline.map((b) => b.maxRssKiB / 1024)))} MiB and uses ${fmt(median(r.nodeBaseline.map((b) => b.cpuSeconds)), 2)} CPU s.`,
      '',
    );
  }
  return parts.join('\n');
}

function memorySection(entry: { file: string; results: BenchResults }, plots: ReportInput['plots']): string {
  const s = entry.results.scenarios.memory!;
  const rows = s.points.map((p) => {
    const sum = summarise(ROBOFLOW_ID, p.runs);
    return [mib(p.size), fmt(sum.peakRssMiB), fmt(sum.mbPerSecond), fmt(sum.cpuSecondsPerGB, 2), sum.sha256Ok ? 'ok' : `**failed** (${sum.error ?? ''})`];
  });
  const rss = s.points.map((p) => summarise(ROBOFLOW_ID, p.runs).peakRssMiB).filter((x) => Number.isFinite(x));
  const spread = rss.length > 1 ? `Peak RSS ranges from ${fmt(Math.min(...rss))} to ${fmt(Math.max(...rss))} MiB across object sizes.` : '';
  return [
    '## 2. Memory against object size',
    '',
    sourceLine(entry),
    '',
    `roboflow, ${s.connections} connections × ${mib(s.chunkSize)} chunks, uncapped loopback${verifyingClause(s.points.flatMap((p) => p.runs))}. ${spread}`,
    '',
    table(['object', 'peak RSS MiB', 'MB/s', 'CPU s/GB', 'SHA-256'], rows),
    '',
    ...plots.filter((x) => x.file.endsWith('memory.svg')).map((p) => `![${p.title}](${p.file})\n`),
  ].join('\n');
}

function sweepSection(entry: { file: string; results: BenchResults }, plots: ReportInput['plots']): string {
  const s = entry.results.scenarios.sweep!;
  const conns = [...new Set(s.cells.map((c) => c.connections))].sort((a, b) => a - b);
  const chunks = [...new Set(s.cells.map((c) => c.chunkSize))].sort((a, b) => a - b);
  const rows = conns.map((n) => [
    String(n),
    ...chunks.map((ch) => {
      const cell = s.cells.find((c) => c.connections === n && c.chunkSize === ch);
      const sum = cell ? summarise('cell', cell.runs) : undefined;
      return sum ? `${fmt(sum.mbPerSecond)}${sum.sha256Ok ? '' : ' (failed)'}` : '—';
    }),
    fmt((n * s.ratePerConnection) / 1e6),
  ]);
  return [
    '## 3. Connections × chunk size under the cap',
    '',
    sourceLine(entry),
    '',
    `roboflow on a ${mib(s.objectSize)} object, ${fmt(s.ratePerConnection / 1e6)} MB/s per connection, ${s.latencyMs} ms first-byte latency${verifyingClause(s.cells.flatMap((c) => c.runs))}. Median MB/s; the last column is connections × cap, the ideal without latency or CPU limits.`,
    '',
    table(['connections', ...chunks.map((c) => `${mib(c)} chunks`), 'connections × cap'], rows),
    '',
    ...plots.filter((x) => x.file.endsWith('sweep.svg')).map((p) => `![${p.title}](${p.file})\n`),
  ].join('\n');
}

function prefetchSection(entry: { file: string; results: BenchResults }, plots: ReportInput['plots']): string {
  const s = entry.results.scenarios.prefetch!;
  const parts = ['## 4. Prefetch against sequential', '', sourceLine(entry), ''];
  if (s.skipped) {
    parts.push(`Not measured: ${s.skipped}`, '');
    return parts.join('\n');
  }
  parts.push(
    `${s.source} D is the download time of one job measured alone, P its processing time alone; the bound D + N·max(D, P) is the best any prefetcher can do (the first download cannot be hidden). ` +
      'Input-wait share: the part of the prefetched run the worker spent waiting for inputs.',
    '',
  );
  const summaries = prefetchSummaries(entry.results);
  if (summaries.some((c) => c.boundRatio < 0.95)) {
    parts.push(
      'A ratio below 1 is possible when D > P: with 2 slots two downloads run at once, each with its own connections, so the downloads of the prefetched run overlap each other as well as the processing; the bound assumes one download at a time.',
      '',
    );
  }
  const rows = summaries.map((c) => [
    `${c.processor}, ${c.relation}`,
    String(c.jobs),
    fmt(c.downloadSeconds, 2),
    fmt(c.processSeconds, 2),
    fmt(c.sequentialSeconds, 2),
    fmt(c.prefetchSeconds, 2),
    fmt(c.bound, 2),
    fmtRatio(c.boundRatio),
    percent(c.inputWaitShare),
    fmtRatio(c.speedUp),
    c.error ? `${c.ok}/${c.runs} (${c.error})` : `${c.ok}/${c.runs}`,
  ]);
  parts.push(table(['case', 'jobs', 'D s', 'P s', 'sequential s', 'prefetch s', 'bound s', 'prefetch / bound', 'input wait', 'speed-up', 'runs ok'], rows), '');
  for (const p of plots.filter((x) => x.file.endsWith('prefetch.svg'))) parts.push(`![${p.title}](${p.file})`, '');
  const sweeps = slotSweepSummaries(entry.results);
  if (sweeps.length > 0) {
    parts.push('### Time against prefetch slots', '');
    if (s.slotSweepSource) parts.push(s.slotSweepSource, '');
    parts.push(
      'Each slot downloads with all its connections (the connection pools are sized for slots × connections lanes and their look-ahead requests), so under a per-connection cap more slots never make the job needed next wait. ' +
        'With a host-wide limit the downloads share that many transfers, the job handed out next first. "first job" is the time from the worker\'s start until the first job was handed to the processor. Medians over the repetitions.',
      '',
    );
    const counts = [...new Set(sweeps.flatMap((c) => c.points.map((p) => p.slots)))].sort((a, b) => a - b);
    const sweepRows = sweeps.map((c) => [
      c.id,
      fmt(c.downloadSeconds, 2),
      fmt(c.processSeconds, 2),
      fmt(c.bound, 2),
      ...counts.map((n) => {
        const p = c.points.find((x) => x.slots === n);
        return p ? `${fmt(p.wallSeconds, 2)} (${fmt(p.firstReadySeconds, 2)})` : '—';
      }),
      fmtRatio(ratio(wallAt(c, 2), c.bound)),
      c.error ? `failed: ${c.error}` : '',
    ]);
    parts.push(
      table(['case', 'D s', 'P s', 'bound s', ...counts.map((n) => `${n} slot${n === 1 ? '' : 's'}: wall s (first job s)`), 'slots 2 / bound', 'note'], sweepRows),
      '',
    );
    for (const p of plots.filter((x) => x.file.endsWith('prefetch-slots.svg'))) parts.push(`![${p.title}](${p.file})`, '');
  }
  return parts.join('\n');
}

function resumeSection(entry: { file: string; results: BenchResults }, plots: ReportInput['plots']): string {
  const s = entry.results.scenarios.resume!;
  const rows = s.configs.map((c) => {
    const good = c.trials.filter((t) => t.sha256Ok && t.kills > 0);
    const per = good.map((t) => refetchedPerKill(t.bytesServed, s.objectSize, t.kills));
    const bound = c.connections * c.chunkSize;
    // Per killed attempt, from the server's count and the state file: valid whatever the final
    // attempt did afterwards.
    const lost = c.trials.flatMap((t) => t.attempts.map((a) => a.sentBytes - (a.durableAfter - a.durableBefore)));
    return [
      `${c.connections} × ${mib(c.chunkSize)}`,
      String(median(c.trials.map((t) => t.kills))),
      fmt(median(per) / MiB, 1),
      fmt(per.length > 0 ? Math.max(...per) / MiB : Number.NaN, 1),
      fmt(median(lost) / MiB, 1),
      mib(bound),
      fmtRatio(ratio(median(per), bound)),
      `${c.trials.filter((t) => t.sha256Ok).length}/${c.trials.length}`,
    ];
  });
  // One line per configuration and distinct error (run directories differ, the error does not).
  const failures = s.configs.flatMap((c) => {
    const counts = new Map<string, number>();
    for (const t of c.trials.filter((x) => !x.sha256Ok)) {
      const e = (t.error ?? 'wrong SHA-256').replace(/'[^']*\/run-\d+\/[^']*'/g, '<dest>').replace(/\/\S*\/run-\d+\//g, '');
      counts.set(e, (counts.get(e) ?? 0) + 1);
    }
    return [...counts].map(([e, n]) => `${c.connections} × ${mib(c.chunkSize)}: ${n} of ${c.trials.length} trials: ${e}`);
  });
  return [
    '## 5. Resume after SIGKILL',
    '',
    sourceLine(entry),
    '',
    `\`roboflow download\` of a ${mib(s.objectSize)} object (${fmt(s.ratePerConnection / 1e6)} MB/s per connection, ${s.latencyMs} ms) is SIGKILLed several times, each attempt after it received a random 30–50 % of what was still missing, then run to the end. ` +
      "Re-fetched per kill = (bytes the server sent − object size) / kills. 'Sent but not durable' is, per killed attempt, what the server sent minus what the state file gained. " +
      'The downloader only promises that a crash loses at most the chunks in flight plus those completed since its last state write (connections × chunk and a little more).',
    '',
    table(['connections × chunk', 'kills', 're-fetched MiB per kill (median)', 'max', 'sent but not durable MiB per attempt', 'connections × chunk', 'per kill / (conn × chunk)', 'SHA-256 ok'], rows),
    '',
    ...(failures.length > 0
      ? [
          'Failed trials (their kills still count in the "sent but not durable" column, which does not depend on the final attempt):',
          '',
          ...failures.map((f) => `- ${f}`),
          '',
        ]
      : []),
    ...plots.filter((x) => x.file.endsWith('resume.svg')).map((p) => `![${p.title}](${p.file})\n`),
  ].join('\n');
}

function methodSection(newest: BenchResults): string {
  return [
    '## Method',
    '',
    '- Every tool, roboflow included, runs as a child process under GNU time (`/usr/bin/time -f "%e %U %S %M"`): wall time is taken by the bench around the process (monotonic clock), CPU is user + system, memory is peak RSS.',
    '- The object server (`node build/test/support/object-server-main.js`) runs in its own process, so its work is not charged to any tool; objects are generated from a seed, and their SHA-256 is computed before the runs. Peers get dummy credentials (`AWS_ACCESS_KEY_ID=test`), the server checks no signature.',
    '- Downloads go into a fresh directory on the same file system for every run; after each run the directory is deleted and `sync` flushes the dirty pages' +
      (newest.machine.dropCaches
        ? ', then the page cache is dropped (`--drop-caches`): every program starts cold, read from disk.'
        : '. Deleting the output drops its pages; the page cache is kept otherwise, so programs start warm, as they do when a pipeline runs them again and again (`--drop-caches` makes every start cold: Node.js and its modules, ~100 MB, are then read from disk, ~0.4 s more per run).'),
    '- Every configuration runs R times in one bench run and the tables show medians; tools take turns (the order rotates per repetition) so drift over time hits all of them alike. A run whose exit code is not 0 or whose SHA-256 differs is not averaged in.',
    '- MB = 10^6 bytes, GB = 10^9 bytes (as rates are quoted); MiB = 2^20 bytes.',
  ].join('\n');
}

/** The whole of BENCHMARKS.md. */
export function generateMarkdown(input: ReportInput): string {
  const { picked, plots } = input;
  const entries = Object.values(picked).filter((e): e is { file: string; results: BenchResults } => e !== undefined);
  if (entries.length === 0) {
    return '# Benchmarks\n\nNo results yet. Run `bash bench/setup && npm run bench`.\n';
  }
  const newest = entries.reduce((a, b) => (b.results.startedAt > a.results.startedAt ? b : a)).results;
  const toolsFrom = picked.download?.results ?? newest;
  const parts: string[] = [
    '# Benchmarks',
    '',
    '<!-- Generated by `npm run bench` (bench/src/report.ts) from bench/results/*.json. Do not edit by hand. -->',
    '',
    'Rerun everything (about 30 minutes on 2 cores): `bash bench/setup && npm run bench`. ' +
      'Faster look while developing: `npm run bench -- --quick`. One scenario: `npm run bench -- --scenario download` ' +
      '(`download`, `memory`, `sweep`, `prefetch`, `resume`). Regenerate this file from the committed results: `npm run bench -- --report-only`.',
    '',
    '## Goals',
    '',
    table(
      ['goal', 'target', 'measured', 'met'],
      evaluateGoals(picked).map((g) => [g.description, g.target, g.measured, g.met === null ? 'not measured' : g.met ? 'yes' : '**no**']),
      'llll',
    ),
    '',
    machineSection(toolsFrom),
    '',
    methodSection(newest),
    '',
    toolsSection(toolsFrom),
    '',
  ];
  if (picked.download) parts.push(downloadSection(picked.download, plots));
  if (picked.memory) parts.push(memorySection(picked.memory, plots));
  if (picked.sweep) parts.push(sweepSection(picked.sweep, plots));
  if (picked.prefetch) parts.push(prefetchSection(picked.prefetch, plots));
  if (picked.resume) parts.push(resumeSection(picked.resume, plots));
  if (picked.queue) parts.push(queueSection(picked.queue.results.scenarios.queue!, picked.queue.results.quick, sourceLine(picked.queue)));
  const lost = losses(picked);
  parts.push('## Where roboflow loses, and why', '');
  parts.push(lost.length > 0 ? lost.map((l) => `- ${l}`).join('\n') : 'In these results roboflow matched or beat every peer on throughput, CPU per GB and memory, and met every goal it was measured against.');
  parts.push('');
  const notes = [...new Set(entries.flatMap((e) => e.results.notes))];
  if (notes.length > 0) parts.push('## Notes', '', ...notes.map((n) => `- ${n}`), '');
  return `${parts.join('\n').replace(/\n{3,}/g, '\n\n').trimEnd()}\n`;
}
