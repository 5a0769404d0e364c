import type dns from 'node:dns';
import http from 'node:http';
import type { AddressInfo, LookupFunction } from 'node:net';
import fc from 'fast-check';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { RoboflowError } from '../src/errors.js';
import {
  AddressPolicy,
  checkAddress,
  checkLiteralHost,
  classifyAddress,
  formatIp,
  parseCidr,
  parseIp,
  policyLookup,
  type AddressClass,
  type Resolver,
} from '../src/security/address.js';
import { Http1Pool } from '../src/storage/http1.js';
import { anyRejection, readAll, rejection } from './helpers.js';

function thrown(fn: () => unknown): RoboflowError {
  try {
    fn();
  } catch (err) {
    return err as RoboflowError;
  }
  throw new Error('expected an error');
}


function v4(n: number): string {
  return [24, 16, 8, 0].map((s) => (n >>> s) & 0xff).join('.');
}

/** A resolver with fixed answers, counting calls; unknown names fail like getaddrinfo. */
function fixedResolver(answers: Record<string, readonly string[] | (() => readonly string[])>) {
  const calls: string[] = [];
  const resolve: Resolver = (hostname, options, callback) => {
    calls.push(hostname);
    const entry = answers[hostname];
    setImmediate(() => {
      if (entry === undefined) {
        callback(Object.assign(new Error(`getaddrinfo ENOTFOUND ${hostname}`), { code: 'ENOTFOUND' }), []);
        return;
      }
      const list = typeof entry === 'function' ? entry() : entry;
      const family = options.family === 'IPv4' ? 4 : options.family === 'IPv6' ? 6 : options.family;
      const addresses = list
        .map((address) => ({ address, family: address.includes(':') ? 6 : 4 }))
        .filter((a) => !family || a.family === family);
      callback(null, addresses);
    });
  };
  return { resolve, calls };
}

function lookupAll(lookup: LookupFunction, host: string): Promise<dns.LookupAddress[]> {
  return new Promise((resolve, reject) => {
    lookup(host, { all: true }, (err, addresses) => (err ? reject(err) : resolve(addresses as dns.LookupAddress[])));
  });
}

function lookupOne(lookup: LookupFunction, host: string, options: dns.LookupOptions = {}): Promise<[string, number | undefined]> {
  return new Promise((resolve, reject) => {
    lookup(host, options, (err, address, family) => (err ? reject(err) : resolve([address as string, family])));
  });
}

