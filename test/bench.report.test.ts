import { describe, expect, it } from 'vitest';
import { allPlots } from '../bench/src/plots.js';
import { bestPeer, conditionSummaries, evaluateGoals, fmt, fmtRatio, generateMarkdown, losses, phaseSpans, table, type Picked } from '../bench/src/report.js';
import type { BenchResults, DownloadCondition, PrefetchCase, ToolRun } from '../bench/src/results.js';
import { RESULTS_SCHEMA } from '../bench/src/results.js';

const GiB = 2 ** 30;

function run(tool: string, mbps: number, cpuPerGB: number, rssMiB: number, opts: { sha?: boolean; verified?: string[] } = {}): ToolRun {
  const bytes = GiB;
  return {
    tool,
    repetition: 1,
    bytes,
    measurement: { wallSeconds: bytes / 1e6 / mbps, userSeconds: (cpuPerGB * bytes) / 1e9, sysSeconds: 0, maxRssKiB: rssMiB * 1024, exitCode: 0, signal: null },
    sha256Ok: opts.sha ?? true,
    ...(opts.verified ? { reported: { verified: opts.verified } } : {}),
  };
}

function condition(id: 'capped' | 'uncapped', runs: ToolRun[]): DownloadCondition {
  return {
    id,
    ratePerConnection: id === 'capped' ? 25e6 : null,
    latencyMs: id === 'capped' ? 20 : 0,
    objectSize: GiB,
    singleStreamObjectSize: id === 'capped' ? GiB / 4 : GiB,
    runs,
    serverAlone: { connections: 16, bytes: GiB, runs: [{ wallSeconds: GiB / 388e6, cpuSeconds: 1, ok: true }] },
  };
}

function prefetchCase(relation: string, d: number, p: number, seq: number, pre: number): PrefetchCase {
  return {
    id: `wait-${relation}`,
    relation,
    processor: 'wait',
    jobs: 8,
    objectSize: 1,
    ratePerConnection: 1,
    connections: 16,
    runs: [{ repetition: 1, downloadSeconds: d, processSeconds: p, sequentialSeconds: seq, prefetchSeconds: pre, inputWaitShare: 0.1, ok: true }],
  };
}

function bench(scenarios: BenchResults['scenarios']): BenchResults {
  return {
    schema: RESULTS_SCHEMA,
    startedAt: '2025-11-26T02:00:00.000Z',
    finishedAt: '2025-11-26T02:30:00.000Z',
    quick: false,
    repeat: 3,
    command: 'npm run bench',
    machine: {
      nproc: 2,
      memoryBytes: 24 * GiB,
      cpuModel: 'AMD EPYC',
      node: 'v20.20.2',
      kernel: 'Linux 6',
      platform: 'linux-x64',
      dropCaches: true,
      downloadDir: '/tmp (ext4)',
      md5SecondsPerGB: 1.5,
      sha256SecondsPerGB: 0.6,
    },
    tools: [
      { id: 'roboflow', label: 'roboflow 16 × 8 MiB', binary: 'node', version: '0.1.0', available: true, command: 'node dist/bin/roboflow.js download ...' },
      { id: 'curl', label: 'curl', binary: '/usr/bin/curl', version: 'curl 7.88.1', available: true, command: 'curl -sSf -o <dest> <http-url>' },
      { id: 'axel', label: 'axel -n 16', binary: 'axel', version: null, available: false, reason: 'axel not found (run: bash bench/setup)', command: 'axel ...' },
    ],
    scenarios,
    nodeBaseline: [{ wallSeconds: 0.05, cpuSeconds: 0.04, maxRssKiB: 40 * 1024 }],
    notes: ['axel -n 16 was not run: axel not found (run: bash bench/setup).'],
  };
}

function picked(r: BenchResults): Picked {
  const out: Picked = {};
  for (const k of Object.keys(r.scenarios) as (keyof BenchResults['scenarios'])[]) out[k] = { file: 'bench/results/x.json', results: r };
  return out;
}

