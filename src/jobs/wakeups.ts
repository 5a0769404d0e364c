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
 * The channel of a schema's queue. Channel names are identifiers (63 bytes at most); a long
 * schema name is replaced by its hash rather than cut, so two long names cannot share a channel.
 */
export function wakeChannel(schema: string): string {
  const plain = `roboflow_jobs_${schema}`;
  if (plain.length <= 63) return plain;
  return `roboflow_jobs_${createHash('sha256').update(schema).digest('hex').slice(0, 40)}`;
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
      keepAlive: true,
    });
    this.#client = client;
    const lost = () => {
      if (this.#client !== client) return;
      this.#client = null;
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
      await client.query(`LISTEN "${this.#opts.channel}"`);
      if (this.#client !== client) return;
      this.#failures = 0;
      this.#connections += 1;
      if (this.#connections > 1) this.#wake();
      await this.#readNextDue(client);
    } catch {
      lost();
    }
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
