/**
 * A private, throw-away PostgreSQL cluster: `initdb` into a temp directory, `pg_ctl` on a free
 * port, trust authentication on 127.0.0.1 only, fsync off. The scenario may restart or stop it
 * as it likes without touching anyone else's database, and `destroy()` removes every trace.
 *
 * PostgreSQL refuses to run as root; as root the binaries run as the `postgres` user (through
 * `runuser`), which then owns the directory.
 */

import { existsSync } from 'node:fs';
import { chown, mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { mustRun, runCommand } from './command.js';
import { SkipScenario } from './report.js';

const PG_USER = 'postgres';

export type StopMode = 'smart' | 'fast' | 'immediate';

/** The directory holding `initdb` and `pg_ctl`: the newest Debian-style install, else PATH. */
async function findBinDir(): Promise<string | null> {
  const root = '/usr/lib/postgresql';
  if (existsSync(root)) {
    const versions = (await readdir(root)).filter((v) => /^\d+$/.test(v)).sort((a, b) => Number(b) - Number(a));
    for (const v of versions) {
      const bin = path.join(root, v, 'bin');
      if (existsSync(path.join(bin, 'initdb')) && existsSync(path.join(bin, 'pg_ctl'))) return bin;
    }
  }
  const r = await runCommand('pg_config', ['--bindir']).catch(() => null);
  const bin = r?.code === 0 ? r.stdout.trim() : '';
  return bin !== '' && existsSync(path.join(bin, 'initdb')) ? bin : null;
}

/** A TCP port nothing listens on right now. */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const addr = s.address();
      const port = typeof addr === 'object' && addr !== null ? addr.port : 0;
      s.close(() => resolve(port));
    });
  });
}

async function uidOf(user: string): Promise<{ uid: number; gid: number } | null> {
  const u = await runCommand('id', ['-u', user]).catch(() => null);
  const g = await runCommand('id', ['-g', user]).catch(() => null);
  if (u?.code !== 0 || g?.code !== 0) return null;
  return { uid: Number(u.stdout.trim()), gid: Number(g.stdout.trim()) };
}

export class PrivateCluster {
  readonly port: number;
  readonly dir: string;
  readonly #bin: string;
  readonly #asUser: string | undefined;
  #destroyed = false;

  private constructor(bin: string, dir: string, port: number, asUser: string | undefined) {
    this.#bin = bin;
    this.dir = dir;
    this.port = port;
    this.#asUser = asUser;
  }

  /**
   * Creates and starts a cluster. Throws `SkipScenario` when PostgreSQL is not installed or
   * cannot run here (root without a `postgres` user).
   */
  static async create(): Promise<PrivateCluster> {
    const bin = await findBinDir();
    if (bin === null) throw new SkipScenario('PostgreSQL binaries (initdb, pg_ctl) are not installed');
    const root = typeof process.getuid === 'function' && process.getuid() === 0;
    const owner = root ? await uidOf(PG_USER) : null;
    if (root && owner === null) throw new SkipScenario(`running as root and there is no ${PG_USER} user to run PostgreSQL as`);
    const dir = await mkdtemp(path.join(os.tmpdir(), 'roboflow-chaos-pg-'));
    const cluster = new PrivateCluster(bin, dir, await freePort(), root ? PG_USER : undefined);
    try {
      if (owner !== null) await chown(dir, owner.uid, owner.gid);
      await mustRun(path.join(bin, 'initdb'), ['-D', cluster.dataDir, '-A', 'trust', '-U', PG_USER, '--no-sync', '-E', 'UTF8', '--locale=C'], cluster.#as(120_000));
      await cluster.start();
    } catch (err) {
      await cluster.destroy().catch(() => undefined);
      throw err;
    }
    return cluster;
  }

  get dataDir(): string {
    return path.join(this.dir, 'data');
  }

  /** A queue URL for `schema` in this cluster. */
  url(schema: string): string {
    return `postgres://${PG_USER}@127.0.0.1:${this.port}/postgres?schema=${schema}`;
  }

  async start(): Promise<void> {
    await mustRun(path.join(this.#bin, 'pg_ctl'), ['-D', this.dataDir, '-o', this.#serverOptions(), '-l', this.#logFile, '-w', '-t', '60', 'start'], this.#as(90_000));
  }

  async stop(mode: StopMode = 'fast'): Promise<void> {
    await mustRun(path.join(this.#bin, 'pg_ctl'), ['-D', this.dataDir, '-m', mode, '-w', '-t', '60', 'stop'], this.#as(90_000));
  }

  /** Stops (`fast` ends sessions cleanly, `immediate` is a crash) and starts again. */
  async restart(mode: StopMode = 'fast'): Promise<void> {
    await mustRun(path.join(this.#bin, 'pg_ctl'), ['-D', this.dataDir, '-m', mode, '-o', this.#serverOptions(), '-l', this.#logFile, '-w', '-t', '60', 'restart'], this.#as(90_000));
  }

  /** The last lines of the server log, for failure messages. */
  async logTail(lines = 20): Promise<string> {
    return (await readFile(this.#logFile, 'utf8').catch(() => '')).trim().split('\n').slice(-lines).join('\n');
  }

  /** Stops the server (as a crash: nothing of it is kept) and removes the directory. Idempotent. */
  async destroy(): Promise<void> {
    if (this.#destroyed) return;
    this.#destroyed = true;
    if (existsSync(path.join(this.dataDir, 'postmaster.pid'))) {
      await runCommand(path.join(this.#bin, 'pg_ctl'), ['-D', this.dataDir, '-m', 'immediate', '-w', '-t', '30', 'stop'], this.#as(60_000));
    }
    await rm(this.dir, { recursive: true, force: true });
  }

  get #logFile(): string {
    return path.join(this.dir, 'server.log');
  }

  #serverOptions(): string {
    // fsync off: the cluster lives minutes and a crash of the machine takes it along anyway.
    return `-F -p ${this.port} -k ${this.dir} -c listen_addresses=127.0.0.1 -c max_connections=50`;
  }

  #as(timeoutMs: number): { timeoutMs: number; asUser?: string } {
    return { timeoutMs, ...(this.#asUser !== undefined ? { asUser: this.#asUser } : {}) };
  }
}
