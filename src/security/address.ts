/**
 * Which network addresses a worker may connect to.
 *
 * A job names the hosts a worker fetches from, so without a check a job could point a worker at
 * the cloud metadata service (169.254.169.254), the database next to it, or anything else only
 * the worker's network can reach. With the check in force, a connection to a non-public address
 * (loopback, link-local, private, unique-local, unspecified, multicast, reserved) is refused
 * unless the operator allowed that range (`--allow-private-range 10.0.0.0/8`) or that exact
 * address (a literal IP host in an allowlist pattern, such as `http://127.0.0.1:9000/*`).
 *
 * Checking a host name once before connecting is not enough: DNS may answer with a public
 * address for the check and a private one for the connection (DNS rebinding). So the check runs
 * where the connection is made: `policyLookup()` is a `dns.lookup` replacement that resolves the
 * name and fails the lookup unless every address it got is allowed; the socket then connects to
 * exactly the addresses that were checked. It plugs into `net.connect`/`tls.connect` (`Http1Pool`:
 * HTTP sources and S3/OSS reads), and into `http.Agent`/`https.Agent` (what the
 * AWS SDK's `NodeHttpHandler` uses for uploads). Node does not call `lookup` for a literal IP host, so those are checked
 * with `checkLiteralHost()` before a request is made.
 *
 * Addresses that embed an IPv4 address (IPv4-mapped `::ffff:a.b.c.d`, IPv4-compatible `::a.b.c.d`,
 * NAT64 `64:ff9b::/96`, 6to4 `2002::/16`) are judged by the IPv4 address too, since that is
 * where the packets may end up.
 */

import dns from 'node:dns';
import { isIP, type LookupFunction } from 'node:net';
import { RoboflowError } from '../errors.js';

/**
 * - `loopback`: 127.0.0.0/8, ::1.
 * - `link-local`: 169.254.0.0/16 (cloud instance metadata lives at 169.254.169.254), fe80::/10.
 * - `private`: 10/8, 172.16/12, 192.168/16, 100.64/10 (carrier-grade NAT, also used inside cloud
 *   networks), the deprecated IPv6 site-local fec0::/10 and the local-use NAT64 64:ff9b:1::/48.
 * - `unique-local`: fc00::/7.
 * - `unspecified`: 0.0.0.0/8 and `::` (connecting to 0.0.0.0 reaches the local host on Linux).
 * - `multicast`: 224.0.0.0/4, ff00::/8.
 * - `reserved`: not routed on the internet: 192.0.0.0/24, the documentation ranges
 *   (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32), benchmarking 198.18.0.0/15,
 *   240.0.0.0/4 with the broadcast address, the IPv6 discard prefix 100::/64.
 * - `public`: everything else.
 */
export type AddressClass =
  | 'loopback'
  | 'link-local'
  | 'private'
  | 'unique-local'
  | 'unspecified'
  | 'multicast'
  | 'reserved'
  | 'public';

/** Where the address-policy switches live, for messages. */
export const PRIVATE_RANGE_FLAG = '--allow-private-range';
export const PRIVATE_RANGE_ENV = 'ROBOFLOW_ALLOW_PRIVATE_RANGES';

// ---------------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------------

/** An address as a number: 32 bits for IPv4, 128 for IPv6. */
export interface IpAddress {
  readonly family: 4 | 6;
  readonly value: bigint;
}

/** A CIDR block; `base` has no bits set below the prefix. */
export interface Cidr {
  readonly family: 4 | 6;
  readonly base: bigint;
  readonly prefix: number;
}

const BITS = { 4: 32, 6: 128 } as const;

function parseIPv4(s: string): bigint {
  let value = 0n;
  for (const part of s.split('.')) value = (value << 8n) | BigInt(Number(part));
  return value;
}

function parseIPv6(s: string): bigint {
  let text = s;
  // A dotted IPv4 tail stands for the last two groups.
  const lastColon = text.lastIndexOf(':');
  const tail = text.slice(lastColon + 1);
  if (tail.includes('.')) {
    const v4 = parseIPv4(tail);
    text = `${text.slice(0, lastColon + 1)}${(v4 >> 16n).toString(16)}:${(v4 & 0xffffn).toString(16)}`;
  }
  const [head = '', rest] = text.split('::');
  const headGroups = head === '' ? [] : head.split(':');
  const restGroups = rest === undefined || rest === '' ? [] : rest.split(':');
  const missing = 8 - headGroups.length - restGroups.length;
  const groups = rest === undefined ? headGroups : [...headGroups, ...Array<string>(missing).fill('0'), ...restGroups];
  let value = 0n;
  for (const g of groups) value = (value << 16n) | BigInt(parseInt(g, 16));
  return value;
}