describe('classifyAddress', () => {
  const table: [string, AddressClass][] = [
    ['127.0.0.1', 'loopback'],
    ['127.255.255.254', 'loopback'],
    ['::1', 'loopback'],
    ['[::1]', 'loopback'],
    ['::ffff:127.0.0.1', 'loopback'],
    ['::ffff:7f00:1', 'loopback'],
    ['0:0:0:0:0:ffff:7f00:0001', 'loopback'],
    ['169.254.169.254', 'link-local'],
    ['::ffff:169.254.169.254', 'link-local'],
    ['fe80::1', 'link-local'],
    ['fe80::1%eth0', 'link-local'],
    ['febf:ffff::1', 'link-local'],
    ['10.0.0.5', 'private'],
    ['10.255.255.255', 'private'],
    ['172.16.0.1', 'private'],
    ['172.31.255.255', 'private'],
    ['192.168.1.1', 'private'],
    ['100.64.0.1', 'private'],
    ['100.127.255.255', 'private'],
    ['::ffff:10.0.0.5', 'private'],
    ['fec0::1', 'private'],
    ['64:ff9b:1::a00:5', 'private'],
    ['fc00::1', 'unique-local'],
    ['fd12:3456:789a::1', 'unique-local'],
    ['0.0.0.0', 'unspecified'],
    ['0.1.2.3', 'unspecified'],
    ['::', 'unspecified'],
    ['224.0.0.1', 'multicast'],
    ['239.255.255.250', 'multicast'],
    ['ff02::1', 'multicast'],
    ['255.255.255.255', 'reserved'],
    ['240.0.0.1', 'reserved'],
    ['192.0.2.10', 'reserved'],
    ['198.18.0.1', 'reserved'],
    ['2001:db8::1', 'reserved'],
    // Embedded IPv4: NAT64, 6to4 and IPv4-compatible addresses lead where their IPv4 address does.
    ['64:ff9b::a9fe:a9fe', 'link-local'],
    ['64:ff9b::8.8.8.8', 'public'],
    ['2002:a00:5::1', 'private'],
    ['2002:0808:0808::1', 'public'],
    ['::127.0.0.1', 'loopback'],
    // Just outside the private blocks.
    ['8.8.8.8', 'public'],
    ['9.255.255.255', 'public'],
    ['11.0.0.0', 'public'],
    ['100.63.255.255', 'public'],
    ['100.128.0.0', 'public'],
    ['172.15.255.255', 'public'],
    ['172.32.0.0', 'public'],
    ['169.253.255.255', 'public'],
    ['192.167.255.255', 'public'],
    ['223.255.255.255', 'public'],
    ['2606:4700::1111', 'public'],
    ['fbff::1', 'public'],
    ['::ffff:8.8.8.8', 'public'],
  ];
  it.each(table)('%s is %s', (ip, cls) => {
    expect(classifyAddress(ip)).toBe(cls);
  });

  it('refuses text that is not an address', () => {
    for (const bad of ['localhost', '0x7f.1', '2130706433', '1.2.3', '::g', '']) {
      expect(thrown(() => classifyAddress(bad)).code).toBe('ERR_BAD_URL');
    }
  });

  const blocks: [string, number, number, AddressClass][] = [
    ['0.0.0.0/8', 0x00000000, 8, 'unspecified'],
    ['10.0.0.0/8', 0x0a000000, 8, 'private'],
    ['100.64.0.0/10', 0x64400000, 10, 'private'],
    ['127.0.0.0/8', 0x7f000000, 8, 'loopback'],
    ['169.254.0.0/16', 0xa9fe0000, 16, 'link-local'],
    ['172.16.0.0/12', 0xac100000, 12, 'private'],
    ['192.168.0.0/16', 0xc0a80000, 16, 'private'],
    ['224.0.0.0/4', 0xe0000000, 4, 'multicast'],
  ];
  it.each(blocks)('every IPv4 address in %s, plain and IPv4-mapped, is classified the same', (_name, base, prefix, cls) => {
    const size = 2 ** (32 - prefix);
    fc.assert(
      fc.property(fc.integer({ min: 0, max: size - 1 }), (offset) => {
        const ip = v4(base + offset);
        expect(classifyAddress(ip)).toBe(cls);
        expect(classifyAddress(`::ffff:${ip}`)).toBe(cls);
        const hi = ((base + offset) >>> 16).toString(16);
        const lo = ((base + offset) & 0xffff).toString(16);
        expect(classifyAddress(`::ffff:${hi}:${lo}`)).toBe(cls);
      }),
      { numRuns: 300 },
    );
  });

  it('every IPv6 address in fe80::/10, fc00::/7 and ff00::/8 is classified by its block', () => {
    const random = (top: bigint, prefix: number) =>
      fc.bigInt({ min: 0n, max: (1n << BigInt(128 - prefix)) - 1n }).map((low) => formatIp({ family: 6, value: top | low }));
    fc.assert(
      fc.property(random(0xfe80n << 112n, 10), (ip) => classifyAddress(ip) === 'link-local'),
      { numRuns: 300 },
    );
    fc.assert(
      fc.property(random(0xfc00n << 112n, 7), (ip) => classifyAddress(ip) === 'unique-local'),
      { numRuns: 300 },
    );
    fc.assert(
      fc.property(random(0xff00n << 112n, 8), (ip) => classifyAddress(ip) === 'multicast'),
      { numRuns: 300 },
    );
  });

  it('parseIp and formatIp agree for random IPv6 addresses', () => {
    fc.assert(
      fc.property(fc.bigInt({ min: 0n, max: (1n << 128n) - 1n }), (value) => {
        const text = formatIp({ family: 6, value });
        expect(parseIp(text)).toEqual({ family: 6, value });
      }),
      { numRuns: 300 },
    );
  });
});

