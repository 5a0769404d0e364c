import { createHash, randomBytes } from 'node:crypto';
import zlib from 'node:zlib';
import { GetObjectCommand } from '@aws-sdk/client-s3';
import { getSignedUrl } from '@aws-sdk/s3-request-presigner';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { createS3Client, resolveS3Settings, S3Source, type S3ClientHandle } from '../src/storage/s3.js';
import { directAddress, staticCredentials } from '../src/storage/s3-direct.js';
import { ObjectServer } from './support/object-server.js';
import { readAll, rejection } from './helpers.js';

const KEY_ID = 'AKIADIRECTTEST';
const SECRET = 'direct/test/secret+key';
const ENV = { AWS_ACCESS_KEY_ID: KEY_ID, AWS_SECRET_ACCESS_KEY: SECRET, AWS_REGION: 'eu-west-1' };
/** Characters the SDK encodes in its own ways, `..` and empty segments, which URL parsing would fold. */
const ODD_KEY = "odd dir/a+b!'()*~&=;,$@:/../x%41?y#z//end";

describe('when the direct path applies', () => {
  it('takes the environment keys only when no profile is named, as the SDK chain does', () => {
    expect(staticCredentials(undefined, { AWS_ACCESS_KEY_ID: 'k', AWS_SECRET_ACCESS_KEY: 's' })).toEqual({ accessKeyId: 'k', secretAccessKey: 's' });
    expect(staticCredentials(undefined, { AWS_ACCESS_KEY_ID: 'k', AWS_SECRET_ACCESS_KEY: 's', AWS_SESSION_TOKEN: 't' })).toEqual({
      accessKeyId: 'k',
      secretAccessKey: 's',
      sessionToken: 't',
    });
    expect(staticCredentials(undefined, { AWS_ACCESS_KEY_ID: 'k', AWS_SECRET_ACCESS_KEY: 's', AWS_PROFILE: 'p' })).toBeUndefined();
    expect(staticCredentials(undefined, { AWS_ACCESS_KEY_ID: 'k', AWS_SECRET_ACCESS_KEY: ' ' })).toBeUndefined();
    expect(staticCredentials(undefined, {})).toBeUndefined();
    // A provider (a profile's) is for the SDK to run; explicit keys are used as given.
    expect(staticCredentials(() => Promise.resolve({}), { AWS_ACCESS_KEY_ID: 'k', AWS_SECRET_ACCESS_KEY: 's' })).toBeUndefined();
    expect(staticCredentials({ accessKeyId: 'a', secretAccessKey: 'b' }, {})).toEqual({ accessKeyId: 'a', secretAccessKey: 'b' });
  });

  it('addresses path style and one-label virtual-hosted buckets; leaves the rest to the SDK', () => {
    expect(directAddress('http://127.0.0.1:9000', true, 'bucket', 'a b/c')).toEqual({
      protocol: 'http:',
      hostname: '127.0.0.1',
      port: 9000,
      host: '127.0.0.1:9000',
      path: '/bucket/a%20b/c',
    });
    expect(directAddress('https://s3.example.com:443', false, 'bucket', 'k')).toEqual({
      protocol: 'https:',
      hostname: 'bucket.s3.example.com',
      port: undefined,
      host: 'bucket.s3.example.com',
      path: '/k',
    });
    expect(directAddress('https://s3.example.com', false, 'my.bucket', 'k')).toBeUndefined();
    expect(directAddress('https://s3.example.com/prefix', true, 'bucket', 'k')).toBeUndefined();
    expect(directAddress('https://s3.example.com/?x=1', true, 'bucket', 'k')).toBeUndefined();
  });

  it('is offered for reading s3:// clients with static credentials and an explicit endpoint only', () => {
    const direct = (kind: 's3' | 'oss', env: NodeJS.ProcessEnv, endpoint: string | undefined, purpose: 'read' | 'upload' = 'read') => {
      const handle = createS3Client(resolveS3Settings(kind, { env, ...(endpoint !== undefined ? { endpoint } : {}) }, `${kind}://bucket/k`), {
        purpose,
      });
      try {
        return handle.direct('bucket', 'k') !== undefined;
      } finally {
        handle.destroy();
      }
    };
    expect(direct('s3', ENV, 'http://127.0.0.1:9000')).toBe(true);
    expect(direct('s3', ENV, 'http://127.0.0.1:9000', 'upload')).toBe(false);
    // AWS's own endpoints: endpoint rules and region redirects are the SDK's.
    expect(direct('s3', ENV, undefined)).toBe(false);
    expect(direct('s3', { ...ENV, AWS_PROFILE: 'other' }, 'http://127.0.0.1:9000')).toBe(false);
    expect(direct('oss', { OSS_ENDPOINT: 'http://127.0.0.1:9000', OSS_ACCESS_KEY_ID: 'k', OSS_ACCESS_KEY_SECRET: 's' }, undefined)).toBe(false);
  });

  it('presigns the very URL the SDK presigns, signature included', async () => {
    const signingDate = new Date('2026-11-27T06:00:00Z');
    for (const [endpoint, env] of [
      ['http://127.0.0.1:9000', ENV],
      ['https://s3.example.com', { ...ENV, AWS_SESSION_TOKEN: 'token/1+2' }],
    ] as const) {
      const handle = createS3Client(resolveS3Settings('s3', { endpoint, env }, 's3://bucket'), { purpose: 'read' });
      try {
        const c = await handle.client();
        for (const key of ['rec.mcap', ODD_KEY]) {
          const sdk = await getSignedUrl(c, new GetObjectCommand({ Bucket: 'bucket', Key: key }), { expiresIn: 900, signingDate });
          expect(await handle.direct('bucket', key)!.presignGet(900, signingDate)).toBe(sdk);
        }
      } finally {
        handle.destroy();
      }
    }
  });
});