/**
 * Parses an IPv4 or IPv6 address (brackets and an IPv6 zone such as `%eth0` are accepted and
 * dropped). Returns null for anything else, including host names and the non-standard IPv4
 * forms (`0x7f.1`, `2130706433`) that `new URL()` has already turned into dotted quads.
 */
export function parseIp(ip: string): IpAddress | null {
  let s = ip.trim();
  if (s.startsWith('[') && s.endsWith(']')) s = s.slice(1, -1);
  const zone = s.indexOf('%');
  if (zone >= 0) s = s.slice(0, zone);
  switch (isIP(s)) {
    case 4:
      return { family: 4, value: parseIPv4(s) };
    case 6:
      return { family: 6, value: parseIPv6(s) };
    default:
      return null;
  }
}

/** Text form: dotted quad, or IPv6 with the longest run of zero groups compressed. */
export function formatIp(addr: IpAddress): string {
  if (addr.family === 4) {
    return [24n, 16n, 8n, 0n].map((shift) => ((addr.value >> shift) & 0xffn).toString()).join('.');
  }
  const groups = [112n, 96n, 80n, 64n, 48n, 32n, 16n, 0n].map((shift) => Number((addr.value >> shift) & 0xffffn));
  let bestStart = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLen) {
      bestStart = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = groups.map((g) => g.toString(16));
  if (bestStart < 0) return hex.join(':');
  return `${hex.slice(0, bestStart).join(':')}::${hex.slice(bestStart + bestLen).join(':')}`;
}

function mask(family: 4 | 6, prefix: number): bigint {
  const bits = BITS[family];
  return ((1n << BigInt(bits)) - 1n) ^ ((1n << BigInt(bits - prefix)) - 1n);
}

function inCidr(addr: IpAddress, cidr: Cidr): boolean {
  return addr.family === cidr.family && (addr.value & mask(cidr.family, cidr.prefix)) === cidr.base;
}

/** `::ffff:a.b.c.d` is an IPv4 connection on a dual-stack socket: treat it as the IPv4 address. */
function unmapped(addr: IpAddress): IpAddress {
  if (addr.family === 6 && addr.value >> 32n === 0xffffn) return { family: 4, value: addr.value & 0xffffffffn };
  return addr;
}

/**
 * Parses `10.0.0.0/8`, `fd00::/8`, or a bare address (a block of one). Throws `ERR_CONFIG`
 * naming the value and `--allow-private-range` when it is malformed or has host bits set.
 */
export function parseCidr(text: string): Cidr {
  const bad = (why: string) =>
    new RoboflowError(
      'ERR_CONFIG',
      `${PRIVATE_RANGE_FLAG} "${text}" ${why}; expected a CIDR block such as 10.0.0.0/8, 127.0.0.0/8 or fd00::/8`,
    );
  const slash = text.indexOf('/');
  const addrText = (slash < 0 ? text : text.slice(0, slash)).trim();
  const parsed = parseIp(addrText);
  if (parsed === null || addrText.includes('%')) throw bad('is not an IP address or CIDR block');
  let prefix: number = BITS[parsed.family];
  if (slash >= 0) {
    const p = text.slice(slash + 1).trim();
    if (!/^\d{1,3}$/.test(p) || Number(p) > BITS[parsed.family]) {
      throw bad(`has a prefix length that is not 0 to ${BITS[parsed.family]}`);
    }
    prefix = Number(p);
  }
  const m = mask(parsed.family, prefix);
  if ((parsed.value & m) !== parsed.value) {
    const base = formatIp({ family: parsed.family, value: parsed.value & m });
    throw bad(`has bits set below its /${prefix} prefix (did you mean ${base}/${prefix}?)`);
  }
  // A block inside ::ffff:0:0/96 is an IPv4 block, matched against unmapped addresses.
  if (parsed.family === 6 && prefix >= 96 && parsed.value >> 32n === 0xffffn) {
    return { family: 4, base: parsed.value & 0xffffffffn, prefix: prefix - 96 };
  }
  return { family: parsed.family, base: parsed.value, prefix };
}

function cidr(text: string): Cidr {
  return parseCidr(text);
}

// ---------------------------------------------------------------------------------------------
// Classification
// ---------------------------------------------------------------------------------------------

/** First match wins, so narrower blocks come before the blocks that contain them. */
const IPV4_TABLE: readonly (readonly [Cidr, AddressClass])[] = [
  [cidr('0.0.0.0/8'), 'unspecified'],
  [cidr('10.0.0.0/8'), 'private'],
  [cidr('100.64.0.0/10'), 'private'],
  [cidr('127.0.0.0/8'), 'loopback'],
  [cidr('169.254.0.0/16'), 'link-local'],
  [cidr('172.16.0.0/12'), 'private'],
  [cidr('192.0.0.0/24'), 'reserved'],
  [cidr('192.0.2.0/24'), 'reserved'],
  [cidr('192.168.0.0/16'), 'private'],
  [cidr('198.18.0.0/15'), 'reserved'],
  [cidr('198.51.100.0/24'), 'reserved'],
  [cidr('203.0.113.0/24'), 'reserved'],
  [cidr('224.0.0.0/4'), 'multicast'],
  [cidr('240.0.0.0/4'), 'reserved'],
];

