/**
 * Seeded randomness for the chaos scenarios. Everything a scenario chooses at random — object
 * sizes, fault rule seeds, kill points, restart moments — comes from one `Rng` derived from the
 * run's seed and the scenario's name, so the same seed gives the same fault schedule, and a
 * scenario's schedule does not shift when another scenario changes what it draws.
 */

import { createHash } from 'node:crypto';

/** A 32-bit seed from a parent seed and a label (`deriveSeed(7, 'faults/reset')`). */
export function deriveSeed(seed: number, label: string): number {
  const digest = createHash('sha256').update(`${seed >>> 0}:${label}`).digest();
  // Fault rules treat 0 like any other seed, but a zero seed reads like "unset" in a report.
  return digest.readUInt32BE(0) || 1;
}

/** mulberry32: small, fast, and the same generator the object server uses for fault rules. */
export class Rng {
  #state: number;

  constructor(seed: number) {
    this.#state = seed >>> 0;
  }

  /** Uniform in [0, 1). */
  next(): number {
    this.#state = (this.#state + 0x6d2b79f5) >>> 0;
    let t = this.#state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }

  /** Uniform integer in [min, max], both included. */
  int(min: number, max: number): number {
    return min + Math.floor(this.next() * (max - min + 1));
  }

  /** Uniform in [min, max). */
  between(min: number, max: number): number {
    return min + this.next() * (max - min);
  }

  pick<T>(items: readonly T[]): T {
    if (items.length === 0) throw new RangeError('cannot pick from an empty list');
    return items[Math.floor(this.next() * items.length)] as T;
  }

  /** A copy of `items` in a random order (Fisher–Yates). */
  shuffle<T>(items: readonly T[]): T[] {
    const out = [...items];
    for (let i = out.length - 1; i > 0; i--) {
      const j = Math.floor(this.next() * (i + 1));
      [out[i], out[j]] = [out[j] as T, out[i] as T];
    }
    return out;
  }

  /** A child generator for one purpose; draws from it leave this one untouched. */
  fork(label: string): Rng {
    return new Rng(deriveSeed(this.#state, label));
  }
}

/** A seed for a run that names none: printed with the results so the run can be repeated. */
export function randomSeed(): number {
  return (Math.floor(Math.random() * 0x7fffffff) >>> 0) || 1;
}
