import http from 'node:http';
import type { AddressInfo } from 'node:net';
import fc from 'fast-check';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { RoboflowError } from '../src/errors.js';
import { checkJob, compileAllowlist, compilePolicy, normalisedForMatching, type AllowlistKind } from '../src/security/policy.js';
import { redactUrl } from '../src/redact.js';
import { StorageClients } from '../src/storage/index.js';
import type { JobInput } from '../src/types.js';
import { rejection } from './helpers.js';

function thrown(fn: () => unknown): RoboflowError {
  try {
    fn();
  } catch (err) {
    return err as RoboflowError;
  }
  throw new Error('expected an error');
}


function job(inputs: string[], output: string | null = null) {
  return { id: 'job-7', inputs: inputs.map((url): JobInput => ({ url })), output };
}

describe('compileAllowlist: bad patterns', () => {
  const bad: [string, AllowlistKind, string][] = [
    ['', 'source', 'is empty'],
    ['   ', 'source', 'is empty'],
    ['ftp://files.example.com/*', 'source', 'unknown scheme "ftp://"'],
    ['gs://bucket/*', 'source', 'unknown scheme'],
    ['s3://*/recordings/*', 'source', '"*" in the bucket'],
    ['s3://rec*/x/*', 'source', '"*" in the bucket'],
    ['s3:///x/*', 'source', 'names no bucket'],
    ['s3://Bad_Bucket/*', 'source', 'invalid bucket'],
    ['oss://with.dots/*', 'source', 'invalid bucket'],
    ['s3://bucket', 'source', 's3://bucket/*'],
    ['s3://bucket/raw/../other/*', 'source', '".."'],
    ['s3://bucket/raw/%2e%2e/*', 'source', '".."'],
    ['https://*.example.com/*', 'source', '"*" in the host'],
    ['https://data.example.com:*/*', 'source', '"*" in the host'],
    ['https://user:pw@data.example.com/*', 'source', 'user info'],
    ['https://data.example.com/*?sig=1', 'source', 'query'],
    ['https://data.example.com', 'source', 'https://data.example.com/*'],
    ['https://data.example.com/a/../b/*', 'source', '".."'],
    ['https://data.example.com/a/%2E%2e/*', 'source', '".."'],
    ['https://data.example.com/a/./*', 'source', '"."'],
    ['/data/*', 'source', 'file:///data/*'],
    ['data.example.com/*', 'source', 'no scheme'],
    ['file://server/data/*', 'source', 'names a host'],
    ['file:///data/../etc/*', 'source', '".."'],
    ['file:///data/%zz/*', 'source', 'percent escape'],
    ['s3://results/run', 'output', 'must end in "*"'],
    ['s3://results/run/', 'output', 's3://results/run/*'],
    ['https://data.example.com/*', 'output', 'outputs can only be written'],
  ];
  it.each(bad)('%j (%s) → ERR_CONFIG mentioning %s', (pattern, what, words) => {
    // The good pattern first: the error names the bad one, not merely the first.
    const err = thrown(() => compileAllowlist(['s3://fine-bucket/*', pattern], what));
    expect(err).toBeInstanceOf(RoboflowError);
    expect(err.code).toBe('ERR_CONFIG');
    expect(err.message).toContain(`"${redactUrl(pattern)}"`);
    expect(err.message).toContain(what === 'source' ? '--allow-source' : '--allow-output');
    expect(err.message).toContain(words);
  });

  it('shows a NUL byte in a bad pattern as \\0', () => {
    const err = thrown(() => compileAllowlist(['s3://bucket/a\0b/*'], 'source'));
    expect(err.code).toBe('ERR_CONFIG');
    expect(err.message).toContain('"s3://bucket/a\\0b/*" contains a NUL byte');
  });

  it('redacts secrets in a bad pattern', () => {
    const err = thrown(() => compileAllowlist(['https://data.example.com/*?X-Amz-Signature=deadbeef'], 'source'));
    expect(err.message).not.toContain('deadbeef');
    expect(thrown(() => compileAllowlist(['https://user:hunter22@data.example.com/*'], 'source')).message).not.toContain('hunter22');
  });
});

