/**
 * The test object server's fault rules: what a real store does to a downloader on a bad day
 * (status codes, resets, truncations, stalls, an object replaced mid-download, a lying
 * Content-Range, no Content-Length, an HTML error page), and which requests get them — by
 * method, bucket, key and range, the first n or a seeded random share, so a schedule repeats.
 */

import { mulberry32 } from '../../src/cli/demo/content.js';
import { RoboflowError } from '../../src/errors.js';
import type { ObjectBody } from './object-server.js';

export type Fault =
  | { kind: 'status'; status: number; retryAfterSeconds?: number; ossDelayMs?: number; body?: string; contentType?: string }
  /** Destroy the socket (TCP RST) after sending n body bytes. On HEAD: instead of answering. */
  | { kind: 'reset'; afterBytes: number }
  /** End the response cleanly after n bytes although Content-Length promised more. */
  | { kind: 'truncate'; afterBytes: number }
  /** Stop sending after n bytes for `ms`, then go on (default: until the client gives up).
   * On HEAD: delays the headers. */
  | { kind: 'stall'; afterBytes: number; ms?: number }
  /** Replace the object (new ETag) before serving this request. */
  | { kind: 'replace'; body: ObjectBody }
  /** 206 whose Content-Range names a different range than the bytes sent. */
  | { kind: 'bad-content-range' }
  /** Body sent chunked, without Content-Length. */
  | { kind: 'no-content-length' }
  /** 200 text/html error page instead of the object (a captive portal or a misrouted proxy). */
  | { kind: 'html-error' };

export interface FaultRule {
  fault: Fault;
  /** Which requests: default all GETs of any object. `method: '*'` matches every object
   * request (GET, HEAD, PUT, POST, DELETE); on PUT/POST/DELETE only `status`, `reset` and
   * `replace` faults act. */
  match?: { method?: string; bucket?: string; key?: string; rangedOnly?: boolean };
  /** Apply to the first `times` matching requests (default 1), or ... */
  times?: number;
  /** ... skip the first `skip` matching requests first (default 0), or ... */
  skip?: number;
  /** ... apply to each matching request with this probability, drawn from a seeded PRNG (then
   * `times` = max applications, default unlimited). */
  probability?: number;
  /** Seed of the rule's PRNG. (Default: 1) */
  seed?: number;
}

interface RuleState {
  readonly rule: FaultRule;
  matched: number;
  applied: number;
  readonly random: () => number;
}

/** The rules of one server, in the order they were added, with their counts. */
export class FaultRules {
  private readonly rules: RuleState[] = [];

  add(rule: FaultRule): void {
    if (rule.probability !== undefined && !(rule.probability >= 0 && rule.probability <= 1)) {
      throw new RoboflowError('ERR_CONFIG', `fault rule probability must be within [0, 1], got ${rule.probability}`);
    }
    this.rules.push({ rule, matched: 0, applied: 0, random: mulberry32(rule.seed ?? 1) });
  }

  clear(): void {
    this.rules.length = 0;
  }

  /** The fault for this request, if a rule takes it (see `ObjectServer.addFault`). */
  pick(method: string, bucket: string, key: string, ranged: boolean): Fault | undefined {
    for (const st of this.rules) {
      const m = st.rule.match ?? {};
      const wanted = (m.method ?? 'GET').toUpperCase();
      if (wanted !== '*' && wanted !== method) continue;
      if (m.bucket !== undefined && m.bucket !== bucket) continue;
      if (m.key !== undefined && m.key !== key) continue;
      if (m.rangedOnly === true && !ranged) continue;
      const index = st.matched++;
      if (index < (st.rule.skip ?? 0)) continue;
      if (st.rule.probability !== undefined) {
        if (st.rule.times !== undefined && st.applied >= st.rule.times) continue;
        if (st.random() >= st.rule.probability) continue;
      } else if (st.applied >= (st.rule.times ?? 1)) {
        continue;
      }
      st.applied++;
      return st.rule.fault;
    }
    return undefined;
  }
}
