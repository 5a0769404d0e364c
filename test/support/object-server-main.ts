#!/usr/bin/env node
/**
 * Runs the test object server as its own process, for benchmarks that must not share a CPU
 * budget (event loop) with the client they measure:
 *
 *   node build/test/support/object-server-main.js [--host H] [--port P] [--rate BYTES] [--latency MS]
 *     [--max-concurrent N] [--cache BYTES] [--access-key ID --secret-key SECRET] [--full-object-crc32]
 *     [--object bucket/key=generated:SIZE:SEED] [--object bucket/key=file:PATH] ...
 *
 * Prints one JSON line `{"endpoint": "...", "objects": [...]}` on stdout once listening, then
 * serves until SIGTERM or SIGINT. Sizes accept the suffixes k, M, G (powers of 1024). `--cache`
 * keeps that much generated content in memory, so serving it again costs no computation.
 * `--full-object-crc32` gives every object the FULL_OBJECT CRC32 that S3 stores for objects
 * uploaded by current AWS SDKs (they send one by default), served to requests that ask for it.
 */

import { createReadStream } from 'node:fs';
import zlib from 'node:zlib';
import { RoboflowError } from '../../src/errors.js';
import { generatedContent } from '../../src/cli/demo/content.js';
import { ObjectServer, type ObjectBody, type ObjectServerOptions } from './object-server.js';

interface ObjectSpec {
  readonly bucket: string;
  readonly key: string;
  readonly body: ObjectBody;
}

function parseSize(flag: string, raw: string): number {
  const m = /^(\d+(?:\.\d+)?)([kKmMgG]?)(?:i?B)?$/.exec(raw.trim());
  if (m === null) throw new RoboflowError('ERR_CONFIG', `${flag} expects a byte count such as 1048576, 512k, 64M or 4G, got ${JSON.stringify(raw)}`);
  const unit = (m[2] ?? '').toLowerCase();
  const mult = unit === 'k' ? 1024 : unit === 'm' ? 1024 ** 2 : unit === 'g' ? 1024 ** 3 : 1;
  return Math.round(Number(m[1]) * mult);
}

function parseObject(raw: string): ObjectSpec {
  const eq = raw.indexOf('=');
  const path = eq < 0 ? '' : raw.slice(0, eq);
  const slash = path.indexOf('/');
  if (eq < 0 || slash <= 0 || slash === path.length - 1) {
    throw new RoboflowError('ERR_CONFIG', `--object expects bucket/key=generated:SIZE:SEED or bucket/key=file:PATH, got ${JSON.stringify(raw)}`);
  }
  const bucket = path.slice(0, slash);
  const key = path.slice(slash + 1);
  const spec = raw.slice(eq + 1);
  if (spec.startsWith('file:')) return { bucket, key, body: { file: spec.slice('file:'.length) } };
  const m = /^generated:([^:]+):(\d+)$/.exec(spec);
  if (m === null) throw new RoboflowError('ERR_CONFIG', `--object ${path}: expected generated:SIZE:SEED or file:PATH, got ${JSON.stringify(spec)}`);
  return { bucket, key, body: { generated: { size: parseSize('--object', m[1] ?? ''), seed: Number(m[2]) } } };
}

/** The CRC32 of an object's content, base64 as S3 sends it. */
async function crc32Base64(body: ObjectBody): Promise<string> {
  let crc = 0;
  if (Buffer.isBuffer(body)) crc = zlib.crc32(body);
  else if ('generated' in body) {
    const { size, seed } = body.generated;
    const step = 8 * 2 ** 20;
    for (let at = 0; at < size; at += step) crc = zlib.crc32(generatedContent(seed, at, Math.min(size, at + step)), crc);
  } else {
    for await (const chunk of createReadStream(body.file)) crc = zlib.crc32(chunk as Buffer, crc);
  }
  const out = Buffer.alloc(4);
  out.writeUInt32BE(crc >>> 0);
  return out.toString('base64');
}

