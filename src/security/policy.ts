/**
 * What a job may make a worker read and write.
 *
 * Anyone who can submit a job to a shared queue chooses the URLs every worker fetches and the
 * prefix it writes to. An operator bounds that with two allowlists of URL patterns:
 *
 *     --allow-source  s3://recordings/raw/*   (ROBOFLOW_ALLOW_SOURCES)
 *     --allow-output  s3://results/*          (ROBOFLOW_ALLOW_OUTPUTS)
 *
 * Patterns
 * --------
 * `s3://bucket/prefix/*`, `oss://bucket/*`, `https://data.example.com/recordings/*`,
 * `http://127.0.0.1:9000/bucket/*`, `file:///data/*`. `*` matches any run of characters, `/`
 * included (object keys are flat), and may appear anywhere after the bucket or host; nothing else
 * is special. A pattern without `*` names one object. Output patterns name prefixes and end in
 * `*`. HTTP patterns match scheme, host, port and path; the query string is not matched (it
 * carries signatures, not locations) and patterns may not contain one.
 *
 * Matching is on a normalised URL, so spelling cannot widen what a pattern allows:
 * - scheme and host are lower-cased, a trailing dot on the host is dropped, default ports are
 *   removed; HTTP hosts go through the WHATWG parser (`0x7f.1` is `127.0.0.1`);
 * - percent-encoding is normalised (escapes of unreserved characters decoded, other escapes
 *   upper-cased), and HTTP dot segments are resolved as a server would;
 * - a URL with a `.` or `..` segment left in its path or key — also when spelled `%2e%2e`, or
 *   when it appears only after decoding `%2F` or a double escape — never matches: a store, proxy
 *   or server that resolves it would read outside the prefix (`bucket/prefix/../other`). For
 *   local files `..` never matches (the path is resolved before matching, so `.` is harmless);
 * - a path containing NUL, raw or escaped, never matches.
 * S3 and OSS keys are otherwise matched verbatim, as the stores treat them.
 *
 * An empty list allows everything (`allowsAll`), as before allowlists existed; the worker says so
 * once when it starts. Private addresses are refused at connect time by `AddressPolicy`
 * (`./address.ts`) whenever a source allowlist or a private range is configured.
 */

import type { LookupFunction } from 'node:net';
import { RoboflowError } from '../errors.js';
import { redactUrl } from '../redact.js';
import { ossBucketProblem, parseObjectUrl, s3BucketProblem } from '../storage/url.js';
import type { JobRecord } from '../types.js';
import { AddressPolicy, checkLiteralHost, parseIp, policyLookup, type PolicyLookupOptions } from './address.js';

// Re-exported so that callers need one import for the whole policy.
export { AddressPolicy, checkAddress, checkLiteralHost, classifyAddress, policyLookup } from './address.js';
export type { AddressClass, AddressPolicyOptions, PolicyLookupOptions, Resolver } from './address.js';

export type AllowlistKind = 'source' | 'output';

/** The flag and variable that hold each list, for messages. */
export const ALLOWLIST_SETTINGS: Readonly<Record<AllowlistKind, { readonly flag: string; readonly env: string }>> = {
  source: { flag: '--allow-source', env: 'ROBOFLOW_ALLOW_SOURCES' },
  output: { flag: '--allow-output', env: 'ROBOFLOW_ALLOW_OUTPUTS' },
};

type UrlKind = 's3' | 'oss' | 'http' | 'https' | 'file';

/** A URL reduced to what patterns are matched against. */
interface Normalised {
  readonly kind: UrlKind;
  /** Bucket, `host[:port]`, or '' for files. */
  readonly authority: string;
  /** Object key (no leading `/`), HTTP path, or absolute file path. */
  readonly path: string;
}

type Normalisation = { readonly ok: true; readonly url: Normalised } | { readonly ok: false; readonly why: string };

interface CompiledPattern {
  readonly text: string;
  readonly kind: UrlKind;
  readonly authority: string;
  readonly regex: RegExp;
  /** Literal IP host of an HTTP pattern, allowed by the address policy. */
  readonly literalIp: string | undefined;
}