describe('direct S3 reads against the object server (SigV4)', () => {
  let server: ObjectServer;
  let handle: S3ClientHandle;
  const data = randomBytes(1_500_000);
  const display = (key: string) => `s3://bucket/${key}`;
  let sdkCalls: string[];
  let etag: string;

  /** A source whose SDK use is recorded: the client (HEAD, GET) and the SDK's presigning. */
  function source(key: string, direct = handle.direct('bucket', key)): S3Source {
    return new S3Source('s3', 'bucket', key, display(key), {
      client: () => {
        sdkCalls.push('client');
        return handle.client();
      },
      presigned: {
        presignGet: (b, k) => {
          sdkCalls.push('presign');
          return handle.presignGet(b, k);
        },
        send: (...args) => handle.send(...args),
      },
      ...(direct !== undefined ? { direct } : {}),
    });
  }

  beforeAll(async () => {
    server = await ObjectServer.start({ credentials: { accessKeyId: KEY_ID, secretAccessKey: SECRET } });
    handle = createS3Client(resolveS3Settings('s3', { endpoint: server.endpoint, env: ENV }, 's3://bucket'), { purpose: 'read' });
  });

  afterAll(async () => {
    handle.destroy();
    await server.close();
  });

  beforeEach(() => {
    sdkCalls = [];
    server.clearFaults();
    server.clearRequests();
    etag = server.putObject('bucket', 'rec.mcap', data).etag;
  });

  it('stats and reads ranges without the SDK', async () => {
    const src = source('rec.mcap');
    const st = await src.stat();
    expect(st).toMatchObject({ url: display('rec.mcap'), size: data.length, etag: etag, rangesSupported: true });
    expect(st.checksums.map((c) => c.algorithm)).toEqual(['md5']);
    expect(st.lastModified).toBeInstanceOf(Date);
    for (const [start, end] of [
      [0, 1000],
      [700_000, data.length],
    ] as const) {
      const { body } = await src.read({ start, end }, { ifMatch: st.etag! });
      expect((await readAll(body)).equals(data.subarray(start, end))).toBe(true);
    }
    expect(sdkCalls).toEqual([]);
    expect(server.requests.map((r) => [r.method, r.auth, r.status])).toEqual([
      ['HEAD', 'header', 200],
      ['GET', 'presigned', 206],
      ['GET', 'presigned', 206],
    ]);
    await src.close();
  });

  it('reads a key with awkward characters byte-exact', async () => {
    server.putObject('bucket', ODD_KEY, data.subarray(0, 5000));
    const src = source(ODD_KEY);
    expect((await src.stat()).size).toBe(5000);
    const { body } = await src.read({ start: 10, end: 4000 });
    expect((await readAll(body)).equals(data.subarray(10, 4000))).toBe(true);
    expect(server.requests.map((r) => [r.method, r.key, r.status])).toEqual([
      ['HEAD', ODD_KEY, 200],
      ['GET', ODD_KEY, 206],
    ]);
    expect(sdkCalls).toEqual([]);
  });

  it('reports the full-object checksums a HEAD asked for them gets', async () => {
    const sha256 = createHash('sha256').update(data).digest();
    const crc32 = Buffer.alloc(4);
    crc32.writeUInt32BE(zlib.crc32(data));
    server.putObject('bucket', 'summed.mcap', data, {
      fullObjectChecksums: { crc32: crc32.toString('base64'), sha256: sha256.toString('base64') },
    });
    const st = await source('summed.mcap').stat();
    expect(st.checksums).toEqual([
      { algorithm: 'md5', hex: createHash('md5').update(data).digest('hex') },
      { algorithm: 'sha256', hex: sha256.toString('hex') },
      { algorithm: 'crc32', hex: crc32.toString('hex') },
    ]);
    expect(sdkCalls).toEqual([]);
  });

  it('asks the SDK again when the store refuses the direct HEAD, and lets it sign the GETs from then on', async () => {
    server.addFault({ match: { method: 'HEAD' }, fault: { kind: 'status', status: 403 }, times: 1 });
    const src = source('rec.mcap');
    const st = await src.stat();
    expect(st.size).toBe(data.length);
    const { body } = await src.read({ start: 0, end: 100 }, { ifMatch: st.etag! });
    expect((await readAll(body)).equals(data.subarray(0, 100))).toBe(true);
    expect(server.requests.map((r) => [r.method, r.status])).toEqual([
      ['HEAD', 403],
      ['HEAD', 200],
      ['GET', 206],
    ]);
    expect(sdkCalls).toEqual(['client', 'presign']);
  });

  it('gives the SDK-shaped error when the store keeps refusing, and never shows the secret', async () => {
    const wrong = createS3Client(
      resolveS3Settings('s3', { endpoint: server.endpoint, env: { ...ENV, AWS_SECRET_ACCESS_KEY: 'not-the-secret' } }, 's3://bucket'),
      { purpose: 'read' },
    );
    try {
      const src = new S3Source('s3', 'bucket', 'rec.mcap', display('rec.mcap'), {
        client: () => wrong.client(),
        presigned: wrong,
        direct: wrong.direct('bucket', 'rec.mcap')!,
      });
      const err = await rejection(src.stat());
      expect(err.code).toBe('ERR_ACCESS_DENIED');
      expect(err.message).toContain('HEAD s3://bucket/rec.mcap');
      expect(err.message).not.toContain('not-the-secret');
      // The direct HEAD, the SDK's, and the SDK's GET of the first byte for the error code.
      expect(server.requests.map((r) => [r.method, r.auth, r.status])).toEqual([
        ['HEAD', 'header', 403],
        ['HEAD', 'header', 403],
        ['GET', 'header', 403],
      ]);
      expect(err.message).toContain('SignatureDoesNotMatch');
    } finally {
      wrong.destroy();
    }
  });

  it('fails a HEAD the transport cannot send with the mapped error, without asking the SDK', async () => {
    const closed = createS3Client(resolveS3Settings('s3', { endpoint: 'http://127.0.0.1:9', env: ENV }, 's3://bucket'), { purpose: 'read' });
    try {
      const src = new S3Source('s3', 'bucket', 'rec.mcap', display('rec.mcap'), {
        client: () => Promise.reject(new Error('the SDK client was asked for')),
        direct: closed.direct('bucket', 'rec.mcap')!,
      });
      const err = await rejection(src.stat());
      expect(err.code).toBe('ERR_CONNECTION');
      expect(err.message).toContain('s3://bucket/rec.mcap');
    } finally {
      closed.destroy();
    }
  });

  it('signs a session token into the presigned URL', async () => {
    const withToken = createS3Client(
      resolveS3Settings('s3', { endpoint: server.endpoint, env: { ...ENV, AWS_SESSION_TOKEN: 'token/1' } }, 's3://bucket'),
      { purpose: 'read' },
    );
    try {
      const url = await withToken.direct('bucket', 'rec.mcap')!.presignGet(60);
      expect(url).toContain('X-Amz-Security-Token=token%2F1');
      expect(url).toContain('X-Amz-Expires=60');
      expect(url.startsWith(`${server.endpoint}/bucket/rec.mcap?`)).toBe(true);
    } finally {
      withToken.destroy();
    }
  });
});
