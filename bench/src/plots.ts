/**
 * The plots of BENCHMARKS.md: Vega-Lite specs built from the results (pure), rendered to SVG with
 * vega + vega-lite in Node. Both are development dependencies, so they are imported only here,
 * dynamically, when a report is written.
 */

import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { BenchResults } from './results.js';
import { compareTo, median, MiB, prefetchBound, refetchedPerKill, summarise } from './stats.js';
import { ROBOFLOW_ID } from './tools.js';

/** A Vega-Lite spec; kept loose because the specs are data for the renderer. */
export type VegaLiteSpec = Record<string, unknown>;

export interface PlotSpec {
  /** File name under `bench/`, e.g. `download.svg`. */
  readonly file: string;
  readonly title: string;
  readonly spec: VegaLiteSpec;
}

const SCHEMA = 'https://vega.github.io/schema/vega-lite/v5.json';
const ROBOFLOW_COLOR = '#d62728';
const PEER_COLOR = '#7f7f7f';

function labelOf(results: BenchResults, id: string): string {
  return results.tools.find((t) => t.id === id)?.label ?? id;
}

/** One plot per download condition: MB/s, CPU s per GB and peak RSS side by side, one row per
 * tool in the order of the table, roboflow in red. */
export function downloadPlots(results: BenchResults): PlotSpec[] {
  const s = results.scenarios.download;
  if (!s) return [];
  const order = results.tools.map((t) => t.id);
  return s.conditions.map((c) => {
    const ids = [...new Set(c.runs.map((r) => r.tool))].sort((a, b) => order.indexOf(a) - order.indexOf(b));
    const ref = summarise(ROBOFLOW_ID, c.runs.filter((r) => r.tool === ROBOFLOW_ID));
    const values: Record<string, unknown>[] = [];
    for (const id of ids) {
      const sum = compareTo(ref, summarise(id, c.runs.filter((r) => r.tool === id)));
      if (!Number.isFinite(sum.mbPerSecond)) continue;
      values.push({
        tool: labelOf(results, id),
        mbps: Math.round(sum.mbPerSecond),
        cpu: Number(sum.cpuSecondsPerGB.toFixed(2)),
        rss: Math.round(sum.peakRssMiB),
        roboflow: id.startsWith(ROBOFLOW_ID),
      });
    }
    if (c.serverAlone) {
      const mbps = median(c.serverAlone.runs.filter((r) => r.ok).map((r) => c.serverAlone!.bytes / 1e6 / r.wallSeconds));
      if (Number.isFinite(mbps)) values.push({ tool: 'server alone (16 curls → /dev/null)', mbps: Math.round(mbps), cpu: null, rss: null, roboflow: false });
    }
    const sort = values.map((v) => v.tool);
    // Tool names on the first panel only: the rows line up across panels.
    const panel = (field: string, title: string, format: string, labels: boolean): Record<string, unknown> => ({
      width: 180,
      layer: [
        {
          mark: 'bar',
          encoding: {
            y: { field: 'tool', type: 'nominal', sort, title: null, axis: labels ? { labelLimit: 320 } : { labels: false, ticks: false } },
            x: { field, type: 'quantitative', title },
            color: { field: 'roboflow', type: 'nominal', scale: { domain: [true, false], range: [ROBOFLOW_COLOR, PEER_COLOR] }, legend: null },
          },
        },
        {
          mark: { type: 'text', align: 'left', dx: 3 },
          encoding: {
            y: { field: 'tool', type: 'nominal', sort },
            x: { field, type: 'quantitative' },
            text: { field, type: 'quantitative', format },
          },
        },
      ],
    });
    const title =
      c.id === 'capped'
        ? `Download, capped at ${(c.ratePerConnection ?? 0) / 1e6} MB/s per connection + ${c.latencyMs} ms (medians)`
        : 'Download, uncapped loopback (medians)';
    return {
      file: `download-${c.id}.svg`,
      title,
      spec: {
        $schema: SCHEMA,
        data: { values },
        hconcat: [
          panel('mbps', 'MB/s (higher is better)', 'd', true),
          panel('cpu', 'CPU s per GB (lower is better)', '.2f', false),
          panel('rss', 'peak RSS MiB (lower is better)', 'd', false),
        ],
      },
    };
  });
}

export function memoryPlot(results: BenchResults): PlotSpec | null {
  const s = results.scenarios.memory;
  if (!s) return null;
  const values = s.points
    .map((p) => ({ sizeMiB: p.size / MiB, rss: summarise(ROBOFLOW_ID, p.runs).peakRssMiB }))
    .filter((v) => Number.isFinite(v.rss))
    .map((v) => ({ ...v, rss: Math.round(v.rss) }));
  return {
    file: 'memory.svg',
    title: 'roboflow peak RSS against object size',
    spec: {
      $schema: SCHEMA,
      data: { values },
      width: 420,
      height: 220,
      layer: [
        {
          mark: { type: 'line', point: { filled: true, color: ROBOFLOW_COLOR }, color: ROBOFLOW_COLOR },
          encoding: {
            x: { field: 'sizeMiB', type: 'quantitative', scale: { type: 'log', base: 2 }, title: 'object size (MiB, log scale)' },
            y: { field: 'rss', type: 'quantitative', scale: { zero: true }, title: 'peak RSS (MiB)' },
          },
        },
        {
          mark: { type: 'text', dy: -10 },
          encoding: {
            x: { field: 'sizeMiB', type: 'quantitative' },
            y: { field: 'rss', type: 'quantitative' },
            text: { field: 'rss', type: 'quantitative' },
          },
        },
      ],
    },
  };
}

