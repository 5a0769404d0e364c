/**
 * Submitting many jobs at once: one job per object of a listing (`--prefix`) or per line of a
 * list (`--from`), written in batched transactions (`JobQueue.submitMany`), so ten thousand jobs
 * are a few round trips rather than ten thousand. Job keys make it idempotent: running the same
 * command again adds nothing.
 *
 * Per-job templates, for `--output` and `--key`: `{name}` is the input's base name
 * (`run-17.mcap`), `{stem}` the base name without its last extension (`run-17`), `{key}` its key
 * below the listed prefix (`2024/run-17.mcap`; for a `--from` line, the object's whole key or
 * path). Anything else in braces is refused, so a typo does not become a literal folder name.
 */

import { RoboflowError } from '../errors.js';
import type { JobQueue, JobSpec, SubmitOptions, SubmitOutcome } from '../types.js';

/** Specs per transaction: large enough that round trips vanish, small enough to show progress. */
export const SUBMIT_BATCH = 1_000;

export interface TemplateValues {
  readonly name: string;
  readonly stem: string;
  readonly key: string;
}

const PLACEHOLDER = /\{([^{}]*)\}/g;
const KNOWN = new Set(['name', 'stem', 'key']);

/** Whether `template` uses any placeholder (a `--key` for many jobs must, or all would share it). */
export function hasPlaceholder(template: string): boolean {
  return /\{(name|stem|key)\}/.test(template);
}

/** Checks a template up front, so a typo is refused before anything is listed. */
export function checkTemplate(template: string, flag: string): void {
  for (const m of template.matchAll(PLACEHOLDER)) {
    if (!KNOWN.has(m[1] ?? '')) {
      throw new RoboflowError(
        'ERR_CONFIG',
        `${flag} ${JSON.stringify(template)} has an unknown placeholder {${m[1]}}; use {name}, {stem} or {key}`,
      );
    }
  }
}

export function expandTemplate(template: string, values: TemplateValues): string {
  return template.replace(PLACEHOLDER, (whole, name: string) =>
    name === 'name' ? values.name : name === 'stem' ? values.stem : name === 'key' ? values.key : whole,
  );
}

/** The template values of an input URL; `relative` is its key below the listed prefix, if any. */
export function templateValues(url: string, relative?: string): TemplateValues {
  const pathPart = objectPath(url);
  const name = pathPart.slice(pathPart.lastIndexOf('/') + 1);
  const dot = name.lastIndexOf('.');
  const stem = dot > 0 ? name.slice(0, dot) : name;
  return { name, stem, key: relative ?? pathPart.replace(/^\/+/, '') };
}

/** The key (s3, oss) or path (file, http) part of a URL, without query or fragment. */
function objectPath(url: string): string {
  const bucket = /^(?:s3|oss):\/\/[^/]*\/(.*)$/i.exec(url);
  if (bucket) return bucket[1] ?? '';
  try {
    const parsed = new URL(url);
    if (parsed.protocol === 'file:' || parsed.protocol === 'http:' || parsed.protocol === 'https:') {
      return decodeURIComponent(parsed.pathname);
    }
  } catch {
    // A plain path.
  }
  return url.replace(/[?#].*$/, '');
}

/**
 * A glob as a predicate on keys below the prefix. `*` matches within one path segment, `**`
 * across segments, `?` one character, `[abc]` one of a set. A pattern without `/` is matched
 * against the base name, as `*.mcap` is meant to find recordings at any depth; one with `/`
 * against the whole key.
 */
export function globMatcher(pattern: string): (relative: string) => boolean {
  if (pattern.trim() === '') throw new RoboflowError('ERR_CONFIG', '--match is empty; give a pattern such as *.mcap');
  let source = '';
  for (let i = 0; i < pattern.length; i++) {
    const ch = pattern[i] as string;
    if (ch === '*') {
      if (pattern[i + 1] === '*') {
        // `**/` also matches no folder at all.
        if (pattern[i + 2] === '/') {
          source += '(?:.*/)?';
          i += 2;
        } else {
          source += '.*';
          i += 1;
        }
      } else {
        source += '[^/]*';
      }
    } else if (ch === '?') {
      source += '[^/]';
    } else if (ch === '[') {
      const end = pattern.indexOf(']', i + 1);
      if (end < 0) throw new RoboflowError('ERR_CONFIG', `--match ${JSON.stringify(pattern)} has a [ without its ]`);
      const set = pattern.slice(i + 1, end).replace(/\\/g, '\\\\');
      source += `[${set.startsWith('!') ? `^${set.slice(1)}` : set}]`;
      i = end;
    } else {
      source += ch.replace(/[.+^${}()|\\]/g, '\\$&');
    }
  }
  const re = new RegExp(`^${source}$`);
  const whole = pattern.includes('/');
  return (relative) => re.test(whole ? relative : relative.slice(relative.lastIndexOf('/') + 1));
}

/** One line of a `--from` list: an input URL, or a JSON object with the job's fields. */
export type JobLine = { readonly kind: 'url'; readonly url: string } | { readonly kind: 'spec'; readonly fields: Record<string, unknown> };

/** Parses a line; null for blank lines and `#` comments. `lineNo` is 1-based, for messages. */
export function parseJobLine(line: string, lineNo: number, source: string): JobLine | null {
  const text = line.trim();
  if (text === '' || text.startsWith('#')) return null;
  if (!text.startsWith('{')) return { kind: 'url', url: text };
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new RoboflowError('ERR_CONFIG', `${source} line ${lineNo}: not valid JSON (${(err as Error).message})`);
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new RoboflowError('ERR_CONFIG', `${source} line ${lineNo}: a JSON line must be an object with the job's fields`);
  }
  return { kind: 'spec', fields: value as Record<string, unknown> };
}

export interface BulkTally {
  readonly added: number;
  readonly replaced: number;
  /** Already in the queue, by status. */
  readonly existing: number;
  readonly existingDone: number;
  readonly existingDead: number;
}

/**
 * Submits specs as they come, `SUBMIT_BATCH` per transaction, and reports each batch's outcomes
 * to `onBatch`. A spec the queue refuses fails the batch it is in; earlier batches stay.
 */
export async function submitBatches(
  queue: Pick<JobQueue, 'submitMany'>,
  specs: AsyncIterable<JobSpec>,
  opts: SubmitOptions & { readonly batchSize?: number; readonly onBatch?: (outcomes: readonly SubmitOutcome[]) => void } = {},
): Promise<BulkTally> {
  const size = opts.batchSize ?? SUBMIT_BATCH;
  const tally = { added: 0, replaced: 0, existing: 0, existingDone: 0, existingDead: 0 };
  let batch: JobSpec[] = [];
  const flush = async () => {
    if (batch.length === 0) return;
    const outcomes = await queue.submitMany(batch, opts.replace === true ? { replace: true } : {});
    batch = [];
    for (const o of outcomes) {
      switch (o.outcome) {
        case 'added':
          tally.added++;
          break;
        case 'replaced':
          tally.replaced++;
          break;
        case 'exists':
          tally.existing++;
          if (o.status === 'done') tally.existingDone++;
          if (o.status === 'dead') tally.existingDead++;
          break;
        default: {
          const _exhaustive: never = o.outcome;
          throw new Error(`unknown outcome ${String(_exhaustive)}`);
        }
      }
    }
    opts.onBatch?.(outcomes);
  };
  for await (const spec of specs) {
    batch.push(spec);
    if (batch.length >= size) await flush();
  }
  await flush();
  return tally;
}