// ---------------------------------------------------------------------------------------------
// Normalisation helpers
// ---------------------------------------------------------------------------------------------

const UNRESERVED = /^[A-Za-z0-9\-._~]$/;

/** Decodes escapes of unreserved characters and upper-cases the others (RFC 3986 §6.2.2). */
function normalisePercent(text: string): string {
  return text.replace(/%([0-9A-Fa-f]{2})/g, (_m, hex: string) => {
    const ch = String.fromCharCode(parseInt(hex, 16));
    return UNRESERVED.test(ch) ? ch : `%${hex.toUpperCase()}`;
  });
}

/** Most rounds of decoding tried when looking for hidden dot segments: double escapes and more. */
const DECODE_ROUNDS = 4;

function decodeLoosely(text: string): string {
  return text.replace(/%([0-9A-Fa-f]{2})/g, (_m, hex: string) => String.fromCharCode(parseInt(hex, 16)));
}

/**
 * Why a path must never match, or null: a `.`/`..` segment (or only `..` for local files), in any
 * spelling a server might decode to one, or a NUL byte. Every decoding round is inspected, with
 * `/` and `\` both taken as separators.
 */
function pathProblem(text: string, dots: 'dot-and-dotdot' | 'dotdot'): string | null {
  let current = text;
  for (let round = 0; round <= DECODE_ROUNDS; round++) {
    if (current.includes('\0')) return 'it contains a NUL byte';
    for (const segment of current.split(/[/\\]/)) {
      if (segment === '..') return 'it contains a ".." path segment (in some spelling), which could leave the allowed prefix';
      if (segment === '.' && dots === 'dot-and-dotdot') {
        return 'it contains a "." path segment (in some spelling), which a store or server may resolve';
      }
    }
    const next = decodeLoosely(current);
    if (next === current) break;
    current = next;
  }
  return null;
}

function httpAuthority(u: URL): string {
  const host = u.hostname.toLowerCase().replace(/\.$/, '');
  return u.port === '' ? host : `${host}:${u.port}`;
}

/** The normalised form of `url`, or why it can never match. Throws for URLs that do not parse. */
function normalise(url: string, role: 'source' | 'prefix'): Normalisation {
  const parsed = parseObjectUrl(url, role);
  switch (parsed.kind) {
    case 's3':
    case 'oss': {
      const problem = pathProblem(parsed.key, 'dot-and-dotdot');
      if (problem) return { ok: false, why: problem };
      return { ok: true, url: { kind: parsed.kind, authority: parsed.bucket, path: parsed.key } };
    }
    case 'http': {
      const kind = parsed.url.protocol === 'https:' ? 'https' : 'http';
      const pathname = normalisePercent(parsed.url.pathname);
      const problem = pathProblem(pathname, 'dot-and-dotdot');
      if (problem) return { ok: false, why: problem };
      return { ok: true, url: { kind, authority: httpAuthority(parsed.url), path: pathname } };
    }
    case 'file': {
      // The raw text, before resolution: `/data/../etc` must not count as `/etc` under `/*`.
      const raw = /^file:/i.test(url) ? url.replace(/^file:(\/\/[^/]*)?/i, '') : url;
      const problem = pathProblem(raw, 'dotdot');
      if (problem) return { ok: false, why: problem };
      return { ok: true, url: { kind: 'file', authority: '', path: parsed.path } };
    }
    default: {
      const _exhaustive: never = parsed;
      return _exhaustive;
    }
  }
}

/** An output prefix is a folder: `s3://b/out` writes `s3://b/out/<name>`. */
function asFolder(n: Normalised): Normalised {
  if (n.kind === 's3' || n.kind === 'oss') {
    return n.path === '' || n.path.endsWith('/') ? n : { ...n, path: `${n.path}/` };
  }
  return n.path.endsWith('/') ? n : { ...n, path: `${n.path}/` };
}

