/**
 * How processors name a job's inputs in results, output files and errors.
 *
 * The local path of a downloaded input is an implementation detail of the prefetch buffer; the
 * name a person recognises is the last segment of the object's URL (`s3://b/run7/ep42.mcap` →
 * `ep42.mcap`). Only the path segment is used, so a query string (which may carry a signature)
 * never reaches a result or a log.
 */

import path from 'node:path';
import type { JobRecord } from '../types.js';

/** The display name of input `index`: its URL's last path segment, else the local file name. */
export function inputName(job: JobRecord, index: number, localPath: string): string {
  const url = job.inputs[index]?.url;
  if (url !== undefined) {
    try {
      const segments = new URL(url).pathname.split('/');
      const last = segments[segments.length - 1];
      if (last) return decodeURIComponent(last);
    } catch {
      // Not a URL (or a malformed escape): the local name is still a fine label.
    }
  }
  return path.basename(localPath);
}