export function sweepPlot(results: BenchResults): PlotSpec | null {
  const s = results.scenarios.sweep;
  if (!s) return null;
  const values = s.cells
    .map((c) => ({
      connections: c.connections,
      chunk: `${c.chunkSize / MiB} MiB`,
      mbps: summarise('cell', c.runs).mbPerSecond,
    }))
    .filter((v) => Number.isFinite(v.mbps))
    .map((v) => ({ ...v, mbps: Math.round(v.mbps) }));
  const chunkOrder = [...new Set(s.cells.map((c) => c.chunkSize))].sort((a, b) => a - b).map((b) => `${b / MiB} MiB chunks`);
  const idealLabel = 'connections × cap';
  const series = [
    ...values.map((v) => ({ connections: v.connections, series: `${v.chunk} chunks`, mbps: v.mbps, ideal: false })),
    ...[...new Set(s.cells.map((c) => c.connections))].map((n) => ({ connections: n, series: idealLabel, mbps: (n * s.ratePerConnection) / 1e6, ideal: true })),
  ];
  return {
    file: 'sweep.svg',
    title: `roboflow throughput under a ${s.ratePerConnection / 1e6} MB/s per-connection cap + ${s.latencyMs} ms (medians)`,
    spec: {
      $schema: SCHEMA,
      width: 420,
      height: 260,
      data: { values: series },
      mark: { type: 'line', point: true },
      encoding: {
        x: { field: 'connections', type: 'quantitative', scale: { type: 'log', base: 2 }, title: 'connections (log scale)' },
        y: { field: 'mbps', type: 'quantitative', title: 'MB/s' },
        color: {
          field: 'series',
          type: 'nominal',
          title: null,
          sort: [...chunkOrder, idealLabel],
          scale: { domain: [...chunkOrder, idealLabel], range: ['#1f77b4', ROBOFLOW_COLOR, '#2ca02c', '#9467bd', '#8c564b'].slice(0, chunkOrder.length).concat(['#aaaaaa']) },
          legend: { labelLimit: 300 },
        },
        strokeDash: { field: 'ideal', type: 'nominal', scale: { domain: [false, true], range: [[1, 0], [4, 4]] }, legend: null },
      },
    },
  };
}

export function prefetchPlot(results: BenchResults): PlotSpec | null {
  const s = results.scenarios.prefetch;
  if (!s || s.cases.length === 0) return null;
  const values: Record<string, unknown>[] = [];
  const order = s.cases.map((c) => `${c.processor}, ${c.relation}`);
  for (const c of s.cases) {
    const good = c.runs.filter((r) => r.ok);
    if (good.length === 0) continue;
    const d = median(good.map((r) => r.downloadSeconds));
    const p = median(good.map((r) => r.processSeconds));
    const name = `${c.processor}, ${c.relation}`;
    values.push({ case: name, kind: 'sequential', seconds: Number(median(good.map((r) => r.sequentialSeconds)).toFixed(2)) });
    values.push({ case: name, kind: 'prefetch', seconds: Number(median(good.map((r) => r.prefetchSeconds)).toFixed(2)) });
    values.push({ case: name, kind: 'bound D + N·max(D,P)', seconds: Number(prefetchBound(c.jobs, d, p).toFixed(2)) });
  }
  return {
    file: 'prefetch.svg',
    title: 'Total time of the jobs: sequential, with prefetch, and the bound',
    spec: {
      $schema: SCHEMA,
      data: { values },
      mark: 'bar',
      encoding: {
        y: { field: 'case', type: 'nominal', title: null, sort: order },
        yOffset: { field: 'kind', sort: ['sequential', 'prefetch', 'bound D + N·max(D,P)'] },
        x: { field: 'seconds', type: 'quantitative', title: 'seconds (lower is better)' },
        color: {
          field: 'kind',
          type: 'nominal',
          title: null,
          sort: ['sequential', 'prefetch', 'bound D + N·max(D,P)'],
          scale: { range: [PEER_COLOR, ROBOFLOW_COLOR, '#1f77b4'] },
          legend: { labelLimit: 300, orient: 'bottom' },
        },
      },
      width: 420,
    },
  };
}