describe('parseCidr', () => {
  it('accepts blocks and bare addresses', () => {
    expect(parseCidr('10.0.0.0/8')).toEqual({ family: 4, base: 0x0a000000n, prefix: 8 });
    expect(parseCidr('10.0.0.5')).toEqual({ family: 4, base: 0x0a000005n, prefix: 32 });
    expect(parseCidr('fd00::/8').prefix).toBe(8);
    // An IPv4-mapped block is an IPv4 block.
    expect(parseCidr('::ffff:10.0.0.0/104')).toEqual({ family: 4, base: 0x0a000000n, prefix: 8 });
  });

  it('refuses malformed blocks with ERR_CONFIG naming the value and the flag', () => {
    for (const bad of ['10.0.0.1/8', '10.0.0.0/33', '10.0.0.0/x', 'example.com', 'fe80::/129', '']) {
      const err = thrown(() => parseCidr(bad));
      expect(err.code).toBe('ERR_CONFIG');
      expect(err.message).toContain(`"${bad}"`);
      expect(err.message).toContain('--allow-private-range');
    }
    expect(thrown(() => parseCidr('10.0.0.1/8')).message).toContain('did you mean 10.0.0.0/8');
  });
});

describe('AddressPolicy and checkAddress', () => {
  it('allows public addresses and refuses every non-public class', () => {
    const policy = new AddressPolicy();
    expect(policy.enforced).toBe(true);
    expect(() => checkAddress('data.example.com', '93.184.216.34', policy)).not.toThrow();
    expect(() => checkAddress('v6.example.com', '2606:4700::1111', policy)).not.toThrow();
    for (const ip of ['127.0.0.1', '::1', '169.254.169.254', '10.0.0.5', 'fd00::1', '0.0.0.0', '224.0.0.1', '::ffff:10.0.0.5']) {
      const err = thrown(() => checkAddress('evil.example', ip, policy));
      expect(err).toBeInstanceOf(RoboflowError);
      expect(err.code).toBe('ERR_POLICY_DENIED');
      expect(err.retryable).toBe(false);
    }
  });

  it('names the host, the address, its class and the switch that would allow exactly it', () => {
    const err = thrown(() => checkAddress('evil.example', '169.254.169.254', new AddressPolicy()));
    expect(err.message).toContain('evil.example (169.254.169.254)');
    expect(err.message).toContain('link-local');
    expect(err.message).toContain('--allow-private-range 169.254.169.254/32');
    expect(err.message).toContain('ROBOFLOW_ALLOW_PRIVATE_RANGES');
    const mapped = thrown(() => checkAddress('evil.example', '::ffff:10.0.0.5', new AddressPolicy()));
    expect(mapped.message).toContain('10.0.0.5/32');
  });

  it('allows a non-public address only inside an allowed range or when named exactly', () => {
    const policy = new AddressPolicy({ allowRanges: ['10.0.0.0/8', 'fd00::/8'], allowAddresses: ['127.0.0.1'] });
    expect(policy.allows('10.1.2.3')).toBe(true);
    expect(policy.allows('::ffff:10.1.2.3')).toBe(true);
    expect(policy.allows('fd12::1')).toBe(true);
    expect(policy.allows('127.0.0.1')).toBe(true);
    expect(policy.allows('127.0.0.2')).toBe(false);
    expect(policy.allows('172.16.0.1')).toBe(false);
    expect(policy.allows('169.254.169.254')).toBe(false);
    expect(policy.allows('not-an-ip')).toBe(false);
  });

  it('allows everything when not enforced', () => {
    const policy = new AddressPolicy({ refusePrivate: false });
    expect(policy.enforced).toBe(false);
    expect(() => checkAddress('metadata', '169.254.169.254', policy)).not.toThrow();
  });

  it('refuses bad configuration with ERR_CONFIG', () => {
    expect(thrown(() => new AddressPolicy({ allowRanges: ['10/8'] })).code).toBe('ERR_CONFIG');
    expect(thrown(() => new AddressPolicy({ allowAddresses: ['localhost'] })).code).toBe('ERR_CONFIG');
  });

  it('checkLiteralHost checks IP hosts and leaves names to the lookup', () => {
    const policy = new AddressPolicy({ allowAddresses: ['127.0.0.1'] });
    expect(checkLiteralHost('data.example.com', policy)).toBe(false);
    expect(checkLiteralHost('127.0.0.1', policy)).toBe(true);
    expect(checkLiteralHost('8.8.8.8', policy)).toBe(true);
    expect(thrown(() => checkLiteralHost('[::1]', policy)).code).toBe('ERR_POLICY_DENIED');
    expect(thrown(() => checkLiteralHost('169.254.169.254', policy)).message).toContain('refusing to connect to 169.254.169.254:');
  });
});