describe('formatting', () => {
  it('shows missing figures as a dash', () => {
    expect(fmt(Number.NaN)).toBe('—');
    expect(fmt(null)).toBe('—');
    expect(fmt(3.14159, 2)).toBe('3.14');
    expect(fmtRatio(1.234)).toBe('1.23×');
    expect(fmtRatio(Number.NaN)).toBe('—');
  });
  it('escapes pipes inside table cells', () => {
    expect(table(['a', 'b'], [['x|y', '1']])).toBe('| a | b |\n| --- | ---: |\n| x\\|y | 1 |');
  });
});

describe('goals', () => {
  it('capped: met when roboflow beats the best peer and 0.95 × 16 × cap', () => {
    const r = bench({ download: { conditions: [condition('capped', [run('roboflow', 385, 2, 80), run('curl', 24, 1, 10)])] } });
    const [capped] = evaluateGoals(picked(r));
    expect(capped!.met).toBe(true);
    expect(capped!.target).toContain('≥ 380 MB/s');
  });
  it('capped: missed below 0.95 × 16 × cap even when every peer is slower', () => {
    const r = bench({ download: { conditions: [condition('capped', [run('roboflow', 370, 2, 80), run('curl', 24, 1, 10)])] } });
    expect(evaluateGoals(picked(r))[0]!.met).toBe(false);
  });
  it('capped: holds --no-checksum against a peer that verifies nothing, and the verifying default against 90 % of 16 × cap', () => {
    const r = bench({
      download: { conditions: [condition('capped', [run('roboflow', 300, 5, 80), run('roboflow-no-checksum', 385, 3, 80), run('curl', 24, 1, 10)])] },
    });
    const [likeForLike, ninety] = evaluateGoals(picked(r));
    expect(likeForLike!.description).toContain('roboflow-no-checksum');
    expect(likeForLike!.measured).toBe('385 MB/s');
    expect(likeForLike!.met).toBe(true);
    expect(ninety!.target).toBe('≥ 360 MB/s');
    expect(ninety!.measured).toBe('300 MB/s');
    expect(ninety!.met).toBe(false);
  });
  it('uncapped: needs the best peer’s throughput at no more of its CPU per GB', () => {
    const faster = bench({ download: { conditions: [condition('uncapped', [run('roboflow', 800, 1.2, 80), run('curl', 640, 1.0, 10)])] } });
    const g = evaluateGoals(picked(faster))[1]!;
    expect(g.met).toBe(false);
    expect(g.target).toContain('curl');
    const both = bench({ download: { conditions: [condition('uncapped', [run('roboflow', 800, 0.9, 80), run('curl', 640, 1.0, 10)])] } });
    expect(evaluateGoals(picked(both))[1]!.met).toBe(true);
  });
  it('uncapped: holds the run that verifies integrity against the best peer, not --no-checksum', () => {
    const r = bench({
      download: {
        conditions: [
          condition('uncapped', [run('roboflow', 600, 1.5, 80, { verified: ['size', 'crc32'] }), run('roboflow-no-checksum', 900, 0.8, 80), run('curl', 700, 1.0, 10)]),
        ],
      },
    });
    const g = evaluateGoals(picked(r))[1]!;
    expect(g.description).toContain('while verifying integrity (crc32)');
    expect(g.measured).toBe('600 MB/s, 1.50 CPU s/GB');
    expect(g.met).toBe(false);
  });
  it('uncapped: a page-cache peer meets roboflow --durability process, a peer timed to the disk the default', () => {
    const runs = [
      run('roboflow', 700, 1.6, 80, { verified: ['size', 'crc32'] }),
      run('roboflow-process', 1300, 1.0, 80, { verified: ['size', 'crc32'] }),
      run('rclone-ignore-checksum', 1250, 1.1, 40),
      run('rclone-ignore-checksum-sync', 800, 1.1, 40),
    ];
    const g = evaluateGoals(picked(bench({ download: { conditions: [condition('uncapped', runs)] } })))[1]!;
    expect(g.description).toContain('roboflow-process: it leaves its bytes in the page cache');
    expect(g.measured).toBe('1300 MB/s, 1.00 CPU s/GB');
    expect(g.met).toBe(true);
    // Without the page-cache peer the best one is timed to the disk: the default run is held to it.
    const durable = evaluateGoals(picked(bench({ download: { conditions: [condition('uncapped', [runs[0]!, runs[1]!, runs[3]!])] } })))[1]!;
    expect(durable.measured).toBe('700 MB/s, 1.60 CPU s/GB');
    expect(durable.met).toBe(false);
  });
  it('a peer with a wrong SHA-256 is not the best peer', () => {
    const sums = conditionSummaries(condition('uncapped', [run('roboflow', 500, 1, 80), run('curl', 900, 1, 10, { sha: false })]), ['roboflow', 'curl']);
    expect(bestPeer(sums)).toBeUndefined();
  });
  it('prefetch: within 5 % of the bound and ≥ 1.4× at D≈P', () => {
    const ok = bench({ prefetch: { source: 'x', cases: [prefetchCase('D≈P', 1, 1, 16, 9.3), prefetchCase('D<P', 0.5, 1, 12, 8.6)] } });
    const goals = evaluateGoals(picked(ok));
    expect(goals.find((g) => g.description.includes('within 5 %'))!.met).toBe(true);
    expect(goals.find((g) => g.description.includes('speed-up'))!.met).toBe(true);
    const slow = bench({ prefetch: { source: 'x', cases: [prefetchCase('D≈P', 1, 1, 16, 12)] } });
    const bad = evaluateGoals(picked(slow));
    expect(bad.find((g) => g.description.includes('within 5 %'))!.met).toBe(false);
    expect(bad.find((g) => g.description.includes('speed-up'))!.met).toBe(false);
  });
  it('says "not measured" for scenarios that did not run', () => {
    expect(evaluateGoals({}).every((g) => g.met === null)).toBe(true);
  });
});