const IPV6_TABLE: readonly (readonly [Cidr, AddressClass])[] = [
  [cidr('::/128'), 'unspecified'],
  [cidr('::1/128'), 'loopback'],
  [cidr('64:ff9b:1::/48'), 'private'],
  [cidr('100::/64'), 'reserved'],
  [cidr('2001:db8::/32'), 'reserved'],
  [cidr('fc00::/7'), 'unique-local'],
  [cidr('fe80::/10'), 'link-local'],
  [cidr('fec0::/10'), 'private'],
  [cidr('ff00::/8'), 'multicast'],
];

/** IPv6 blocks that carry an IPv4 address, and where it sits. */
const EMBEDDED_V4: readonly { readonly block: Cidr; readonly shift: bigint }[] = [
  // IPv4-compatible (deprecated); `::` and `::1` are matched by the table first.
  { block: cidr('::/96'), shift: 0n },
  { block: cidr('64:ff9b::/96'), shift: 0n },
  { block: cidr('2002::/16'), shift: 80n },
];

function classifyV4(value: bigint): AddressClass {
  const addr: IpAddress = { family: 4, value };
  for (const [block, cls] of IPV4_TABLE) if (inCidr(addr, block)) return cls;
  return 'public';
}

function classifyParsed(parsed: IpAddress): AddressClass {
  const addr = unmapped(parsed);
  if (addr.family === 4) return classifyV4(addr.value);
  for (const [block, cls] of IPV6_TABLE) if (inCidr(addr, block)) return cls;
  for (const { block, shift } of EMBEDDED_V4) {
    if (inCidr(addr, block)) return classifyV4((addr.value >> shift) & 0xffffffffn);
  }
  return 'public';
}

/**
 * The class of an IPv4 or IPv6 address (see `AddressClass`). Throws `ERR_BAD_URL` for text that
 * is not an IP address.
 */
export function classifyAddress(ip: string): AddressClass {
  const parsed = parseIp(ip);
  if (parsed === null) throw new RoboflowError('ERR_BAD_URL', `"${ip}" is not an IP address`);
  return classifyParsed(parsed);
}

const CLASS_NOTES: Record<Exclude<AddressClass, 'public'>, string> = {
  loopback: 'a loopback address (this machine)',
  'link-local': 'a link-local address (where cloud instance metadata and credentials are served)',
  private: 'a private-network address',
  'unique-local': 'a unique-local IPv6 address (a private network)',
  unspecified: 'an unspecified address (which reaches this machine)',
  multicast: 'a multicast address',
  reserved: 'a reserved address',
};

// ---------------------------------------------------------------------------------------------
// The policy
// ---------------------------------------------------------------------------------------------

export interface AddressPolicyOptions {
  /**
   * Refuse connections to non-public addresses. Off means every address is allowed, as for a
   * worker without allowlists. (Default: true)
   */
  readonly refusePrivate?: boolean;
  /** CIDR blocks whose addresses are allowed even though they are not public (`--allow-private-range`). (Default: none) */
  readonly allowRanges?: readonly string[];
  /**
   * Exact addresses that are allowed: the literal IP hosts an allowlist names, so that
   * `http://127.0.0.1:9000/*` needs no range flag. (Default: none)
   */
  readonly allowAddresses?: readonly string[];
}

export class AddressPolicy {
  /** Whether non-public addresses are refused at all. */
  readonly enforced: boolean;
  /** The allowed blocks as given, for the start-up log. */
  readonly allowRanges: readonly string[];
  readonly #ranges: readonly Cidr[];

  constructor(opts: AddressPolicyOptions = {}) {
    this.enforced = opts.refusePrivate ?? true;
    this.allowRanges = [...(opts.allowRanges ?? [])];
    const exact = (opts.allowAddresses ?? []).map((a) => {
      const parsed = parseIp(a);
      if (parsed === null) throw new RoboflowError('ERR_CONFIG', `allowed address "${a}" is not an IP address`);
      const u = unmapped(parsed);
      return { family: u.family, base: u.value, prefix: BITS[u.family] } satisfies Cidr;
    });
    this.#ranges = [...this.allowRanges.map(parseCidr), ...exact];
  }

  /** Whether a connection to `ip` is allowed; false for text that is not an IP address. */
  allows(ip: string): boolean {
    const parsed = parseIp(ip);
    if (parsed === null) return false;
    if (!this.enforced) return true;
    if (classifyParsed(parsed) === 'public') return true;
    const addr = unmapped(parsed);
    return this.#ranges.some((r) => inCidr(addr, r));
  }

