/**
 * Scenario `hostile`: inputs chosen to break out of the worker's directories, and servers that
 * answer with something that is not the object.
 *
 * Names: object keys with `../` (through an HTTP URL with encoded slashes and through an S3 URL,
 * where keys are taken literally), absolute paths, NUL bytes (percent-encoded), backslashes and
 * names of 300+ characters. The objects are real, so these jobs must complete with the right
 * bytes; and no file may appear outside the buffer and output directories — the run's directory
 * is sampled while the worker runs, a canary directory beside the buffer must stay empty, and the
 * places a traversal would land must not exist afterwards.
 *
 * Replies: a 206 whose Content-Range names other bytes, an HTML error page with status 200 (on
 * every request, and on GETs only), no Content-Length (on every request), and truncated bodies
 * without Content-Length. These are errors, not data: such a job fails, or retries and then has
 * exactly the object's bytes; it never completes with anything else.
 */

import { existsSync } from 'node:fs';
import { mkdir, readdir } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { FaultRule, ObjectServer } from '../test/support/object-server.js';
import type { JobQueue } from '../src/types.js';
import { Worker } from '../src/worker.js';
import {
  bytesRefetched,
  capturedLogger,
  chaosWorkerConfig,
  checkNothingLeft,
  KiB,
  listFiles,
  localJobOutputs,
  MiB,
  observeChannels,
  openLocalQueue,
  runScenario,
  runWorkerBounded,
  serverFaults,
  startObjectServer,
  verifyJobs,
  type ExpectedJob,
  type LocalJobOutputs,
} from './harness.js';
import type { ScenarioOptions, ScenarioReport } from './report.js';
import { deriveSeed } from './seed.js';

interface HostileInput {
  /** What the case is about, for messages. */
  readonly label: string;
  readonly key: string;
  /** How the job names the object. */
  readonly url: (server: ObjectServer) => string;
  readonly faults?: readonly Omit<FaultRule, 'match'>[];
  /** Faults act on HEAD too, not only GET. */
  readonly everyMethod?: boolean;
  readonly may: ExpectedJob['may'];
}

const httpEncoded = (key: string) => (server: ObjectServer) => `${server.endpoint}/recordings/${encodeURIComponent(key)}`;
const s3Literal = (key: string) => () => `s3://recordings/${key}`;

