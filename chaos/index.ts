/**
 * The chaos scenarios, in the order `main.ts` runs them. Each is a function
 * `(opts: { seed, short, log }) => Promise<ScenarioReport>`; the short forms run in `npm test`
 * (`test/chaos.*.test.ts`), the full forms with `npm run chaos`.
 */

import type { ScenarioOptions, ScenarioReport } from './report.js';
import { runDiskFullScenario } from './scenario-disk-full.js';
import { runFaultsScenario } from './scenario-faults.js';
import { runHostileScenario } from './scenario-hostile.js';
import { runKillScenario } from './scenario-kill.js';
import { runPartitionScenario } from './scenario-partition.js';
import { runPostgresScenario } from './scenario-postgres.js';
import { runReplaceScenario } from './scenario-replace.js';
import { runThrottleScenario } from './scenario-throttle.js';
import { runUnreachableScenario } from './scenario-unreachable.js';

export { markdownTable, failureLines, type ScenarioOptions, type ScenarioReport, type ScenarioOutcome, type Check } from './report.js';

export interface ScenarioEntry {
  readonly name: string;
  /** One line for `--help` and the report. */
  readonly description: string;
  readonly run: (opts: ScenarioOptions) => Promise<ScenarioReport>;
}

export const SCENARIOS: readonly ScenarioEntry[] = [
  { name: 'faults', description: 'resets, truncated bodies and stalls on 5 % of range requests during a worker run', run: runFaultsScenario },
  { name: 'throttle', description: '503 storms with and without Retry-After; a K-request throttle, adaptive against fixed concurrency', run: runThrottleScenario },
  { name: 'replace', description: 'objects replaced mid-download: the new version whole after a restart, or ERR_SOURCE_CHANGED', run: runReplaceScenario },
  { name: 'disk-full', description: 'a 32 MiB tmpfs buffer: a job bigger than the disk, and a disk filled during a download', run: runDiskFullScenario },
  { name: 'kill', description: 'worker processes SIGKILLed while downloading, processing and uploading, then restarted', run: runKillScenario },
  { name: 'postgres', description: 'a private PostgreSQL cluster restarted mid-run, then stopped under a polling worker', run: runPostgresScenario },
  { name: 'partition', description: 'a worker cut off from PostgreSQL mid-job (no RST) fences itself off; the worker that takes over publishes', run: runPartitionScenario },
  { name: 'hostile', description: 'object keys that try to leave the buffer directory, and replies that are not the object', run: runHostileScenario },
  { name: 'unreachable', description: 'the object server closed mid-run; a queue URL whose port is closed', run: runUnreachableScenario },
];

export function scenarioNames(): string[] {
  return SCENARIOS.map((s) => s.name);
}
