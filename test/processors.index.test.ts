import { describe, expect, it } from 'vitest';
import { RoboflowError } from '../src/errors.js';
import { getProcessor, isProcessorName, processorNames } from '../src/processors/index.js';

describe('processor registry', () => {
  it('returns a processor of each known name, carrying that name', () => {
    expect([...processorNames].sort()).toEqual(['checksum', 'exec', 'mcap-summary', 'sleep']);
    for (const name of processorNames) {
      const processor = getProcessor(name, { timeoutMs: 1000 });
      expect(processor.name).toBe(name);
      expect(typeof processor.run).toBe('function');
      expect(isProcessorName(name)).toBe(true);
    }
  });

  it('rejects an unknown name with ERR_CONFIG listing the known names', () => {
    let caught: unknown;
    try {
      getProcessor('gzip');
    } catch (err) {
      caught = err;
    }
    expect(caught).toBeInstanceOf(RoboflowError);
    const err = caught as RoboflowError;
    expect(err.code).toBe('ERR_CONFIG');
    expect(err.message).toContain('"gzip"');
    for (const name of processorNames) expect(err.message).toContain(name);
    expect(isProcessorName('constructor')).toBe(false);
    expect(() => getProcessor('toString')).toThrow(RoboflowError);
  });
});

describe('exec options', () => {
  it('rejects bad operator options when the processor is built', () => {
    for (const opts of [{ timeoutMs: 0 }, { timeoutMs: 2 ** 31 }, { killGraceMs: -5 }, { passEnv: ['A=B'] }, { passEnv: [''] }]) {
      expect(() => getProcessor('exec', opts)).toThrow(expect.objectContaining({ code: 'ERR_CONFIG' }));
    }
    expect(getProcessor('exec', { timeoutMs: 2 ** 31 - 1, passEnv: ['CUDA_VISIBLE_DEVICES'] }).name).toBe('exec');
  });
});
