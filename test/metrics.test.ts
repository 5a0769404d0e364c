import { readFile } from 'node:fs/promises';
import http from 'node:http';
import { afterEach, describe, expect, it } from 'vitest';
import { channels } from '../src/diagnostics.js';
import { RoboflowError } from '../src/errors.js';
import { METRICS, METRIC_NAMES, seriesNames } from '../src/metric-names.js';
import { Metrics } from '../src/metrics.js';

const open: Metrics[] = [];
afterEach(async () => {
  await Promise.all(open.splice(0).map((m) => m.close()));
});

function metrics(processMetrics = false): Metrics {
  const m = new Metrics({ processMetrics });
  open.push(m);
  return m;
}

/** Value of one series, by name and exact label set. */
async function value(m: Metrics, name: string, labels: Record<string, string> = {}): Promise<number | undefined> {
  const all = await m.registry.getMetricsAsJSON();
  const base = name.replace(/_(bucket|sum|count)$/, '');
  const metric = all.find((x) => x.name === base);
  const found = (metric?.values as { metricName?: string; labels: Record<string, unknown>; value: number }[] | undefined)?.find(
    (v) =>
      (v.metricName ?? base) === name &&
      Object.keys(labels).length === Object.keys(v.labels).length &&
      Object.entries(labels).every(([k, want]) => String(v.labels[k]) === want),
  );
  return found?.value;
}

interface Scrape {
  help: Map<string, string>;
  type: Map<string, string>;
  samples: { name: string; labels: Record<string, string>; value: number }[];
}

/** A small parser of the Prometheus text format (0.0.4), enough to check what we emit. */
function parseExposition(text: string): Scrape {
  const out: Scrape = { help: new Map(), type: new Map(), samples: [] };
  for (const line of text.split('\n')) {
    if (line === '') continue;
    const meta = /^# (HELP|TYPE) (\S+) (.*)$/.exec(line);
    if (meta) {
      (meta[1] === 'HELP' ? out.help : out.type).set(meta[2] ?? '', meta[3] ?? '');
      continue;
    }
    const sample = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!sample) throw new Error(`not a sample line: ${line}`);
    const labels: Record<string, string> = {};
    for (const m of (sample[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) {
      labels[m[1] ?? ''] = (m[2] ?? '').replace(/\\(.)/g, '$1');
    }
    const raw = sample[3] ?? '';
    out.samples.push({ name: sample[1] ?? '', labels, value: raw === '+Inf' ? Infinity : Number(raw) });
  }
  return out;
}

function get(url: string): Promise<{ status: number; type: string | undefined; body: string }> {
  return new Promise((resolve, reject) => {
    // agent: false, so that each request opens its own connection and a closed server shows
    // as ECONNREFUSED rather than as a reset pooled socket.
    http
      .get(url, { agent: false }, (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (body += c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, type: res.headers['content-type'], body }));
        res.on('error', reject);
      })
      .on('error', reject);
  });
}

describe('metric names', () => {
  it('are unique, conventional and documented', () => {
    expect(new Set(METRIC_NAMES).size).toBe(METRIC_NAMES.length);
    for (const spec of Object.values(METRICS)) {
      expect(spec.name).toMatch(/^roboflow_[a-z_]+$/);
      expect(spec.help.length).toBeGreaterThan(10);
      if (spec.type === 'counter') expect(spec.name).toMatch(/_total$/);
      if (spec.unit === 'seconds' || spec.unit === 'bytes') expect(spec.name).toContain(`_${spec.unit}`);
      if (spec.type === 'histogram') expect(spec.buckets?.length).toBeGreaterThan(5);
      for (const label of spec.labels) expect(['state', 'reason', 'stage', 'outcome']).toContain(label);
    }
  });
});

