/**
 * Prometheus metrics. The only module that imports prom-client: the core publishes events on
 * `node:diagnostics_channel` (src/diagnostics.ts) and `Metrics.subscribe()` turns them into the
 * metrics listed in src/metric-names.ts.
 *
 * Each `Metrics` owns its own `Registry`, so two instances (two tests, or a library user with
 * their own prom-client) never collide on the global default registry. `serve()` exposes
 * `/metrics`, `/healthz` and `/readyz` over node:http, on loopback unless told otherwise.
 */

import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { parseListenAddress } from './config.js';
import { channels, type SlotStateName } from './diagnostics.js';
import { RETRY_TABLE, RoboflowError, type ErrorCode } from './errors.js';
import { METRICS, type MetricSpec } from './metric-names.js';

export interface MetricsOptions {
  /**
   * Node process metrics (CPU, memory, event-loop lag, GC, handles). Off for short-lived
   * instances such as tests, since their collectors cannot be stopped. (Default: true)
   */
  readonly processMetrics?: boolean;
  /** Labels added to every metric, e.g. `{ worker: 'w-1' }`. Keep them few and stable. */
  readonly defaultLabels?: Readonly<Record<string, string>>;
}

/** A running metrics endpoint. */
export interface MetricsServer {
  /** The bound address as `host:port` (`[::1]:9464` for IPv6). */
  readonly address: string;
  readonly port: number;
  /** Stops listening and closes open connections. Idempotent. */
  close(): Promise<void>;
}

/** Slot states that count as occupying a slot; `released` means the slot is empty again. */
const SLOT_STATES = ['claiming', 'downloading', 'ready', 'failed', 'active'] as const;
type OccupiedState = (typeof SLOT_STATES)[number];

const JOB_OUTCOMES = ['done', 'retried', 'dead', 'released', 'lease_lost'] as const;

/** Where a prefetch error happened: the download of one input, or the slot as a whole. */
const ERROR_STAGES = ['download', 'prefetch'] as const;

/** Every value of the `reason` label of errors: each error code, and `other`. */
const ERROR_REASONS: readonly (ErrorCode | 'other')[] = [...(Object.keys(RETRY_TABLE) as ErrorCode[]), 'other'];

/** A range is retried only for a retryable code; `other` cannot be one. */
const RETRY_REASONS: readonly ErrorCode[] = (Object.keys(RETRY_TABLE) as ErrorCode[]).filter((c) => RETRY_TABLE[c].retryable);

function isOccupied(state: SlotStateName | null): state is OccupiedState {
  switch (state) {
    case 'claiming':
    case 'downloading':
    case 'ready':
    case 'failed':
    case 'active':
      return true;
    case 'released':
    case null:
      return false;
    default: {
      const _exhaustive: never = state;
      return _exhaustive;
    }
  }
}

/** Error codes are a closed set; anything else (a newer publisher) is folded into `other`. */
function reasonLabel(code: string): ErrorCode | 'other' {
  return Object.hasOwn(RETRY_TABLE, code) ? (code as ErrorCode) : 'other';
}

function counter(spec: MetricSpec, registry: Registry): Counter {
  return new Counter({ name: spec.name, help: spec.help, labelNames: [...spec.labels], registers: [registry] });
}
function gauge(spec: MetricSpec, registry: Registry): Gauge {
  return new Gauge({ name: spec.name, help: spec.help, labelNames: [...spec.labels], registers: [registry] });
}
function histogram(spec: MetricSpec, registry: Registry): Histogram {
  return new Histogram({
    name: spec.name,
    help: spec.help,
    labelNames: [...spec.labels],
    buckets: [...(spec.buckets ?? [])],
    registers: [registry],
  });
}

export class Metrics {
  readonly registry: Registry;

  private readonly queueDepth: Gauge;
  private readonly slots: Gauge;
  private readonly downloadDuration: Histogram;
  private readonly bytesDownloaded: Counter;
  private readonly errors: Counter;
  private readonly rangeRetries: Counter;
  private readonly rangesInFlight: Gauge;
  private readonly resumedBytes: Counter;
  private readonly concurrencyLimit: Gauge;
  private readonly inputWait: Counter;
  private readonly busy: Counter;
  private readonly jobs: Counter;
  private readonly jobDuration: Histogram;
  private readonly uploadBytes: Counter;
  private readonly uploadDuration: Histogram;