describe('losses', () => {
  it('names the peer, the figures and the verification roboflow paid for', () => {
    const r = bench({
      download: { conditions: [condition('uncapped', [run('roboflow', 600, 2.5, 90, { verified: ['size', 'md5'] }), run('curl', 640, 1.1, 10)])] },
    });
    const text = losses(picked(r)).join('\n');
    expect(text).toMatch(/uncapped, throughput\*\*: roboflow 600 MB\/s; faster: curl 640 MB\/s \(1\.07×\)/);
    expect(text).toMatch(/uncapped, CPU per GB\*\*: roboflow 2\.50 CPU s\/GB; cheaper: curl 1\.10 \(0\.44×\)/);
    expect(text).toMatch(/MD5 verification while downloading ≈ 1\.50/);
    expect(text).toMatch(/remaining ≈ 1\.00 is receiving and writing/);
    expect(text).toMatch(/curl: no checksum/);
    expect(text).toMatch(/empty Node\.js process already peaks at 40 MiB/);
    expect(text).toMatch(/Goal missed/);
  });
  it('tells a CPU-bound roboflow from one that waited on the network', () => {
    // 1 GiB in 1.79 s at 2.5 CPU s/GB: 2.68 CPU s over 1.79 s, more than one core busy.
    const busy = bench({ download: { conditions: [condition('capped', [run('roboflow', 600, 2.5, 90), run('axel', 700, 2, 10)])] } });
    expect(losses(picked(busy)).join('\n')).toMatch(/CPU-bound, not waiting on the network/);
    const idle = bench({ download: { conditions: [condition('capped', [run('roboflow', 300, 0.5, 90), run('axel', 380, 2, 10)])] } });
    expect(losses(picked(idle)).join('\n')).toMatch(/waited on the network: a tool that keeps one long range/);
    // On a machine busy with other work, a process below one core may simply have waited for one.
    const loaded = { ...idle, load: { atStart: [6, 5, 4], atEnd: [6, 5, 4] } };
    expect(losses(picked(loaded)).join('\n')).toMatch(/cannot tell CPU from latency/);
  });
  it('holds a disk-bound roboflow against the disk alone and against a peer timed until its file is on disk', () => {
    const c = {
      ...condition('uncapped', [run('roboflow-no-checksum', 400, 1.5, 90), run('rclone-ignore-checksum', 800, 1.2, 40), run('rclone-ignore-checksum-sync', 390, 1.2, 40), run('roboflow', 380, 2.5, 90)]),
      diskAlone: { bytes: GiB, blockBytes: 32 * 1024, runs: [{ wallSeconds: GiB / 420e6, cpuSeconds: 0.9, ok: true }] },
    };
    const text = losses(picked(bench({ download: { conditions: [c] } }))).join('\n');
    expect(text).toMatch(/this disk takes 420 MB\/s durably \(dd \+ fdatasync\), so roboflow --no-checksum reached 400 MB\/s, 95 % of that ceiling/);
    expect(text).toMatch(/timed until its file is on disk: 390 MB\/s/);
    // A download far below the disk's speed was not held back by it: no such reason is given.
    const fast = { ...c, diskAlone: { ...c.diskAlone, runs: [{ wallSeconds: GiB / 4000e6, cpuSeconds: 0.2, ok: true }] } };
    expect(losses(picked(bench({ download: { conditions: [fast] } }))).join('\n')).not.toMatch(/durably/);
    const md = generateMarkdown({ picked: picked(bench({ download: { conditions: [c] } })), plots: [] });
    expect(md).toMatch(/\| _disk alone: dd of zeros in 32 KiB blocks \+ fdatasync_ \| 1 GiB \| 420 \|/);
  });
  it('takes a run apart phase by phase: the transfer rate against the peer, the fixed cost before the stat', () => {
    const timeline = {
      tool: 'roboflow-process',
      bytes: GiB,
      runs: 3,
      // Node.js 50 ms, loading + stat 100 ms, first batch 30 ms, transfer 620 ms, finish 6 ms, exit 2 ms.
      marks: { loaded: 50, stat: 150, firstBatch: 180, lastBatch: 800, done: 806, exit: 808 },
    };
    const c: DownloadCondition = {
      ...condition('uncapped', [run('roboflow', 900, 1.1, 120), run('roboflow-process', 1200, 1.0, 120), run('curl', 1700, 0.6, 10)]),
      startup: { objectSize: 2 ** 20, runs: [{ ...run('curl', 1700, 0.6, 10), bytes: 2 ** 20, measurement: { wallSeconds: 0.02, userSeconds: 0, sysSeconds: 0, maxRssKiB: 10240, exitCode: 0, signal: null } }] },
      timelines: [timeline],
    };
    expect(phaseSpans(timeline)).toEqual({ boot: 50, loadAndStat: 100, firstBatch: 30, transfer: 620, transferMBps: GiB / 1e3 / 650, finish: 6, exit: 2 });
    const text = losses(picked(bench({ download: { conditions: [c] } }))).join('\n');
    expect(text).toContain('roboflow-process moved the bytes at 1652 MB/s from its stat to its last batch, against 1700 MB/s for curl\'s whole run');
    expect(text).toContain('before its stat returned it spent 150 ms (Node.js start-up 50 ms, then loading the CLI and the HEAD 100 ms), where curl takes 20 ms for a whole 1 MiB run');
    const md = generateMarkdown({ picked: picked(bench({ download: { conditions: [c] } })), plots: [] });
    expect(md).toContain('### Where the time of one roboflow run goes');
    expect(md).toContain('| uncapped | roboflow-process | 50 | 100 | 30 | 620 | 1652 | 6 | 2 | 808 | 3 |');
  });
  it('says what the memory runs verified: the MD5 ETag when the objects carry nothing else', () => {
    const points = [{ size: GiB, runs: [run('roboflow', 700, 2.4, 81, { verified: ['size', 'md5'] })] }];
    const md = generateMarkdown({ picked: picked(bench({ memory: { connections: 16, chunkSize: 8 * 2 ** 20, points } })), plots: [] });
    expect(md).toContain('uncapped loopback, verifying the MD5 ETag (the only checksum these objects carry');
    const plain = [{ size: GiB, runs: [run('roboflow', 700, 1, 81, { verified: ['size'] })] }];
    expect(generateMarkdown({ picked: picked(bench({ memory: { connections: 16, chunkSize: 8 * 2 ** 20, points: plain } })), plots: [] })).toContain(
      '8 MiB chunks, uncapped loopback. ',
    );
  });
  it('is empty when roboflow wins everywhere', () => {
    const r = bench({ download: { conditions: [condition('uncapped', [run('roboflow', 800, 0.9, 8), run('curl', 640, 1.0, 10)])] } });
    expect(losses(picked(r))).toEqual([]);
  });
});

