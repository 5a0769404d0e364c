/**
 * A small tmpfs mounted for one scenario: a buffer directory that really runs out of space, so
 * `ENOSPC` comes from the kernel, not from a simulation. Needs root (or CAP_SYS_ADMIN); a
 * machine that refuses the mount makes the scenario skip with the reason.
 */

import { mkdir } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { runCommand } from './command.js';
import { SkipScenario } from './report.js';

/** Mounts a tmpfs of `bytes` at `dir` (created if missing); resolves with its unmount. */
export async function mountTmpfs(dir: string, bytes: number): Promise<() => Promise<void>> {
  await mkdir(dir, { recursive: true });
  let r;
  try {
    r = await runCommand('mount', ['-t', 'tmpfs', '-o', `size=${bytes},mode=0755`, 'tmpfs', dir], { timeoutMs: 15_000 });
  } catch (err) {
    throw new SkipScenario(`cannot mount a tmpfs at ${dir}: ${(err as Error).message}`);
  }
  if (r.code !== 0) {
    throw new SkipScenario(`cannot mount a tmpfs at ${dir} (mount needs root): ${(r.stderr || r.stdout).trim()}`);
  }
  return async () => {
    // A file still open in a process that is going away keeps the mount busy for a moment.
    for (let attempt = 1; ; attempt++) {
      const u = await runCommand('umount', [dir], { timeoutMs: 15_000 });
      if (u.code === 0) return;
      if (attempt >= 5) {
        const lazy = await runCommand('umount', ['-l', dir], { timeoutMs: 15_000 });
        if (lazy.code === 0) return;
        throw new Error(`cannot unmount the tmpfs at ${dir}: ${(u.stderr || lazy.stderr).trim()}`);
      }
      await sleep(200 * attempt);
    }
  };
}
