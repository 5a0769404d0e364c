/**
 * Preloaded into a roboflow download by the benchmark (`node --import build/bench/src/phase-hook.js`)
 * to show where one run's time goes. It notes when each phase begins, from the downloader's
 * diagnostics channels (global by name, so the bundled CLI's events reach these subscribers),
 * and at exit writes the times, in ms since the process started, as JSON to the file that
 * `ROBOFLOW_BENCH_PHASES` names. Without that variable it does nothing.
 */

import { writeFileSync } from 'node:fs';
import { channels } from '../../src/diagnostics.js';
import type { PhaseMarks } from './results.js';

const out = process.env['ROBOFLOW_BENCH_PHASES'];
if (out !== undefined && out !== '') {
  const marks: Partial<Record<keyof PhaseMarks, number>> = {};
  const mark = (k: keyof PhaseMarks): void => {
    marks[k] ??= performance.now();
  };
  mark('loaded');
  let missing = Number.POSITIVE_INFINITY;
  channels.downloadStart.subscribe((m) => {
    missing = m.size - m.resumedBytes;
    mark('stat');
  });
  channels.downloadBytes.subscribe((m) => {
    mark('firstBatch');
    missing -= m.bytes;
    if (missing <= 0) mark('lastBatch');
  });
  channels.downloadDone.subscribe(() => mark('done'));
  process.on('exit', () => {
    mark('exit');
    writeFileSync(out, JSON.stringify(marks));
  });
}
