import { describe, expect, it } from 'vitest';
import { parseBenchArgs, planFor } from '../bench/src/options.js';
import { seededRandom } from '../bench/src/scenario-resume.js';
import { rotated } from '../bench/src/runner.js';
import { benchEnv } from '../bench/src/tools.js';

const MiB = 2 ** 20;
const GiB = 2 ** 30;

describe('parseBenchArgs', () => {
  it('runs everything three times by default', () => {
    const o = parseBenchArgs([]);
    expect(o.scenarios).toEqual(['download', 'memory', 'sweep', 'prefetch', 'resume', 'queue']);
    expect(o.conditions).toEqual(['capped', 'uncapped']);
    expect(o.repeat).toBe(3);
    expect(o.reportOnly).toBe(false);
    // Warm starts unless asked: a pipeline runs its tools again and again.
    expect(o.dropCaches).toBe(false);
    expect(parseBenchArgs(['--drop-caches']).dropCaches).toBe(true);
  });
  it('accepts lists, repeated flags and sizes with units', () => {
    const o = parseBenchArgs(['--scenario', 'download,sweep', '--scenario', 'resume', '--size', '512MiB', '--memory-sizes', '1GiB,2GiB', '--repeat', '5']);
    expect(o.scenarios).toEqual(['download', 'sweep', 'resume']);
    expect(o.size).toBe(512 * MiB);
    expect(o.memorySizes).toEqual([GiB, 2 * GiB]);
    expect(o.repeat).toBe(5);
  });
  it('quick means one repetition unless --repeat says otherwise', () => {
    expect(parseBenchArgs(['--quick']).repeat).toBe(1);
    expect(parseBenchArgs(['--quick', '--repeat', '2']).repeat).toBe(2);
  });
  it('names the flag in its errors', () => {
    expect(() => parseBenchArgs(['--scenario', 'speed'])).toThrow(/--scenario speed/);
    expect(() => parseBenchArgs(['--repeat', '0'])).toThrow(/--repeat 0/);
    expect(() => parseBenchArgs(['--condition', 'fast'])).toThrow(/--condition fast/);
    expect(() => parseBenchArgs(['--size', 'big'])).toThrow(/--size/);
    expect(() => parseBenchArgs(['--frobnicate'])).toThrow();
  });
});

describe('planFor', () => {
  it('full run: 1 GiB objects, 256 MiB for single streams under the cap, memory up to 4 GiB', () => {
    const p = planFor(parseBenchArgs([]));
    expect(p.download).toEqual({ objectSize: GiB, singleStreamSize: 256 * MiB, ratePerConnection: 25e6, latencyMs: 20 });
    expect(p.memory.sizes).toEqual([256 * MiB, GiB, 4 * GiB]);
    expect(p.sweep.connections).toEqual([1, 4, 8, 16, 32]);
    expect(p.sweep.chunkMiB).toEqual([4, 8, 16]);
    expect(p.prefetch.jobs).toBe(8);
  });
  it('quick run is smaller everywhere', () => {
    const full = planFor(parseBenchArgs([]));
    const quick = planFor(parseBenchArgs(['--quick']));
    expect(quick.download.objectSize).toBeLessThan(full.download.objectSize);
    expect(quick.sweep.objectSize).toBeLessThan(full.sweep.objectSize);
    expect(quick.resume.objectSize).toBeLessThan(full.resume.objectSize);
    expect(Math.max(...quick.memory.sizes)).toBeLessThan(Math.max(...full.memory.sizes));
  });
  it('--size never makes the single-stream object larger than the main one', () => {
    const p = planFor(parseBenchArgs(['--size', '100MiB']));
    expect(p.download.objectSize).toBe(100 * MiB);
    expect(p.download.singleStreamSize).toBe(100 * MiB);
  });
});

describe('helpers', () => {
  it('rotates the tool order per repetition and keeps every tool', () => {
    expect(rotated(['a', 'b', 'c'], 0)).toEqual(['a', 'b', 'c']);
    expect(rotated(['a', 'b', 'c'], 1)).toEqual(['b', 'c', 'a']);
    expect(rotated(['a', 'b', 'c'], 4)).toEqual(['b', 'c', 'a']);
    expect(rotated([], 3)).toEqual([]);
  });
  it('kill points are random but reproducible from the seed', () => {
    const a = seededRandom(7);
    const b = seededRandom(7);
    const xs = Array.from({ length: 5 }, () => a());
    expect(Array.from({ length: 5 }, () => b())).toEqual(xs);
    expect(xs.every((x) => x >= 0 && x < 1)).toBe(true);
    expect(new Set(xs).size).toBe(5);
  });
  it('gives tools dummy credentials and no proxy, whatever the environment holds', () => {
    const env = benchEnv({ PATH: '/bin', AWS_SECRET_ACCESS_KEY: 'real', AWS_SESSION_TOKEN: 'tok', AWS_CA_BUNDLE: '/x', HTTPS_PROXY: 'http://p', RCLONE_CONFIG: '/r' });
    expect(env.AWS_SECRET_ACCESS_KEY).toBe('test');
    expect(env.AWS_ACCESS_KEY_ID).toBe('test');
    expect(env.AWS_SESSION_TOKEN).toBeUndefined();
    expect(env.AWS_CA_BUNDLE).toBeUndefined();
    expect(env.HTTPS_PROXY).toBeUndefined();
    expect(env.RCLONE_CONFIG).toBeUndefined();
    expect(env.PATH).toBe('/bin');
  });
});