describe('Allowlist matching', () => {
  const sources = compileAllowlist(
    [
      's3://recordings/raw/*',
      'oss://oss-recordings/*',
      'https://data.example.com/recordings/*',
      'http://127.0.0.1:9000/bucket/*',
      'file:///data/in/*',
      's3://recordings/exact/one.mcap',
      's3://recordings/*/public/*.mcap',
    ],
    'source',
  );

  const allowed = [
    's3://recordings/raw/2024/run-1.mcap',
    's3://recordings/raw/a//b.mcap',
    'S3://recordings/raw/x.mcap',
    'oss://oss-recordings/any/depth/x.mcap',
    'https://data.example.com/recordings/run.mcap',
    'https://DATA.Example.COM/recordings/run.mcap',
    'https://data.example.com:443/recordings/run.mcap',
    'https://data.example.com./recordings/run.mcap',
    'https://data.example.com/%72ecordings/run.mcap',
    'https://data.example.com/recordings/a/../b.mcap',
    'https://data.example.com/recordings/run.mcap?X-Amz-Signature=abc&X-Amz-Credential=k',
    'http://127.0.0.1:9000/bucket/k.mcap',
    'http://0x7f.1:9000/bucket/k.mcap',
    'file:///data/in/x.mcap',
    '/data/in/sub/x.mcap',
    '/data/in/./x.mcap',
    's3://recordings/exact/one.mcap',
    's3://recordings/team-a/public/x.mcap',
  ];
  it.each(allowed)('allows %s', (url) => {
    expect(sources.matches(url)).toBe(true);
    expect(() => sources.check(url)).not.toThrow();
  });

  const denied = [
    's3://recordings/other/x.mcap',
    's3://recordings/raw-evil/x.mcap',
    's3://recordings/raw',
    's3://other-bucket/raw/x.mcap',
    'oss://recordings/raw/x.mcap',
    's3://recordings/raw/../secrets/x',
    's3://recordings/raw/%2e%2e/secrets/x',
    's3://recordings/raw/..%2fsecrets/x',
    's3://recordings/raw/%252e%252e/x',
    's3://recordings/raw/./x',
    's3://recordings/raw/..\\secrets',
    's3://recordings/exact/one.mcap2',
    's3://recordings/team-a/public/x.txt',
    'http://data.example.com/recordings/run.mcap',
    'https://data.example.com:8443/recordings/run.mcap',
    'https://data.example.com/recordings/../secret.mcap',
    'https://data.example.com/recordings/%2e%2e/secret.mcap',
    'https://data.example.com/recordings/..%2Fsecret.mcap',
    'https://data.example.com/recordings/%252e%252e/x',
    'https://data.example.com/recordings/%00.mcap',
    'https://data.example.com@evil.example/recordings/x.mcap',
    'https://evil.example/recordings/x.mcap',
    'https://data.example.com.evil.example/recordings/x.mcap',
    'http://127.0.0.1:9001/bucket/k.mcap',
    'http://localhost:9000/bucket/k.mcap',
    'file:///data/in/../secret',
    'file:///data/in/%2e%2e/secret',
    '/data/in/../../etc/passwd',
    '/data/input/x.mcap',
    '/etc/passwd',
    'not a url at all\0',
  ];
  it.each(denied)('denies %s', (url) => {
    expect(sources.matches(url)).toBe(false);
  });

  it('treats an empty list as "allow all"', () => {
    const all = compileAllowlist([], 'source');
    expect(all.allowsAll).toBe(true);
    expect(all.matches('https://anything.example/x')).toBe(true);
    expect(() => all.check('s3://whatever/x')).not.toThrow();
    expect(sources.allowsAll).toBe(false);
  });

  it('shows the form URLs are matched in', () => {
    expect(normalisedForMatching('HTTPS://Data.Example.com:443/a/%7Eb/%2fc', 'source')).toBe('https://data.example.com/a/~b/%2Fc');
    expect(normalisedForMatching('s3://b-1/k/../x', 'source')).toBeNull();
    expect(normalisedForMatching('/data/out', 'output')).toBe('file:///data/out/');
  });
});

