/**
 * What machine the figures come from: cores, memory, CPU model, kernel, Node, the file system
 * downloads were written to, whether the page cache could be dropped, whether the kernel hands
 * free memory back to a hypervisor (the bench then waits for it between runs), and what hashing costs on
 * this CPU (so the report can say how much of roboflow's CPU time verification explains).
 */

import { createHash } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import os from 'node:os';
import { runCommand } from './measure.js';
import type { MachineInfo } from './results.js';

/** The `model name` of the first processor in /proc/cpuinfo. */
export function cpuModelFrom(cpuinfo: string): string {
  const m = /^model name\s*:\s*(.+)$/m.exec(cpuinfo);
  return m?.[1]?.trim() ?? 'unknown';
}

/** Tries to drop the page cache (needs root and a writable /proc/sys). */
export async function canDropCaches(): Promise<boolean> {
  try {
    await writeFile('/proc/sys/vm/drop_caches', '1\n');
    return true;
  } catch {
    return false;
  }
}

/**
 * Where a guest kernel counts the free memory it has handed back to its host (virtio-balloon free
 * page reporting, as on Firecracker). Present only on such machines.
 */
const PAGE_REPORTING_KIB = '/sys/module/page_reporting/parameters/reported_kib';

/** KiB of free memory reported to the host so far, or undefined where the kernel does not report. */
export async function pageReportedKiB(): Promise<number | undefined> {
  try {
    const n = Number((await readFile(PAGE_REPORTING_KIB, 'utf8')).trim());
    return Number.isFinite(n) ? n : undefined;
  } catch {
    return undefined;
  }
}

/** CPU seconds per GB (10^9 bytes) of one hash over an in-memory buffer, on this core. */
function hashCost(algorithm: 'md5' | 'sha256'): number {
  const buf = Buffer.alloc(16 * 2 ** 20, 7);
  const rounds = 8;
  const before = process.cpuUsage();
  const h = createHash(algorithm);
  for (let i = 0; i < rounds; i++) h.update(buf);
  h.digest();
  const used = process.cpuUsage(before);
  return (used.user + used.system) / 1e6 / ((buf.length * rounds) / 1e9);
}

export async function machineInfo(downloadDir: string, dropCaches: boolean, pageReporting: boolean): Promise<MachineInfo> {
  const cpuinfo = await readFile('/proc/cpuinfo', 'utf8').catch(() => '');
  const df = await runCommand('df', ['--output=source,fstype,target', downloadDir], { timeoutMs: 10_000 });
  const dfLine = df.stdout.trim().split('\n').at(-1)?.trim().split(/\s+/) ?? [];
  return {
    nproc: os.availableParallelism(),
    memoryBytes: os.totalmem(),
    cpuModel: cpuModelFrom(cpuinfo),
    node: process.version,
    kernel: `${os.type()} ${os.release()}`,
    platform: `${process.platform}-${process.arch}`,
    dropCaches,
    pageReporting,
    downloadDir: dfLine.length >= 3 ? `${downloadDir} (${dfLine[1]} on ${dfLine[0]}, mounted at ${dfLine[2]})` : downloadDir,
    md5SecondsPerGB: hashCost('md5'),
    sha256SecondsPerGB: hashCost('sha256'),
  };
}
