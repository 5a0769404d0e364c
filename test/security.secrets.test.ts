// Secrets never leave the worker: access keys, session tokens and presigned-URL signatures stay
// out of logs (debug level), error messages and `last_error`, job records, `roboflow config`
// output and `/metrics`. The worker runs hostile and failing jobs with real credentials in its
// environment, against real servers on 127.0.0.1; then every place text ends up is searched.
import { execFile } from 'node:child_process';
import http from 'node:http';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { loadConfig } from '../src/config/load.js';
import { DEFAULTS } from '../src/defaults.js';
import { openQueue } from '../src/jobs/index.js';
import { createLogger } from '../src/log.js';
import { Metrics } from '../src/metrics.js';
import { ObjectServer } from './support/object-server.js';
import type { JobQueue, JobRecord } from '../src/types.js';
import { Worker, type WorkerSettings } from '../src/worker.js';
import { describeFull } from './tier.js';

const KiB = 1024;

const ACCESS_KEY_ID = 'AKIAROBOFLOWTEST0001';
const SECRET_ACCESS_KEY = 'wJalrXUtnFEMI/K7MDENG/bPxRfiCYzSECRETKEY';
const SESSION_TOKEN = 'FwoGZXIvYXdzEROBOFLOWSESSIONTOKEN0123456789abcdef';
const SIGNATURE = 'f0e1d2c3b4a5968778695a4b3c2d1e0ff0e1d2c3b4a5968778695a4b3c2d1e0f';
const PRESIGNED_KEY_ID = 'AKIAPRESIGNEDKEY0002';
const PRESIGNED_TOKEN = 'IQoJb3JpZ2luX2VjEPRESIGNEDTOKENxyz987';
const ENDPOINT_PASSWORD = 'minio-Pa55word-9f8e7d';

/** Every string that must appear nowhere. */
const SECRETS = [SECRET_ACCESS_KEY, SESSION_TOKEN, SIGNATURE, PRESIGNED_KEY_ID, PRESIGNED_TOKEN, ACCESS_KEY_ID];

function presign(url: string): string {
  return (
    `${url}?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=${PRESIGNED_KEY_ID}%2F20260101%2Fus-east-1%2Fs3%2Faws4_request` +
    `&X-Amz-Date=20260101T000000Z&X-Amz-Expires=900&X-Amz-SignedHeaders=host&X-Amz-Security-Token=${PRESIGNED_TOKEN}` +
    `&X-Amz-Signature=${SIGNATURE}`
  );
}

function expectClean(text: string, where: string): void {
  for (const secret of SECRETS) expect(text.includes(secret), `${where} contains ${secret.slice(0, 8)}…`).toBe(false);
}

function get(url: string): Promise<string> {
  return new Promise((resolve, reject) => {
    http
      .get(url, (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (body += c));
        res.on('end', () => resolve(body));
        res.on('error', reject);
      })
      .on('error', reject);
  });
}

