/**
 * Secret redaction. Everything that reaches a log line, an error message, a metric label or a job
 * record goes through here first: signed URLs carry credentials in their query string, URLs may
 * carry a password in their user info, and the environment holds access keys.
 */

/** What a redacted value is replaced with. */
export const REDACTED = 'REDACTED';

/**
 * Query (and fragment) parameters whose value is a secret or a credential, compared
 * case-insensitively: AWS SigV4/SigV2 presigned URLs, Alibaba OSS signed URLs, Azure SAS,
 * Google signed URLs and the usual token parameters.
 */
const SECRET_PARAMS = new Set([
  'x-amz-signature',
  'x-amz-credential',
  'x-amz-security-token',
  'awsaccesskeyid',
  'signature',
  'ossaccesskeyid',
  'security-token',
  'x-oss-signature',
  'x-oss-credential',
  'x-oss-security-token',
  'x-goog-signature',
  'x-goog-credential',
  'googleaccessid',
  'sig',
  'token',
  'access_token',
  'id_token',
  'refresh_token',
  'auth',
  'authorization',
  'key',
  'apikey',
  'api_key',
  'api-key',
  'password',
  'passwd',
  'secret',
  'client_secret',
]);

/** Substrings that make any parameter name secret, for vendors not listed above. */
const SECRET_PARAM_PARTS = ['signature', 'credential', 'token', 'secret', 'password'];

function isSecretParam(rawName: string): boolean {
  let name: string;
  try {
    name = decodeURIComponent(rawName.replace(/\+/g, ' ')).toLowerCase();
  } catch {
    name = rawName.toLowerCase();
  }
  return SECRET_PARAMS.has(name) || SECRET_PARAM_PARTS.some((part) => name.includes(part));
}

function redactParams(params: string): string {
  return params
    .split('&')
    .map((pair) => {
      const eq = pair.indexOf('=');
      if (eq < 0) return pair;
      const name = pair.slice(0, eq);
      return isSecretParam(name) ? `${name}=${REDACTED}` : pair;
    })
    .join('&');
}

/**
 * Removes secrets from a URL (or anything URL-like), keeping it recognisable: a user-info password
 * becomes `REDACTED` (a user-info with no password is replaced whole, since a bare token is often
 * put there), and the values of signature, credential and token parameters in the query and the
 * fragment become `REDACTED`. Works on the raw text, so it never re-encodes what it keeps and also
 * handles strings that are not valid URLs.
 */
export function redactUrl(url: string): string {
  let out = url;
  const userInfo = /^([a-zA-Z][a-zA-Z0-9+.-]*:\/\/)([^/?#]*)@/.exec(out);
  if (userInfo) {
    const info = userInfo[2] ?? '';
    const colon = info.indexOf(':');
    const kept = colon >= 0 ? `${info.slice(0, colon)}:${REDACTED}` : REDACTED;
    out = `${userInfo[1] ?? ''}${kept}@${out.slice(userInfo[0].length)}`;
  }
  const hash = out.indexOf('#');
  let fragment = '';
  if (hash >= 0) {
    fragment = `#${redactParams(out.slice(hash + 1))}`;
    out = out.slice(0, hash);
  }
  const q = out.indexOf('?');
  if (q >= 0) out = `${out.slice(0, q)}?${redactParams(out.slice(q + 1))}`;
  return out + fragment;
}

/** Matches URLs embedded in free text (error messages from libraries, server error bodies). */
const URL_IN_TEXT = /\b[a-zA-Z][a-zA-Z0-9+.-]*:\/\/[^\s"'<>`]+/g;

/**
 * Applies `redactUrl` to every URL found in `text`. Punctuation that ends a sentence right after
 * a URL (`…?sig=x: 403`) is kept outside it, so the text around a redacted value survives.
 */
export function redactUrlsInText(text: string): string {
  return text.replace(URL_IN_TEXT, (m) => {
    const trailing = /[.,:;!?)\]]+$/.exec(m)?.[0] ?? '';
    return redactUrl(m.slice(0, m.length - trailing.length)) + trailing;
  });
}

/**
 * Replaces every occurrence of each secret in `text` with `REDACTED`. Longer secrets are replaced
 * first so that one secret containing another is removed whole. Empty strings are ignored.
 */
export function redactSecrets(text: string, secrets: readonly (string | undefined)[]): string {
  const list = secrets
    .filter((s): s is string => typeof s === 'string' && s.length > 0)
    .sort((a, b) => b.length - a.length);
  let out = text;
  for (const secret of list) out = out.split(secret).join(REDACTED);
  return out;
}

/**
 * Environment variables whose values are secrets. Loggers redact their values wherever they
 * appear; nothing prints them. Access key ids are not secret on their own, but they identify an
 * account, so they are listed too.
 */
export const SECRET_ENV_VARS: readonly string[] = [
  'AWS_SECRET_ACCESS_KEY',
  'AWS_SESSION_TOKEN',
  'AWS_SECURITY_TOKEN',
  'AWS_ACCESS_KEY_ID',
  'OSS_ACCESS_KEY_SECRET',
  'OSS_SESSION_TOKEN',
  'OSS_SECURITY_TOKEN',
  'OSS_ACCESS_KEY_ID',
  'ALIBABA_CLOUD_ACCESS_KEY_SECRET',
  'ALIBABA_CLOUD_SECURITY_TOKEN',
  'ALIBABA_CLOUD_ACCESS_KEY_ID',
  'PGPASSWORD',
];

/**
 * Shortest environment value treated as a secret to search for in free text. Real access keys
 * (20 characters), secret keys (40) and session tokens (hundreds) are far longer; replacing every
 * occurrence of a placeholder like `test` or `t` would mangle every message it appears in.
 */
export const MIN_SECRET_LENGTH = 8;

/** The values of `SECRET_ENV_VARS` set in `env` (at least `MIN_SECRET_LENGTH` long), for `redactSecrets`. */
export function secretsFromEnv(env: NodeJS.ProcessEnv = process.env): string[] {
  const out: string[] = [];
  for (const name of SECRET_ENV_VARS) {
    const v = env[name];
    if (v !== undefined && v.length >= MIN_SECRET_LENGTH) out.push(v);
  }
  return out;
}

/** Everything at once: URLs in the text, then the environment's secret values. */
export function redactText(text: string, env: NodeJS.ProcessEnv = process.env): string {
  return redactSecrets(redactUrlsInText(text), secretsFromEnv(env));
}

/**
 * C0 and C1 control characters and DEL, what a terminal may act on instead of printing: every
 * character but printable ASCII (space to tilde) and U+00A0 on.
 */
const CONTROL_CHARS = /[^ -~\u00a0-\uffff]/g;

/**
 * `text` with every control character written as `\xHH`. Text a server chose (an error body, a
 * status line, a header value) goes through here before it becomes part of a message, so that an
 * escape sequence in it reaches a terminal or a log as characters, never as a command.
 */
export function escapeControl(text: string): string {
  return text.replace(CONTROL_CHARS, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`);
}

/** Server text for a message: control characters escaped, cut to `max` characters, quoted. */
export function quoteServerText(text: string, max = 80): string {
  const cut = text.length > max ? `${text.slice(0, max)}…` : text;
  return `"${escapeControl(cut)}"`;
}