  /**
   * Where each slot is, by slot number. Kept per slot rather than as +1/−1 per state so that a
   * subscriber that starts mid-run, or misses an event, cannot drive a count negative.
   */
  private readonly slotStates = new Map<number, OccupiedState>();
  private inFlight = 0;
  private readonly unsubscribers = new Set<() => void>();
  private readonly servers = new Set<MetricsServer>();
  private closing: Promise<void> | undefined;

  constructor(opts: MetricsOptions = {}) {
    this.registry = new Registry();
    if (opts.defaultLabels) this.registry.setDefaultLabels({ ...opts.defaultLabels });
    if (opts.processMetrics ?? true) collectDefaultMetrics({ register: this.registry });
    const r = this.registry;
    this.queueDepth = gauge(METRICS.prefetchQueueDepth, r);
    this.slots = gauge(METRICS.prefetchSlots, r);
    this.downloadDuration = histogram(METRICS.prefetchDownloadDuration, r);
    this.bytesDownloaded = counter(METRICS.prefetchBytesDownloaded, r);
    this.errors = counter(METRICS.prefetchErrors, r);
    this.rangeRetries = counter(METRICS.downloadRangeRetries, r);
    this.rangesInFlight = gauge(METRICS.downloadRangesInFlight, r);
    this.resumedBytes = counter(METRICS.downloadResumedBytes, r);
    this.concurrencyLimit = gauge(METRICS.downloadConcurrencyLimit, r);
    this.inputWait = counter(METRICS.workerInputWait, r);
    this.busy = counter(METRICS.workerBusy, r);
    this.jobs = counter(METRICS.workerJobs, r);
    this.jobDuration = histogram(METRICS.workerJobDuration, r);
    this.uploadBytes = counter(METRICS.uploadBytes, r);
    this.uploadDuration = histogram(METRICS.uploadDuration, r);
    // Series that exist from the first scrape, so rate() and "by state" panels start at zero
    // instead of appearing only after the first event.
    this.queueDepth.set(0);
    for (const state of SLOT_STATES) this.slots.set({ state }, 0);
    this.rangesInFlight.set(0);
    for (const outcome of JOB_OUTCOMES) {
      this.jobs.inc({ outcome }, 0);
      this.jobDuration.zero({ outcome });
    }
    // Every reason an error or a retry can carry, from the fixed code list: an alert on
    // rate(roboflow_prefetch_errors_total[5m]) works on a worker that has not failed yet.
    for (const reason of ERROR_REASONS) {
      for (const stage of ERROR_STAGES) this.errors.inc({ reason, stage }, 0);
    }
    for (const reason of RETRY_REASONS) this.rangeRetries.inc({ reason }, 0);
  }

  /**
   * Subscribes to every channel in src/diagnostics.ts. Returns a function that unsubscribes
   * (idempotent); `close()` unsubscribes too.
   */
  subscribe(): () => void {
    if (this.closing) throw new RoboflowError('ERR_CLOSED', 'metrics are closed; create a new Metrics');
    const subs = [
      channels.downloadBytes.subscribe((e) => this.bytesDownloaded.inc(e.bytes)),
      channels.rangeRequest.subscribe((e) => {
        this.inFlight = Math.max(0, this.inFlight + e.delta);
        this.rangesInFlight.set(this.inFlight);
      }),
      channels.rangeRetry.subscribe((e) => this.rangeRetries.inc({ reason: reasonLabel(e.code) })),
      channels.downloadDone.subscribe((e) => {
        this.downloadDuration.observe(e.seconds);
        if (e.resumedBytes > 0) this.resumedBytes.inc(e.resumedBytes);
      }),
      channels.downloadError.subscribe((e) => this.errors.inc({ reason: reasonLabel(e.code), stage: 'download' })),
      channels.concurrency.subscribe((e) => this.concurrencyLimit.set(e.limit)),
      channels.slotTransition.subscribe((e) => this.onSlotTransition(e.slot, e.to)),
      channels.prefetchError.subscribe((e) => this.errors.inc({ reason: reasonLabel(e.code), stage: 'prefetch' })),
      channels.workerWait.subscribe((e) => this.inputWait.inc(e.seconds)),
      channels.workerBusy.subscribe((e) => this.busy.inc(e.seconds)),
      channels.jobFinished.subscribe((e) => {
        this.jobs.inc({ outcome: e.outcome });
        this.jobDuration.observe({ outcome: e.outcome }, e.seconds);
      }),
      channels.uploadDone.subscribe((e) => {
        this.uploadBytes.inc(e.bytes);
        this.uploadDuration.observe(e.seconds);
      }),
    ];
    let done = false;
    const unsubscribe = (): void => {
      if (done) return;
      done = true;
      for (const off of subs) off();
      this.unsubscribers.delete(unsubscribe);
    };
    this.unsubscribers.add(unsubscribe);
    return unsubscribe;
  }