  /** Throws `ERR_POLICY_DENIED` unless `host`, resolved to `ip`, may be connected to. */
  check(host: string, ip: string): void {
    if (this.allows(ip)) return;
    const parsed = parseIp(ip);
    if (parsed === null) {
      throw new RoboflowError('ERR_POLICY_DENIED', `refusing to connect to ${host}: "${ip}" is not an IP address`);
    }
    const cls = classifyParsed(parsed) as Exclude<AddressClass, 'public'>;
    const addr = unmapped(parsed);
    const exact = `${formatIp(addr)}/${BITS[addr.family]}`;
    const shown = host === ip || parseIp(host) !== null ? ip : `${host} (${ip})`;
    throw new RoboflowError(
      'ERR_POLICY_DENIED',
      `refusing to connect to ${shown}: it is ${CLASS_NOTES[cls]}, and this worker connects only to public ` +
        `addresses; if the host is meant to be reachable, the operator can allow it with ` +
        `${PRIVATE_RANGE_FLAG} ${exact} (or ${PRIVATE_RANGE_ENV})`,
    );
  }
}

/** Throws `ERR_POLICY_DENIED` unless `host`, resolved to `ip`, may be connected to under `policy`. */
export function checkAddress(host: string, ip: string, policy: AddressPolicy): void {
  policy.check(host, ip);
}

/**
 * Checks a host that is a literal IP address (`127.0.0.1`, `[::1]`), which Node connects to
 * without a lookup. Returns true when the host was an address (and is allowed), false when it is
 * a name, whose addresses `policyLookup()` checks at connect time.
 */
export function checkLiteralHost(host: string, policy: AddressPolicy): boolean {
  const parsed = parseIp(host);
  if (parsed === null) return false;
  policy.check(host, host.replace(/^\[(.*)\]$/, '$1'));
  return true;
}

/** The resolver `policyLookup()` wraps: `dns.lookup` in its `{ all: true }` form. */
export type Resolver = (
  hostname: string,
  options: dns.LookupAllOptions,
  callback: (err: NodeJS.ErrnoException | null, addresses: dns.LookupAddress[]) => void,
) => void;

const systemResolver: Resolver = (hostname, options, callback) => dns.lookup(hostname, options, callback);

export interface PolicyLookupOptions {
  /** Resolves names. (Default: `dns.lookup`, i.e. the system resolver and /etc/hosts) */
  readonly resolve?: Resolver;
}

type AnyLookupCallback = (err: NodeJS.ErrnoException | null, address: string | dns.LookupAddress[], family?: number) => void;

/**
 * A `dns.lookup`-compatible function that fails unless every address the name resolves to is
 * allowed by `policy` (see the module comment). Accepts the same arguments as `dns.lookup`:
 * `(hostname, callback)`, `(hostname, family, callback)` and `(hostname, options, callback)`,
 * with `options.all` selecting the array form. Pass it as `lookup` to `net.connect`,
 * `tls.connect` (as `Http1Pool` does), or `http.Agent`/`https.Agent`.
 */
export function policyLookup(policy: AddressPolicy, opts: PolicyLookupOptions = {}): LookupFunction {
  const resolve = opts.resolve ?? systemResolver;
  function lookup(
    hostname: string,
    options: dns.LookupOptions | number | AnyLookupCallback,
    maybeCallback?: AnyLookupCallback,
  ): void {
    const callback = typeof options === 'function' ? options : maybeCallback;
    if (typeof callback !== 'function') throw new TypeError('policyLookup: the callback argument must be a function');
    const o: dns.LookupOptions = typeof options === 'function' ? {} : typeof options === 'number' ? { family: options } : (options ?? {});
    const all = o.all === true;
    resolve(hostname, { ...o, all: true }, (err, addresses) => {
      if (err) {
        callback(err, all ? [] : '', 0);
        return;
      }
      try {
        // One refused address fails the whole lookup: an answer that mixes a public and a private
        // address is what a rebinding attack looks like.
        for (const a of addresses) policy.check(hostname, a.address);
      } catch (policyErr) {
        callback(policyErr as RoboflowError, all ? [] : '', 0);
        return;
      }
      if (all) {
        callback(null, addresses);
        return;
      }
      const first = addresses[0];
      if (first === undefined) {
        const notFound = Object.assign(new Error(`getaddrinfo ENOTFOUND ${hostname}`), {
          code: 'ENOTFOUND',
          hostname,
        }) as NodeJS.ErrnoException;
        callback(notFound, '', 0);
        return;
      }
      callback(null, first.address, first.family);
    });
  }
  return lookup as LookupFunction;
}
