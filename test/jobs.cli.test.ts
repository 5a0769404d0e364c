// `roboflow jobs`: run as a real process on the compiled CLI module, against a real queue.
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { openQueue } from '../src/jobs/index.js';
import { postgresBackend } from './fixtures/jobs-backends.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const fixture = path.join(root, 'test', 'fixtures', 'jobs-cli.mjs');
const compiled = path.join(root, 'dist', 'cli', 'jobs.js');

beforeAll(() => {
  if (!existsSync(compiled)) {
    throw new Error(`${compiled} is missing: build first with \`npx tsc -p tsconfig.build.json\` (npm test does)`);
  }
});

interface Run {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

function roboflow(args: string[], env: NodeJS.ProcessEnv = {}, cwd = root): Promise<Run> {
  return new Promise((resolve) => {
    const childEnv: NodeJS.ProcessEnv = { ...process.env, ...env };
    if (!('ROBOFLOW_QUEUE' in env)) delete childEnv.ROBOFLOW_QUEUE;
    execFile(process.execPath, [fixture, ...args], { env: childEnv, cwd }, (err, stdout, stderr) => {
      const code = err === null ? 0 : typeof err.code === 'number' ? err.code : -1;
      resolve({ code, stdout, stderr });
    });
  });
}

let dir: string;
let queue: string;

beforeEach(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'roboflow-'));
  queue = `sqlite://${dir}/queue.db`;
});

afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