  private onSlotTransition(slot: number, to: SlotStateName | null): void {
    if (isOccupied(to)) this.slotStates.set(slot, to);
    else this.slotStates.delete(slot);
    const counts: Record<OccupiedState, number> = { claiming: 0, downloading: 0, ready: 0, failed: 0, active: 0 };
    for (const state of this.slotStates.values()) counts[state] += 1;
    for (const state of SLOT_STATES) this.slots.set({ state }, counts[state]);
    this.queueDepth.set(counts.ready);
  }

  /** The metrics in the Prometheus text format. */
  text(): Promise<string> {
    return this.registry.metrics();
  }

  /**
   * Serves `GET /metrics` (text format), `/healthz` (200 while the process runs) and `/readyz`
   * (200 when `readiness()` returns true, else 503). `addr` is `host:port` or a port alone,
   * which binds 127.0.0.1; port 0 picks a free port. `0.0.0.0` must be asked for explicitly.
   */
  async serve(addr: string, readiness: () => boolean = () => true): Promise<MetricsServer> {
    if (this.closing) throw new RoboflowError('ERR_CLOSED', 'metrics are closed; create a new Metrics');
    const { host, port } = parseListenAddress(addr);
    const server = http.createServer((req, res) => {
      this.handle(req, res, readiness);
    });
    await new Promise<void>((resolve, reject) => {
      const onError = (err: Error): void => {
        server.off('listening', onListening);
        reject(
          new RoboflowError('ERR_CONFIG', `cannot serve metrics on ${host}:${port}: ${err.message}`, { cause: err }),
        );
      };
      const onListening = (): void => {
        server.off('error', onError);
        resolve();
      };
      server.once('error', onError);
      server.once('listening', onListening);
      server.listen(port, host);
    });
    const bound = server.address() as AddressInfo;
    let closed: Promise<void> | undefined;
    const handle: MetricsServer = {
      address: bound.family === 'IPv6' ? `[${bound.address}]:${bound.port}` : `${bound.address}:${bound.port}`,
      port: bound.port,
      close: () => {
        closed ??= new Promise<void>((resolve) => {
          server.close(() => resolve());
          // Scrapers keep connections alive; without this, close() waits for their timeout.
          server.closeAllConnections();
        }).finally(() => this.servers.delete(handle));
        return closed;
      },
    };
    this.servers.add(handle);
    return handle;
  }

  private handle(req: http.IncomingMessage, res: http.ServerResponse, readiness: () => boolean): void {
    const pathname = (req.url ?? '/').split('?')[0];
    const head = req.method === 'HEAD';
    const send = (status: number, body: string, type = 'text/plain; charset=utf-8'): void => {
      res.writeHead(status, { 'content-type': type, 'content-length': Buffer.byteLength(body) });
      res.end(head ? undefined : body);
    };
    if (req.method !== 'GET' && !head) {
      res.setHeader('allow', 'GET, HEAD');
      send(405, 'method not allowed\n');
      return;
    }
    switch (pathname) {
      case '/metrics':
        this.registry.metrics().then(
          (body) => send(200, body, this.registry.contentType),
          (err: unknown) => send(500, `cannot collect metrics: ${(err as Error).message}\n`),
        );
        return;
      case '/healthz':
        send(200, 'ok\n');
        return;
      case '/readyz': {
        let ready = false;
        try {
          ready = readiness();
        } catch {
          ready = false;
        }
        send(ready ? 200 : 503, ready ? 'ready\n' : 'not ready\n');
        return;
      }
      default:
        send(404, 'not found; try /metrics, /healthz or /readyz\n');
    }
  }

  /** Unsubscribes from every channel and closes every server. Idempotent. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      for (const off of [...this.unsubscribers]) off();
      await Promise.all([...this.servers].map((s) => s.close()));
    })();
    return this.closing;
  }
}
