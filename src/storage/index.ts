/**
 * The front door of storage: a URL becomes an `ObjectSource`.
 *
 * `StorageClients` owns the expensive things — a connection pool per HTTP origin, an S3 client (with
 * its keep-alive agents) per endpoint/region/addressing style — so that the many sources a worker
 * opens (one per input, prefetch included) share connections. `openSource()` is the one-call form
 * for scripts and tests.
 */

import type { LookupFunction } from 'node:net';
import { DEFAULTS } from '../defaults.js';
import { RoboflowError } from '../errors.js';
import type { ObjectSource, StorageOptions } from '../types.js';
import { FileSource } from './file.js';
import { createHttpPool, type HttpDispatcher, HttpSource } from './http.js';
import type { Http1Pool } from './http1.js';
import { createS3Client, resolveS3Settings, S3Source, type S3ClientHandle } from './s3.js';
import { parseObjectUrl } from './url.js';

export { parseObjectUrl, joinOutputUrl, isPathStyleEndpoint, type ParsedUrl } from './url.js';
export { redactUrl } from '../redact.js';
export { FileSource } from './file.js';
export { HttpSource } from './http.js';
export { S3Source } from './s3.js';

export interface OpenOptions {
  /**
   * Checks every redirect target of an HTTP source before it is requested; throw to refuse it.
   * Receives the real URL, secrets included.
   */
  readonly checkRedirect?: (url: string) => void;
}

export interface StorageClientsOptions extends StorageOptions {
  /**
   * Close a pool or client as soon as the last source using it is closed. Off by default, so a
   * worker keeps warm connections between jobs; on for `openSource()`, which has no owner that
   * would close it. (Default: false)
   */
  readonly closeIdle?: boolean;
  /**
   * Name resolution for every HTTP pool and S3/OSS agent: a worker passes its security policy's
   * `lookup`, so that no connection reaches an address the policy refuses, whatever a job or a
   * redirect names. (Default: `dns.lookup`)
   */
  readonly lookup?: LookupFunction;
  /**
   * Checks every redirect target of every HTTP source opened here, unless `open()` is given its
   * own; throw to refuse. A worker passes its policy's `checkRedirect`. (Default: none)
   */
  readonly checkRedirect?: (url: string) => void;
}

/** What an S3 client is for: reads leave retries to the downloader, uploads let the SDK retry parts. */
export type S3Purpose = 'read' | 'upload';

interface Shared<T> {
  readonly value: T;
  refs: number;
  readonly dispose: () => Promise<void>;
}

/** A handle on a shared resource; `release()` is idempotent. */
export interface Lease<T> {
  readonly value: T;
  release(): Promise<void>;
}

type ClientsState = 'open' | 'closing' | 'closed';

export class StorageClients {
  private readonly opts: StorageClientsOptions;
  private readonly shared = new Map<string, Shared<Http1Pool | S3ClientHandle>>();
  private state: ClientsState = 'open';
  private closed: Promise<void> | undefined;

  constructor(opts: StorageClientsOptions = {}) {
    this.opts = opts;
  }

  /** Whether connections go through an injected `lookup` (a security policy's), for start-up checks. */
  get checksAddresses(): boolean {
    return this.opts.lookup !== undefined;
  }

  /** Opens `url` as a source. Validation (URL form, OSS configuration) fails here, synchronously. */
  open(url: string, extra: OpenOptions = {}): ObjectSource {
    this.checkOpen();
    const parsed = parseObjectUrl(url, 'source');
    const checkRedirect = extra.checkRedirect ?? this.opts.checkRedirect;
    switch (parsed.kind) {
      case 'file':
        return new FileSource(parsed.path, parsed.display);
      case 'http': {
        const leases = new Map<string, Lease<Http1Pool>>();
        return new HttpSource(parsed.url, parsed.display, {
          dispatcherFor: (origin): HttpDispatcher => {
            let lease = leases.get(origin);
            if (lease === undefined) {
              lease = this.httpPool(origin);
              leases.set(origin, lease);
            }
            return lease.value;
          },
          ...(checkRedirect ? { checkRedirect } : {}),
          onClose: async () => {
            await Promise.all([...leases.values()].map((l) => l.release()));
          },
        });
      }
      case 's3':
      case 'oss': {
        const lease = this.s3Client(parsed.kind, parsed.display, 'read');
        const direct = parsed.kind === 's3' ? lease.value.direct(parsed.bucket, parsed.key) : undefined;
        return new S3Source(parsed.kind, parsed.bucket, parsed.key, parsed.display, {
          client: () => lease.value.client(),
          // OSS's S3-compatible API is not relied on for presigned URLs: oss:// stays on the SDK.
          ...(parsed.kind === 's3' ? { presigned: lease.value } : {}),
          ...(direct !== undefined ? { direct } : {}),
          headersTimeoutMs: this.opts.headersTimeoutMs ?? DEFAULTS.headersTimeoutMs,
          onClose: () => lease.release(),
        });
      }
      default: {
        const _exhaustive: never = parsed;
        return _exhaustive;
      }
    }
  }