describe('a worker with credentials, running hostile and failing jobs, at debug level', () => {
  const saved: Record<string, string | undefined> = {};
  let dir: string;
  let queue: JobQueue;
  let s3: ObjectServer;
  let web: ObjectServer;

  beforeAll(() => {
    // The worker reads credentials the way production does: from its own environment.
    for (const [k, v] of Object.entries({
      AWS_ACCESS_KEY_ID: ACCESS_KEY_ID,
      AWS_SECRET_ACCESS_KEY: SECRET_ACCESS_KEY,
      AWS_SESSION_TOKEN: SESSION_TOKEN,
    })) {
      saved[k] = process.env[k];
      process.env[k] = v;
    }
  });

  afterAll(() => {
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  });

  beforeEach(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'roboflow-'));
    queue = await openQueue(`sqlite://${path.join(dir, 'queue.db')}`);
    s3 = await ObjectServer.start({ credentials: { accessKeyId: ACCESS_KEY_ID, secretAccessKey: SECRET_ACCESS_KEY } });
    web = await ObjectServer.start();
  });

  afterEach(async () => {
    await s3.close();
    await web.close();
    await queue.close();
    await rm(dir, { recursive: true, force: true });
  });

  function settings(overrides: Partial<WorkerSettings> = {}): Partial<WorkerSettings> {
    return {
      slots: 1,
      downloadConnections: 2,
      chunkSize: 64 * KiB,
      bufferDir: path.join(dir, 'buffer'),
      bufferBudgetBytes: 64 * 1024 * KiB,
      leaseMs: 5_000,
      heartbeatMs: 1_000,
      pollIntervalMs: 20,
      jobRetryBaseDelayMs: 1,
      jobRetryMaxDelayMs: 5,
      rangeMaxAttempts: 2,
      retryBaseDelayMs: 1,
      retryMaxDelayMs: 5,
      ...overrides,
    };
  }

  it('keeps every secret out of logs, last_error, job records, uploaded program output and /metrics', async () => {
    s3.putObject('bucket', 'raw/ok.mcap', { generated: { size: 200 * KiB, seed: 1 } });
    s3.createBucket('results');
    const jobs: Record<string, JobRecord> = {
      ok: await queue.submit({ inputs: [{ url: 's3://bucket/raw/ok.mcap' }], output: 's3://results/ok/', processor: 'checksum' }),
      missingS3: await queue.submit({ inputs: [{ url: 's3://bucket/raw/missing.mcap' }], processor: 'checksum' }),
      presigned404: await queue.submit({ inputs: [{ url: presign(web.httpUrl('bucket', 'raw/missing.mcap')) }], processor: 'checksum' }),
      // A program that tries to print the worker's environment, into its output and its stderr.
      envDump: await queue.submit({
        inputs: [{ url: 's3://bucket/raw/ok.mcap' }],
        output: 's3://results/env/',
        processor: 'exec',
        args: { command: ['sh', '-c', 'env > {output}/env.txt; env >&2; echo "$AWS_SECRET_ACCESS_KEY" >&2'] },
      }),
      envDumpFails: await queue.submit({
        inputs: [{ url: 's3://bucket/raw/ok.mcap' }],
        processor: 'exec',
        args: { command: ['sh', '-c', 'env >&2; echo "key=$AWS_SECRET_ACCESS_KEY token=$AWS_SESSION_TOKEN" >&2; exit 7'] },
        maxAttempts: 1,
      }),
    };
    const lines: string[] = [];
    // The logger is not told the secrets (env: {}): what it writes is clean because nothing
    // handed it a secret, not because a last pass scrubbed known values.
    const log = createLogger({ level: 'debug', pretty: false, env: {}, destination: { write: (l: string) => void lines.push(l) } });
    const metrics = new Metrics({ processMetrics: false, defaultLabels: { worker: 'worker-a' } });
    metrics.subscribe();
    try {
      const summary = await new Worker({
        queue,
        drain: true,
        owner: 'worker-a',
        config: settings(),
        storage: { endpoint: s3.endpoint, region: 'us-east-1', forcePathStyle: true },
        log,
      }).run();
      expect(summary).toMatchObject({ done: 2, dead: 1, downloadFailures: 2 });

      // The run really used the credentials and really failed where it should.
      const after = Object.fromEntries(await Promise.all(Object.entries(jobs).map(async ([k, j]) => [k, await queue.get(j.id)] as const)));
      expect(after.ok?.status).toBe('done');
      expect(after.envDump?.status).toBe('done');
      expect(after.missingS3).toMatchObject({ status: 'dead' });
      expect(after.missingS3?.lastError).toContain('s3://bucket/raw/missing.mcap');
      expect(after.presigned404).toMatchObject({ status: 'dead' });
      expect(after.presigned404?.lastError).toContain('X-Amz-Signature=REDACTED');
      expect(after.presigned404?.lastError).toContain('404');
      expect(after.envDumpFails).toMatchObject({ status: 'dead' });
      expect(after.envDumpFails?.lastError).toContain('exited with code 7');
      expect(after.envDumpFails?.lastError).toContain('key= token=');

      // Logs at debug level: a line per event, and none with a secret.
      expect(lines.length).toBeGreaterThan(10);
      expect(lines.some((l) => l.includes('X-Amz-Signature=REDACTED'))).toBe(true);
      expectClean(lines.join('\n'), 'the log');

      // Job records: last_error and result of every job. Inputs keep what the submitter gave.
      for (const [name, j] of Object.entries(after)) {
        expectClean(JSON.stringify({ ...j, inputs: undefined }), `job ${name}`);
      }

      // What the program wrote: its environment had no credentials to write.
      const envTxt = s3.objectBytes('results', 'env/env.txt').toString('utf8');
      expect(envTxt).toContain('ROBOFLOW_JOB_ID=');
      expectClean(envTxt, 'env.txt');
      expect(envTxt).not.toMatch(/^AWS_/m);

      // /metrics: labels come from fixed sets, nothing from a job.
      const served = await metrics.serve('127.0.0.1:0');
      const text = await get(`http://${served.address}/metrics`);
      expect(text).toContain('roboflow_worker_jobs_total{outcome="dead",worker="worker-a"}');
      expectClean(text, '/metrics');
      for (const fragment of ['missing.mcap', 'ok.mcap', 's3://', 'http://', s3.endpoint, web.endpoint, 'X-Amz']) {
        expect(text.includes(fragment), `/metrics contains ${fragment}`).toBe(false);
      }
      for (const line of text.split('\n').filter((l) => l !== '' && !l.startsWith('#'))) {
        const labels = /\{([^}]*)\}/.exec(line)?.[1] ?? '';
        for (const pair of labels.split(',').filter(Boolean)) {
          expect(['outcome', 'state', 'reason', 'stage', 'worker', 'le'], line).toContain(pair.split('=')[0]);
        }
      }
    } finally {
      await metrics.close();
    }
  });

  it('keeps the signature out of the reason a refused job is given', async () => {
    const j = await queue.submit({ inputs: [{ url: presign(web.httpUrl('bucket', 'secret/x.mcap')) }], processor: 'checksum' });
    const lines: string[] = [];
    const log = createLogger({ level: 'debug', pretty: false, env: {}, destination: { write: (l: string) => void lines.push(l) } });
    await new Worker({ queue, drain: true, owner: 'worker-a', config: settings({ allowSources: [`${web.endpoint}/bucket/raw/*`] }), log }).run();
    const after = await queue.get(j.id);
    expect(after?.status).toBe('dead');
    expect(after?.lastError).toContain('is not an allowed source');
    expect(after?.lastError).toContain('X-Amz-Signature=REDACTED');
    expectClean(JSON.stringify({ ...after, inputs: undefined }), 'the refused job');
    expectClean(lines.join('\n'), 'the log');
    expect(web.requests).toHaveLength(0);
  });
});

