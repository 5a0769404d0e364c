/**
 * What a chaos scenario reports, and the table `main.ts` prints.
 *
 * A scenario states its invariants as named checks (`Checks.check(name, ok, detail)`); its
 * outcome is `pass` only when every check held. The checks travel in `details.checks`, so a
 * failing run says which invariant broke and with which numbers, not just "fail".
 */

/** Where a scenario writes its progress lines (a terminal in `main.ts`, a buffer in tests). */
export type ChaosLog = (message: string) => void;

export interface ScenarioOptions {
  /** Seed of every random choice; the same seed gives the same fault schedule. */
  readonly seed: number;
  /** The short form: a few seconds of work, for `npm test`. */
  readonly short: boolean;
  readonly log: ChaosLog;
}

/**
 * - `pass`: every invariant held.
 * - `fail`: at least one did not (see `details.checks`), or the scenario broke off.
 * - `skip`: the machine cannot run it (no tmpfs mount, no `initdb`); `details.skipReason` says why.
 */
export type ScenarioOutcome = 'pass' | 'fail' | 'skip';

/** One invariant and whether it held, with the numbers that decided it. */
export interface Check {
  readonly name: string;
  readonly ok: boolean;
  readonly detail: string;
}

export interface ScenarioDetails {
  readonly checks: readonly Check[];
  readonly skipReason?: string;
  /** Scenario-specific measurements (times, peaks, kill points, fault schedule). */
  readonly [key: string]: unknown;
}

export interface ScenarioReport {
  readonly name: string;
  readonly seed: number;
  readonly short: boolean;
  /** Worker runs (processes or in-process workers, and downloader runs) the scenario started. */
  readonly runs: number;
  /** Faults that hit: server fault rules applied, throttled requests, kills, restarts, disk fills. */
  readonly faultsInjected: number;
  readonly jobsCompleted: number;
  readonly jobsDead: number;
  /** Bytes the object server sent beyond one full copy of each object read. */
  readonly bytesRefetched: number;
  readonly outcome: ScenarioOutcome;
  readonly seconds: number;
  readonly details: ScenarioDetails;
}

/** Collects the invariants of one scenario run. */
export class Checks {
  readonly #list: Check[] = [];

  /** Records an invariant; returns `ok` so a caller can branch on it. */
  check(name: string, ok: boolean, detail: string): boolean {
    this.#list.push({ name, ok, detail });
    return ok;
  }

  get list(): readonly Check[] {
    return this.#list;
  }

  get failures(): readonly Check[] {
    return this.#list.filter((c) => !c.ok);
  }
}

/** Signals that the scenario cannot run on this machine; the runner reports `skip`. */
export class SkipScenario extends Error {
  override readonly name = 'SkipScenario';
}

const MiB = 1024 * 1024;

function formatBytes(bytes: number): string {
  if (bytes < MiB) return `${(bytes / 1024).toFixed(bytes === 0 ? 0 : 1)} KiB`;
  return `${(bytes / MiB).toFixed(1)} MiB`;
}

/** The Markdown table of a chaos run: one row per scenario, the columns the README shows. */
export function markdownTable(reports: readonly ScenarioReport[]): string {
  const header = '| scenario | runs | faults injected | jobs completed | jobs dead | bytes re-fetched | outcome |';
  const rule = '|---|---:|---:|---:|---:|---:|---|';
  const rows = reports.map((r) => {
    const outcome = r.outcome === 'skip' ? `skip (${r.details.skipReason ?? 'no reason given'})` : r.outcome;
    return `| ${r.name} | ${r.runs} | ${r.faultsInjected} | ${r.jobsCompleted} | ${r.jobsDead} | ${formatBytes(r.bytesRefetched)} | ${outcome} |`;
  });
  return [header, rule, ...rows].join('\n');
}

/** The failed checks of every report, one line each, for a terminal. */
export function failureLines(reports: readonly ScenarioReport[]): string[] {
  const out: string[] = [];
  for (const r of reports) {
    for (const c of r.details.checks) if (!c.ok) out.push(`${r.name}: ${c.name} — ${c.detail}`);
  }
  return out;
}