  /** The shared connection pool for an HTTP origin. */
  httpPool(origin: string): Lease<Http1Pool> {
    return this.acquire(`http|${origin}`, () => {
      const pool = createHttpPool(origin, {
        ...(this.opts.maxConnections !== undefined ? { maxConnections: this.opts.maxConnections } : {}),
        ...(this.opts.headersTimeoutMs !== undefined ? { headersTimeoutMs: this.opts.headersTimeoutMs } : {}),
        ...(this.opts.lookup !== undefined ? { lookup: this.opts.lookup } : {}),
      });
      return { value: pool, dispose: () => pool.close() };
    });
  }

  /** The shared S3 client for an `s3://` or `oss://` URL (`display` only names it in errors). */
  s3Client(kind: 's3' | 'oss', display: string, purpose: S3Purpose): Lease<S3ClientHandle> {
    this.checkOpen();
    const settings = resolveS3Settings(kind, this.opts, display);
    return this.acquire(`${settings.cacheKey}|${purpose}`, () => {
      const handle = createS3Client(settings, {
        ...(this.opts.maxConnections !== undefined ? { maxConnections: this.opts.maxConnections } : {}),
        ...(this.opts.headersTimeoutMs !== undefined ? { headersTimeoutMs: this.opts.headersTimeoutMs } : {}),
        purpose,
        ...(this.opts.lookup !== undefined ? { lookup: this.opts.lookup } : {}),
      });
      return {
        value: handle,
        dispose: async () => handle.destroy(),
      };
    });
  }

  /**
   * Closes every pool and client. HTTP pools finish the requests in flight first; S3 clients drop
   * their sockets. Sources opened here fail with `ERR_CLOSED` afterwards. Idempotent.
   */
  close(): Promise<void> {
    switch (this.state) {
      case 'open': {
        this.state = 'closing';
        const all = [...this.shared.values()];
        this.shared.clear();
        this.closed = Promise.allSettled(all.map((s) => s.dispose())).then(() => {
          this.state = 'closed';
        });
        return this.closed;
      }
      case 'closing':
      case 'closed':
        return this.closed ?? Promise.resolve();
      default: {
        const _exhaustive: never = this.state;
        return _exhaustive;
      }
    }
  }

  private checkOpen(): void {
    if (this.state !== 'open') throw new RoboflowError('ERR_CLOSED', 'storage clients are closed');
  }

  private acquire<T extends Http1Pool | S3ClientHandle>(key: string, create: () => { value: T; dispose: () => Promise<void> }): Lease<T> {
    this.checkOpen();
    let entry = this.shared.get(key);
    if (entry === undefined) {
      const made = create();
      entry = { value: made.value, refs: 0, dispose: made.dispose };
      this.shared.set(key, entry);
    }
    const held = entry;
    held.refs++;
    let released = false;
    return {
      value: held.value as T,
      release: async () => {
        if (released) return;
        released = true;
        held.refs--;
        if (held.refs === 0 && this.opts.closeIdle && this.shared.get(key) === held) {
          this.shared.delete(key);
          await held.dispose();
        }
      },
    };
  }
}

let defaultClients: StorageClients | undefined;

/**
 * Opens `url` as a source (synchronously; invalid URLs and configuration throw at once).
 * Without storage options it uses a process-wide `StorageClients` whose connections close when
 * their last source closes; with options it uses a private one, disposed with the source.
 */
export function openSource(url: string, opts: StorageOptions & OpenOptions = {}): ObjectSource {
  const { checkRedirect, ...storage } = opts;
  const extra = checkRedirect ? { checkRedirect } : {};
  if (Object.values(storage).every((v) => v === undefined)) {
    defaultClients ??= new StorageClients({ closeIdle: true });
    return defaultClients.open(url, extra);
  }
  return new StorageClients({ ...storage, closeIdle: true }).open(url, extra);
}

/** The `StorageClients` behind `openSource()` without options, for callers that upload too. */
export function defaultStorageClients(): StorageClients {
  defaultClients ??= new StorageClients({ closeIdle: true });
  return defaultClients;
}