describe('generateMarkdown', () => {
  const r = bench({
    download: { conditions: [condition('capped', [run('roboflow', 385, 2, 80), run('curl', 24, 1, 10)]), condition('uncapped', [run('roboflow', 700, 1, 80), run('curl', 640, 1.1, 10)])] },
    memory: { connections: 16, chunkSize: 8 * 2 ** 20, points: [{ size: GiB, runs: [run('roboflow', 700, 1, 81)] }, { size: 4 * GiB, runs: [run('roboflow', 700, 1, 83)] }] },
    prefetch: { source: 'x.', cases: [prefetchCase('D≈P', 1, 1, 16, 9.3)] },
    resume: {
      objectSize: GiB,
      ratePerConnection: 25e6,
      latencyMs: 20,
      configs: [{ connections: 16, chunkSize: 8 * 2 ** 20, trials: [{ repetition: 1, kills: 2, attempts: [], bytesServed: GiB + 100 * 2 ** 20, resumedBytes: 1, sha256Ok: true }] }],
    },
  });
  const md = generateMarkdown({ picked: picked(r), plots: [{ file: 'bench/download-capped.svg', title: 'Capped' }] });

  it('has the machine, the rerun command, the tools with versions and the missing ones', () => {
    expect(md).toContain('bash bench/setup && npm run bench');
    expect(md).toContain('AMD EPYC (2 cores online)');
    expect(md).toContain('curl 7.88.1');
    expect(md).toContain('**missing**: axel not found (run: bash bench/setup)');
  });
  it('has a table per condition with ratios to roboflow, the server-alone ceiling and the plot', () => {
    expect(md).toMatch(/\| \*\*roboflow 16 × 8 MiB\*\* \| 1 GiB \| 385 \| 1\.00× \|/);
    expect(md).toMatch(/\| curl \| 1 GiB \| 24 \| 0\.06× \|/);
    expect(md).toContain('server alone: 16 curls');
    expect(md).toContain('![Capped](bench/download-capped.svg)');
  });
  it('reports memory, prefetch and resume, and the goals table', () => {
    expect(md).toContain('Peak RSS ranges from 81 to 83 MiB');
    expect(md).toMatch(/\| wait, D≈P \| 8 \| 1\.00 \| 1\.00 \| 16\.00 \| 9\.30 \| 9\.00 \| 1\.03× \|/);
    expect(md).toMatch(/\| 16 × 8 MiB \| 2 \| 50\.0 \|/);
    expect(md).toMatch(/\| Capped: roboflow .* \| yes \|/);
  });
  it('is stable: the same results give the same file', () => {
    expect(generateMarkdown({ picked: picked(r), plots: [] })).toBe(generateMarkdown({ picked: picked(r), plots: [] }));
  });
  it('builds a plot spec for every scenario present', () => {
    const files = allPlots({ download: r, memory: r, prefetch: r, resume: r }).map((p) => p.file);
    expect(files).toEqual(['download-capped.svg', 'download-uncapped.svg', 'memory.svg', 'prefetch.svg', 'resume.svg']);
  });
  it('says how to get results when there are none', () => {
    expect(generateMarkdown({ picked: {}, plots: [] })).toContain('No results yet');
  });
});