describe('Metrics.subscribe', () => {
  it('counts slots per state and the ready queue depth', async () => {
    const m = metrics();
    m.subscribe();
    const move = (slot: number, from: string | null, to: string | null) =>
      channels.slotTransition.publish({ slot, jobId: `job-${slot}`, from, to } as Parameters<
        typeof channels.slotTransition.publish
      >[0]);
    move(0, null, 'claiming');
    move(1, null, 'claiming');
    move(0, 'claiming', 'downloading');
    move(1, 'claiming', 'downloading');
    move(0, 'downloading', 'ready');
    move(1, 'downloading', 'ready');
    expect(await value(m, 'roboflow_prefetch_queue_depth')).toBe(2);
    expect(await value(m, 'roboflow_prefetch_slots', { state: 'ready' })).toBe(2);
    expect(await value(m, 'roboflow_prefetch_slots', { state: 'downloading' })).toBe(0);
    move(0, 'ready', 'active');
    move(2, null, 'claiming');
    move(2, 'claiming', 'failed');
    expect(await value(m, 'roboflow_prefetch_queue_depth')).toBe(1);
    expect(await value(m, 'roboflow_prefetch_slots', { state: 'active' })).toBe(1);
    expect(await value(m, 'roboflow_prefetch_slots', { state: 'failed' })).toBe(1);
    move(0, 'active', 'released');
    move(2, 'failed', null);
    expect(await value(m, 'roboflow_prefetch_slots', { state: 'active' })).toBe(0);
    expect(await value(m, 'roboflow_prefetch_slots', { state: 'failed' })).toBe(0);
    // A transition from a state never seen (subscribed mid-run) cannot make a count negative.
    move(7, 'downloading', 'released');
    for (const state of ['claiming', 'downloading', 'ready', 'failed', 'active']) {
      expect(await value(m, 'roboflow_prefetch_slots', { state })).toBeGreaterThanOrEqual(0);
    }
  });

  it('turns download, worker and upload events into metrics', async () => {
    const m = metrics();
    m.subscribe();
    channels.downloadBytes.publish({ downloadId: 1, bytes: 1000 });
    channels.downloadBytes.publish({ downloadId: 1, bytes: 24 });
    channels.rangeRequest.publish({ downloadId: 1, delta: 1 });
    channels.rangeRequest.publish({ downloadId: 1, delta: 1 });
    channels.rangeRequest.publish({ downloadId: 1, delta: -1 });
    channels.rangeRetry.publish({ downloadId: 1, url: 's3://b/k', code: 'ERR_THROTTLED', attempt: 1, delayMs: 10 });
    channels.rangeRetry.publish({ downloadId: 1, url: 's3://b/k', code: 'ERR_THROTTLED', attempt: 2, delayMs: 10 });
    channels.rangeRetry.publish({ downloadId: 1, url: 's3://b/k', code: 'ERR_CONNECTION', attempt: 1, delayMs: 10 });
    channels.downloadDone.publish({ downloadId: 1, url: 's3://b/k', bytes: 1024, seconds: 3, resumedBytes: 512, retries: 3 });
    channels.downloadError.publish({ downloadId: 2, url: 's3://b/x', code: 'ERR_NOT_FOUND' });
    channels.prefetchError.publish({ jobId: 'j1', code: 'ERR_NOT_FOUND' });
    channels.prefetchError.publish({ jobId: 'j2', code: 'ERR_MADE_UP' as never });
    channels.concurrency.publish({ limit: 12 });
    channels.workerWait.publish({ seconds: 1.5 });
    channels.workerBusy.publish({ seconds: 4 });
    channels.workerBusy.publish({ seconds: 2 });
    channels.jobFinished.publish({ jobId: 'j1', outcome: 'done', seconds: 7, status: 'done' });
    channels.jobFinished.publish({ jobId: 'j2', outcome: 'retried', seconds: 1, status: 'pending' });
    channels.uploadDone.publish({ bytes: 2048, seconds: 0.2 });

    expect(await value(m, 'roboflow_prefetch_bytes_downloaded_total')).toBe(1024);
    expect(await value(m, 'roboflow_download_ranges_in_flight')).toBe(1);
    expect(await value(m, 'roboflow_download_range_retries_total', { reason: 'ERR_THROTTLED' })).toBe(2);
    expect(await value(m, 'roboflow_download_range_retries_total', { reason: 'ERR_CONNECTION' })).toBe(1);
    expect(await value(m, 'roboflow_prefetch_download_duration_seconds_count')).toBe(1);
    expect(await value(m, 'roboflow_prefetch_download_duration_seconds_sum')).toBe(3);
    expect(await value(m, 'roboflow_prefetch_download_duration_seconds_bucket', { le: '2.5' })).toBe(0);
    expect(await value(m, 'roboflow_prefetch_download_duration_seconds_bucket', { le: '5' })).toBe(1);
    expect(await value(m, 'roboflow_download_resumed_bytes_total')).toBe(512);
    expect(await value(m, 'roboflow_prefetch_errors_total', { reason: 'ERR_NOT_FOUND', stage: 'download' })).toBe(1);
    expect(await value(m, 'roboflow_prefetch_errors_total', { reason: 'ERR_NOT_FOUND', stage: 'prefetch' })).toBe(1);
    expect(await value(m, 'roboflow_prefetch_errors_total', { reason: 'other', stage: 'prefetch' })).toBe(1);
    expect(await value(m, 'roboflow_download_concurrency_limit')).toBe(12);
    expect(await value(m, 'roboflow_worker_input_wait_seconds_total')).toBe(1.5);
    expect(await value(m, 'roboflow_worker_busy_seconds_total')).toBe(6);
    expect(await value(m, 'roboflow_worker_jobs_total', { outcome: 'done' })).toBe(1);
    expect(await value(m, 'roboflow_worker_jobs_total', { outcome: 'retried' })).toBe(1);
    expect(await value(m, 'roboflow_worker_jobs_total', { outcome: 'dead' })).toBe(0);
    expect(await value(m, 'roboflow_worker_job_duration_seconds_sum', { outcome: 'done' })).toBe(7);
    expect(await value(m, 'roboflow_upload_bytes_total')).toBe(2048);
    expect(await value(m, 'roboflow_upload_duration_seconds_count')).toBe(1);
    // No job id or URL ever becomes a label value.
    const text = await m.text();
    expect(text).not.toContain('s3://');
    expect(text).not.toMatch(/j1|j2|job-/);
  });

  it('stops counting after unsubscribe and after close', async () => {
    const m = metrics();
    const off = m.subscribe();
    channels.downloadBytes.publish({ downloadId: 1, bytes: 10 });
    off();
    off();
    channels.downloadBytes.publish({ downloadId: 1, bytes: 10 });
    expect(await value(m, 'roboflow_prefetch_bytes_downloaded_total')).toBe(10);

    const n = metrics();
    n.subscribe();
    n.subscribe();
    channels.workerBusy.publish({ seconds: 1 });
    expect(await value(n, 'roboflow_worker_busy_seconds_total')).toBe(2);
    await n.close();
    await n.close();
    channels.workerBusy.publish({ seconds: 1 });
    channels.jobFinished.publish({ jobId: 'x', outcome: 'dead', seconds: 1, status: 'dead' });
    expect(await value(n, 'roboflow_worker_busy_seconds_total')).toBe(2);
    expect(await value(n, 'roboflow_worker_jobs_total', { outcome: 'dead' })).toBe(0);
    expect(channels.workerBusy.channel.hasSubscribers).toBe(false);
    expect(() => n.subscribe()).toThrow(RoboflowError);
    await expect(n.serve('0')).rejects.toMatchObject({ code: 'ERR_CLOSED' });
  });

  it('keeps two instances apart', async () => {
    const a = metrics();
    const b = metrics();
    a.subscribe();
    channels.uploadDone.publish({ bytes: 5, seconds: 1 });
    expect(await value(a, 'roboflow_upload_bytes_total')).toBe(5);
    expect(await value(b, 'roboflow_upload_bytes_total')).toBe(0);
  });
});

