/**
 * Wake-ups for idle workers on PostgreSQL: LISTEN/NOTIFY instead of asking the table every second.
 *
 * Whoever makes jobs claimable sends a notification on the queue's channel (one channel per
 * schema, so queues in two schemas of one database do not wake each other's workers):
 * - an empty payload: jobs are claimable now (submitted, released, retried, re-queued);
 * - a number: a job becomes claimable in that many milliseconds (a failure with a retry delay).
 *
 * One connection per queue listens (outside the pool: a LISTEN belongs to its session) and calls
 * the subscribers. A delay sets a timer to the earliest due time; when it fires, the subscribers
 * are called and the next due time is read from the table, so several delays in flight are all
 * honoured with one timer. On (re)connecting, the next due time is read too, and after a
 * reconnection the subscribers are called once, since notifications sent while the connection was
 * down are lost. A lost connection is opened again with backoff.
 *
 * The listening connection only ever receives, so nothing on it would notice a silent partition
 * (packets vanish, no reset): TCP keepalive starts probing after its default two hours. So TCP
 * keepalive starts early, and a cheap query checks the connection every `livenessIntervalMs`;
 * one that has not answered within the query time limit tears the connection down, and it is
 * opened again like a lost one.
 *
 * A wake-up is a hint, never a promise: a subscriber still claims, and finds nothing when another
 * worker was faster. Workers keep polling at a long interval (`fallbackPollIntervalMs`) for what
 * no notification announces: jobs whose lease expired because their worker was lost.
 */

import { createHash } from 'node:crypto';
import pg from 'pg';

/** First delay before the listening connection is opened again; doubles up to the maximum. */
const RECONNECT_BASE_MS = 250;
const RECONNECT_MAX_MS = 15_000;
/** A due time is read from a clock with microseconds; a little slack avoids waking just before it. */
const DUE_SLACK_MS = 5;
/** Longest a timer is set for; a later due time is read again when it fires. */
const MAX_TIMER_MS = 2_147_000_000;
/**
 * Idle time before TCP keepalive probes a connection that PostgreSQL holds for a long time (the
 * listener, a migration), instead of the system's default of two hours.
 */
export const KEEPALIVE_INITIAL_DELAY_MS = 10_000;
/**
 * How often the listening connection is checked with a query. A partition it misses loses at
 * most the wake-ups of this long (plus the query time limit); the fallback poll covers the rest.
 */
export const DEFAULT_LIVENESS_INTERVAL_MS = 30_000;
/** Channel names are identifiers: at most 63 bytes. */
const MAX_CHANNEL_BYTES = 63;

/**
 * The channel of a schema's queue. Channel names are identifiers (63 bytes at most, counted in
 * bytes: a name of multi-byte characters reaches it sooner than its length says); a long schema
 * name is replaced by its hash rather than cut, so two long names cannot share a channel.
 */
export function wakeChannel(schema: string): string {
  const plain = `roboflow_jobs_${schema}`;
  if (Buffer.byteLength(plain) <= MAX_CHANNEL_BYTES) return plain;
  return `roboflow_jobs_${createHash('sha256').update(schema).digest('hex').slice(0, 40)}`;
}

/** `name` as a quoted identifier: any character allowed, a double quote doubled. */
function quoteIdent(name: string): string {
  return `"${name.replace(/"/g, '""')}"`;
}

/** The payload announcing a job due in `delayMs` (0: now). */
export function wakePayload(delayMs: number): string {
  return delayMs > 0 ? String(Math.round(delayMs)) : '';
}

export interface WakeupsOptions {
  readonly connectionString: string;
  readonly applicationName: string;
  readonly channel: string;
  /** `"schema".jobs`, to read the next due time from. */
  readonly jobsTable: string;
  readonly connectTimeoutMs: number;
  /** Time limit of the liveness query; a connection that misses it is torn down. */
  readonly queryTimeoutMs: number;
  /** How often the listening connection is checked. (Default: 30 s) */
  readonly livenessIntervalMs?: number;
}

export class PostgresWakeups {
  readonly #opts: WakeupsOptions;
  readonly #listeners = new Set<() => void>();
  #client: pg.Client | null = null;
  /** Connections opened so far; a reconnection (not the first) wakes the subscribers. */
  #connections = 0;
  #failures = 0;
  #reconnectTimer: NodeJS.Timeout | null = null;
  #dueTimer: NodeJS.Timeout | null = null;
  #livenessTimer: NodeJS.Timeout | null = null;
  /** `Date.now()` the due timer fires at. */
  #dueAt = Infinity;
  #closed = false;

  constructor(opts: WakeupsOptions) {
    this.#opts = opts;
  }

