/**
 * What a submitter may put in a job, checked before it reaches the database, so a bad job is
 * refused at `submit` with the offending field named instead of failing on a worker hours later.
 */

import { createHash } from 'node:crypto';
import { z } from 'zod';
import { DEFAULTS } from '../defaults.js';
import { RoboflowError } from '../errors.js';
import type { ChecksumAlgorithm, JobSpec } from '../types.js';

/** Hex digits of each checksum's digest, so a truncated or mistyped checksum fails here. */
const CHECKSUM_HEX_LENGTH: Record<ChecksumAlgorithm, number> = {
  md5: 32,
  sha1: 40,
  sha256: 64,
  crc32: 8,
  crc32c: 8,
};

/** Longest key a submitter may give: keys are indexed, and a key is a name, not a document. */
export const MAX_KEY_LENGTH = 512;
/** Priorities fit a 32-bit integer column in both databases. */
export const MIN_PRIORITY = -2_147_483_648;
export const MAX_PRIORITY = 2_147_483_647;

const checksumSchema = z
  .object({
    algorithm: z.enum(['md5', 'sha1', 'sha256', 'crc32', 'crc32c'], {
      error: 'must be one of md5, sha1, sha256, crc32, crc32c',
    }),
    hex: z.string({ error: 'must be a string of hexadecimal digits' }).regex(/^[0-9a-fA-F]+$/, {
      error: 'must be a string of hexadecimal digits',
    }),
  })
  .strict()
  .superRefine((c, ctx) => {
    const want = CHECKSUM_HEX_LENGTH[c.algorithm];
    if (c.hex.length !== want) {
      ctx.addIssue({
        code: 'custom',
        path: ['hex'],
        message: `a ${c.algorithm} digest has ${want} hex digits, got ${c.hex.length}`,
      });
    }
  })
  .transform((c) => ({ algorithm: c.algorithm, hex: c.hex.toLowerCase() }));

const inputSchema = z
  .object({
    url: z.string({ error: 'must be a URL string' }).trim().min(1, { error: 'must not be empty' }),
    size: z
      .number({ error: 'must be a number of bytes' })
      .int({ error: 'must be a whole number of bytes' })
      .nonnegative({ error: 'must not be negative' })
      .optional(),
    checksum: checksumSchema.optional(),
  })
  .strict();

const specSchema = z
  .object({
    inputs: z
      .array(inputSchema, { error: 'must be a list of inputs' })
      .min(1, { error: 'must list at least one input URL' }),
    output: z
      .string({ error: 'must be a URL string' })
      .trim()
      .min(1, { error: 'must not be empty (leave it out for no upload)' })
      .optional(),
    processor: z
      .string({ error: 'must be a processor name' })
      .trim()
      .min(1, { error: 'must name a processor (exec, checksum, mcap-summary, ...)' }),
    args: z.record(z.string(), z.unknown(), { error: 'must be an object' }).optional(),
    maxAttempts: z
      .number({ error: 'must be a number' })
      .int({ error: 'must be a whole number' })
      .min(1, { error: 'must be at least 1' })
      .max(100, { error: 'must be at most 100' })
      .optional(),
    key: z
      .string({ error: 'must be a string' })
      .trim()
      .min(1, { error: 'must not be empty (leave it out to derive one)' })
      .max(MAX_KEY_LENGTH, { error: `must be at most ${MAX_KEY_LENGTH} characters` })
      .optional(),
    priority: z
      .number({ error: 'must be a number' })
      .int({ error: 'must be a whole number' })
      .min(MIN_PRIORITY, { error: `must be at least ${MIN_PRIORITY}` })
      .max(MAX_PRIORITY, { error: `must be at most ${MAX_PRIORITY}` })
      .optional(),
  })
  .strict();

/** A spec after checking: every field present, defaults applied. */
export interface CheckedJobSpec extends JobSpec {
  readonly output?: string;
  readonly args: Readonly<Record<string, unknown>>;
  readonly maxAttempts: number;
  readonly key: string;
  readonly priority: number;
}

