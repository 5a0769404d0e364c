import { type ChildProcess, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream, existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, stat, symlink } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { pageCacheBootId, partialPaths, readResumeState } from '../src/prefetch/resume-state.js';
import { ObjectServer } from './support/object-server.js';

// Built by `npm test` (pretest) or `npm run build`.
// The `roboflow` bin: a bundle of dist/cli/bin.js (scripts/bundle-cli.mjs).
const MAIN = fileURLToPath(new URL('../dist/bin/roboflow.js', import.meta.url));
// The compiled module behind it, which runs only as the process entry.
const MODULE = fileURLToPath(new URL('../dist/cli/main.js', import.meta.url));
const MiB = 1024 * 1024;
const BUCKET = 'cli';

let server: ObjectServer;
let dir: string;
const children = new Set<ChildProcess>();

beforeAll(async () => {
  if (!existsSync(MAIN)) throw new Error(`${MAIN} is missing: run \`npx tsc -p tsconfig.build.json\` first`);
  server = await ObjectServer.start();
});
afterAll(async () => {
  await server.close();
});
beforeEach(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'roboflow-'));
  server.clearRequests();
  server.clearFaults();
  server.setRateLimit(undefined);
});
afterEach(async () => {
  for (const child of children) child.kill('SIGKILL');
  children.clear();
  await rm(dir, { recursive: true, force: true });
});

interface Run {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stdout: string;
  readonly stderr: string;
}

function start(args: readonly string[], script = MAIN, env?: NodeJS.ProcessEnv): { child: ChildProcess; done: Promise<Run> } {
  const child = spawn(process.execPath, [script, ...args], { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'], ...(env ? { env: { ...process.env, ...env } } : {}) });
  children.add(child);
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (b: Buffer) => (stdout += b.toString()));
  child.stderr!.on('data', (b: Buffer) => (stderr += b.toString()));
  const done = new Promise<Run>((resolve) => {
    child.once('close', (code, signal) => {
      children.delete(child);
      resolve({ code, signal, stdout, stderr });
    });
  });
  return { child, done };
}

function run(args: readonly string[], script?: string, env?: NodeJS.ProcessEnv): Promise<Run> {
  return start(args, script, env).done;
}

async function sha256File(file: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(file)) h.update(chunk as Buffer);
  return h.digest('hex');
}

