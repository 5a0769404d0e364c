/**
 * The processor registry: a job names its processor (`job.processor`), the worker looks it up
 * here. Operator options (time limits, passed environment) are given once, when the worker
 * builds its processors; job fields never reach them.
 */

import { RoboflowError } from '../errors.js';
import type { Processor } from '../types.js';
import { checksumProcessor } from './checksum.js';
import { createExecProcessor, type ExecOptions } from './exec.js';
import { mcapSummaryProcessor } from './mcap-summary.js';
import { sleepProcessor } from './sleep.js';

export {
  ALLOW_JOB_COMMANDS_SETTING,
  buildArgv,
  buildEnv,
  createExecProcessor,
  EXEC_COMMAND_SETTING,
  execTemplateFor,
  parseExecCommand,
  runExec,
} from './exec.js';
export type { ExecOptions, ExecResult } from './exec.js';
export { CHECKSUM_FILE, checksumProcessor, runChecksum, sha256File, sha256sumLine } from './checksum.js';
export type { ChecksumResult, FileChecksum } from './checksum.js';
export { mcapSummaryProcessor, runMcapSummary, summarizeMcap, SUMMARY_FILE } from './mcap-summary.js';
export type {
  McapChannelSummary,
  McapCountSource,
  McapFileSummary,
  McapSummaryResult,
} from './mcap-summary.js';
export { runSleep, sleepProcessor } from './sleep.js';
export type { SleepResult } from './sleep.js';

/** Every processor a job may name. `sleep` exists for benchmarks, tests and demos. */
export const processorNames = ['exec', 'mcap-summary', 'checksum', 'sleep'] as const;
export type ProcessorName = (typeof processorNames)[number];

/** Operator options for the processors; each processor reads the ones it documents. */
export type ProcessorOptions = ExecOptions;

export function isProcessorName(name: string): name is ProcessorName {
  return (processorNames as readonly string[]).includes(name);
}

/** Where the operator lists the processors a worker runs, for messages. */
export const PROCESSORS_SETTING = '--processor (ROBOFLOW_PROCESSORS)';

/**
 * Throws `ERR_POLICY_DENIED` (not retryable: the job goes dead) unless this worker runs the
 * processor `job` names. An empty `allowed` list runs every processor.
 */
export function checkProcessorAllowed(job: { readonly id: string; readonly processor: string }, allowed: readonly string[]): void {
  if (allowed.length === 0 || allowed.includes(job.processor)) return;
  throw new RoboflowError(
    'ERR_POLICY_DENIED',
    `job ${job.id}: processor ${JSON.stringify(job.processor)} is not run by this worker, which runs only ` +
      `${allowed.join(', ')} (${PROCESSORS_SETTING}); submit it to a queue whose workers run it`,
  );
}

/** The processor called `name`. Unknown names fail with `ERR_CONFIG` listing the known ones. */
export function getProcessor(name: string, opts: ProcessorOptions = {}): Processor {
  if (!isProcessorName(name)) {
    throw new RoboflowError(
      'ERR_CONFIG',
      `unknown processor ${JSON.stringify(name)}; known processors: ${processorNames.join(', ')}`,
    );
  }
  switch (name) {
    case 'exec':
      return createExecProcessor(opts);
    case 'mcap-summary':
      return mcapSummaryProcessor;
    case 'checksum':
      return checksumProcessor;
    case 'sleep':
      return sleepProcessor;
    default: {
      const _exhaustive: never = name;
      return _exhaustive;
    }
  }
}