/** Wall time against prefetch slots, one panel per case, with the bound D + (N−1)·max(D,P) + P. */
export function prefetchSlotsPlot(results: BenchResults): PlotSpec | null {
  const sweeps = results.scenarios.prefetch?.slotSweeps ?? [];
  const values: Record<string, unknown>[] = [];
  for (const c of sweeps) {
    const good = c.runs.filter((r) => r.ok);
    if (good.length === 0) continue;
    const slots = [...new Set(good.map((r) => r.slots))].sort((a, b) => a - b);
    const bound = median(good.map((r) => r.boundSeconds));
    for (const n of slots) {
      values.push({ case: c.id, slots: n, kind: 'measured', seconds: Number(median(good.filter((r) => r.slots === n).map((r) => r.wallSeconds)).toFixed(2)) });
      values.push({ case: c.id, slots: n, kind: 'bound D + (N−1)·max(D,P) + P', seconds: Number(bound.toFixed(2)) });
    }
  }
  if (values.length === 0) return null;
  return {
    file: 'prefetch-slots.svg',
    title: 'Wall time of the jobs against prefetch slots (0 = download, then process)',
    spec: {
      $schema: SCHEMA,
      data: { values },
      facet: { column: { field: 'case', type: 'nominal', title: null, sort: sweeps.map((c) => c.id) } },
      spec: {
        width: 150,
        height: 180,
        mark: { type: 'line', point: true },
        encoding: {
          x: { field: 'slots', type: 'ordinal', title: 'slots', axis: { labelAngle: 0 } },
          y: { field: 'seconds', type: 'quantitative', title: 'seconds (lower is better)' },
          color: {
            field: 'kind',
            type: 'nominal',
            title: null,
            scale: { range: [ROBOFLOW_COLOR, '#1f77b4'] },
            sort: ['measured', 'bound D + (N−1)·max(D,P) + P'],
            legend: { labelLimit: 300, orient: 'bottom' },
          },
          strokeDash: { field: 'kind', type: 'nominal', sort: ['measured', 'bound D + (N−1)·max(D,P) + P'], scale: { range: [[1, 0], [4, 4]] }, legend: null },
        },
      },
    },
  };
}

export function resumePlot(results: BenchResults): PlotSpec | null {
  const s = results.scenarios.resume;
  if (!s) return null;
  const values: Record<string, unknown>[] = [];
  for (const c of s.configs) {
    const per = median(c.trials.filter((t) => t.sha256Ok && t.kills > 0).map((t) => refetchedPerKill(t.bytesServed, s.objectSize, t.kills)));
    if (!Number.isFinite(per)) continue;
    const name = `${c.connections} × ${c.chunkSize / MiB} MiB`;
    values.push({ config: name, kind: 're-fetched per kill', mib: Number((per / MiB).toFixed(1)) });
    values.push({ config: name, kind: 'connections × chunk', mib: (c.connections * c.chunkSize) / MiB });
  }
  return {
    file: 'resume.svg',
    title: 'Bytes fetched again per SIGKILL, median',
    spec: {
      $schema: SCHEMA,
      data: { values },
      mark: 'bar',
      encoding: {
        y: { field: 'config', type: 'nominal', title: 'connections × chunk size', sort: null },
        yOffset: { field: 'kind' },
        x: { field: 'mib', type: 'quantitative', title: 'MiB' },
        color: { field: 'kind', type: 'nominal', title: null, scale: { range: [ROBOFLOW_COLOR, '#bbbbbb'] }, sort: ['re-fetched per kill', 'connections × chunk'] },
      },
      width: 420,
    },
  };
}

/** Every plot the results allow, each from the scenario's chosen results. */
export function allPlots(picked: Partial<Record<keyof BenchResults['scenarios'], BenchResults>>): PlotSpec[] {
  const out: (PlotSpec | null)[] = [];
  if (picked.download) out.push(...downloadPlots(picked.download));
  if (picked.memory) out.push(memoryPlot(picked.memory));
  if (picked.sweep) out.push(sweepPlot(picked.sweep));
  if (picked.prefetch) out.push(prefetchPlot(picked.prefetch), prefetchSlotsPlot(picked.prefetch));
  if (picked.resume) out.push(resumePlot(picked.resume));
  return out.filter((p): p is PlotSpec => p !== null);
}

/** Renders the plots to `dir` as SVG. Returns the files written. */
export async function renderPlots(plots: readonly PlotSpec[], dir: string): Promise<string[]> {
  const vega = await import('vega');
  const vl = await import('vega-lite');
  const written: string[] = [];
  for (const p of plots) {
    const spec = { ...p.spec, title: p.title, config: { font: 'sans-serif', background: 'white' } };
    const compiled = vl.compile(spec as Parameters<typeof vl.compile>[0]).spec;
    const view = new vega.View(vega.parse(compiled), { renderer: 'none' });
    try {
      const svg = await view.toSVG();
      const file = path.join(dir, p.file);
      await writeFile(file, svg);
      written.push(file);
    } finally {
      view.finalize();
    }
  }
  return written;
}
