import { describe, expect, it } from 'vitest';
import { channels } from '../src/diagnostics.js';
import { ConcurrencyLimiter, type Release } from '../src/prefetch/concurrency.js';

describe('ConcurrencyLimiter', () => {
  it('grants up to the limit, then serves waiters first come, first served', async () => {
    const l = new ConcurrencyLimiter({ max: 2 });
    const a = await l.acquire();
    const b = await l.acquire();
    const order: string[] = [];
    const c = l.acquire().then((r) => (order.push('c'), r));
    const d = l.acquire().then((r) => (order.push('d'), r));
    expect(l.waiting).toBe(2);
    expect(l.shouldYield).toBe(true);
    a();
    a(); // a second release of the same permit changes nothing
    const rc = await c;
    expect(order).toEqual(['c']);
    expect(l.active).toBe(2);
    b();
    const rd = await d;
    expect(order).toEqual(['c', 'd']);
    rc();
    rd();
    expect(l.active).toBe(0);
  });

  it('lowers on throttling, at most once per interval, never below min', () => {
    const l = new ConcurrencyLimiter({ max: 16, min: 3, decreaseIntervalMs: 60_000 });
    l.onThrottle();
    expect(l.limit).toBe(4);
    l.onThrottle(); // the same burst of 503s
    expect(l.limit).toBe(4);
    const fast = new ConcurrencyLimiter({ max: 16, min: 3, decreaseIntervalMs: 0 });
    for (let i = 0; i < 10; i++) fast.onThrottle();
    expect(fast.limit).toBe(3);
  });

  it('lowers the limit to the most requests the store served at once, by a tenth to three quarters', () => {
    const l = new ConcurrencyLimiter({ max: 16, decreaseIntervalMs: 0 });
    expect(l.throttled).toBe(false);
    // A store that serves K = 4 at once: four bodies streamed, then one ended (a range boundary)
    // just before the 503 came.
    for (let i = 0; i < 4; i++) l.noteServing(1);
    l.noteServing(-1);
    l.onThrottle();
    expect(l.limit).toBe(4); // found K, though 3 were streaming at that instant
    expect(l.throttled).toBe(true);
    for (let i = 0; i < 5; i++) l.onSuccess(); // about one round of K successes
    expect(l.limit).toBe(5); // probes K + 1...
    l.noteServing(1);
    l.onThrottle();
    expect(l.limit).toBe(4); // ...and goes back to K, not to K / 2
    // A store that served all we sent and still throttles (a request-rate limit): down a tenth.
    const r = new ConcurrencyLimiter({ max: 20, decreaseIntervalMs: 0 });
    for (let i = 0; i < 20; i++) r.noteServing(1);
    r.onThrottle();
    expect(r.limit).toBe(18);
    expect(r.serving).toBe(20);
    for (let i = 0; i < 25; i++) r.noteServing(-1);
    expect(r.serving).toBe(0); // never negative
    // A storm that lets nothing through: a quarter at a time.
    const storm = new ConcurrencyLimiter({ max: 16, decreaseIntervalMs: 0 });
    storm.onThrottle();
    expect(storm.limit).toBe(4);
    storm.onThrottle();
    expect(storm.limit).toBe(1);
  });

  it('grows back by about one per round of successes, up to max', () => {
    const l = new ConcurrencyLimiter({ max: 8, decreaseIntervalMs: 0 });
    l.onThrottle();
    expect(l.limit).toBe(2);
    const limits: number[] = [];
    const off = channels.concurrency.subscribe((e) => limits.push(e.limit));
    try {
      // A round is `limit` successes; 3 rounds take 2 → about 5.
      for (let i = 0; i < 2 + 3 + 4; i++) l.onSuccess();
      expect(l.limit).toBeGreaterThanOrEqual(4);
      expect(l.limit).toBeLessThanOrEqual(5);
      for (let i = 0; i < 100; i++) l.onSuccess();
      expect(l.limit).toBe(8);
    } finally {
      off();
    }
    expect(limits.at(-1)).toBe(8);
    expect(limits).toEqual([...limits].sort((a, b) => a - b));
  });

  it('a lowered limit holds back new permits until enough are released', async () => {
    const l = new ConcurrencyLimiter({ max: 4, decreaseIntervalMs: 0 });
    const held: Release[] = await Promise.all([l.acquire(), l.acquire(), l.acquire(), l.acquire()]);
    l.noteServing(1);
    l.noteServing(1);
    l.onThrottle(); // the store served 2: limit 2 with 4 held
    expect(l.shouldYield).toBe(true);
    let granted = false;
    const next = l.acquire().then((r) => ((granted = true), r));
    held.pop()!();
    held.pop()!();
    await new Promise((r) => setImmediate(r));
    expect(granted).toBe(false); // 2 held = the limit
    held.pop()!();
    (await next)();
    held.pop()!();
    expect(l.active).toBe(0);
  });

  it('rejects a waiter whose signal aborts, and leaves no listener behind', async () => {
    const l = new ConcurrencyLimiter({ max: 1 });
    const r = await l.acquire();
    const ac = new AbortController();
    const waiting = l.acquire(ac.signal);
    ac.abort();
    await expect(waiting).rejects.toMatchObject({ code: 'ERR_ABORTED' });
    expect(l.waiting).toBe(0);
    r();
    // A granted waiter removed its abort listener: aborting afterwards changes nothing.
    const ac2 = new AbortController();
    const r2 = await l.acquire(ac2.signal);
    ac2.abort();
    expect(l.active).toBe(1);
    r2();
    await expect(l.acquire(ac.signal)).rejects.toMatchObject({ code: 'ERR_ABORTED' });
  });

  it('validates its options', () => {
    expect(() => new ConcurrencyLimiter({ max: 0 })).toThrow(RangeError);
    expect(() => new ConcurrencyLimiter({ max: 4, min: 5 })).toThrow(RangeError);
  });
});