describeFull('roboflow config (compiled, in a child process) masks secrets', () => {
  const fixture = new URL('./fixtures/config-cli.mjs', import.meta.url).pathname;
  let dir: string;

  beforeEach(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'roboflow-'));
  });

  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  function run(args: string[], env: NodeJS.ProcessEnv): Promise<{ code: number; stdout: string; stderr: string }> {
    return new Promise((resolve, reject) => {
      const child = execFile(process.execPath, [fixture, 'config', ...args], { env, cwd: dir }, (err, stdout, stderr) => {
        if (err && typeof err.code !== 'number') reject(err);
        else resolve({ code: child.exitCode ?? 0, stdout, stderr });
      });
    });
  }

  const env = (extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv => ({
    PATH: process.env.PATH ?? '',
    AWS_ACCESS_KEY_ID: ACCESS_KEY_ID,
    AWS_SECRET_ACCESS_KEY: SECRET_ACCESS_KEY,
    AWS_SESSION_TOKEN: SESSION_TOKEN,
    ROBOFLOW_QUEUE: `postgres://worker:${SESSION_TOKEN}@db.internal/jobs`,
    ROBOFLOW_ENDPOINT: `https://minio:${ENDPOINT_PASSWORD}@s3.example.com`,
    ROBOFLOW_EXEC_COMMAND: `curl -o {output}/x.bin ${presign('https://data.example.com/x.bin')}`,
    ...extra,
  });

  it('prints the table and JSON with passwords, user info and signatures masked', async () => {
    for (const args of [[], ['--json']]) {
      const out = await run(args, env());
      expect(out.code, out.stderr).toBe(0);
      expect(out.stdout).toContain('postgres://worker:****@db.internal/jobs');
      expect(out.stdout).toContain('X-Amz-Signature=****');
      expect(out.stdout).toContain('https://minio:****@s3.example.com');
      expectClean(out.stdout + out.stderr, `roboflow config ${args.join(' ')}`);
      expect(out.stdout).not.toContain(ENDPOINT_PASSWORD);
    }
  });

  it('names key and source of a bad pattern without echoing its signature', async () => {
    const out = await run(['--allow-private-range', '10.0.0.1/8'], env({ ROBOFLOW_ALLOW_SOURCES: presign('https://data.example.com/raw/x') }));
    expect(out.code).toBe(2);
    expect(out.stderr).toContain('allowSources');
    expect(out.stderr).toContain('environment variable ROBOFLOW_ALLOW_SOURCES');
    expect(out.stderr).toContain('allowPrivateRanges');
    expect(out.stderr).toContain('flag --allow-private-range');
    expect(out.stderr).toContain('did you mean 10.0.0.0/8');
    expectClean(out.stdout + out.stderr, 'the error');
  });
});

describe('/metrics is off by default and binds loopback', () => {
  it('is not configured unless asked', async () => {
    expect(DEFAULTS.metricsAddr).toBeNull();
    expect((await loadConfig({ env: {}, cwd: os.tmpdir() })).config.metricsAddr).toBeNull();
  });

  it('binds 127.0.0.1 for a bare port, in both spellings', async () => {
    const metrics = new Metrics({ processMetrics: false });
    try {
      for (const addr of ['0', ':0']) {
        const served = await metrics.serve(addr);
        expect(served.address).toMatch(/^127\.0\.0\.1:\d+$/);
        expect(await get(`http://${served.address}/healthz`)).toBe('ok\n');
        await served.close();
      }
    } finally {
      await metrics.close();
    }
  });
});