// Each run starts a Node process; on a busy two-core machine that can take seconds.
describe('roboflow jobs', { timeout: 180_000 }, () => {
  it('submits a checksum job and prints its id', async () => {
    const run = await roboflow(['jobs', 'submit', 's3://b/a.mcap', 's3://b/b.mcap', '--queue', queue]);
    expect(run.stderr).toBe('');
    expect(run.code).toBe(0);
    expect(run.stdout).toBe('1\n');
    const q = await openQueue(queue);
    try {
      expect(await q.get('1')).toMatchObject({
        inputs: [{ url: 's3://b/a.mcap' }, { url: 's3://b/b.mcap' }],
        processor: 'checksum',
        args: {},
        maxAttempts: 3,
        output: null,
      });
    } finally {
      await q.close();
    }
  });

  it('turns --exec into an argv without a shell and prints JSON', async () => {
    const run = await roboflow([
      'jobs',
      'submit',
      'file:///data/in.mcap',
      '--exec',
      `convert --title "my run" '$HOME' {input}`,
      '--output',
      'file:///data/out/',
      '--max-attempts',
      '5',
      '--json',
      '--queue',
      queue,
    ]);
    expect(run.stderr).toBe('');
    const job = JSON.parse(run.stdout) as Record<string, unknown>;
    expect(job).toMatchObject({
      id: '1',
      processor: 'exec',
      args: { command: ['convert', '--title', 'my run', '$HOME', '{input}'] },
      output: 'file:///data/out/',
      maxAttempts: 5,
      status: 'pending',
    });
  });

  /** Two jobs through the API: 1 dead with a signed URL in its error, 2 pending. */
  async function twoJobs(): Promise<void> {
    const q = await openQueue(queue);
    try {
      for (const name of ['a', 'b']) {
        await q.submit({ inputs: [{ url: `https://h/${name}.mcap?X-Amz-Signature=deadbeef` }], processor: 'checksum' });
      }
      await q.claim('w1', 60_000);
      await q.start('1', 'w1', 60_000);
      await q.fail('1', 'w1', 'ERR_NOT_FOUND: https://h/a.mcap?X-Amz-Signature=deadbeef: HTTP 404', {
        retryable: false,
        backoffMs: 0,
      });
    } finally {
      await q.close();
    }
  }

  it('lists jobs as a table and as JSON, with signed URLs redacted, from ROBOFLOW_QUEUE', async () => {
    await twoJobs();
    const env = { ROBOFLOW_QUEUE: queue };
    const list = await roboflow(['jobs', 'list'], env);
    expect(list.stderr).toBe('');
    expect(list.code).toBe(0);
    const lines = list.stdout.trimEnd().split('\n');
    expect(lines[0]).toMatch(/^ID\s+STATUS\s+ATTEMPTS\s+PROCESSOR\s+INPUT\s+UPDATED\s+LAST ERROR$/);
    expect(lines[1]).toMatch(/^2\s+pending\s+0\/3\s+checksum\s+https:\/\/h\/b\.mcap/);
    expect(lines[2]).toMatch(/^1\s+dead\s+1\/3\s+checksum\s+.*ERR_NOT_FOUND/);
    expect(list.stdout).not.toContain('deadbeef');

    const dead = await roboflow(['jobs', 'list', '--status', 'dead', '--json'], env);
    const records = JSON.parse(dead.stdout) as { id: string; lastError: string }[];
    expect(records.map((r) => r.id)).toEqual(['1']);
    expect(records[0]?.lastError).toContain('ERR_NOT_FOUND');
    expect(dead.stdout).not.toContain('deadbeef');
  });

  it('shows one job and counts jobs per status', async () => {
    await twoJobs();
    const show = await roboflow(['jobs', 'show', '1', '--queue', queue]);
    expect(show.stdout).toMatch(/^id\s+1$/m);
    expect(show.stdout).toMatch(/^status\s+dead$/m);
    expect(show.stdout).toMatch(/^attempts\s+1 of 3$/m);
    expect(show.stdout).toMatch(/^last error\s+ERR_NOT_FOUND/m);
    expect(show.stdout).not.toContain('deadbeef');

    const counts = await roboflow(['jobs', 'counts', '--json', '--queue', queue]);
    expect(JSON.parse(counts.stdout)).toEqual({ pending: 1, claimed: 0, running: 0, done: 0, dead: 1 });
    const countsText = await roboflow(['jobs', 'counts', '--queue', queue]);
    expect(countsText.stdout).toMatch(/^dead\s+1$/m);
    expect(countsText.stdout).toMatch(/^total\s+2$/m);
  });

  it('retries a dead job and refuses to retry it twice', async () => {
    await twoJobs();
    const retry = await roboflow(['jobs', 'retry', '1', '--queue', queue]);
    expect(retry.code).toBe(0);
    expect(retry.stdout).toContain('job 1: dead -> pending');
    const again = await roboflow(['jobs', 'retry', '1', '--queue', queue]);
    expect(again.code).toBe(1);
    expect(again.stdout).toBe('');
    expect(again.stderr).toMatch(/^roboflow jobs: ERR_QUEUE: job 1 is pending; only dead jobs can be retried.*\n$/);
    expect(again.stderr.split('\n').length).toBe(2);
  });

  it('fails with one line on stderr and exit 1 for a missing job or a bad queue URL', async () => {
    const missing = await roboflow(['jobs', 'show', '42', '--queue', queue]);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/^roboflow jobs: ERR_JOB_NOT_FOUND: no job 42 .*\n$/);

    const badUrl = await roboflow(['jobs', 'counts', '--queue', 'mysql://root:hunter2@db/x']);
    expect(badUrl.code).toBe(1);
    expect(badUrl.stderr.split('\n').length).toBe(2);
    expect(badUrl.stderr).toContain('ERR_CONFIG');
    expect(badUrl.stderr).not.toContain('hunter2');
  });

  it('refuses bad submit flags with one line on stderr and exit 1', async () => {
    const both = await roboflow(['jobs', 'submit', 'a', '--exec', 'true', '--processor', 'checksum', '--queue', queue]);
    expect(both.code).toBe(1);
    expect(both.stderr).toContain('--exec');

    const badSpec = await roboflow(['jobs', 'submit', 'a', '--max-attempts', '0', '--queue', queue]);
    expect(badSpec.code).toBe(1);
    expect(badSpec.stderr).toContain('maxAttempts: must be at least 1');

    const quote = await roboflow(['jobs', 'submit', 'a', '--exec', 'echo "open', '--queue', queue]);
    expect(quote.code).toBe(1);
    expect(quote.stderr).toContain('unterminated');
  });

  it('uses sqlite://roboflow.db in the working directory by default', async () => {
    const run = await roboflow(['jobs', 'submit', 's3://b/a.mcap'], {}, dir);
    expect(run.code).toBe(0);
    expect(existsSync(path.join(dir, 'roboflow.db'))).toBe(true);
  });
});

describe('roboflow jobs on PostgreSQL', { timeout: 180_000 }, () => {
  const backend = postgresBackend();

  afterAll(async () => {
    await backend.cleanup();
  });

  it('submits and lists through a postgres:// queue URL', async () => {
    const url = await backend.freshUrl();
    expect((await roboflow(['jobs', 'submit', 's3://b/a.mcap', '--queue', url])).stdout).toBe('1\n');
    const list = await roboflow(['jobs', 'list', '--json', '--queue', url]);
    expect((JSON.parse(list.stdout) as { status: string }[]).map((j) => j.status)).toEqual(['pending']);
  });
});
