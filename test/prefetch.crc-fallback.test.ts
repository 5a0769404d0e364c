/**
 * The portable CRCs, as a platform without @node-rs/crc32's binary runs them: a real download in
 * a child process that cannot resolve the package, through the writer thread (CRC-32 per batch)
 * and the event loop (CRC-32C in JavaScript).
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import zlib from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { portableCrc } from '../src/prefetch/crc.js';
import { ObjectServer } from './support/object-server.js';

const FIXTURE = fileURLToPath(new URL('./fixtures/crc-download.mjs', import.meta.url));
const HIDE = fileURLToPath(new URL('./fixtures/hide-native-crc.mjs', import.meta.url));
const MiB = 2 ** 20;
// Large enough for the writer thread (64 MiB and more).
const SIZE = 64 * MiB + 12345;

let server: ObjectServer;
let dir: string;
let bytes: Buffer;
beforeAll(async () => {
  if (!existsSync(fileURLToPath(new URL('../dist/prefetch/crc.js', import.meta.url)))) throw new Error('dist/ is missing: run `npm run build` first');
  server = await ObjectServer.start();
  dir = await mkdtemp(path.join(os.tmpdir(), 'roboflow-'));
  server.putObject('crc', 'src.bin', { generated: { size: SIZE, seed: 7 } });
  bytes = server.objectBytes('crc', 'src.bin');
  const good = Buffer.alloc(4);
  good.writeUInt32BE(zlib.crc32(bytes));
  server.putObject('crc', 'good.bin', bytes, { fullObjectChecksums: { crc32: good.toString('base64') } });
  const bad = Buffer.alloc(4);
  bad.writeUInt32BE((zlib.crc32(bytes) ^ 1) >>> 0);
  server.putObject('crc', 'bad.bin', bytes, { fullObjectChecksums: { crc32: bad.toString('base64') } });
});
afterAll(async () => {
  await server.close();
  await rm(dir, { recursive: true, force: true });
});

function download(key: string, args: string[] = []): Promise<{ impl: string; module: string | null; verified?: string[]; error?: string }> {
  return new Promise((resolve, reject) => {
    execFile(
      process.execPath,
      ['--import', HIDE, FIXTURE, server.s3Url('crc', key), path.join(dir, `${key}.${args.length}`), server.endpoint, ...args],
      { env: { ...process.env, AWS_ACCESS_KEY_ID: 'test', AWS_SECRET_ACCESS_KEY: 'test', AWS_REGION: 'us-east-1' } },
      (err, stdout, stderr) => {
        if (err) reject(new Error(`${err.message}\n${stderr}`));
        else resolve(JSON.parse(stdout) as { impl: string; module: string | null; verified?: string[]; error?: string });
      },
    );
  });
}

describe('portable CRCs (no native binary)', () => {
  it('verify a CRC-32 computed per batch on the writer thread, and refuse a wrong one', async () => {
    expect(await download('good.bin')).toEqual({ impl: 'portable', module: null, verified: ['size', 'crc32'] });
    expect(await download('bad.bin')).toEqual({ impl: 'portable', module: null, error: 'ERR_CHECKSUM_MISMATCH' });
  });

  it('verify a caller-given CRC-32C in JavaScript', async () => {
    const hex = portableCrc.crc32c(bytes).toString(16).padStart(8, '0');
    // The store's MD5 ETag is verified too (the cheapest checksum it offers), beside the caller's.
    expect(await download('src.bin', [hex])).toEqual({ impl: 'portable', module: null, verified: ['size', 'md5', 'crc32c'] });
    const wrong = ((portableCrc.crc32c(bytes) ^ 1) >>> 0).toString(16).padStart(8, '0');
    expect(await download('src.bin', [wrong])).toEqual({ impl: 'portable', module: null, error: 'ERR_CHECKSUM_MISMATCH' });
  });
});