/** JSON with object keys sorted at every level, so equal values give equal text. */
function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  if (value !== null && typeof value === 'object') {
    const entries = Object.entries(value as Record<string, unknown>)
      .filter(([, v]) => v !== undefined)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(',')}}`;
  }
  return JSON.stringify(value) ?? 'null';
}

/**
 * The key of a job whose submitter gave none: a SHA-256 over what the job does — processor,
 * args, inputs (with their sizes and checksums) and output — in a canonical JSON form, so the
 * same work submitted twice (another run of a script, a listing submitted again) has the same
 * key, while `maxAttempts` and `priority`, which say how rather than what, do not change it.
 * The `sha256:` prefix keeps derived keys apart from keys people choose.
 */
export function deriveJobKey(spec: Pick<CheckedJobSpec, 'processor' | 'args' | 'inputs' | 'output'>): string {
  const what = canonicalJson({
    processor: spec.processor,
    args: spec.args,
    inputs: spec.inputs,
    output: spec.output ?? null,
  });
  return `sha256:${createHash('sha256').update(what).digest('hex')}`;
}

function fieldName(path: readonly PropertyKey[]): string {
  let name = '';
  for (const part of path) {
    if (typeof part === 'number') name += `[${part}]`;
    else name += name === '' ? String(part) : `.${String(part)}`;
  }
  return name === '' ? 'job spec' : name;
}

/**
 * Checks a job spec and applies defaults (`maxAttempts` from `DEFAULTS`, empty `args`).
 * Throws `ERR_CONFIG` naming every offending field, e.g. `inputs[1].url: must not be empty`.
 */
export function parseJobSpec(value: unknown): CheckedJobSpec {
  const parsed = specSchema.safeParse(value);
  if (!parsed.success) {
    const problems = parsed.error.issues.map((issue) => {
      const message =
        issue.code === 'unrecognized_keys'
          ? `unknown field${issue.keys.length > 1 ? 's' : ''} ${issue.keys.join(', ')}`
          : issue.message;
      return `${fieldName(issue.path)}: ${message}`;
    });
    throw new RoboflowError('ERR_CONFIG', `invalid job spec: ${problems.join('; ')}`);
  }
  const spec = parsed.data;
  try {
    JSON.stringify(spec.args ?? {});
  } catch (err) {
    throw new RoboflowError('ERR_CONFIG', `invalid job spec: args: must be JSON-serialisable (${(err as Error).message})`);
  }
  const checked = {
    inputs: spec.inputs.map((i) => ({
      url: i.url,
      ...(i.size !== undefined ? { size: i.size } : {}),
      ...(i.checksum !== undefined ? { checksum: i.checksum } : {}),
    })),
    ...(spec.output !== undefined ? { output: spec.output } : {}),
    processor: spec.processor,
    args: spec.args ?? {},
    maxAttempts: spec.maxAttempts ?? DEFAULTS.maxAttempts,
    priority: spec.priority ?? 0,
  };
  return { ...checked, key: spec.key ?? deriveJobKey(checked) };
}

/**
 * Checks a batch of specs; a refusal names the spec's index (`spec 12: inputs: ...`), so one bad
 * line in a long list is found at once.
 */
export function parseJobSpecs(values: readonly unknown[]): CheckedJobSpec[] {
  return values.map((value, i) => {
    try {
      return parseJobSpec(value);
    } catch (err) {
      if (err instanceof RoboflowError) throw new RoboflowError(err.code, `spec ${i}: ${err.message}`);
      throw err;
    }
  });
}

/**
 * Splits a command line into argv without a shell: words are separated by white space, and
 * single or double quotes group words (`'a b'` and `"a b"` are one argument, quotes removed).
 * Nothing is expanded (`$HOME`, `*`, `~` stay literal) and there are no backslash escapes, so what
 * the submitter typed is exactly what the worker runs, on whatever machine it runs.
 */
export function splitCommand(line: string): string[] {
  const argv: string[] = [];
  let word = '';
  let inWord = false;
  let quote: '"' | "'" | null = null;
  for (const ch of line) {
    if (quote !== null) {
      if (ch === quote) quote = null;
      else word += ch;
      continue;
    }
    if (ch === '"' || ch === "'") {
      quote = ch;
      inWord = true;
    } else if (/\s/.test(ch)) {
      if (inWord) argv.push(word);
      word = '';
      inWord = false;
    } else {
      word += ch;
      inWord = true;
    }
  }
  if (quote !== null) {
    throw new RoboflowError('ERR_CONFIG', `command ${JSON.stringify(line)} has an unterminated ${quote} quote`);
  }
  if (inWord) argv.push(word);
  if (argv.length === 0) throw new RoboflowError('ERR_CONFIG', 'command is empty; give the program to run');
  return argv;
}
