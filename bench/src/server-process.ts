/**
 * The benchmark's object server, run in its own process (`build/test/support/object-server-main.js`)
 * so that the CPU and memory measured for a tool are the tool's alone, and the server's work
 * never competes with the bench's own event loop.
 */

import { spawn, type ChildProcess } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { request } from 'node:http';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { TOOL_SCRIPTS } from '../../test/support/package-root.js';

export interface ServedObject {
  readonly bucket: string;
  readonly key: string;
  readonly size: number;
  readonly seed: number;
}

/** An object served from a file (an MCAP episode written beforehand). */
export interface ServedFile {
  readonly bucket: string;
  readonly key: string;
  readonly path: string;
}

export interface ServerProcessOptions {
  /** Repository root (where `dist/` is). */
  readonly root: string;
  /** Per-connection send cap in bytes per second; undefined = uncapped. */
  readonly ratePerConnection?: number;
  readonly latencyMs: number;
  readonly objects: readonly ServedObject[];
  readonly files?: readonly ServedFile[];
  /** Give every object the FULL_OBJECT CRC32 S3 keeps for objects uploaded by current AWS SDKs. */
  readonly fullObjectCrc32?: boolean;
}

const START_TIMEOUT_MS = 120_000;
/**
 * Generated content the server keeps in memory: computing it costs ~1 CPU s per GB, which on two
 * cores would be taken from the tool being measured. Objects up to this total are computed once,
 * before the first run; the server then costs what a static file server costs.
 */
const SERVER_CACHE_LIMIT = 1.5 * 2 ** 30;
const STOP_GRACE_MS = 5_000;

export class ServerProcess {
  private closed: Promise<void> | undefined;

  private constructor(
    private readonly child: ChildProcess,
    readonly endpoint: string,
  ) {}

  /** Starts the server and waits until it listens and has answered a HEAD for every object
   * (the first HEAD computes the object's ETag, which must not be charged to the first tool). */
  static async start(opts: ServerProcessOptions): Promise<ServerProcess> {
    const script = path.join(opts.root, TOOL_SCRIPTS.objectServer);
    const args = [script, '--latency', String(opts.latencyMs)];
    if (opts.ratePerConnection !== undefined) args.push('--rate', String(opts.ratePerConnection));
    const cache = Math.min(SERVER_CACHE_LIMIT, opts.objects.reduce((sum, o) => sum + o.size, 0));
    if (cache > 0) args.push('--cache', String(cache));
    if (opts.fullObjectCrc32) args.push('--full-object-crc32');
    for (const o of opts.objects) args.push('--object', `${o.bucket}/${o.key}=generated:${o.size}:${o.seed}`);
    for (const f of opts.files ?? []) args.push('--object', `${f.bucket}/${f.key}=file:${f.path}`);
    const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr?.on('data', (c: Buffer) => {
      stderr = (stderr + c.toString('utf8')).slice(-4096);
    });
    const endpoint = await new Promise<string>((resolve, reject) => {
      const lines = createInterface({ input: child.stdout! });
      const fail = (why: string): void => {
        clearTimeout(timer);
        lines.close();
        child.kill('SIGKILL');
        reject(new Error(`object server (${script}) ${why}${stderr ? `: ${stderr.trim()}` : ''}`));
      };
      const timer = setTimeout(() => fail(`printed no endpoint within ${START_TIMEOUT_MS} ms`), START_TIMEOUT_MS);
      child.once('exit', (code, sig) => fail(`exited before it listened (code ${code}, signal ${sig})`));
      child.once('error', (err) => fail(`could not start: ${err.message}`));
      lines.once('line', (line) => {
        clearTimeout(timer);
        child.removeAllListeners('exit');
        child.removeAllListeners('error');
        try {
          const parsed = JSON.parse(line) as { endpoint?: unknown };
          if (typeof parsed.endpoint !== 'string') throw new Error('no endpoint field');
          resolve(parsed.endpoint);
        } catch (err) {
          fail(`printed ${JSON.stringify(line)} instead of {"endpoint": ...} (${(err as Error).message})`);
        }
      });
    });
    // Drain further output so a chatty server never blocks on a full pipe.
    child.stdout?.resume();
    const server = new ServerProcess(child, endpoint);
    try {
      for (const o of [...opts.objects, ...(opts.files ?? [])]) await server.head(o.bucket, o.key);
    } catch (err) {
      await server.close();
      throw err;
    }
    return server;
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  httpUrl(bucket: string, key: string): string {
    return `${this.endpoint}/${encodeURIComponent(bucket)}/${key.split('/').map(encodeURIComponent).join('/')}`;
  }

  /** CPU seconds (user + system) the server process has used so far, from /proc. */
  async cpuSeconds(): Promise<number> {
    if (this.child.pid === undefined) return Number.NaN;
    try {
      const stat = await readFile(`/proc/${this.child.pid}/stat`, 'utf8');
      // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      const ticks = Number(fields[11]) + Number(fields[12]);
      return ticks / 100;
    } catch {
      return Number.NaN;
    }
  }

  private head(bucket: string, key: string): Promise<void> {
    return new Promise((resolve, reject) => {
      const req = request(this.httpUrl(bucket, key), { method: 'HEAD', timeout: START_TIMEOUT_MS }, (res) => {
        res.resume();
        res.once('end', () => {
          if (res.statusCode === 200) resolve();
          else reject(new Error(`HEAD ${this.httpUrl(bucket, key)} answered ${res.statusCode}`));
        });
      });
      req.once('timeout', () => req.destroy(new Error(`HEAD ${this.httpUrl(bucket, key)} timed out`)));
      req.once('error', reject);
      req.end();
    });
  }

  /** SIGTERM, then SIGKILL if it has not exited after a grace period. Idempotent. */
  close(): Promise<void> {
    this.closed ??= new Promise<void>((resolve) => {
      if (this.child.exitCode !== null || this.child.signalCode !== null) {
        resolve();
        return;
      }
      const timer = setTimeout(() => this.child.kill('SIGKILL'), STOP_GRACE_MS);
      this.child.once('exit', () => {
        clearTimeout(timer);
        resolve();
      });
      this.child.kill('SIGTERM');
    });
    return this.closed;
  }
}
