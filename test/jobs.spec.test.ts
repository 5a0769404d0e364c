// Job specs as submitters write them, and command lines split without a shell.
import { describe, expect, it } from 'vitest';
import { RoboflowError } from '../src/errors.js';
import { parseJobSpec, splitCommand } from '../src/jobs/spec.js';

function specError(value: unknown): string {
  try {
    parseJobSpec(value);
  } catch (err) {
    expect(err).toBeInstanceOf(RoboflowError);
    expect((err as RoboflowError).code).toBe('ERR_CONFIG');
    return (err as RoboflowError).message;
  }
  throw new Error(`${JSON.stringify(value)} was accepted`);
}

describe('parseJobSpec', () => {
  it('applies defaults and normalises checksums', () => {
    expect(
      parseJobSpec({
        inputs: [{ url: ' s3://b/a.mcap ', size: 10, checksum: { algorithm: 'sha1', hex: 'DA39A3EE5E6B4B0D3255BFEF95601890AFD80709' } }],
        processor: 'checksum',
      }),
    ).toEqual({
      inputs: [{ url: 's3://b/a.mcap', size: 10, checksum: { algorithm: 'sha1', hex: 'da39a3ee5e6b4b0d3255bfef95601890afd80709' } }],
      processor: 'checksum',
      args: {},
      maxAttempts: 3,
      priority: 0,
      key: expect.stringMatching(/^sha256:[0-9a-f]{64}$/),
    });
  });

  it('derives the same key for the same work, whatever the order of args or the attempts and priority', () => {
    const base = { inputs: [{ url: 's3://b/a.mcap' }], processor: 'exec', args: { command: ['x'], env: { A: '1', B: '2' } }, output: 's3://o/' };
    const key = parseJobSpec(base).key;
    expect(parseJobSpec({ ...base, args: { env: { B: '2', A: '1' }, command: ['x'] }, maxAttempts: 9, priority: -4 }).key).toBe(key);
    expect(parseJobSpec({ ...base, output: 's3://other/' }).key).not.toBe(key);
    expect(parseJobSpec({ ...base, args: { command: ['y'], env: { A: '1', B: '2' } } }).key).not.toBe(key);
    expect(parseJobSpec({ ...base, inputs: [{ url: 's3://b/a.mcap', size: 1 }] }).key).not.toBe(key);
    expect(parseJobSpec({ ...base, key: ' mine ' }).key).toBe('mine');
  });

  it('names each offending field', () => {
    expect(specError({ inputs: [], processor: 'p' })).toContain('inputs: must list at least one input URL');
    expect(specError({ processor: 'p' })).toContain('inputs:');
    expect(specError({ inputs: [{ url: '' }], processor: 'p' })).toContain('inputs[0].url: must not be empty');
    expect(specError({ inputs: [{ url: 'a' }, { url: 3 }], processor: 'p' })).toContain('inputs[1].url: must be a URL string');
    expect(specError({ inputs: [{ url: 'a' }], processor: ' ' })).toContain('processor: must name a processor');
    expect(specError({ inputs: [{ url: 'a' }], processor: 'p', maxAttempts: 0 })).toContain('maxAttempts: must be at least 1');
    expect(specError({ inputs: [{ url: 'a' }], processor: 'p', maxAttempts: 101 })).toContain('maxAttempts: must be at most 100');
    expect(specError({ inputs: [{ url: 'a' }], processor: 'p', maxAttempts: 2.5 })).toContain('maxAttempts: must be a whole number');
    expect(specError({ inputs: [{ url: 'a' }], processor: 'p', output: '' })).toContain('output:');
    expect(specError({ inputs: [{ url: 'a' }], processor: 'p', args: [1] })).toContain('args: must be an object');
    expect(specError({ inputs: [{ url: 'a', size: -1 }], processor: 'p' })).toContain('inputs[0].size: must not be negative');
    expect(specError({ inputs: [{ url: 'a', checksum: { algorithm: 'md5', hex: 'abc' } }], processor: 'p' })).toContain(
      'inputs[0].checksum.hex: a md5 digest has 32 hex digits, got 3',
    );
    expect(specError({ inputs: [{ url: 'a' }], processor: 'p', prio: 1 })).toContain('unknown field prio');
    expect(specError({ inputs: [{ url: 'a' }], processor: 'p', priority: 0.5 })).toContain('priority: must be a whole number');
    expect(specError({ inputs: [{ url: 'a' }], processor: 'p', key: 7 })).toContain('key: must be a string');
    expect(specError(null)).toContain('job spec');
  });

  it('lists every problem at once', () => {
    const message = specError({ inputs: [], processor: '', maxAttempts: 0 });
    expect(message).toContain('inputs');
    expect(message).toContain('processor');
    expect(message).toContain('maxAttempts');
  });
});

describe('splitCommand', () => {
  it('splits on white space and groups quoted words without expanding anything', () => {
    expect(splitCommand('gzip -k {input}')).toEqual(['gzip', '-k', '{input}']);
    expect(splitCommand('  a\tb \n c  ')).toEqual(['a', 'b', 'c']);
    expect(splitCommand(`tool --name "two words" 'single $HOME' *.mcap ~/x`)).toEqual([
      'tool',
      '--name',
      'two words',
      'single $HOME',
      '*.mcap',
      '~/x',
    ]);
    expect(splitCommand(`echo "it's" 'say "hi"'`)).toEqual(['echo', "it's", 'say "hi"']);
    expect(splitCommand(`a""b '' "x"y`)).toEqual(['ab', '', 'xy']);
    expect(splitCommand('sh -c "rm -rf /; echo $(id)"')).toEqual(['sh', '-c', 'rm -rf /; echo $(id)']);
  });

  it('refuses an unterminated quote and an empty command', () => {
    expect(() => splitCommand('echo "oops')).toThrow(/unterminated " quote/);
    expect(() => splitCommand("echo 'oops")).toThrow(/unterminated ' quote/);
    expect(() => splitCommand('   ')).toThrow(/empty/);
  });
});