function parseArgs(argv: readonly string[]): { opts: ObjectServerOptions; objects: ObjectSpec[]; fullObjectCrc32: boolean } {
  const opts: ObjectServerOptions = {};
  let fullObjectCrc32 = false;
  const objects: ObjectSpec[] = [];
  let accessKeyId: string | undefined;
  let secretAccessKey: string | undefined;
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i] ?? '';
    const value = (): string => {
      const v = argv[++i];
      if (v === undefined) throw new RoboflowError('ERR_CONFIG', `${flag} needs a value`);
      return v;
    };
    const num = (): number => {
      const v = value();
      const n = Number(v);
      if (!Number.isFinite(n) || n < 0) throw new RoboflowError('ERR_CONFIG', `${flag} expects a non-negative number, got ${JSON.stringify(v)}`);
      return n;
    };
    switch (flag) {
      case '--host':
        opts.host = value();
        break;
      case '--port':
        opts.port = num();
        break;
      case '--rate':
        opts.rateLimitBytesPerSec = parseSize(flag, value());
        break;
      case '--latency':
        opts.firstByteLatencyMs = num();
        break;
      case '--max-concurrent':
        opts.maxConcurrentRequests = num();
        break;
      case '--cache':
        opts.generatedCacheBytes = parseSize(flag, value());
        break;
      case '--full-object-crc32':
        fullObjectCrc32 = true;
        break;
      case '--access-key':
        accessKeyId = value();
        break;
      case '--secret-key':
        secretAccessKey = value();
        break;
      case '--object':
        objects.push(parseObject(value()));
        break;
      case '--help':
      case '-h':
        process.stdout.write(
          'usage: object-server-main [--host H] [--port P] [--rate BYTES] [--latency MS] [--max-concurrent N] [--cache BYTES]\n' +
            '                          [--access-key ID --secret-key SECRET] [--full-object-crc32]\n' +
            '                          [--object bucket/key=generated:SIZE:SEED | bucket/key=file:PATH]...\n',
        );
        process.exit(0);
        break;
      default:
        throw new RoboflowError('ERR_CONFIG', `unknown option ${JSON.stringify(flag)} (see --help)`);
    }
  }
  if ((accessKeyId === undefined) !== (secretAccessKey === undefined)) {
    throw new RoboflowError('ERR_CONFIG', '--access-key and --secret-key must be given together');
  }
  if (accessKeyId !== undefined && secretAccessKey !== undefined) opts.credentials = { accessKeyId, secretAccessKey };
  return { opts, objects, fullObjectCrc32 };
}

async function main(): Promise<void> {
  const { opts, objects, fullObjectCrc32 } = parseArgs(process.argv.slice(2));
  const server = await ObjectServer.start(opts);
  const listed = [];
  for (const o of objects) {
    const fullObjectChecksums = fullObjectCrc32 ? { crc32: await crc32Base64(o.body) } : undefined;
    const { size } = server.putObject(o.bucket, o.key, o.body, fullObjectChecksums ? { fullObjectChecksums } : {});
    // The ETag (MD5) of a big generated object takes seconds; pay it before announcing the
    // endpoint so a benchmark's first request does not.
    const etag = await server.objectEtag(o.bucket, o.key);
    await server.preloadGenerated(o.bucket, o.key);
    listed.push({ bucket: o.bucket, key: o.key, size, etag, url: server.httpUrl(o.bucket, o.key), s3Url: server.s3Url(o.bucket, o.key) });
  }
  process.stdout.write(`${JSON.stringify({ endpoint: server.endpoint, objects: listed })}\n`);
  let stopping = false;
  const stop = (): void => {
    if (stopping) return;
    stopping = true;
    server.close().then(
      () => process.exit(0),
      (err: unknown) => {
        process.stderr.write(`object server: close failed: ${err instanceof Error ? err.message : String(err)}\n`);
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main().catch((err: unknown) => {
  process.stderr.write(`object server: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(2);
});