export function runHostileScenario(opts: ScenarioOptions): Promise<ScenarioReport> {
  return runScenario('hostile', opts, async (ctx) => {
    const dir = await ctx.tempDir('run');
    const bufferDir = path.join(dir, 'buffer');
    const outRoot = path.join(dir, 'out');
    const canary = path.join(dir, 'canary');
    await mkdir(canary, { recursive: true });
    const tag = `chaos-escape-${ctx.seed}-${process.pid}`;
    const longName = `${'L'.repeat(ctx.rng.int(300, 340))}.mcap`;

    const inputs: HostileInput[] = [
      { label: '../ in an HTTP key', key: `../../${tag}/evil.bin`, url: httpEncoded(`../../${tag}/evil.bin`), may: 'done' },
      { label: '../ in an S3 key', key: `../../${tag}/evil-s3.bin`, url: s3Literal(`../../${tag}/evil-s3.bin`), may: 'done' },
      { label: 'absolute path as the key', key: `${canary}/absolute.bin`, url: httpEncoded(`${canary}/absolute.bin`), may: 'done' },
      { label: 'absolute path in an S3 key', key: `/${canary.replace(/^\/+/, '')}/absolute-s3.bin`, url: s3Literal(`/${canary.replace(/^\/+/, '')}/absolute-s3.bin`), may: 'done' },
      { label: 'NUL byte in the key', key: `nul\u0000${tag}.bin`, url: httpEncoded(`nul\u0000${tag}.bin`), may: 'done' },
      { label: 'backslashes in the key', key: `..\\..\\${tag}\\evil.bin`, url: httpEncoded(`..\\..\\${tag}\\evil.bin`), may: 'done' },
      { label: `a ${longName.length}-character name`, key: `deep/${'d/'.repeat(40)}${longName}`, url: (s) => s.httpUrl('recordings', `deep/${'d/'.repeat(40)}${longName}`), may: 'done' },
      { label: 'Content-Range naming other bytes', key: 'bad-content-range.bin', url: httpEncoded('bad-content-range.bin'), faults: [{ fault: { kind: 'bad-content-range' }, times: 1_000 }], may: 'dead' },
      { label: 'HTML error page with 200 on every request', key: 'html-everywhere.bin', url: httpEncoded('html-everywhere.bin'), faults: [{ fault: { kind: 'html-error' }, times: 1_000 }], everyMethod: true, may: 'dead' },
      { label: 'HTML error page with 200 on GETs', key: 'html-on-get.bin', url: httpEncoded('html-on-get.bin'), faults: [{ fault: { kind: 'html-error' }, times: 1_000 }], may: 'dead' },
      { label: 'no Content-Length on any reply', key: 'no-content-length.bin', url: httpEncoded('no-content-length.bin'), faults: [{ fault: { kind: 'no-content-length' }, times: 1_000 }], everyMethod: true, may: 'either' },
      {
        label: 'truncated bodies without Content-Length',
        key: 'truncated-unannounced.bin',
        url: httpEncoded('truncated-unannounced.bin'),
        faults: [
          { fault: { kind: 'truncate', afterBytes: 100 * KiB }, probability: 0.3, seed: deriveSeed(ctx.seed, 'hostile/truncate') },
          { fault: { kind: 'no-content-length' }, times: 1_000 },
        ],
        may: 'either',
      },
    ];

    const server = await startObjectServer(ctx);
    const queue = await openLocalQueue(ctx, dir);
    const size = () => ctx.rng.int(ctx.short ? 256 * KiB : 1 * MiB, ctx.short ? 1 * MiB : 3 * MiB);
    const objects: { bucket: string; key: string; size: number; sha256: string }[] = [];
    for (const [i, input] of inputs.entries()) {
      const bytes = size();
      server.putObject('recordings', input.key, { generated: { size: bytes, seed: deriveSeed(ctx.seed, `hostile/${i}`) } });
      objects.push({ bucket: 'recordings', key: input.key, size: bytes, sha256: await server.objectSha256('recordings', input.key) });
      for (const f of input.faults ?? []) {
        server.addFault({ ...f, match: { key: input.key, ...(input.everyMethod ? { method: '*' } : {}) } });
      }
    }
    const outputs = localJobOutputs(outRoot);
    const submitted = await submitAll(queue, inputs, server, outputs);
    const observer = observeChannels(ctx);
    const processErrors = new Map<string, string>();
    const { logger } = capturedLogger('info');
    const worker = new Worker({
      queue,
      drain: true,
      owner: 'chaos-hostile',
      log: logger,
      storage: { endpoint: server.endpoint, region: 'us-east-1', env: { AWS_ACCESS_KEY_ID: 'chaos', AWS_SECRET_ACCESS_KEY: 'chaos-secret-key' } },
      config: chaosWorkerConfig(bufferDir, { chunkSize: 256 * KiB, rangeMaxAttempts: 6 }),
      onJob: (r) => {
        if (r.error !== undefined) processErrors.set(r.jobId, r.error);
      },
    });

    // Sample the run's directory while the worker runs: a file that escaped and was removed
    // again would not show in the final listing.
    const allowed = (rel: string) => rel.startsWith(`buffer${path.sep}`) || rel.startsWith(`out${path.sep}`) || /^queue\.db(-wal|-shm|-journal)?$/.test(rel);
    const strays = new Set<string>();
    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        for (const f of await listFiles(dir).catch(() => [])) if (!allowed(f)) strays.add(f);
        await new Promise((r) => setTimeout(r, 50));
      }
    })();
    ctx.cleanup.defer('stop sampling the file tree', () => {
      sampling = false;
    });
    ctx.log(`${inputs.length} hostile inputs: ${inputs.map((i) => i.label).join('; ')}`);
    const summary = await runWorkerBounded(ctx, worker);
    sampling = false;
    await sampler;
    observer.stop();
    for (const f of await listFiles(dir)) if (!allowed(f)) strays.add(f);

    const verdict = await verifyJobs(
      ctx,
      queue,
      submitted.map((job, i) => ({
        id: job,
        label: inputs[i]?.label ?? job,
        versions: [objects[i]?.sha256 ?? ''],
        may: inputs[i]?.may ?? 'either',
        ...(inputs[i]?.may === 'dead' ? { deadCodes: ['ERR_BAD_RESPONSE' as const] } : {}),
        readOutput: () => outputs.read(i),
      })),
      observer.observations(),
    );
    ctx.counts.faultsInjected = serverFaults(server);
    ctx.counts.bytesRefetched = bytesRefetched(server, objects);

    // Where a traversal or an absolute key would have landed.
    const landings = new Set<string>();
    for (const input of inputs) {
      for (const base of [bufferDir, path.join(bufferDir, 'x'), outRoot, path.join(outRoot, 'x'), dir, process.cwd()]) {
        for (const name of [input.key, input.key.replace(/\\/g, '/')]) {
          if (!name.includes('\u0000')) landings.add(path.resolve(base, name));
        }
      }
    }
    const landed = [...landings].filter((p) => existsSync(p));
    const taggedNearby: string[] = [];
    for (const d of [os.tmpdir(), path.dirname(dir), dir, process.cwd(), '/']) {
      const names = await readdir(d).catch(() => [] as string[]);
      for (const n of names) if (n.includes(tag)) taggedNearby.push(path.join(d, n));
    }
    const canaryFiles = await listFiles(canary);
    ctx.checks.check(
      'no file appeared outside the buffer and output directories',
      strays.size === 0 && landed.length === 0 && taggedNearby.length === 0 && canaryFiles.length === 0,
      strays.size + landed.length + taggedNearby.length + canaryFiles.length === 0
        ? `run directory sampled throughout; canary empty; ${landings.size} traversal targets absent`
        : `strays: ${[...strays].join(', ')}; landed: ${landed.join(', ')}; tagged: ${taggedNearby.join(', ')}; canary: ${canaryFiles.join(', ')}`,
    );
    await checkNothingLeft(ctx, 'the buffer directory is empty afterwards', bufferDir);
    ctx.details['summary'] = summary;
    ctx.details['endings'] = Object.fromEntries(
      inputs.map((input, i) => {
        const rec = verdict.records.get(submitted[i] ?? '');
        return [input.label, `${rec?.status ?? 'missing'}${rec?.status === 'dead' ? `: ${(observer.prefetchErrors.get(rec.id) ?? []).join(', ') || processErrors.get(rec.id) || rec.lastError}` : ''}`];
      }),
    );
  });
}

async function submitAll(queue: JobQueue, inputs: readonly HostileInput[], server: ObjectServer, outputs: LocalJobOutputs): Promise<string[]> {
  const ids: string[] = [];
  for (const [i, input] of inputs.entries()) {
    const job = await queue.submit({
      inputs: [{ url: input.url(server) }],
      processor: 'checksum',
      output: outputs.url(i),
      maxAttempts: 2,
    });
    ids.push(job.id);
  }
  return ids;
}