describe('Allowlist.check messages', () => {
  const sources = compileAllowlist(['s3://recordings/raw/*', 'https://data.example.com/recordings/*'], 'source');
  const outputs = compileAllowlist(['s3://results/*'], 'output');

  it('names the redacted URL, "source", the flag and the variable, and suggests a narrow pattern', () => {
    const err = thrown(() => sources.check('https://evil.example/dir/x.mcap?X-Amz-Signature=topsecret&token=abc'));
    expect(err).toBeInstanceOf(RoboflowError);
    expect(err.code).toBe('ERR_POLICY_DENIED');
    expect(err.retryable).toBe(false);
    expect(err.message).not.toContain('topsecret');
    expect(err.message).not.toContain('token=abc');
    expect(err.message).toContain('https://evil.example/dir/x.mcap?X-Amz-Signature=REDACTED');
    expect(err.url).toBe('https://evil.example/dir/x.mcap?X-Amz-Signature=REDACTED&token=REDACTED');
    expect(err.message).toContain('is not an allowed source');
    expect(err.message).toContain('--allow-source');
    expect(err.message).toContain('ROBOFLOW_ALLOW_SOURCES');
    expect(err.message).toContain('none of the 2 patterns');
    expect(err.message).toContain('https://evil.example/dir/*');
  });

  it('says why a dot segment never matches', () => {
    const err = thrown(() => sources.check('s3://recordings/raw/../secrets/key'));
    expect(err.code).toBe('ERR_POLICY_DENIED');
    expect(err.message).toContain('".."');
  });

  it('names outputs as outputs, with their flag', () => {
    const err = thrown(() => outputs.check('s3://other/prefix/'));
    expect(err.code).toBe('ERR_POLICY_DENIED');
    expect(err.message).toContain('output prefix "s3://other/prefix/"');
    expect(err.message).toContain('--allow-output');
    expect(err.message).toContain('ROBOFLOW_ALLOW_OUTPUTS');
  });

  it('reports a URL that does not parse with its own error', () => {
    expect(thrown(() => sources.check('ftp://x/y')).code).toBe('ERR_UNSUPPORTED_SCHEME');
  });

  it('checkRedirect says it was a redirect', () => {
    const err = thrown(() => sources.checkRedirect('http://169.254.169.254/latest/meta-data/'));
    expect(err.code).toBe('ERR_POLICY_DENIED');
    expect(err.message).toContain('redirect target "http://169.254.169.254/latest/meta-data/"');
  });
});

describe('output prefixes', () => {
  const outputs = compileAllowlist(['s3://results/runs/*', 'file:///data/out/*'], 'output');
  it.each([
    's3://results/runs/',
    's3://results/runs',
    's3://results/runs/2024/',
    'file:///data/out/',
    '/data/out',
    '/data/out/job-1',
  ])('allows %s (every file written under it stays inside)', (url) => {
    expect(outputs.matches(url)).toBe(true);
  });
  it.each(['s3://results/runs-evil/', 's3://results/', 's3://results', 's3://results/runs/../x/', '/data/outside', '/data', 'https://results.example.com/runs/'])(
    'denies %s',
    (url) => {
      expect(outputs.matches(url)).toBe(false);
    },
  );
});

describe('checkJob', () => {
  const policy = compilePolicy({ allowSources: ['s3://recordings/raw/*'], allowOutputs: ['s3://results/*'] });

  it('passes a job whose inputs and output are all allowed, and one with no output', () => {
    expect(() => checkJob(job(['s3://recordings/raw/a.mcap', 's3://recordings/raw/b.mcap'], 's3://results/x/'), policy)).not.toThrow();
    expect(() => policy.checkJob(job(['s3://recordings/raw/a.mcap']))).not.toThrow();
  });

  it('names the job and the input that is refused', () => {
    const err = thrown(() => checkJob(job(['s3://recordings/raw/a.mcap', 'https://evil.example/x.mcap'], 's3://results/x/'), policy));
    expect(err.code).toBe('ERR_POLICY_DENIED');
    expect(err.message).toContain('job job-7: input 2 of 2 "https://evil.example/x.mcap" is not an allowed source');
  });

  it('refuses an output prefix outside the list', () => {
    const err = thrown(() => checkJob(job(['s3://recordings/raw/a.mcap'], 's3://elsewhere/x/'), policy));
    expect(err.message).toContain('job job-7: output prefix "s3://elsewhere/x/" is not an allowed output');
  });

  it('refuses a literal private IP host even when any source is allowed, once private addresses are refused', () => {
    const open = compilePolicy({ allowPrivateRanges: ['10.0.0.0/8'] });
    expect(open.sources.allowsAll).toBe(true);
    expect(open.addresses.enforced).toBe(true);
    const err = thrown(() => open.checkJob(job(['http://169.254.169.254/latest/meta-data/iam/'])));
    expect(err.code).toBe('ERR_POLICY_DENIED');
    expect(err.message).toContain('input 1 of 1');
    expect(err.message).toContain('link-local');
    expect(() => open.checkJob(job(['http://10.1.2.3/x.mcap']))).not.toThrow();
    expect(() => open.checkJob(job(['http://[::ffff:a9fe:a9fe]/x']))).toThrow(/link-local/);
  });
});