  /** Calls `listener` on every wake-up until the returned function is called. */
  subscribe(listener: () => void): () => void {
    this.#listeners.add(listener);
    if (this.#client === null && this.#reconnectTimer === null && !this.#closed) void this.#connect();
    return () => {
      this.#listeners.delete(listener);
      if (this.#listeners.size === 0) this.#stop();
    };
  }

  /** Stops listening for good. */
  async close(): Promise<void> {
    this.#closed = true;
    this.#listeners.clear();
    await this.#stop();
  }

  async #connect(): Promise<void> {
    const client = new pg.Client({
      connectionString: this.#opts.connectionString,
      application_name: this.#opts.applicationName,
      connectionTimeoutMillis: this.#opts.connectTimeoutMs,
      // Every query here is limited (LISTEN, the due-time read, the liveness query): one stuck in
      // a partition fails, and the connection is torn down and opened again.
      query_timeout: this.#opts.queryTimeoutMs,
      keepAlive: true,
      keepAliveInitialDelayMillis: KEEPALIVE_INITIAL_DELAY_MS,
    });
    this.#client = client;
    const lost = () => {
      if (this.#client !== client) return;
      this.#client = null;
      this.#clearLiveness();
      // With a query still outstanding (a liveness query unanswered), pg destroys the socket
      // rather than waiting for a goodbye that a partition would never deliver.
      client.end().catch(() => {});
      this.#scheduleReconnect();
    };
    client.on('error', lost);
    client.on('end', lost);
    client.on('notification', (msg) => {
      if (msg.channel === this.#opts.channel) this.#onPayload(msg.payload ?? '');
    });
    try {
      await client.connect();
      await client.query(`LISTEN ${quoteIdent(this.#opts.channel)}`);
      if (this.#client !== client) return;
      this.#failures = 0;
      this.#connections += 1;
      if (this.#connections > 1) this.#wake();
      this.#checkLiveness(client, lost);
      await this.#readNextDue(client);
    } catch {
      lost();
    }
  }

  /** Asks the connection a cheap question every interval; one left unanswered tears it down. */
  #checkLiveness(client: pg.Client, lost: () => void): void {
    this.#clearLiveness();
    this.#livenessTimer = setTimeout(() => {
      this.#livenessTimer = null;
      if (this.#client !== client) return;
      client.query('SELECT 1').then(
        () => {
          if (this.#client === client) this.#checkLiveness(client, lost);
        },
        () => lost(),
      );
    }, this.#opts.livenessIntervalMs ?? DEFAULT_LIVENESS_INTERVAL_MS);
    this.#livenessTimer.unref();
  }

  #clearLiveness(): void {
    if (this.#livenessTimer !== null) clearTimeout(this.#livenessTimer);
    this.#livenessTimer = null;
  }

  #scheduleReconnect(): void {
    if (this.#closed || this.#listeners.size === 0 || this.#reconnectTimer !== null) return;
    this.#failures += 1;
    const wait = Math.min(RECONNECT_MAX_MS, RECONNECT_BASE_MS * 2 ** Math.min(this.#failures - 1, 10));
    this.#reconnectTimer = setTimeout(() => {
      this.#reconnectTimer = null;
      if (!this.#closed && this.#listeners.size > 0 && this.#client === null) void this.#connect();
    }, wait);
    this.#reconnectTimer.unref();
  }

  async #stop(): Promise<void> {
    if (this.#reconnectTimer !== null) clearTimeout(this.#reconnectTimer);
    this.#reconnectTimer = null;
    this.#clearDue();
    this.#clearLiveness();
    const client = this.#client;
    this.#client = null;
    this.#connections = 0;
    if (client !== null) await client.end().catch(() => {});
  }

  #onPayload(payload: string): void {
    const delay = Number(payload);
    if (payload === '' || !Number.isFinite(delay) || delay <= 0) this.#wake();
    else this.#dueIn(delay);
  }

  /** Sets the due timer to `delayMs` from now, unless it already fires sooner. */
  #dueIn(delayMs: number): void {
    const at = Date.now() + delayMs + DUE_SLACK_MS;
    if (at >= this.#dueAt) return;
    this.#clearDue();
    this.#dueAt = at;
    this.#dueTimer = setTimeout(() => {
      this.#dueTimer = null;
      this.#dueAt = Infinity;
      this.#wake();
      const client = this.#client;
      if (client !== null) void this.#readNextDue(client).catch(() => {});
    }, Math.min(MAX_TIMER_MS, delayMs + DUE_SLACK_MS));
    this.#dueTimer.unref();
  }

  #clearDue(): void {
    if (this.#dueTimer !== null) clearTimeout(this.#dueTimer);
    this.#dueTimer = null;
    this.#dueAt = Infinity;
  }

  /** Reads when the next waiting job becomes due (database clock) and sets the timer to it. */
  async #readNextDue(client: pg.Client): Promise<void> {
    const { rows } = await client.query<{ ms: number | null }>(
      `SELECT (extract(epoch FROM min(run_at) - now()) * 1000)::float8 AS ms
       FROM ${this.#opts.jobsTable} WHERE status = 'pending' AND run_at > now()`,
    );
    const ms = rows[0]?.ms;
    if (ms !== null && ms !== undefined && this.#client === client) this.#dueIn(Math.max(0, ms));
  }

  #wake(): void {
    for (const listener of [...this.#listeners]) {
      try {
        listener();
      } catch {
        // A subscriber's failure is its own; the others still hear of the work.
      }
    }
  }
}
