/**
 * Describing the configuration: the effective values with the source of each, secrets masked
 * (`roboflow config`), and the reference table of every key that the README's configuration
 * section is generated from (`roboflow config --reference`, checked by test/docs.readme.test.ts).
 */

import { displayValue, FIELDS, KEYS, type ConfigKey, type FieldSpec } from '../config.js';
import { REDACTED, redactUrl, redactUrlsInText } from '../redact.js';
import { describeSource, type ConfigSource, type LoadedConfig } from './load.js';

const MASK = '****';
const SECRET_KEY_RE = /secret|token|password|passwd|credential/i;

function maskString(key: string, s: string): string {
  if (SECRET_KEY_RE.test(key)) return MASK;
  // redactUrl knows every signature and credential parameter; only its marker differs here.
  // URLs inside free text (an exec command line) are found and masked too.
  return redactUrlsInText(redactUrl(s)).split(REDACTED).join(MASK);
}

function maskValue(key: string, v: unknown): unknown {
  if (typeof v === 'string') return maskString(key, v);
  if (Array.isArray(v)) return v.map((x: unknown) => (typeof x === 'string' ? maskString(key, x) : x));
  return v;
}

export interface DescribedConfig {
  readonly configFile: string | null;
  readonly values: Record<ConfigKey, { readonly value: unknown; readonly display: string; readonly source: ConfigSource }>;
}

/**
 * The effective configuration with the source of every value: `text` for people, `json` for
 * tools. Passwords in URLs, signature parameters and keys that look secret are masked as `****`
 * unless `showSecrets`.
 */
export function describeConfig(
  result: LoadedConfig,
  opts: { showSecrets?: boolean } = {},
): { text: string; json: DescribedConfig } {
  const reveal = opts.showSecrets === true;
  const values = {} as Record<ConfigKey, { value: unknown; display: string; source: ConfigSource }>;
  for (const key of KEYS) {
    const raw: unknown = result.config[key];
    const value = reveal ? raw : maskValue(key, raw);
    values[key] = { value, display: displayValue(key, value), source: result.sources[key] };
  }
  const rows = KEYS.map((k) => [k, values[k].display, describeSource(values[k].source)] as const);
  const w0 = Math.max(3, ...rows.map((r) => r[0].length));
  const w1 = Math.max(5, ...rows.map((r) => r[1].length));
  const lines = [
    `config file: ${result.configFile ?? 'none'}`,
    `${'KEY'.padEnd(w0)}  ${'VALUE'.padEnd(w1)}  SOURCE`,
    ...rows.map(([k, v, s]) => `${k.padEnd(w0)}  ${v.padEnd(w1)}  ${s}`),
  ];
  return { text: `${lines.join('\n')}\n`, json: { configFile: result.configFile, values } };
}

export interface ConfigReferenceRow {
  readonly key: ConfigKey;
  readonly env: string;
  readonly flag: string | null;
  readonly default: string;
  readonly allowed: string;
  readonly description: string;
}

/** Every key with its environment variable, flag, default and what it allows. */
export function configReference(): ConfigReferenceRow[] {
  return KEYS.map((key) => {
    const f = FIELDS[key] as FieldSpec;
    return {
      key,
      env: f.env,
      flag: f.flag ? f.flag.spec + (f.flag.negatable ? `, --no-${f.flag.spec.slice(2)}` : '') : null,
      default: displayValue(key, f.default),
      allowed: f.allowed,
      description: f.doc,
    };
  });
}

/** `configReference()` as a Markdown table. */
export function renderConfigReference(): string {
  const esc = (s: string) => s.replace(/\|/g, '\\|');
  const lines = [
    '| Key (file) | Environment | Flag | Default | Description |',
    '| --- | --- | --- | --- | --- |',
    ...configReference().map(
      (r) =>
        `| \`${r.key}\` | \`${r.env}\` | ${r.flag ? `\`${r.flag}\`` : ''} | ${esc(r.default)} | ${esc(r.description)} Allowed: ${esc(r.allowed)}. |`,
    ),
  ];
  return `${lines.join('\n')}\n`;
}