describe('Metrics.serve', () => {
  it('serves /metrics in the text format with HELP and TYPE, /healthz and /readyz', async () => {
    const m = metrics(true);
    m.subscribe();
    let ready = false;
    const server = await m.serve('0', () => ready);
    expect(server.address).toBe(`127.0.0.1:${server.port}`);
    expect(server.port).toBeGreaterThan(0);
    channels.slotTransition.publish({ slot: 0, jobId: 'a', from: null, to: 'ready' });
    channels.downloadBytes.publish({ downloadId: 9, bytes: 4096 });
    channels.downloadDone.publish({ downloadId: 9, url: 'file:///x', bytes: 4096, seconds: 0.3, resumedBytes: 0, retries: 0 });
    channels.downloadError.publish({ downloadId: 10, url: 'file:///y', code: 'ERR_IO' });

    const res = await get(`http://127.0.0.1:${server.port}/metrics`);
    expect(res.status).toBe(200);
    expect(res.type).toMatch(/^text\/plain; version=0\.0\.4/);
    const scrape = parseExposition(res.body);
    const seed = {
      roboflow_prefetch_queue_depth: 'gauge',
      roboflow_prefetch_download_duration_seconds: 'histogram',
      roboflow_prefetch_bytes_downloaded_total: 'counter',
      roboflow_prefetch_errors_total: 'counter',
    };
    for (const [name, type] of Object.entries(seed)) {
      expect(scrape.type.get(name)).toBe(type);
      expect(scrape.help.get(name)?.length).toBeGreaterThan(10);
    }
    const sample = (name: string, labels: Record<string, string> = {}) =>
      scrape.samples.find((s) => s.name === name && JSON.stringify(s.labels) === JSON.stringify(labels))?.value;
    expect(sample('roboflow_prefetch_queue_depth')).toBe(1);
    expect(sample('roboflow_prefetch_bytes_downloaded_total')).toBe(4096);
    expect(sample('roboflow_prefetch_download_duration_seconds_count')).toBe(1);
    expect(sample('roboflow_prefetch_download_duration_seconds_bucket', { le: '0.25' })).toBe(0);
    expect(sample('roboflow_prefetch_download_duration_seconds_bucket', { le: '0.5' })).toBe(1);
    expect(sample('roboflow_prefetch_download_duration_seconds_bucket', { le: '+Inf' })).toBe(1);
    expect(sample('roboflow_prefetch_errors_total', { reason: 'ERR_IO', stage: 'download' })).toBe(1);
    // Every metric of the table is exposed with its help text and type, and so are the Node
    // process metrics.
    for (const spec of Object.values(METRICS)) {
      expect(scrape.help.get(spec.name)).toBe(spec.help);
      expect(scrape.type.get(spec.name)).toBe(spec.type);
    }
    expect(scrape.type.get('process_cpu_user_seconds_total')).toBe('counter');
    expect(scrape.samples.some((s) => s.name === 'nodejs_heap_size_used_bytes')).toBe(true);

    expect(await get(`http://127.0.0.1:${server.port}/healthz`)).toMatchObject({ status: 200, body: 'ok\n' });
    expect((await get(`http://127.0.0.1:${server.port}/readyz`)).status).toBe(503);
    ready = true;
    expect((await get(`http://127.0.0.1:${server.port}/readyz`)).status).toBe(200);
    expect((await get(`http://127.0.0.1:${server.port}/nope`)).status).toBe(404);

    await m.close();
    await expect(get(`http://127.0.0.1:${server.port}/healthz`)).rejects.toMatchObject({ code: 'ECONNREFUSED' });
  });

  it('binds loopback for a bare port and reports a port in use', async () => {
    const m = metrics();
    const a = await m.serve('127.0.0.1:0');
    expect(a.address).toMatch(/^127\.0\.0\.1:\d+$/);
    await expect(m.serve(String(a.port))).rejects.toMatchObject({ code: 'ERR_CONFIG' });
    await expect(m.serve('not-an-address')).rejects.toMatchObject({ code: 'ERR_CONFIG' });
    await a.close();
    await a.close();
  });
});