describe('policyLookup with an injected resolver (hostile answers are never connected to)', () => {
  it('fails the lookup when a name resolves to the metadata address or a private address', async () => {
    const { resolve } = fixedResolver({ 'evil.example': ['169.254.169.254'], 'intranet.example': ['10.0.0.5'] });
    const lookup = policyLookup(new AddressPolicy(), { resolve });
    const meta = await rejection(lookupAll(lookup, 'evil.example'));
    expect(meta.code).toBe('ERR_POLICY_DENIED');
    expect(meta.message).toContain('evil.example (169.254.169.254)');
    expect((await rejection(lookupOne(lookup, 'evil.example'))).code).toBe('ERR_POLICY_DENIED');
    expect((await rejection(lookupOne(lookup, 'intranet.example'))).message).toContain('10.0.0.5');
  });

  it('fails when any one of several addresses is refused', async () => {
    const { resolve } = fixedResolver({ 'mixed.example': ['93.184.216.34', '10.0.0.5'] });
    const lookup = policyLookup(new AddressPolicy(), { resolve });
    expect((await rejection(lookupAll(lookup, 'mixed.example'))).code).toBe('ERR_POLICY_DENIED');
  });

  it('answers public names in every dns.lookup calling form', async () => {
    const { resolve } = fixedResolver({ 'data.example.com': ['93.184.216.34', '2606:2800:220:1::1'] });
    const lookup = policyLookup(new AddressPolicy(), { resolve });
    expect(await lookupAll(lookup, 'data.example.com')).toEqual([
      { address: '93.184.216.34', family: 4 },
      { address: '2606:2800:220:1::1', family: 6 },
    ]);
    expect(await lookupOne(lookup, 'data.example.com')).toEqual(['93.184.216.34', 4]);
    expect(await lookupOne(lookup, 'data.example.com', { family: 6 })).toEqual(['2606:2800:220:1::1', 6]);
    const asDnsLookup = lookup as unknown as (h: string, f: number | ((...a: unknown[]) => void), cb?: (...a: unknown[]) => void) => void;
    const byFamily = await new Promise<unknown[]>((res) => asDnsLookup('data.example.com', 4, (...args) => res(args)));
    expect(byFamily).toEqual([null, '93.184.216.34', 4]);
    const noOptions = await new Promise<unknown[]>((res) => asDnsLookup('data.example.com', (...args) => res(args)));
    expect(noOptions).toEqual([null, '93.184.216.34', 4]);
  });

  it('checks at every lookup, so a name that rebinds to a private address is refused at connect time', async () => {
    let call = 0;
    const { resolve, calls } = fixedResolver({
      'rebind.example': () => (call++ === 0 ? ['93.184.216.34'] : ['169.254.169.254']),
    });
    const lookup = policyLookup(new AddressPolicy(), { resolve });
    // The first resolution (what a check before connecting would see) is public …
    expect(await lookupOne(lookup, 'rebind.example')).toEqual(['93.184.216.34', 4]);
    // … the one the connection uses is not, and it is refused.
    expect((await rejection(lookupOne(lookup, 'rebind.example'))).code).toBe('ERR_POLICY_DENIED');
    expect(calls).toEqual(['rebind.example', 'rebind.example']);
  });

  it('passes resolver errors through', async () => {
    const { resolve } = fixedResolver({});
    const lookup = policyLookup(new AddressPolicy(), { resolve });
    expect((await anyRejection(lookupOne(lookup, 'nowhere.example'))).code).toBe('ENOTFOUND');
  });
});

