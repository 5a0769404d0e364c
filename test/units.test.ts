import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { RoboflowError } from '../src/errors.js';
import { formatBytes, formatDuration, formatSize, parseDuration, parseSize } from '../src/units.js';

describe('parseSize', () => {
  it.each([
    ['8388608', 8_388_608],
    ['8MiB', 8 * 2 ** 20],
    ['8MB', 8_000_000],
    ['8 KiB', 8192],
    ['8kib', 8192],
    ['1.5GiB', 1.5 * 2 ** 30],
    ['.5KiB', 512],
    ['0', 0],
    ['10B', 10],
    ['2TB', 2e12],
    ['  64 KiB  ', 65_536],
    ['1.1MB', 1_100_000],
    ['512k', 512_000],
    ['8 M', 8_000_000],
  ])('%j is %d bytes', (text, bytes) => {
    expect(parseSize(text)).toBe(bytes);
  });

  it('passes non-negative integers through', () => {
    expect(parseSize(4096)).toBe(4096);
  });

  it.each(['', 'MiB', '-1', '8XB', '1e6', '1.2.3MiB', '8 MiB extra', 'NaN', '99999PiB', '0.3B'])(
    'rejects %j with ERR_CONFIG naming the text and the syntax',
    (text) => {
      let caught: unknown;
      try {
        parseSize(text);
      } catch (err) {
        caught = err;
      }
      expect(caught).toBeInstanceOf(RoboflowError);
      expect((caught as RoboflowError).code).toBe('ERR_CONFIG');
      expect((caught as RoboflowError).message).toContain(JSON.stringify(text));
      expect((caught as RoboflowError).message).toContain('MiB');
    },
  );

  it('names the flag or key it was given', () => {
    expect(() => parseSize('8XB', '--chunk-size')).toThrow(/^--chunk-size: invalid size "8XB"/);
    expect(() => parseDuration('soon', '--lease')).toThrow(/^--lease: invalid duration "soon"/);
  });

  it('rejects fractional and negative numbers', () => {
    expect(() => parseSize(1.5)).toThrow(RoboflowError);
    expect(() => parseSize(-1)).toThrow(RoboflowError);
  });
});

describe('parseDuration', () => {
  it.each([
    ['250', 250],
    ['250ms', 250],
    ['30s', 30_000],
    ['5m', 300_000],
    ['1h', 3_600_000],
    ['1d', 86_400_000],
    ['1h30m', 5_400_000],
    ['1.5s', 1_500],
    ['1 h 30 m', 5_400_000],
    ['5min', 300_000],
    ['1m30s250ms', 90_250],
    ['2S', 2_000],
    ['0', 0],
  ])('%j is %d ms', (text, ms) => {
    expect(parseDuration(text)).toBe(ms);
  });

  it.each(['', 's', '-5s', '5x', '5 minutes', '1.2.3s', '5mss', '1e3'])('rejects %j', (text) => {
    expect(() => parseDuration(text)).toThrow(/invalid duration.*ms, s, m, h, d/);
  });
});

describe('format and parse round trip', () => {
  it('formatSize is exact for every safe integer', () => {
    fc.assert(
      fc.property(fc.maxSafeNat(), (n) => {
        expect(parseSize(formatSize(n))).toBe(n);
      }),
    );
  });

  it('formatSize round trips multiples of the units', () => {
    const unit = fc.constantFrom(1, 1000, 1024, 1e6, 2 ** 20, 1e9, 2 ** 30, 2 ** 40);
    fc.assert(
      fc.property(fc.nat({ max: 4096 }), unit, (k, u) => {
        expect(parseSize(formatSize(k * u))).toBe(k * u);
      }),
    );
  });

  it('formatDuration is exact for every safe integer', () => {
    fc.assert(
      fc.property(fc.maxSafeNat(), (n) => {
        expect(parseDuration(formatDuration(n))).toBe(n);
      }),
    );
  });

  it('writes the shortest exact forms', () => {
    expect(formatSize(8 * 2 ** 20)).toBe('8 MiB');
    expect(formatSize(8_000_000)).toBe('8 MB');
    expect(formatSize(1_536)).toBe('1536 B');
    expect(formatSize(3 * 2 ** 30)).toBe('3 GiB');
    expect(formatSize(1_000_001)).toBe('1000001 B');
    expect(formatDuration(5_400_000)).toBe('1h30m');
    expect(formatDuration(250)).toBe('250ms');
    expect(formatDuration(1_500)).toBe('1s500ms');
  });

  it('formatBytes is approximate and readable', () => {
    expect(formatBytes(1.5 * 2 ** 30)).toBe('1.5 GiB');
    expect(formatBytes(8 * 2 ** 20)).toBe('8.0 MiB');
    expect(formatBytes(12)).toBe('12 B');
  });
});
