/**
 * What a submitter may put in a job, checked before it reaches the database, so a bad job is
 * refused at `submit` with the offending field named instead of failing on a worker hours later.
 */

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
  })
  .strict();

/** A spec after checking: every field present, defaults applied. */
export interface CheckedJobSpec extends JobSpec {
  readonly output?: string;
  readonly args: Readonly<Record<string, unknown>>;
  readonly maxAttempts: number;
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
  return {
    inputs: spec.inputs.map((i) => ({
      url: i.url,
      ...(i.size !== undefined ? { size: i.size } : {}),
      ...(i.checksum !== undefined ? { checksum: i.checksum } : {}),
    })),
    ...(spec.output !== undefined ? { output: spec.output } : {}),
    processor: spec.processor,
    args: spec.args ?? {},
    maxAttempts: spec.maxAttempts ?? DEFAULTS.maxAttempts,
  };
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
