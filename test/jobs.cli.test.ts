// `roboflow jobs`: run as a real process on the compiled CLI module, against a real queue.
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { mkdir, writeFile } from 'node:fs/promises';
import { pathToFileURL } from 'node:url';
import { openQueue } from '../src/jobs/index.js';
import { ObjectServer } from './support/object-server.js';
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

function roboflow(args: string[], env: NodeJS.ProcessEnv = {}, cwd = root, stdin = ''): Promise<Run> {
  return new Promise((resolve) => {
    const childEnv: NodeJS.ProcessEnv = { ...process.env, ...env };
    if (!('ROBOFLOW_QUEUE' in env)) delete childEnv.ROBOFLOW_QUEUE;
    const child = execFile(process.execPath, [fixture, ...args], { env: childEnv, cwd }, (err, stdout, stderr) => {
      const code = err === null ? 0 : typeof err.code === 'number' ? err.code : -1;
      resolve({ code, stdout, stderr });
    });
    child.stdin?.end(stdin);
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
    expect(lines[0]).toMatch(/^ID\s+STATUS\s+PRIORITY\s+ATTEMPTS\s+PROCESSOR\s+KEY\s+INPUT\s+UPDATED\s+LAST ERROR$/);
    expect(lines[1]).toMatch(/^2\s+pending\s+0\s+0\/3\s+checksum\s+sha256:[0-9a-f]+…\s+https:\/\/h\/b\.mcap/);
    expect(lines[2]).toMatch(/^1\s+dead\s+0\s+1\/3\s+checksum\s+sha256:[0-9a-f]+…\s+.*ERR_NOT_FOUND/);
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

describe('roboflow jobs submit: keys, priorities and many jobs at once', { timeout: 180_000 }, () => {
  async function records(url = queue) {
    const q = await openQueue(url);
    try {
      return await q.list({ limit: 10_000 });
    } finally {
      await q.close();
    }
  }

  it('submits the same job once, takes --key and --priority, and re-queues a done job with --replace', async () => {
    const first = await roboflow(['jobs', 'submit', 's3://b/a.mcap', '--priority', '-3', '--queue', queue]);
    expect(first.stdout).toBe('1\n');
    const again = await roboflow(['jobs', 'submit', 's3://b/a.mcap', '--queue', queue]);
    expect(again.code).toBe(0);
    expect(again.stdout).toBe('1\n');
    expect(again.stderr).toContain('already in the queue (pending)');
    const keyed = await roboflow(['jobs', 'submit', 's3://b/b.mcap', '--key', 'episode-b', '--priority', '7', '--json', '--queue', queue]);
    expect(JSON.parse(keyed.stdout)).toMatchObject({ id: '2', key: 'episode-b', priority: 7 });
    expect((await records()).map((j) => [j.id, j.priority])).toEqual([
      ['2', 7],
      ['1', -3],
    ]);
    const q = await openQueue(queue);
    try {
      await q.claim('w1', 60_000);
      await q.start('2', 'w1', 60_000);
      await q.complete('2', 'w1', null);
    } finally {
      await q.close();
    }
    const done = await roboflow(['jobs', 'submit', 's3://b/other.mcap', '--key', 'episode-b', '--queue', queue]);
    expect(done.stderr).toContain('(done); --replace runs it again');
    const replaced = await roboflow(['jobs', 'submit', 's3://b/other.mcap', '--key', 'episode-b', '--replace', '--queue', queue]);
    expect(replaced.stdout).toBe('2\n');
    expect((await records()).find((j) => j.id === '2')).toMatchObject({ status: 'pending', inputs: [{ url: 's3://b/other.mcap' }] });
    const list = await roboflow(['jobs', 'list', '--queue', queue]);
    expect(list.stdout).toMatch(/^2\s+pending\s+0\s+0\/3\s+checksum\s+episode-b\s+s3:\/\/b\/other\.mcap/m);
    const show = await roboflow(['jobs', 'show', '2', '--queue', queue]);
    expect(show.stdout).toMatch(/^key\s+episode-b$/m);
    expect(show.stdout).toMatch(/^priority\s+0$/m);
    const bad = await roboflow(['jobs', 'submit', 's3://b/c.mcap', '--priority', '1.5', '--queue', queue]);
    expect(bad.code).not.toBe(0);
  });

  it('submits one job per file below a file:// prefix, recursively, filtered and templated; a second run adds none', async () => {
    const data = path.join(dir, 'data');
    await mkdir(path.join(data, 'day 2', 'deep'), { recursive: true });
    const names = ['a.mcap', 'b.mcap', 'notes.txt', 'day 2/c.mcap', 'day 2/deep/d.tar.mcap'];
    for (const name of names) await writeFile(path.join(data, name), name);
    const prefix = `${pathToFileURL(data).href}/`;
    const args = ['jobs', 'submit', '--prefix', prefix, '--match', '*.mcap', '--output', 's3://out/{stem}/{key}', '--queue', queue];
    const first = await roboflow(args);
    expect(first.stderr).toBe('');
    expect(first.stdout).toBe('4 new, 0 already queued\n');
    const jobs = await records();
    const byInput = new Map(jobs.map((j) => [j.inputs[0]?.url, j.output]));
    expect(byInput).toEqual(
      new Map([
        [pathToFileURL(path.join(data, 'a.mcap')).href, 's3://out/a/a.mcap'],
        [pathToFileURL(path.join(data, 'b.mcap')).href, 's3://out/b/b.mcap'],
        [pathToFileURL(path.join(data, 'day 2', 'c.mcap')).href, 's3://out/c/day 2/c.mcap'],
        [pathToFileURL(path.join(data, 'day 2', 'deep', 'd.tar.mcap')).href, 's3://out/d.tar/day 2/deep/d.tar.mcap'],
      ]),
    );
    const second = await roboflow(args);
    expect(second.stdout).toBe('0 new, 4 already queued\n');
    expect((await records()).length).toBe(4);

    // A whole-key glob, and --json with the ids.
    const deep = await roboflow(['jobs', 'submit', '--prefix', prefix, '--match', 'day 2/**/*.mcap', '--json', '--queue', queue]);
    const out = JSON.parse(deep.stdout) as { new: number; alreadyQueued: number; jobs: { id: string; outcome: string }[] };
    expect(out).toMatchObject({ new: 2, alreadyQueued: 0 });
    expect(out.jobs.map((j) => j.outcome)).toEqual(['added', 'added']);
    expect(out.jobs.every((j) => /^[0-9]+$/.test(j.id))).toBe(true);

    const none = await roboflow(['jobs', 'submit', '--prefix', prefix, '--match', '*.bag', '--queue', queue]);
    expect(none.stdout).toBe('0 new, 0 already queued\n');
    expect(none.stderr).toContain('nothing to submit');
    const missing = await roboflow(['jobs', 'submit', '--prefix', `${pathToFileURL(path.join(dir, 'nope')).href}/`, '--queue', queue]);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/ERR_NOT_FOUND: cannot list .*nope.*does not exist/);
    const sameKey = await roboflow(['jobs', 'submit', '--prefix', prefix, '--key', 'fixed', '--queue', queue]);
    expect(sameKey.code).toBe(1);
    expect(sameKey.stderr).toContain('same key');
    const typo = await roboflow(['jobs', 'submit', '--prefix', prefix, '--output', 's3://out/{steem}/', '--queue', queue]);
    expect(typo.stderr).toContain('unknown placeholder {steem}');
    // One output prefix for every job: each would publish over the others, so it is refused.
    const before = (await records()).length;
    const sharedOutput = await roboflow(['jobs', 'submit', '--prefix', prefix, '--output', 's3://out/all/', '--queue', queue]);
    expect(sharedOutput.code).toBe(sameKey.code);
    expect(sharedOutput.stderr).toContain('ERR_CONFIG: --output "s3://out/all/" would give every job of --prefix the same output prefix');
    expect(sharedOutput.stderr).toContain('put {name}, {stem} or {key} in it (e.g. "s3://out/all/{stem}/")');
    await writeFile(path.join(dir, 'two.txt'), 's3://b/one.mcap\ns3://b/two.mcap\n');
    const sharedFrom = await roboflow(['jobs', 'submit', '--from', path.join(dir, 'two.txt'), '--output', 'file:///data/out', '--queue', queue]);
    expect(sharedFrom.stderr).toContain('--output "file:///data/out" would give every job of --from the same output prefix');
    expect((await records()).length).toBe(before);
    // A single job given by its URLs may name any output.
    const single = await roboflow(['jobs', 'submit', 's3://b/solo.mcap', '--output', 's3://out/all/', '--queue', queue]);
    expect(single.code).toBe(0);
  });

  it('submits one job per line of --from: URLs and JSON objects; a bad line is named', async () => {
    const list = path.join(dir, 'jobs.txt');
    await writeFile(
      list,
      [
        '# recordings of run 17',
        's3://b/run-17/a.mcap',
        '',
        '{"inputs":[{"url":"s3://b/run-17/b.mcap"}],"priority":9,"key":"b-job","maxAttempts":5}',
        '{"inputs":[{"url":"s3://b/run-17/c.mcap"}],"processor":"mcap-summary","output":"s3://explicit/"}',
      ].join('\n'),
    );
    const run = await roboflow(['jobs', 'submit', '--from', list, '--exec', 'gzip -k {input}', '--output', 's3://out/{stem}/', '--queue', queue]);
    expect(run.stderr).toBe('');
    expect(run.stdout).toBe('3 new, 0 already queued\n');
    const jobs = await records();
    expect(jobs.map((j) => [j.inputs[0]?.url, j.processor, j.args, j.output, j.priority, j.maxAttempts])).toEqual([
      ['s3://b/run-17/c.mcap', 'mcap-summary', {}, 's3://explicit/', 0, 3],
      ['s3://b/run-17/b.mcap', 'exec', { command: ['gzip', '-k', '{input}'] }, 's3://out/b/', 9, 5],
      ['s3://b/run-17/a.mcap', 'exec', { command: ['gzip', '-k', '{input}'] }, 's3://out/a/', 0, 3],
    ]);
    expect(jobs[1]?.key).toBe('b-job');
    const again = await roboflow(['jobs', 'submit', '--from', list, '--exec', 'gzip -k {input}', '--output', 's3://out/{stem}/', '--queue', queue]);
    expect(again.stdout).toBe('0 new, 3 already queued\n');

    await writeFile(list, 's3://b/x.mcap\n{"inputs":[],"processor":"checksum"}\n');
    const bad = await roboflow(['jobs', 'submit', '--from', list, '--queue', queue]);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/line 2: invalid job spec: inputs/);
    const piped = await roboflow(['jobs', 'submit', '--from', '-', '--queue', queue], {}, root, 's3://b/x.mcap\n\n# end\n');
    expect(piped.stdout).toBe('1 new, 0 already queued\n');
    const empty = await roboflow(['jobs', 'submit', '--from', '-', '--queue', queue]);
    expect(empty.stderr).toContain('nothing to submit');
  });

  it('lists every page of an s3:// prefix on a store that pages at 1,000 keys', async () => {
    const server = await ObjectServer.start();
    try {
      const count = 2_345;
      for (let i = 0; i < count; i++) {
        server.putObject('bucket', `runs/${String(i).padStart(5, '0')}.mcap`, { generated: { size: 10, seed: i } });
      }
      server.putObject('bucket', 'runs/folder/', { generated: { size: 0, seed: 0 } });
      server.putObject('bucket', 'other/x.mcap', { generated: { size: 10, seed: 0 } });
      const env = {
        AWS_ACCESS_KEY_ID: 'test',
        AWS_SECRET_ACCESS_KEY: 'test-secret',
        AWS_REGION: 'us-east-1',
        AWS_ENDPOINT_URL: server.endpoint,
        // The bin sets this itself; the test runs the jobs command alone.
        AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true',
      };
      const run = await roboflow(['jobs', 'submit', '--prefix', 's3://bucket/runs/', '--output', 's3://bucket/out/{stem}/', '--queue', queue], env);
      expect(run.stderr).toBe('');
      expect(run.stdout).toBe(`${count} new, 0 already queued\n`);
      const lists = server.requests.filter((r) => r.operation === 'ListObjectsV2');
      expect(lists.length).toBe(3);
      const jobs = await records();
      expect(new Set(jobs.map((j) => j.inputs[0]?.url))).toEqual(
        new Set(Array.from({ length: count }, (_, i) => `s3://bucket/runs/${String(i).padStart(5, '0')}.mcap`)),
      );
      expect(jobs.find((j) => j.inputs[0]?.url === 's3://bucket/runs/02344.mcap')?.output).toBe('s3://bucket/out/02344/');
      const again = await roboflow(['jobs', 'submit', '--prefix', 's3://bucket/runs/', '--output', 's3://bucket/out/{stem}/', '--queue', queue], env);
      expect(again.stdout).toBe(`0 new, ${count} already queued\n`);
    } finally {
      await server.close();
    }
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