async function until(what: string, check: () => boolean | Promise<boolean>, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

function completedRanges(key: string, length: number): number {
  return server.requests.filter((r) => r.method === 'GET' && r.key === key && r.bytesSent === length).length;
}

describe('roboflow download', () => {
  it('prints one JSON object with the result and exits 0', async () => {
    server.putObject(BUCKET, 'small.bin', { generated: { size: 3 * MiB + 5, seed: 4 } });
    const url = server.httpUrl(BUCKET, 'small.bin');
    const r = await run(['download', url, 'out/small.bin', '--json', '--connections', '3', '--chunk-size', '1MiB']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const lines = r.stdout.trim().split('\n');
    expect(lines).toHaveLength(1);
    const out = JSON.parse(lines[0]!) as Record<string, unknown>;
    expect(Object.keys(out).sort()).toEqual(
      ['bytes', 'dest', 'etag', 'mbPerSec', 'restarts', 'resumedBytes', 'retries', 'seconds', 'url', 'verified'].sort(),
    );
    expect(out).toMatchObject({ bytes: 3 * MiB + 5, resumedBytes: 0, retries: 0, restarts: 0, url, dest: 'out/small.bin', verified: ['size'] });
    expect(out.etag).toBe(await server.objectEtag(BUCKET, 'small.bin'));
    expect(typeof out.mbPerSec).toBe('number');
    expect(await sha256File(path.join(dir, 'out/small.bin'))).toBe(await server.objectSha256(BUCKET, 'small.bin'));
    // --chunk-size 1MiB was used: four ranges.
    expect(server.requests.filter((r) => r.method === 'GET').length).toBe(4);
  });

  it('verifies the MD5 ETag of an s3:// object, and only its size with --no-checksum', async () => {
    server.putObject(BUCKET, 'md5.bin', { generated: { size: 2 * MiB + 3, seed: 5 } });
    const env = { AWS_ACCESS_KEY_ID: 'test', AWS_SECRET_ACCESS_KEY: 'test-secret', AWS_REGION: 'us-east-1' };
    const s3 = `s3://${BUCKET}/md5.bin`;
    const common = ['--endpoint', server.endpoint, '--json', '--chunk-size', '1MiB'];
    const verified = await run(['download', s3, 'a.bin', ...common], undefined, env);
    expect(verified.stderr).toBe('');
    expect(JSON.parse(verified.stdout)).toMatchObject({ verified: ['size', 'md5'] });
    const sizeOnly = await run(['download', s3, 'b.bin', ...common, '--no-checksum'], undefined, env);
    expect(sizeOnly.stderr).toBe('');
    expect(JSON.parse(sizeOnly.stdout)).toMatchObject({ verified: ['size'] });
    const want = await server.objectSha256(BUCKET, 'md5.bin');
    expect(await sha256File(path.join(dir, 'a.bin'))).toBe(want);
    expect(await sha256File(path.join(dir, 'b.bin'))).toBe(want);
  });

  it('names the file after the object when dest is a directory, and is quiet without a terminal', async () => {
    server.putObject(BUCKET, 'deep/name.bin', { generated: { size: 1000, seed: 1 } });
    const r = await run(['download', server.httpUrl(BUCKET, 'deep/name.bin'), './']);
    expect(r).toMatchObject({ code: 0, stdout: '', stderr: '' });
    expect((await stat(path.join(dir, 'name.bin'))).size).toBe(1000);
  });

  it('fails a 404 with exit 1 and one line on stderr', async () => {
    const url = server.httpUrl(BUCKET, 'absent.bin');
    const r = await run(['download', url, 'absent.bin', '--json']);
    expect(r.code).toBe(1);
    expect(r.stdout).toBe('');
    const lines = r.stderr.split('\n').filter(Boolean);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/^roboflow: .*404.* \[ERR_NOT_FOUND\]$/);
    expect(lines[0]).toContain(url);
    expect(existsSync(path.join(dir, 'absent.bin'))).toBe(false);
  });

  it.each([
    [['--chunk-size', '8XB'], /^roboflow: --chunk-size: invalid size "8XB".* \[ERR_CONFIG\]$/],
    [['--connections', 'many'], /^roboflow: --connections: invalid number "many".* \[ERR_CONFIG\]$/],
    [['--stall-timeout', 'soon'], /^roboflow: --stall-timeout: invalid duration "soon".* \[ERR_CONFIG\]$/],
    [['--durability', 'none'], /^roboflow: --durability: must be disk or process, got "none" \[ERR_CONFIG\]$/],
    [['--no-such-flag'], /^roboflow: unknown option '--no-such-flag'.* \[ERR_CONFIG\]$/],
  ])('rejects %j as a usage error: exit 2, one line naming the flag', async (flags, pattern) => {
    const r = await run(['download', server.httpUrl(BUCKET, 'x.bin'), 'x.bin', ...flags]);
    expect(r.code).toBe(2);
    const lines = r.stderr.split('\n').filter(Boolean);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(pattern);
    // Nothing was requested.
    expect(server.requests).toHaveLength(0);
  });

  it('rejects a bad URL as a usage error', async () => {
    const r = await run(['download', 'ftp://host/file', 'x.bin']);
    expect(r.code).toBe(2);
    expect(r.stderr.split('\n').filter(Boolean)).toHaveLength(1);
    expect(r.stderr).toMatch(/^roboflow: .* \[ERR_(BAD_URL|UNSUPPORTED_SCHEME)\]\n$/);
  });

  it("is the package's bin, runs through a symlink (as npm installs it), and its module does not run when imported", async () => {
    const pkg = JSON.parse(await readFile(new URL('../package.json', import.meta.url), 'utf8')) as { bin: Record<string, string> };
    expect(path.resolve(fileURLToPath(new URL('..', import.meta.url)), pkg.bin['roboflow']!)).toBe(MAIN);
    const link = path.join(dir, 'roboflow');
    await symlink(MAIN, link);
    const version = await run(['--version'], link);
    expect(version).toMatchObject({ code: 0, stderr: '' });
    expect(version.stdout.trim()).toMatch(/^\d+\.\d+\.\d+/);
    const imported = spawn(process.execPath, ['--input-type=module', '-e', `const m = await import(${JSON.stringify(MODULE)}); console.log(typeof m.main);`], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    imported.stdout.on('data', (b: Buffer) => (out += b.toString()));
    const code = await new Promise<number | null>((resolve) => imported.once('close', resolve));
    expect(code).toBe(0);
    expect(out).toBe('function\n');
  });

  it.each([
    ['SIGINT', 130],
    ['SIGTERM', 143],
  ] as const)('on %s stops resumably with exit %d, and the next run resumes', async (sig, exitCode) => {
    const size = 12 * MiB;
    const key = `sig-${sig}.bin`;
    server.putObject(BUCKET, key, { generated: { size, seed: 11 } });
    server.setRateLimit(2 * MiB);
    const url = server.httpUrl(BUCKET, key);
    const dest = path.join(dir, key);
    const first = start(['download', url, key, '--connections', '2', '--chunk-size', '1MiB', '--json']);
    await until('a recorded chunk', async () => ((await readResumeState(partialPaths(dest).state))?.completed.size ?? 0) >= 1);
    first.child.kill(sig);
    const r1 = await first.done;
    expect(r1.code).toBe(exitCode);
    expect(r1.stdout).toBe('');
    expect(r1.stderr).toMatch(new RegExp(`^roboflow: interrupted by ${sig}; run the same command again to resume \\[ERR_ABORTED\\]\\n$`));
    expect(existsSync(dest)).toBe(false);

    server.setRateLimit(undefined);
    const r2 = await run(['download', url, key, '--connections', '2', '--chunk-size', '1MiB', '--json', '--resume']);
    expect(r2.code).toBe(0);
    expect((JSON.parse(r2.stdout) as { resumedBytes: number }).resumedBytes).toBeGreaterThanOrEqual(MiB);
    expect(await sha256File(dest)).toBe(await server.objectSha256(BUCKET, key));
  });

  it.each([
    [1, 3, 'disk'],
    [2, 8, 'disk'],
    [3, 14, 'disk'],
    // Page-cache bytes survive the process: the same bound holds without any fdatasync.
    [4, 8, 'process'],
  ] as const)('after SIGKILL, the rerun re-fetches less than connections × chunk (kill %i, after %i chunks, durability %s)', async (seed, killAfter, durability) => {
    const size = 24 * MiB;
    const chunk = MiB;
    const connections = 4;
    server.putObject(BUCKET, 'crash.bin', { generated: { size, seed: 99 + seed } });
    // 4 connections at 2 MB/s: about 3 s for the whole object, so the kill lands mid-download.
    server.setRateLimit(2_000_000);
    const url = server.httpUrl(BUCKET, 'crash.bin');
    const dest = path.join(dir, 'crash.bin');
    const args = ['download', url, 'crash.bin', '--connections', String(connections), '--chunk-size', '1MiB', '--json', '--durability', durability];
    const first = start(args);
    // The kill lands once the state file records whole chunks and the durable prefix of a chunk
    // in flight, so the rerun has both to resume from (a state write may fall on chunk
    // boundaries only; waiting for another keeps the test about resuming, not luck). The child is
    // stopped while its state is read: state writes come every ~65 ms here, and one landing
    // between the read and the kill could replace the state that was checked.
    await until('completed ranges and a state file that records them and a partial chunk', async () => {
      if (completedRanges('crash.bin', chunk) < killAfter) return false;
      first.child.kill('SIGSTOP');
      const state = await readResumeState(partialPaths(dest).state);
      const ready = (state?.completed.size ?? 0) >= 2 && [...(state?.partial ?? new Map<number, number>()).values()].some((bytes) => bytes > 0);
      if (!ready) first.child.kill('SIGCONT');
      return ready;
    });
    first.child.kill('SIGKILL');
    const r1 = await first.done;
    expect(r1.signal).toBe('SIGKILL');
    expect(existsSync(dest)).toBe(false);
    expect((await readResumeState(partialPaths(dest).state))?.bootId).toBe(durability === 'process' ? pageCacheBootId() : undefined);
    const servedFirst = server.bytesServed(BUCKET, 'crash.bin');
    expect(servedFirst).toBeLessThan(size);

    server.clearRequests();
    server.setRateLimit(undefined);
    const r2 = await run(args);
    expect(r2.code).toBe(0);
    const out = JSON.parse(r2.stdout) as { resumedBytes: number; bytes: number };
    expect(await sha256File(dest)).toBe(await server.objectSha256(BUCKET, 'crash.bin'));
    expect(out.resumedBytes).toBeGreaterThanOrEqual(2 * chunk);
    const servedSecond = server.bytesServed(BUCKET, 'crash.bin');
    // Chunks that were being fetched continued after their durable prefix, not from their start...
    const gets = server.requests.filter((r) => r.method === 'GET' && r.key === 'crash.bin' && r.range !== undefined);
    expect(gets.some((r) => r.range!.start % chunk !== 0)).toBe(true);
    // The rerun fetched exactly the bytes the state file did not list...
    expect(servedSecond).toBe(size - out.resumedBytes);
    // ...and what the crash wasted is within the bound documented in downloader.ts: the bytes
    // written but not recorded yet, those in memory and those in sockets, < connections × chunk.
    const wasted = servedFirst - out.resumedBytes;
    expect(wasted).toBeLessThanOrEqual(connections * chunk);
    expect(servedFirst + servedSecond).toBeLessThanOrEqual(size + connections * chunk);
    expect(existsSync(partialPaths(dest).state)).toBe(false);
    expect(existsSync(partialPaths(dest).temp)).toBe(false);
  });
});
