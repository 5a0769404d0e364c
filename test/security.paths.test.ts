// Local paths from hostile names, and symbolic links planted where the worker writes, deletes or
// uploads. Property tests feed arbitrary job ids and URLs to the path functions; the link tests
// build real links in a temp directory.
import { link, lstat, mkdir, mkdtemp, readFile, readdir, realpath, rename, rm, symlink, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import fc from 'fast-check';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { RoboflowError } from '../src/errors.js';
import { checkRealDirectory, ensureJobDirectory, jobDirectory, safeJobDirName, safeLocalName } from '../src/paths.js';
import { openListedFile, uploadDirectory, type ListedFile } from '../src/storage/upload.js';

const BASE = path.resolve('/srv/roboflow-buffer');

/** Pieces a hostile name is built from: separators, dot segments, escapes, NUL, long runs, unicode. */
const hostilePiece = fc.oneof(
  fc.constantFrom('..', '.', '/', '\\', '\0', '%2e%2e', '%2E%2E', '%2f', '%2F', '%5c', '%00', '%252e%252e', '..%2f', '..\\', '~', ' ', '?', '#', ':', '//'),
  fc.constantFrom('é', '💥', '\u202e', 'ﬀ', '\u0000', '\uFEFF', 'Ω', '\u00a0'),
  fc.string({ unit: 'binary', maxLength: 20 }),
  fc.string({ unit: 'grapheme', maxLength: 20 }),
  fc.nat({ max: 1200 }).map((n) => 'x'.repeat(n)),
  fc.nat({ max: 300 }).map((n) => 'é'.repeat(n)),
);
const hostileName = fc.array(hostilePiece, { maxLength: 12 }).map((parts) => parts.join(''));
const hostileUrl = fc.tuple(fc.constantFrom('s3://bucket/', 'oss://bucket/', 'http://h/', 'https://h:8443/a/', 'file:///', '', 'not a url '), hostileName).map(
  ([prefix, name]) => prefix + name,
);

/** The checks every produced component must pass. */
function expectSafeComponent(name: string, base: string): void {
  expect(name.length).toBeGreaterThan(0);
  expect(Buffer.byteLength(name, 'utf8')).toBeLessThanOrEqual(255);
  expect(name).not.toMatch(/[/\\\0]/);
  expect(name).not.toBe('.');
  expect(name).not.toBe('..');
  const resolved = path.resolve(base, name);
  expect(resolved.startsWith(base + path.sep)).toBe(true);
  expect(path.dirname(resolved)).toBe(base);
}

describe('paths: property tests with hostile names', () => {
  it('safeLocalName: any URL and index give one component inside the job directory', () => {
    const jobDir = path.join(BASE, '7');
    fc.assert(
      fc.property(hostileUrl, fc.nat({ max: Number.MAX_SAFE_INTEGER }), (url, index) => {
        const name = safeLocalName(url, index);
        expectSafeComponent(name, jobDir);
        expect(name.startsWith(`${index}-`)).toBe(true);
      }),
      { numRuns: 2000 },
    );
  });

  it('safeJobDirName and jobDirectory: any job id stays one component inside the buffer directory', () => {
    fc.assert(
      fc.property(fc.oneof(hostileName, hostileUrl), (jobId) => {
        const name = safeJobDirName(jobId);
        expectSafeComponent(name, BASE);
        const dir = jobDirectory(BASE, jobId);
        expect(dir).toBe(path.join(BASE, name));
        expect(path.resolve(dir).startsWith(BASE + path.sep)).toBe(true);
      }),
      { numRuns: 2000 },
    );
  });

  it('the properties are not vacuous: plain names are kept, and the examples that matter are covered', () => {
    expect(safeJobDirName('42')).toBe('42');
    expect(safeLocalName('s3://bucket/raw/episode_1.mcap', 0)).toBe('0-episode_1.mcap');
    for (const id of ['..', '.', '../../etc', 'a/b', 'a\\b', 'a\0b', '%2e%2e', 'x'.repeat(1000), '💥', '']) {
      const name = safeJobDirName(id);
      expect(name).toMatch(/^job-[0-9a-f]{12}$/);
      expectSafeComponent(name, BASE);
    }
    for (const url of ['http://h/%2e%2e', 'http://h/..%2f..%2fetc%2fpasswd', 'file:///..', `http://h/${'é'.repeat(300)}.mcap`, 'http://h/a%00b']) {
      expectSafeComponent(safeLocalName(url, 3), BASE);
    }
    // A 1000-character name keeps its extension and fits in 200 characters.
    const long = safeLocalName(`s3://bucket/${'y'.repeat(1000)}.mcap`, 12);
    expect(long.length).toBeLessThanOrEqual(200);
    expect(long.endsWith('.mcap')).toBe(true);
  });
});

describe('symbolic links where the worker writes, deletes and uploads', () => {
  let tmp: string;
  let buffer: string;
  let outside: string;

  beforeEach(async () => {
    tmp = await mkdtemp(path.join(os.tmpdir(), 'roboflow-'));
    buffer = path.join(tmp, 'buffer');
    outside = path.join(tmp, 'outside');
    await mkdir(buffer);
    await mkdir(outside);
    await writeFile(path.join(outside, 'credentials'), 'aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\n');
  });

  afterEach(async () => {
    await rm(tmp, { recursive: true, force: true });
  });

  async function rejection(p: Promise<unknown>): Promise<RoboflowError> {
    const err = await p.then(
      () => undefined,
      (e: unknown) => e,
    );
    if (!(err instanceof RoboflowError)) throw new Error(`expected a RoboflowError, got ${String(err)}`);
    return err;
  }

  it('ensureJobDirectory creates a real directory, keeps one for a resume, and refuses a planted link', async () => {
    const dir = await ensureJobDirectory(buffer, '7');
    expect(dir).toBe(path.join(buffer, '7'));
    expect((await lstat(dir)).isDirectory()).toBe(true);
    await writeFile(path.join(dir, 'partial'), 'x');
    expect(await ensureJobDirectory(buffer, '7')).toBe(dir);
    expect(await readdir(dir)).toEqual(['partial']);

    await symlink(outside, path.join(buffer, '8'));
    const err = await rejection(ensureJobDirectory(buffer, '8'));
    expect(err.code).toBe('ERR_POLICY_DENIED');
    expect(err.retryable).toBe(false);
    expect(err.message).toContain('symbolic link');
    expect(err.message).toContain(outside);

    await writeFile(path.join(buffer, '9'), 'a file, not a directory');
    expect((await rejection(ensureJobDirectory(buffer, '9'))).code).toBe('ERR_POLICY_DENIED');
    // Nothing was written through the link.
    expect(await readdir(outside)).toEqual(['credentials']);
  });

  it('checkRealDirectory passes a directory and refuses a link to one', async () => {
    await checkRealDirectory(outside, 'the test directory');
    await symlink(outside, path.join(tmp, 'link'));
    expect((await rejection(checkRealDirectory(path.join(tmp, 'link'), 'the test directory'))).code).toBe('ERR_POLICY_DENIED');
    expect((await rejection(checkRealDirectory(path.join(tmp, 'missing'), 'the test directory'))).code).toBe('ERR_IO');
  });

  it('uploadDirectory refuses an output directory that is a link, and skips links inside one', async () => {
    const dest = path.join(tmp, 'published');
    await symlink(outside, path.join(tmp, 'out-link'));
    const err = await rejection(uploadDirectory(path.join(tmp, 'out-link'), dest));
    expect(err.code).toBe('ERR_POLICY_DENIED');
    await expect(readdir(dest)).rejects.toThrow();

    const out = path.join(tmp, 'out');
    await mkdir(path.join(out, 'sub'), { recursive: true });
    await writeFile(path.join(out, 'result.txt'), 'ok');
    await symlink(path.join(outside, 'credentials'), path.join(out, 'creds-file'));
    await symlink(outside, path.join(out, 'creds-dir'));
    await symlink(outside, path.join(out, 'sub', 'deeper'));
    const results = await uploadDirectory(out, dest);
    expect(results.map((r) => r.name)).toEqual(['result.txt']);
    expect(await readdir(dest)).toEqual(['result.txt']);
  });

  async function listed(dir: string, name: string): Promise<ListedFile> {
    const st = await lstat(path.join(dir, name));
    return { name, dev: st.dev, ino: st.ino };
  }

  it('openListedFile refuses a directory on the path swapped for a link after the listing', async () => {
    const out = path.join(tmp, 'out');
    await mkdir(path.join(out, 'sub'), { recursive: true });
    await writeFile(path.join(out, 'sub', 'credentials'), 'harmless');
    const realRoot = await realpath(out);
    const file = await listed(out, 'sub/credentials');
    // Before the swap: opened and read as listed.
    const ok = await openListedFile(out, realRoot, file);
    expect(ok.size).toBe('harmless'.length);
    await ok.handle.close();

    await rename(path.join(out, 'sub'), path.join(out, 'sub-old'));
    await symlink(outside, path.join(out, 'sub'));
    const err = await rejection(openListedFile(out, realRoot, file));
    expect(err.code).toBe('ERR_POLICY_DENIED');
    expect(err.message).toContain('sub/credentials');
  });

  it('openListedFile refuses even the very inode when it is reached through a link outside (a hard link trick)', async () => {
    const out = path.join(tmp, 'out');
    await mkdir(path.join(out, 'sub'), { recursive: true });
    // The same inode inside and outside: identity alone would pass it, its real path does not.
    await link(path.join(outside, 'credentials'), path.join(out, 'sub', 'credentials'));
    const realRoot = await realpath(out);
    const file = await listed(out, 'sub/credentials');
    await rm(path.join(out, 'sub'), { recursive: true });
    await symlink(outside, path.join(out, 'sub'));
    const err = await rejection(openListedFile(out, realRoot, file));
    expect(err.code).toBe('ERR_POLICY_DENIED');
    expect(err.message).toContain('outside the directory');
  });

  it('openListedFile refuses a file swapped for a link, or for another file, after the listing', async () => {
    const out = path.join(tmp, 'out');
    await mkdir(out);
    await writeFile(path.join(out, 'a.txt'), 'a');
    await writeFile(path.join(out, 'b.txt'), 'b');
    const realRoot = await realpath(out);
    const a = await listed(out, 'a.txt');
    const b = await listed(out, 'b.txt');
    await rm(path.join(out, 'a.txt'));
    await symlink(path.join(outside, 'credentials'), path.join(out, 'a.txt'));
    const linkErr = await rejection(openListedFile(out, realRoot, a));
    expect(linkErr.code).toBe('ERR_POLICY_DENIED');
    expect(linkErr.message).toContain('symbolic link');
    // Written before the old one goes, so the file system cannot hand out the same inode again.
    await writeFile(path.join(out, 'b2.txt'), 'another b');
    await rename(path.join(out, 'b2.txt'), path.join(out, 'b.txt'));
    expect((await rejection(openListedFile(out, realRoot, b))).code).toBe('ERR_POLICY_DENIED');
    // The secret was never read into an upload.
    expect(await readFile(path.join(outside, 'credentials'), 'utf8')).toContain('EXAMPLEKEY');
  });
});