describe('connect-time enforcement on real connections to 127.0.0.1', () => {
  let server: http.Server;
  let port: number;
  let requests: number;
  let connections: number;
  const agents: { close(): Promise<void> }[] = [];
  const nodeAgents: http.Agent[] = [];

  beforeEach(async () => {
    requests = 0;
    connections = 0;
    server = http.createServer((_req, res) => {
      requests++;
      res.end('ok');
    });
    server.on('connection', () => connections++);
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    port = (server.address() as AddressInfo).port;
  });

  afterEach(async () => {
    await Promise.all(agents.splice(0).map((a) => a.close()));
    for (const a of nodeAgents.splice(0)) a.destroy();
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });

  /** What HTTP sources and S3/OSS reads connect through: an `Http1Pool` with the policy's lookup. */
  function poolFor(url: string, policy: AddressPolicy, resolve?: Resolver): Http1Pool {
    const pool = new Http1Pool(new URL(url).origin, {
      maxConnections: 1,
      headersTimeoutMs: 5_000,
      lookup: policyLookup(policy, resolve ? { resolve } : {}),
    });
    agents.push(pool);
    return pool;
  }

  async function poolGet(url: string, policy: AddressPolicy, resolve?: Resolver): Promise<string> {
    const u = new URL(url);
    const res = await poolFor(url, policy, resolve).request({ method: 'GET', path: u.pathname, headers: {} });
    return (await readAll(res.body)).toString('utf8');
  }

  function nodeGet(agent: http.Agent, url: string): Promise<string> {
    return new Promise((resolve, reject) => {
      http
        .get(url, { agent }, (res) => {
          let body = '';
          res.setEncoding('utf8');
          res.on('data', (c: string) => (body += c));
          res.on('end', () => resolve(body));
          res.on('error', reject);
        })
        .on('error', reject);
    });
  }

  // `localhost` may also resolve to ::1 on other machines, hence both loopback blocks.
  const LOOPBACK = ['127.0.0.0/8', '::1/128'];

  it('Http1Pool: localhost is refused before any connection when loopback is not allowed', async () => {
    const err = await rejection(poolGet(`http://localhost:${port}/`, new AddressPolicy()));
    expect(err).toBeInstanceOf(RoboflowError);
    expect(err.code).toBe('ERR_POLICY_DENIED');
    expect(err.message).toContain('localhost (127.0.0.1)');
    expect(requests).toBe(0);
    expect(connections).toBe(0);
  });

  it('Http1Pool: localhost is reached when 127.0.0.0/8 is allowed', async () => {
    const body = await poolGet(`http://localhost:${port}/`, new AddressPolicy({ allowRanges: LOOPBACK }));
    expect(body).toBe('ok');
    expect(requests).toBe(1);
  });

  it('Http1Pool: a name the submitter controls is judged by the address it resolves to', async () => {
    const { resolve } = fixedResolver({ 'evil.example': ['127.0.0.1'] });
    const refused = await rejection(poolGet(`http://evil.example:${port}/`, new AddressPolicy(), resolve));
    expect(refused.code).toBe('ERR_POLICY_DENIED');
    expect(connections).toBe(0);
    const body = await poolGet(`http://evil.example:${port}/`, new AddressPolicy({ allowRanges: LOOPBACK }), resolve);
    expect(body).toBe('ok');
    expect(requests).toBe(1);
  });

  it('Http1Pool: a literal IP host skips the lookup, which is why checkLiteralHost exists', async () => {
    const { resolve, calls } = fixedResolver({});
    const policy = new AddressPolicy();
    const body = await poolGet(`http://127.0.0.1:${port}/`, policy, resolve);
    expect(body).toBe('ok');
    expect(calls).toEqual([]);
    expect(thrown(() => checkLiteralHost(new URL(`http://127.0.0.1:${port}/`).hostname, policy)).code).toBe('ERR_POLICY_DENIED');
  });

  it('http.Agent({ lookup }): refused without the range, reached with it', async () => {
    const refusing = new http.Agent({ lookup: policyLookup(new AddressPolicy()) });
    nodeAgents.push(refusing);
    const err = await rejection(nodeGet(refusing, `http://localhost:${port}/`));
    expect(err.code).toBe('ERR_POLICY_DENIED');
    expect(requests).toBe(0);
    expect(connections).toBe(0);

    const allowing = new http.Agent({ lookup: policyLookup(new AddressPolicy({ allowRanges: LOOPBACK })) });
    nodeAgents.push(allowing);
    expect(await nodeGet(allowing, `http://localhost:${port}/`)).toBe('ok');
    expect(requests).toBe(1);
  });
});