describe('SecurityPolicy', () => {
  it('refuses private addresses only when sources are restricted or a range is given', () => {
    expect(compilePolicy().addresses.enforced).toBe(false);
    expect(compilePolicy({ allowOutputs: ['s3://results/*'] }).addresses.enforced).toBe(false);
    expect(compilePolicy({ allowSources: ['s3://recordings/*'] }).addresses.enforced).toBe(true);
    expect(compilePolicy({ allowSources: ['s3://recordings/*'], refusePrivate: false }).addresses.enforced).toBe(false);
  });

  it('allows exactly the literal IP hosts its source patterns name', () => {
    const policy = compilePolicy({ allowSources: ['http://127.0.0.1:9000/bucket/*', 'http://[::1]:9000/b/*'] });
    expect(policy.addresses.allows('127.0.0.1')).toBe(true);
    expect(policy.addresses.allows('::1')).toBe(true);
    expect(policy.addresses.allows('127.0.0.2')).toBe(false);
    expect(policy.addresses.allows('10.0.0.1')).toBe(false);
  });

  it('summarises itself for the start-up log without secrets', () => {
    expect(compilePolicy().summary()).toEqual({ sources: 'any', outputs: 'any', privateAddresses: 'allowed', allowPrivateRanges: [] });
    const s = compilePolicy({ allowSources: ['s3://recordings/*'], allowPrivateRanges: ['10.0.0.0/8'] }).summary();
    expect(s).toEqual({ sources: ['s3://recordings/*'], outputs: 'any', privateAddresses: 'refused', allowPrivateRanges: ['10.0.0.0/8'] });
  });

  it('refuses bad ranges with ERR_CONFIG', () => {
    expect(thrown(() => compilePolicy({ allowPrivateRanges: ['10.0.0.1/8'] })).code).toBe('ERR_CONFIG');
  });
});