function escapeRegex(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

function globRegex(pieces: readonly string[]): RegExp {
  return new RegExp(`^${pieces.map(escapeRegex).join('[\\s\\S]*')}$`);
}

// ---------------------------------------------------------------------------------------------
// Patterns
// ---------------------------------------------------------------------------------------------

const PATTERN_EXAMPLES =
  's3://bucket/prefix/*, oss://bucket/*, https://data.example.com/recordings/*, http://127.0.0.1:9000/bucket/*, file:///data/*';

function compilePattern(text: string, what: AllowlistKind): CompiledPattern {
  const { flag } = ALLOWLIST_SETTINGS[what];
  const bad = (why: string) =>
    new RoboflowError(
      'ERR_CONFIG',
      `${flag} pattern "${redactUrl(String(text)).replace(/\0/g, '\\0')}" ${why}; patterns look like ${PATTERN_EXAMPLES}`,
    );
  if (typeof text !== 'string' || text.trim() === '') throw bad('is empty');
  const pattern = text.trim();
  if (pattern.includes('\0')) throw bad('contains a NUL byte');
  const scheme = /^([a-zA-Z][a-zA-Z0-9+.-]*):\/\//.exec(pattern)?.[1]?.toLowerCase();
  const afterScheme = pattern.slice((scheme?.length ?? 0) + 3);

  switch (scheme) {
    case 's3':
    case 'oss': {
      const slash = afterScheme.indexOf('/');
      const bucket = slash < 0 ? afterScheme : afterScheme.slice(0, slash);
      const key = slash < 0 ? '' : afterScheme.slice(slash + 1);
      if (bucket === '') throw bad('names no bucket');
      if (bucket.includes('*')) throw bad('has "*" in the bucket name; a pattern must name its bucket exactly');
      const bucketProblem = scheme === 's3' ? s3BucketProblem(bucket) : ossBucketProblem(bucket);
      if (bucketProblem) throw bad(`has an invalid bucket: ${bucketProblem}`);
      if (key === '') throw bad(`names no object; to allow the whole bucket write ${scheme}://${bucket}/*`);
      const problem = pathProblem(key.replace(/\*/g, 'x'), 'dot-and-dotdot');
      if (problem) throw bad(problem.replace('it contains', 'contains'));
      return { text: pattern, kind: scheme, authority: bucket, regex: globRegex(key.split('*')), literalIp: undefined };
    }
    case 'http':
    case 'https': {
      if (what === 'output') throw bad('is an HTTP URL, but outputs can only be written to s3://, oss:// or file:// prefixes');
      const authority = /^[^/?#]*/.exec(afterScheme)?.[0] ?? '';
      if (authority.includes('*')) throw bad('has "*" in the host; a pattern must name its host exactly');
      if (authority.includes('@')) throw bad('contains user info; credentials do not belong in patterns');
      if (/[?#]/.test(afterScheme)) throw bad('contains a query or fragment, which patterns do not match');
      const rawPath = afterScheme.slice(authority.length);
      if (rawPath === '' || rawPath === '/') throw bad(`names no object; to allow the whole host write ${scheme}://${authority}/*`);
      // Checked before the URL parser resolves dot segments away, which would hide them.
      const rawProblem = pathProblem(rawPath.replace(/\*/g, 'x'), 'dot-and-dotdot');
      if (rawProblem) throw bad(rawProblem.replace('it contains', 'contains'));
      let u: URL;
      try {
        u = new URL(pattern);
      } catch {
        throw bad('is not a valid URL');
      }
      if (u.hostname === '') throw bad('names no host');
      const pathname = normalisePercent(u.pathname);
      const problem = pathProblem(pathname.replace(/\*/g, 'x'), 'dot-and-dotdot');
      if (problem) throw bad(problem.replace('it contains', 'contains'));
      const host = u.hostname.replace(/^\[(.*)\]$/, '$1');
      return {
        text: pattern,
        kind: scheme,
        authority: httpAuthority(u),
        regex: globRegex(pathname.split('*')),
        literalIp: parseIp(host) !== null ? host : undefined,
      };
    }
    case 'file': {
      const m = /^([^/]*)(\/.*)?$/.exec(afterScheme);
      const host = m?.[1] ?? '';
      const rawPath = m?.[2] ?? '';
      if (host !== '' && host.toLowerCase() !== 'localhost') {
        throw bad(`names a host ("${host}"); an absolute path needs three slashes, file:///${host}${rawPath}`);
      }
      if (rawPath === '') throw bad('names no path');
      if (/[?#]/.test(rawPath)) throw bad('contains "?" or "#"; encode them as %3F and %23');
      // `.` too: resolved paths never contain one, so such a pattern could never match.
      const problem = pathProblem(rawPath.replace(/\*/g, 'x'), 'dot-and-dotdot');
      if (problem) throw bad(problem.replace('it contains', 'contains'));
      const pieces = rawPath.replace(/\/{2,}/g, '/').split('*').map((piece) => {
        let decoded: string;
        try {
          decoded = decodeURIComponent(piece);
        } catch {
          throw bad('has an invalid percent escape');
        }
        if (/%2f/i.test(piece)) throw bad('contains an encoded "/" (%2F)');
        return decoded;
      });
      return { text: pattern, kind: 'file', authority: '', regex: globRegex(pieces), literalIp: undefined };
    }
    case undefined:
      throw bad(
        /^file:/i.test(pattern) || pattern.startsWith('/')
          ? `is not a URL; write local paths as file URLs, e.g. file://${pattern.replace(/^file:/i, '').replace(/^\/*/, '/')}`
          : 'has no scheme',
      );
    default:
      throw bad(`has an unknown scheme "${scheme}://"`);
  }
}

// ---------------------------------------------------------------------------------------------
// Allowlist
// ---------------------------------------------------------------------------------------------

export class Allowlist {
  readonly what: AllowlistKind;
  /** The patterns as given (trimmed). */
  readonly patterns: readonly string[];
  readonly #compiled: readonly CompiledPattern[];

  /** Use `compileAllowlist()`. */
  constructor(what: AllowlistKind, compiled: readonly CompiledPattern[]) {
    this.what = what;
    this.#compiled = compiled;
    this.patterns = compiled.map((c) => c.text);
  }

  /** True for an empty list: every URL is allowed. */
  get allowsAll(): boolean {
    return this.#compiled.length === 0;
  }

  /** Literal IP hosts named by HTTP patterns; the address policy allows exactly these. */
  get literalAddresses(): readonly string[] {
    return this.#compiled.flatMap((c) => (c.literalIp === undefined ? [] : [c.literalIp]));
  }

  /** Whether `url` is allowed. Never throws: a URL that does not parse is not allowed. */
  matches(url: string): boolean {
    if (this.allowsAll) return true;
    try {
      return this.#denial(url) === null;
    } catch {
      return false;
    }
  }

  /**
   * Throws `ERR_POLICY_DENIED` (not retryable) unless `url` is allowed; the message names the
   * URL without secrets, whether it was a source or an output, and the flag and variable that
   * would allow it. A URL that does not parse throws its `ERR_BAD_URL`.
   */
  check(url: string): void {
    this.#check(url, this.what === 'source' ? 'source' : 'output prefix');
  }

  /** `check()` for the target of an HTTP redirect. */
  checkRedirect(url: string): void {
    this.#check(url, 'redirect target');
  }

  /** @internal `check()` with the words that introduce the URL (`job 7: input 2`). */
  checkAs(url: string, label: string): void {
    this.#check(url, label);
  }

  #check(url: string, label: string): void {
    if (this.allowsAll) return;
    const denial = this.#denial(url);
    if (denial === null) return;
    const shown = redactUrl(url);
    const { flag, env } = ALLOWLIST_SETTINGS[this.what];
    const noun = this.what === 'source' ? 'an allowed source' : 'an allowed output';
    const n = this.#compiled.length;
    const advice =
      denial.suggestion === undefined
        ? ''
        : `; the operator can allow it by adding a pattern such as ${redactUrl(denial.suggestion)} to ${flag} (or ${env})`;
    throw new RoboflowError(
      'ERR_POLICY_DENIED',
      `${label} "${shown}" is not ${noun}: ${denial.why ?? `it matches none of the ${n} pattern${n === 1 ? '' : 's'} of ${flag} / ${env}`}${advice}`,
      { url: shown },
    );
  }

  /** Null when allowed; otherwise why not, and a pattern that would allow it. */
  #denial(url: string): { why: string | undefined; suggestion: string | undefined } | null {
    const n = normalise(url, this.what === 'source' ? 'source' : 'prefix');
    if (!n.ok) return { why: n.why, suggestion: undefined };
    const target = this.what === 'output' ? asFolder(n.url) : n.url;
    for (const p of this.#compiled) {
      if (p.kind === target.kind && p.authority === target.authority && p.regex.test(target.path)) return null;
    }
    return { why: undefined, suggestion: suggestPattern(target) };
  }
}

/** A narrow pattern that would allow `n`: its folder, with `*`. */
function suggestPattern(n: Normalised): string {
  const dir = n.path.slice(0, n.path.lastIndexOf('/') + 1);
  switch (n.kind) {
    case 's3':
    case 'oss':
      return `${n.kind}://${n.authority}/${dir}*`;
    case 'http':
    case 'https':
      return `${n.kind}://${n.authority}${dir}*`;
    case 'file':
      return `file://${encodeURI(dir)}*`;
    default: {
      const _exhaustive: never = n.kind;
      return _exhaustive;
    }
  }
}

/**
 * Compiles a list of URL patterns (see the module comment). An empty list allows everything.
 * Throws `ERR_CONFIG` naming the first bad pattern and the flag it came from.
 */
export function compileAllowlist(patterns: readonly string[], what: AllowlistKind): Allowlist {
  const compiled = patterns.map((p) => compilePattern(p, what));
  if (what === 'output') {
    for (const c of compiled) {
      if (!c.text.endsWith('*')) {
        throw new RoboflowError(
          'ERR_CONFIG',
          `${ALLOWLIST_SETTINGS.output.flag} pattern "${redactUrl(c.text)}" must end in "*": an output is a prefix ` +
            `that files are written under, e.g. ${c.text.replace(/\/?$/, '/')}*`,
        );
      }
    }
  }
  return new Allowlist(what, compiled);
}

// ---------------------------------------------------------------------------------------------
// The whole policy
// ---------------------------------------------------------------------------------------------

/** What `checkJob()` needs; `SecurityPolicy` is one. */
export interface JobPolicy {
  readonly sources: Allowlist;
  readonly outputs: Allowlist;
  /** When given, literal IP hosts of HTTP inputs are checked too (Node connects to them without a lookup). */
  readonly addresses?: AddressPolicy;
}

/**
 * Throws `ERR_POLICY_DENIED` (not retryable, so the job goes dead at once with the reason) unless
 * every input and the output prefix of `job` are allowed. Call it before any connection is made
 * or file touched for the job.
 */
export function checkJob(job: Pick<JobRecord, 'id' | 'inputs' | 'output'>, policy: JobPolicy): void {
  const count = job.inputs.length;
  for (const [i, input] of job.inputs.entries()) {
    const label = `job ${job.id}: input ${i + 1} of ${count}`;
    policy.sources.checkAs(input.url, label);
    if (policy.addresses !== undefined) checkHttpLiteralHost(input.url, policy.addresses, label);
  }
  if (job.output !== null) policy.outputs.checkAs(job.output, `job ${job.id}: output prefix`);
}

function checkHttpLiteralHost(url: string, addresses: AddressPolicy, label: string): void {
  if (!/^https?:\/\//i.test(url)) return;
  let host: string;
  try {
    host = new URL(url).hostname;
  } catch {
    return; // Not a URL: opening it fails with ERR_BAD_URL, before any connection.
  }
  try {
    checkLiteralHost(host, addresses);
  } catch (err) {
    const e = err as RoboflowError;
    const shown = redactUrl(url);
    throw new RoboflowError('ERR_POLICY_DENIED', `${label} "${shown}": ${e.message}`, { url: shown, cause: err });
  }
}

export interface PolicyOptions {
  /** Patterns job inputs may be read from (`--allow-source`). Empty: any source. (Default: none) */
  readonly allowSources?: readonly string[];
  /** Patterns job outputs may be written under (`--allow-output`). Empty: any output. (Default: none) */
  readonly allowOutputs?: readonly string[];
  /** CIDR blocks of non-public addresses that may be connected to (`--allow-private-range`). (Default: none) */
  readonly allowPrivateRanges?: readonly string[];
  /**
   * Refuse connections to non-public addresses. Defaults to on when a source allowlist or a
   * private range is configured — an operator who restricts sources means the network too — and
   * off otherwise, so a worker without any policy behaves as before.
   */
  readonly refusePrivate?: boolean;
  /** Injected name resolution for `lookup`. (Default: `dns.lookup`) */
  readonly resolve?: PolicyLookupOptions['resolve'];
}

/** The compiled policy a worker holds: allowlists, address policy and the connect-time lookup. */
export class SecurityPolicy implements JobPolicy {
  readonly sources: Allowlist;
  readonly outputs: Allowlist;
  readonly addresses: AddressPolicy;
  /** `dns.lookup` replacement for every HTTP pool and agent (see `policyLookup`). */
  readonly lookup: LookupFunction;

  constructor(opts: PolicyOptions = {}) {
    this.sources = compileAllowlist(opts.allowSources ?? [], 'source');
    this.outputs = compileAllowlist(opts.allowOutputs ?? [], 'output');
    const ranges = opts.allowPrivateRanges ?? [];
    this.addresses = new AddressPolicy({
      refusePrivate: opts.refusePrivate ?? (!this.sources.allowsAll || ranges.length > 0),
      allowRanges: ranges,
      allowAddresses: this.sources.literalAddresses,
    });
    this.lookup = policyLookup(this.addresses, opts.resolve ? { resolve: opts.resolve } : {});
  }

  /** See `checkJob()`. */
  checkJob(job: Pick<JobRecord, 'id' | 'inputs' | 'output'>): void {
    checkJob(job, this);
  }

  /** For `checkRedirect` of HTTP sources: the source allowlist, plus the address of a literal IP host. */
  checkRedirect(url: string): void {
    this.sources.checkRedirect(url);
    checkHttpLiteralHost(url, this.addresses, 'redirect target');
  }

  /**
   * What a worker's `StorageClients` takes from the policy: the redirect check, and the
   * connect-time `lookup` when non-public addresses are refused (without that, connections keep
   * the system's own lookup, exactly as a worker without a policy had them).
   */
  storageOptions(): { readonly lookup?: LookupFunction; readonly checkRedirect: (url: string) => void } {
    return {
      ...(this.addresses.enforced ? { lookup: this.lookup } : {}),
      checkRedirect: (url: string) => this.checkRedirect(url),
    };
  }

  /** What the worker logs once at start. */
  summary(): { sources: string[] | 'any'; outputs: string[] | 'any'; privateAddresses: 'refused' | 'allowed'; allowPrivateRanges: string[] } {
    return {
      sources: this.sources.allowsAll ? 'any' : [...this.sources.patterns].map(redactUrl),
      outputs: this.outputs.allowsAll ? 'any' : [...this.outputs.patterns].map(redactUrl),
      privateAddresses: this.addresses.enforced ? 'refused' : 'allowed',
      allowPrivateRanges: [...this.addresses.allowRanges],
    };
  }
}

/** Compiles the whole policy; throws `ERR_CONFIG` naming the first bad pattern or range. */
export function compilePolicy(opts: PolicyOptions = {}): SecurityPolicy {
  return new SecurityPolicy(opts);
}


/** @internal For tests: the normalised form a URL is matched as. */
export function normalisedForMatching(url: string, what: AllowlistKind): string | null {
  const n = normalise(url, what === 'source' ? 'source' : 'prefix');
  if (!n.ok) return null;
  const t = what === 'output' ? asFolder(n.url) : n.url;
  return `${t.kind}://${t.authority}${t.kind === 's3' || t.kind === 'oss' ? '/' : ''}${t.path}`;
}