describe('Grafana dashboard', () => {
  it('is a valid dashboard whose queries reference only known metrics', async () => {
    const raw = await readFile(new URL('../deploy/grafana-dashboard.json', import.meta.url), 'utf8');
    const dash = JSON.parse(raw) as {
      __inputs: { name: string; type: string; pluginId: string }[];
      schemaVersion: number;
      title: string;
      uid: string;
      panels: { id: number; type: string; title: string; datasource?: { uid: string }; targets?: { expr: string }[] }[];
    };
    expect(dash.__inputs).toContainEqual(expect.objectContaining({ name: 'DS_PROMETHEUS', type: 'datasource', pluginId: 'prometheus' }));
    expect(dash.schemaVersion).toBeGreaterThanOrEqual(36);
    expect(dash.title.length).toBeGreaterThan(0);
    const ids = dash.panels.map((p) => p.id);
    expect(new Set(ids).size).toBe(ids.length);

    const known = new Set(Object.values(METRICS).flatMap((s) => seriesNames(s)));
    const exprs = dash.panels.flatMap((p) => p.targets ?? []).map((t) => t.expr);
    expect(exprs.length).toBeGreaterThanOrEqual(10);
    const referenced = new Set<string>();
    for (const expr of exprs) for (const m of expr.matchAll(/\broboflow_[a-z_]+/g)) referenced.add(m[0]);
    for (const name of referenced) expect(known, `${name} is not in metric-names.ts`).toContain(name);
    for (const panel of dash.panels.filter((p) => p.type !== 'row')) {
      expect(panel.datasource?.uid, panel.title).toBe('${DS_PROMETHEUS}');
    }
    // The panels the runbook relies on.
    const joined = exprs.join('\n');
    expect(joined).toContain(
      'sum(rate(roboflow_worker_input_wait_seconds_total[5m])) / (sum(rate(roboflow_worker_input_wait_seconds_total[5m])) + sum(rate(roboflow_worker_busy_seconds_total[5m])))',
    );
    expect(joined).toContain('sum(rate(roboflow_prefetch_bytes_downloaded_total[5m]))');
    for (const name of [
      'roboflow_prefetch_queue_depth',
      'roboflow_prefetch_slots',
      'roboflow_prefetch_errors_total',
      'roboflow_download_range_retries_total',
      'roboflow_worker_jobs_total',
      'roboflow_worker_job_duration_seconds_bucket',
      'roboflow_upload_bytes_total',
      'roboflow_download_concurrency_limit',
    ]) {
      expect(referenced).toContain(name);
    }
  });
});
