import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { summariseCpuProfile } from '../bench/src/profile.js';
import type { BenchResults } from '../bench/src/results.js';
import {
  loadAllResults,
  parseLastJsonLine,
  parseResults,
  parseTimeOutput,
  parseVersionLine,
  pickLatest,
  resultsFileName,
  RESULTS_SCHEMA,
  saveResults,
} from '../bench/src/results.js';
import { cpuModelFrom } from '../bench/src/machine.js';

function results(startedAt: string, quick: boolean, scenarios: BenchResults['scenarios']): BenchResults {
  return {
    schema: RESULTS_SCHEMA,
    startedAt,
    finishedAt: startedAt,
    quick,
    repeat: quick ? 1 : 3,
    command: 'npm run bench',
    machine: { nproc: 2, memoryBytes: 2 ** 34, cpuModel: 'x', node: 'v20', kernel: 'Linux', platform: 'linux-x64', dropCaches: false, downloadDir: '/tmp' },
    tools: [],
    scenarios,
    notes: [],
  };
}

describe('parseTimeOutput', () => {
  it('reads the four numbers of a successful run', () => {
    expect(parseTimeOutput('2.53 1.20 0.85 48320\n')).toEqual({
      elapsedSeconds: 2.53,
      userSeconds: 1.2,
      sysSeconds: 0.85,
      maxRssKiB: 48320,
      exitCode: 0,
      signal: null,
    });
  });
  it('reads the status line GNU time writes for a failed or killed command', () => {
    expect(parseTimeOutput('Command exited with non-zero status 3\n0.01 0.00 0.00 1552\n')).toMatchObject({ exitCode: 3, signal: null, maxRssKiB: 1552 });
    expect(parseTimeOutput('Command terminated by signal 9\n0.50 0.10 0.02 9000\n')).toMatchObject({ exitCode: null, signal: 9 });
  });
  it('is null when the command never ran', () => {
    expect(parseTimeOutput('')).toBeNull();
    expect(parseTimeOutput('/usr/bin/time: cannot run x: No such file or directory\n')).toBeNull();
  });
});

describe('tool output parsers', () => {
  it('takes the last JSON object line after log lines', () => {
    const out = 'starting\n{"level":30}\nprogress 50%\n{"bytes": 10, "seconds": 1.5, "verified": ["size", "md5"]}\n';
    expect(parseLastJsonLine(out)).toEqual({ bytes: 10, seconds: 1.5, verified: ['size', 'md5'] });
    expect(parseLastJsonLine('{broken\n')).toBeNull();
    expect(parseLastJsonLine('[1,2]\n')).toBeNull();
  });
  it('takes the first line that names a version', () => {
    expect(parseVersionLine('Axel 2.17.11 (linux-gnu)\nCopyright...')).toBe('Axel 2.17.11 (linux-gnu)');
    expect(parseVersionLine('usage: x\naria2 version 1.36.0\n')).toBe('aria2 version 1.36.0');
    expect(parseVersionLine('no digits here')).toBeNull();
    expect(parseVersionLine('curl 7.88.1 (x86_64-pc-linux-gnu) libcurl/7.88.1 OpenSSL/3.0.19 zlib/1.2.13 brotli/1.0.9 zstd/1.5.4')).toBe('curl 7.88.1');
  });
  it('reads the CPU model from /proc/cpuinfo', () => {
    expect(cpuModelFrom('processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t: sse\n')).toBe('AMD EPYC 7B13');
    expect(cpuModelFrom('')).toBe('unknown');
  });
});

describe('results files', () => {
  let dir: string | undefined;
  afterEach(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
    dir = undefined;
  });

  it('names files sortably, marks quick runs, and round-trips them', async () => {
    expect(resultsFileName(new Date('2025-11-26T02:10:00.123Z'), false)).toBe('2025-11-26T02-10-00Z.json');
    expect(resultsFileName(new Date('2025-11-26T02:10:00Z'), true)).toBe('2025-11-26T02-10-00Z-quick.json');
    dir = await mkdtemp(path.join(os.tmpdir(), 'roboflow-'));
    const r = results('2025-11-26T02:10:00.000Z', false, { memory: { connections: 16, chunkSize: 8, points: [] } });
    const file = await saveResults(dir, r);
    expect(await readdir(dir)).toEqual([path.basename(file)]);
    const loaded = await loadAllResults(dir, () => undefined);
    expect(loaded.map((l) => l.results)).toEqual([r]);
  });

  it('rejects files of another schema and says which file', async () => {
    expect(() => parseResults('{"schema": 99}', 'x.json')).toThrow(/x\.json has results schema 99/);
    expect(() => parseResults('nope', 'y.json')).toThrow(/y\.json is not JSON/);
    dir = await mkdtemp(path.join(os.tmpdir(), 'roboflow-'));
    await writeFile(path.join(dir, '2024-01-01T00-00-00Z.json'), '{"schema": 0}');
    // Another tool's file beside ours is not ours to judge.
    await writeFile(path.join(dir, 'chaos.json'), '{"schema": 1}');
    const warnings: string[] = [];
    expect(await loadAllResults(dir, (m) => warnings.push(m))).toEqual([]);
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toMatch(/2024-01-01T00-00-00Z\.json/);
  });

  it('picks, per scenario, the newest full run, and a quick run only when there is no full one', () => {
    const a = { file: 'a', results: results('2025-01-01T00:00:00Z', false, { memory: { connections: 16, chunkSize: 8, points: [] } }) };
    const b = { file: 'b', results: results('2025-01-02T00:00:00Z', true, { memory: { connections: 16, chunkSize: 8, points: [] } }) };
    const c = { file: 'c', results: results('2025-01-03T00:00:00Z', true, { resume: { objectSize: 1, ratePerConnection: 1, latencyMs: 0, configs: [] } }) };
    const picked = pickLatest([a, b, c]);
    expect(picked.memory?.file).toBe('a');
    expect(picked.resume?.file).toBe('c');
    expect(picked.download).toBeUndefined();
  });
});

describe('summariseCpuProfile', () => {
  it('charges each sample the time until the next one and sorts by self time', () => {
    const profile = {
      nodes: [
        { id: 1, callFrame: { functionName: '(root)', url: '', lineNumber: -1 } },
        { id: 2, callFrame: { functionName: 'write', url: 'file:///repo/dist/prefetch/downloader.js', lineNumber: 9 } },
        { id: 3, callFrame: { functionName: '(garbage collector)', url: '', lineNumber: -1 } },
      ],
      samples: [2, 2, 3, 2],
      timeDeltas: [0, 1000, 1000, 2000],
    };
    const s = summariseCpuProfile(profile, 'capped');
    expect(s.top[0]).toMatchObject({ name: 'write', where: 'dist/prefetch/downloader.js:10' });
    // write: 1000 + 1000 (its second sample) + mean of the intervals for the last one.
    expect(s.top[0]!.selfMs).toBeCloseTo(1 + 1 + 4 / 3, 5);
    expect(s.top[1]).toMatchObject({ name: '(garbage collector)', where: 'native', selfMs: 2 });
    expect(s.top.reduce((a, t) => a + t.share, 0)).toBeCloseTo(1, 9);
  });
});