describe('redirects through a real HTTP source', () => {
  let server: http.Server;
  let port: number;
  let paths: string[];
  let clients: StorageClients;

  beforeEach(async () => {
    paths = [];
    server = http.createServer((req, res) => {
      paths.push(req.url ?? '');
      if (req.url === '/allowed/hop') {
        res.writeHead(302, { location: '/allowed/x.bin' }).end();
      } else if (req.url === '/allowed/escape') {
        res.writeHead(302, { location: '/forbidden/x.bin' }).end();
      } else if (req.url === '/allowed/meta') {
        res.writeHead(302, { location: 'http://169.254.169.254/latest/meta-data/' }).end();
      } else {
        res.writeHead(200, { 'content-length': '4', 'accept-ranges': 'bytes' }).end(req.method === 'HEAD' ? undefined : 'data');
      }
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    port = (server.address() as AddressInfo).port;
    clients = new StorageClients();
  });

  afterEach(async () => {
    await clients.close();
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });

  function open(pathname: string) {
    const policy = compilePolicy({ allowSources: [`http://127.0.0.1:${port}/allowed/*`] });
    return clients.open(`http://127.0.0.1:${port}${pathname}`, { checkRedirect: (url) => policy.checkRedirect(url) });
  }

  it('follows a redirect that stays inside the allowlist', async () => {
    const source = open('/allowed/hop');
    expect((await source.stat()).size).toBe(4);
    await source.close();
    expect(paths).toEqual(['/allowed/hop', '/allowed/x.bin']);
  });

  it('refuses a redirect out of the allowlist before requesting it', async () => {
    const source = open('/allowed/escape');
    const err = await rejection(source.stat());
    await source.close();
    expect(err.code).toBe('ERR_POLICY_DENIED');
    expect(err.message).toContain('redirect target');
    expect(paths).toEqual(['/allowed/escape']);
  });

  it('refuses a redirect to the metadata address without connecting to it', async () => {
    const source = open('/allowed/meta');
    const err = await rejection(source.stat());
    await source.close();
    expect(err.code).toBe('ERR_POLICY_DENIED');
    expect(paths).toEqual(['/allowed/meta']);
  });
});

// ---------------------------------------------------------------------------------------------
// Property: no spelling lets a URL that matches leave the prefix.
// ---------------------------------------------------------------------------------------------

/** Segments chosen to try every way out: dot segments in many spellings, separators, NUL. */
const SEGMENT = fc.oneof(
  fc.constantFrom(
    'a',
    'prefix',
    'other',
    '..',
    '.',
    '%2e%2e',
    '%2E%2e',
    '.%2e',
    '%2e.',
    '%2e',
    '',
    '\0',
    '%00',
    '..%2f',
    '%2f..',
    '..%5c',
    '%252e%252e',
    '%25252e%25252e',
    '..\\',
    'b%2Fc',
    '%5c..',
    '...',
    'x y',
  ),
  fc.string({ unit: fc.constantFrom('a', '.', '%', '2', 'e', 'E', 'f', '5', 'c', '/', '\\'), maxLength: 8 }),
);

/** Worst-case reading of a path: decode every escape, both separators, resolve dot segments. */
function worstCase(raw: string): { segments: string[]; escaped: boolean; nul: boolean; dotdot: boolean } {
  let text = raw;
  let dotdot = false;
  for (let i = 0; i < 6; i++) {
    if (text.split(/[/\\]/).includes('..')) dotdot = true;
    text = text.replace(/%([0-9A-Fa-f]{2})/g, (_m, h: string) => String.fromCharCode(parseInt(h, 16)));
  }
  if (text.split(/[/\\]/).includes('..')) dotdot = true;
  const segments: string[] = [];
  let escaped = false;
  for (const s of text.split(/[/\\]/)) {
    if (s === '' || s === '.') continue;
    if (s === '..') {
      if (segments.pop() === undefined) escaped = true;
    } else segments.push(s);
  }
  return { segments, escaped, nul: text.includes('\0'), dotdot };
}

function inside(raw: string, root: string[]): boolean {
  const w = worstCase(raw);
  return !w.escaped && !w.nul && !w.dotdot && root.every((seg, i) => w.segments[i] === seg);
}

const CASES = [
  { name: 's3', pattern: 's3://bucket/prefix/*', url: (p: string) => `s3://bucket/prefix/${p}`, raw: (p: string) => `prefix/${p}`, root: ['prefix'] },
  {
    name: 'https',
    pattern: 'https://data.example.com/prefix/*',
    url: (p: string) => `https://data.example.com/prefix/${p}`,
    // What is sent: the WHATWG parser resolves dot segments before the request is made.
    raw: (p: string) => new URL(`https://data.example.com/prefix/${p}`).pathname,
    root: ['prefix'],
  },
  { name: 'file URL', pattern: 'file:///data/prefix/*', url: (p: string) => `file:///data/prefix/${p}`, raw: (p: string) => `/data/prefix/${p}`, root: ['data', 'prefix'] },
  { name: 'plain path', pattern: 'file:///data/prefix/*', url: (p: string) => `/data/prefix/${p}`, raw: (p: string) => `/data/prefix/${p}`, root: ['data', 'prefix'] },
];

describe('property: a matching URL never escapes its prefix', () => {
  it.each(CASES)('$name', ({ pattern, url, raw, root }) => {
    const list = compileAllowlist([pattern], 'source');
    // File paths may keep "." segments (they are resolved before matching); elsewhere none may match.
    fc.assert(
      fc.property(fc.array(SEGMENT, { minLength: 1, maxLength: 6 }), (segments) => {
        const rest = segments.join('/');
        if (list.matches(url(rest))) {
          expect(inside(raw(rest), root)).toBe(true);
        }
      }),
      { numRuns: 2000 },
    );
  });

  it.each(CASES)('$name: plain segments always match (the property above is not vacuous)', ({ pattern, url }) => {
    const list = compileAllowlist([pattern], 'source');
    fc.assert(
      fc.property(fc.array(fc.stringMatching(/^[A-Za-z0-9_~-][A-Za-z0-9._~-]{0,10}$/), { minLength: 1, maxLength: 5 }), (segments) => {
        expect(list.matches(url(segments.join('/')))).toBe(true);
      }),
      { numRuns: 300 },
    );
  });

  it('the same holds for output prefixes and every name written under them', () => {
    const list = compileAllowlist(['s3://bucket/prefix/*'], 'output');
    fc.assert(
      fc.property(fc.array(SEGMENT, { minLength: 1, maxLength: 5 }), (segments) => {
        const rest = segments.join('/');
        if (list.matches(`s3://bucket/prefix/${rest}`)) {
          const w = worstCase(`prefix/${rest}`);
          expect(w.escaped || w.nul || w.dotdot).toBe(false);
          expect(w.segments[0]).toBe('prefix');
        }
      }),
      { numRuns: 1000 },
    );
  });
});
