import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { CreateBucketCommand, PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { RoboflowError } from '../src/errors.js';
import { StorageClients } from '../src/storage/index.js';
import { resolveS3Settings } from '../src/storage/s3.js';
import { ObjectServer } from './support/object-server.js';
import { readAll, rejection } from './helpers.js';



function thrown(fn: () => unknown): RoboflowError {
  try {
    fn();
  } catch (err) {
    return err as RoboflowError;
  }
  throw new Error('expected a throw');
}

const md5 = (b: Buffer) => createHash('md5').update(b).digest('hex');

/** An environment that can find no credentials anywhere and never asks the network. */
function emptyCredentialEnv(dir: string): NodeJS.ProcessEnv {
  return {
    AWS_EC2_METADATA_DISABLED: 'true',
    AWS_CONFIG_FILE: path.join(dir, 'no-such-config'),
    AWS_SHARED_CREDENTIALS_FILE: path.join(dir, 'no-such-credentials'),
  };
}

const KEY_ID = 'AKIAROBOFLOWTEST';
const SECRET = 'roboflow/test/secret+key';

describe('S3Source against the object server (SigV4)', () => {
  let server: ObjectServer;
  let clients: StorageClients;
  let tmp: string;
  const data = randomBytes(2_000_000);

  beforeAll(async () => {
    tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'roboflow-'));
    server = await ObjectServer.start({ credentials: { accessKeyId: KEY_ID, secretAccessKey: SECRET } });
    clients = new StorageClients({
      endpoint: server.endpoint,
      maxConnections: 4,
      env: { AWS_ACCESS_KEY_ID: KEY_ID, AWS_SECRET_ACCESS_KEY: SECRET, AWS_REGION: 'eu-west-1' },
    });
  });

  afterAll(async () => {
    await clients.close();
    await server.close();
    await fs.rm(tmp, { recursive: true, force: true });
  });

  beforeEach(() => {
    server.clearFaults();
    server.clearRequests();
    server.putObject('bucket', 'rec/run 1.mcap', data);
  });

  it('stats size, ETag and the MD5 in a single-part ETag', async () => {
    const src = clients.open('s3://bucket/rec/run 1.mcap');
    expect(src.kind).toBe('s3');
    const st = await src.stat();
    expect(st).toMatchObject({ url: 's3://bucket/rec/run 1.mcap', size: data.length, etag: `"${md5(data)}"`, rangesSupported: true });
    expect(st.checksums).toEqual([{ algorithm: 'md5', hex: md5(data) }]);
    expect(st.lastModified).toBeInstanceOf(Date);
    // Path style is chosen for the IP endpoint: the bucket is in the path, and the request signed.
    expect(server.requests.at(-1)).toMatchObject({ method: 'HEAD', bucket: 'bucket', key: 'rec/run 1.mcap', status: 200 });
    await src.close();
  });

  it('does not take a multipart ETag for an MD5', async () => {
    server.putObject('bucket', 'multi', data, { etag: `${md5(Buffer.from('x'))}-3` });
    const st = await clients.open('s3://bucket/multi').stat();
    expect(st.etag).toBe(`"${md5(Buffer.from('x'))}-3"`);
    expect(st.checksums).toEqual([]);
  });

  it('reads ranges byte-exact with Range and If-Match', async () => {
    const src = clients.open('s3://bucket/rec/run 1.mcap');
    const st = await src.stat();
    for (const [start, end] of [
      [0, 1],
      [777, 1_500_000],
      [data.length - 3, data.length],
    ] as const) {
      const { range, body } = await src.read({ start, end }, { ifMatch: st.etag! });
      expect(range).toEqual({ start, end });
      expect((await readAll(body)).equals(data.subarray(start, end))).toBe(true);
      expect(server.requests.at(-1)).toMatchObject({ method: 'GET', range: { start, end }, ifMatch: st.etag });
    }
  });

  it('reads every range of an object through one presigned URL; the HEAD is signed in its headers', async () => {
    const src = clients.open('s3://bucket/rec/run 1.mcap');
    const st = await src.stat();
    for (const [start, end] of [
      [0, 1000],
      [1000, 2000],
      [5, 6],
    ] as const) {
      const { body } = await src.read({ start, end }, { ifMatch: st.etag! });
      expect((await readAll(body)).equals(data.subarray(start, end))).toBe(true);
    }
    expect(server.requests.map((r) => [r.method, r.auth, r.status])).toEqual([
      ['HEAD', 'header', 200],
      ['GET', 'presigned', 206],
      ['GET', 'presigned', 206],
      ['GET', 'presigned', 206],
    ]);
    await src.close();
  });

  it('signs again once when the store refuses a presigned GET with 403, then gives up', async () => {
    const src = clients.open('s3://bucket/rec/run 1.mcap');
    server.addFault({ fault: { kind: 'status', status: 403 }, times: 1 });
    const { body } = await src.read({ start: 0, end: 100 });
    expect((await readAll(body)).equals(data.subarray(0, 100))).toBe(true);
    expect(server.requests.map((r) => r.status)).toEqual([403, 206]);
    server.clearRequests();
    server.addFault({ fault: { kind: 'status', status: 403 }, times: 2 });
    const err = await rejection(src.read({ start: 0, end: 100 }));
    expect(err.code).toBe('ERR_ACCESS_DENIED');
    expect(err.message).toContain('s3://bucket/rec/run 1.mcap');
    expect(server.requests.map((r) => r.status)).toEqual([403, 403]);
    await src.close();
  });

  it('fails with ERR_SOURCE_CHANGED when the object was replaced', async () => {
    const src = clients.open('s3://bucket/rec/run 1.mcap');
    const st = await src.stat();
    server.addFault({ fault: { kind: 'replace', body: randomBytes(100) } });
    const err = await rejection(src.read({ start: 0, end: 10 }, { ifMatch: st.etag! }));
    expect(err.code).toBe('ERR_SOURCE_CHANGED');
    expect(err.status).toBe(412);
  });

  it('maps NoSuchKey and NoSuchBucket to ERR_NOT_FOUND naming the URL', async () => {
    const missing = clients.open('s3://bucket/nope.mcap');
    const head = await rejection(missing.stat());
    expect(head.code).toBe('ERR_NOT_FOUND');
    expect(head.message).toContain('s3://bucket/nope.mcap');
    expect(head.message).toContain('HTTP 404');
    const get = await rejection(missing.read({ start: 0, end: 10 }));
    expect(get.code).toBe('ERR_NOT_FOUND');
    expect(get.message).toContain('NoSuchKey');
    const noBucket = await rejection(clients.open('s3://other-bucket/x').read({ start: 0, end: 1 }));
    expect(noBucket.code).toBe('ERR_NOT_FOUND');
    expect(noBucket.message).toContain('the bucket does not exist');
  });

  it('maps a wrong secret to ERR_ACCESS_DENIED without printing it', async () => {
    const wrong = new StorageClients({
      endpoint: server.endpoint,
      env: { AWS_ACCESS_KEY_ID: KEY_ID, AWS_SECRET_ACCESS_KEY: 'not-the-secret' },
    });
    try {
      const err = await rejection(wrong.open('s3://bucket/rec/run 1.mcap').read({ start: 0, end: 10 }));
      expect(err.code).toBe('ERR_ACCESS_DENIED');
      expect(err.message).toContain('SignatureDoesNotMatch');
      expect(err.message).not.toContain('not-the-secret');
    } finally {
      await wrong.close();
    }
  });

  it('names what a refused HEAD cannot say (no body): a GET of the first byte asks for the code', async () => {
    const noBucket = await rejection(clients.open('s3://other-bucket/x').stat());
    expect(noBucket.code).toBe('ERR_NOT_FOUND');
    expect(noBucket.message).toMatch(/^HEAD s3:\/\/other-bucket\/x: NoSuchBucket \(HTTP 404\)/);
    expect(noBucket.message).toContain('the bucket does not exist; check the bucket name and the endpoint');
    expect(server.requests.map((r) => [r.method, r.status])).toEqual([
      ['HEAD', 404],
      ['HEAD', 404],
      ['GET', 404],
    ]);
    const noKey = await rejection(clients.open('s3://bucket/nope.mcap').stat());
    expect(noKey.code).toBe('ERR_NOT_FOUND');
    expect(noKey.message).toMatch(/^HEAD s3:\/\/bucket\/nope\.mcap: NoSuchKey \(HTTP 404\).* — check the bucket and key$/);
    const wrong = new StorageClients({
      endpoint: server.endpoint,
      env: { AWS_ACCESS_KEY_ID: KEY_ID, AWS_SECRET_ACCESS_KEY: 'not-the-secret' },
    });
    try {
      const denied = await rejection(wrong.open('s3://bucket/rec/run 1.mcap').stat());
      expect(denied.code).toBe('ERR_ACCESS_DENIED');
      expect(denied.status).toBe(403);
      expect(denied.message).toMatch(/^HEAD s3:\/\/bucket\/rec\/run 1\.mcap: SignatureDoesNotMatch \(HTTP 403\) — check the credentials/);
      expect(denied.message).not.toContain('not-the-secret');
    } finally {
      await wrong.close();
    }
  });

  it("reads the code of a Ceph RGW (Pacific) error body, whose <Message> is empty", async () => {
    // RGW answers a HEAD with a bare status and a GET with this body.
    const rgwBody = (code: string) =>
      `<?xml version="1.0" encoding="UTF-8"?><Error><Code>${code}</Code><Message></Message><BucketName>bucket</BucketName>` +
      `<RequestId>tx00000a1-default</RequestId><HostId>100a-default-default</HostId></Error>`;
    server.addFault({ match: { method: 'HEAD' }, fault: { kind: 'status', status: 404 }, times: 2 });
    server.addFault({ match: { method: 'GET' }, fault: { kind: 'status', status: 404, body: rgwBody('NoSuchBucket'), contentType: 'application/xml' }, times: 1 });
    const src = clients.open('s3://bucket/rec/run 1.mcap');
    const head = await rejection(src.stat());
    expect(head.message).toBe('HEAD s3://bucket/rec/run 1.mcap: NoSuchBucket (HTTP 404) — the bucket does not exist; check the bucket name and the endpoint');
    server.addFault({ fault: { kind: 'status', status: 404, body: rgwBody('NoSuchKey'), contentType: 'application/xml' }, times: 1 });
    const get = await rejection(src.read({ start: 0, end: 10 }));
    expect(get.message).toBe('GET s3://bucket/rec/run 1.mcap: NoSuchKey (HTTP 404) — check the bucket and key');
  });

  it("keeps a refused HEAD's bare status when the GET that would name it succeeds", async () => {
    server.addFault({ match: { method: 'HEAD' }, fault: { kind: 'status', status: 403 }, times: 2 });
    const err = await rejection(clients.open('s3://bucket/rec/run 1.mcap').stat());
    expect(err.code).toBe('ERR_ACCESS_DENIED');
    expect(err.message).toBe('HEAD s3://bucket/rec/run 1.mcap: HTTP 403 — check the credentials and that they may read this object');
    expect(server.requests.map((r) => [r.method, r.status])).toEqual([
      ['HEAD', 403],
      ['HEAD', 403],
      ['GET', 206],
    ]);
  });

  it('maps SlowDown to ERR_THROTTLED with the Retry-After delay, and does not retry inside the SDK', async () => {
    server.addFault({ fault: { kind: 'status', status: 503, retryAfterSeconds: 3 } });
    const err = await rejection(clients.open('s3://bucket/rec/run 1.mcap').read({ start: 0, end: 10 }));
    expect(err.code).toBe('ERR_THROTTLED');
    expect(err.retryAfterMs).toBe(3000);
    expect(err.message).toContain('SlowDown');
    server.addFault({ fault: { kind: 'status', status: 500 } });
    server.clearRequests();
    expect((await rejection(clients.open('s3://bucket/rec/run 1.mcap').read({ start: 0, end: 10 }))).code).toBe('ERR_SERVER');
    expect(server.requests.filter((r) => r.method === 'GET').length).toBe(1);
  });

  it('rejects a Content-Range for another range', async () => {
    server.addFault({ fault: { kind: 'bad-content-range' } });
    const err = await rejection(clients.open('s3://bucket/rec/run 1.mcap').read({ start: 10, end: 20 }));
    expect(err.code).toBe('ERR_BAD_RESPONSE');
    expect(err.message).toContain('expected "bytes 10-19/<size>"');
  });

  it('times out a request whose headers do not come', async () => {
    const slow = new StorageClients({
      endpoint: server.endpoint,
      headersTimeoutMs: 300,
      env: { AWS_ACCESS_KEY_ID: KEY_ID, AWS_SECRET_ACCESS_KEY: SECRET },
    });
    try {
      server.addFault({ fault: { kind: 'stall', afterBytes: 0, ms: 10_000 }, match: { method: 'HEAD' } });
      const err = await rejection(slow.open('s3://bucket/rec/run 1.mcap').stat());
      expect(err.code).toBe('ERR_TIMEOUT');
      expect(err.retryable).toBe(true);
    } finally {
      await slow.close();
    }
  });

  it('aborts with the caller signal', async () => {
    const src = clients.open('s3://bucket/rec/run 1.mcap');
    server.addFault({ fault: { kind: 'stall', afterBytes: 0, ms: 10_000 }, match: { method: 'HEAD' } });
    const ac = new AbortController();
    const p = rejection(src.stat({ signal: ac.signal }));
    setTimeout(() => ac.abort(), 50);
    expect((await p).code).toBe('ERR_ABORTED');
  });

  it('stops a body mid-stream when the caller aborts', async () => {
    server.addFault({ fault: { kind: 'stall', afterBytes: 1000 } });
    const ac = new AbortController();
    const { body } = await clients.open('s3://bucket/rec/run 1.mcap').read({ start: 0, end: 100_000 }, { signal: ac.signal });
    const reading = rejection(readAll(body));
    setTimeout(() => ac.abort(), 50);
    expect((await reading).code).toBe('ERR_ABORTED');
  });

  it('reports missing credentials from an explicit environment', async () => {
    const none = new StorageClients({ endpoint: server.endpoint, env: emptyCredentialEnv(tmp) });
    try {
      const err = await rejection(none.open('s3://bucket/rec/run 1.mcap').stat());
      expect(err.code).toBe('ERR_MISSING_CREDENTIALS');
      expect(err.message).toContain('s3://bucket/rec/run 1.mcap');
      expect(err.message).toContain('AWS_ACCESS_KEY_ID');
      expect(err.message).toContain('AWS_PROFILE');
      expect(err.retryable).toBe(false);
    } finally {
      await none.close();
    }
  });

  it('reads a named profile from the credentials file an explicit environment names', async () => {
    const credentialsFile = path.join(tmp, 'credentials');
    await fs.writeFile(credentialsFile, `[robo]\naws_access_key_id = ${KEY_ID}\naws_secret_access_key = ${SECRET}\n`);
    const withProfile = new StorageClients({
      endpoint: server.endpoint,
      env: { ...emptyCredentialEnv(tmp), AWS_SHARED_CREDENTIALS_FILE: credentialsFile, AWS_PROFILE: 'robo' },
    });
    try {
      expect((await withProfile.open('s3://bucket/rec/run 1.mcap').stat()).size).toBe(data.length);
    } finally {
      await withProfile.close();
    }
  });

  it('reports missing credentials through the SDK default chain (process environment)', async () => {
    const names = [
      'AWS_ACCESS_KEY_ID',
      'AWS_SECRET_ACCESS_KEY',
      'AWS_SESSION_TOKEN',
      'AWS_PROFILE',
      'AWS_EC2_METADATA_DISABLED',
      'AWS_CONFIG_FILE',
      'AWS_SHARED_CREDENTIALS_FILE',
      'AWS_WEB_IDENTITY_TOKEN_FILE',
      'AWS_CONTAINER_CREDENTIALS_RELATIVE_URI',
      'AWS_CONTAINER_CREDENTIALS_FULL_URI',
    ];
    const saved = new Map(names.map((n) => [n, process.env[n]]));
    for (const n of names) delete process.env[n];
    Object.assign(process.env, emptyCredentialEnv(tmp));
    const chain = new StorageClients({ endpoint: server.endpoint });
    try {
      const err = await rejection(chain.open('s3://bucket/rec/run 1.mcap').stat());
      expect(err.code).toBe('ERR_MISSING_CREDENTIALS');
      expect(err.message).toContain('s3://bucket/rec/run 1.mcap');
    } finally {
      await chain.close();
      for (const [n, v] of saved) {
        if (v === undefined) delete process.env[n];
        else process.env[n] = v;
      }
    }
  });

  it('refuses a malformed endpoint at open time', () => {
    const bad = new StorageClients({ endpoint: 'localhost:9000', env: {} });
    const err = thrown(() => bad.open('s3://bucket/k'));
    expect(err.code).toBe('ERR_CONFIG');
    expect(err.message).toContain('http://');
  });

  it('takes the endpoint and region from the environment, path style for IPs', () => {
    const s = resolveS3Settings('s3', { env: { AWS_ENDPOINT_URL: 'http://127.0.0.1:9', AWS_DEFAULT_REGION: 'ap-south-1' } }, 's3://b/k');
    expect(s).toMatchObject({ endpoint: 'http://127.0.0.1:9', region: 'ap-south-1', forcePathStyle: true });
    const specific = resolveS3Settings(
      's3',
      { env: { AWS_ENDPOINT_URL: 'http://127.0.0.1:9', AWS_ENDPOINT_URL_S3: 'https://minio.example.com' } },
      's3://b/k',
    );
    expect(specific).toMatchObject({ endpoint: 'https://minio.example.com', region: 'us-east-1', forcePathStyle: false });
    expect(resolveS3Settings('s3', { env: {} }, 's3://b/k')).toMatchObject({ endpoint: undefined, forcePathStyle: false });
    expect(resolveS3Settings('s3', { env: {}, endpoint: 'https://s3.example.com', forcePathStyle: true }, 's3://b/k').forcePathStyle).toBe(true);
  });
});

describe('S3Source for oss:// against the object server', () => {
  let server: ObjectServer;
  const data = randomBytes(300_000);
  const ossEnv = (extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv => ({
    OSS_ENDPOINT: server.endpoint,
    OSS_ACCESS_KEY_ID: KEY_ID,
    OSS_ACCESS_KEY_SECRET: SECRET,
    ...extra,
  });

  beforeAll(async () => {
    server = await ObjectServer.start({ credentials: { accessKeyId: KEY_ID, secretAccessKey: SECRET } });
    server.putObject('oss-bucket', 'a/b.bin', data);
  });

  afterAll(async () => {
    await server.close();
  });

  it('reads with OSS_* credentials (path style forced for the local server)', async () => {
    const clients = new StorageClients({ forcePathStyle: true, env: ossEnv() });
    try {
      const src = clients.open('oss://oss-bucket/a/b.bin');
      expect(src.kind).toBe('oss');
      const st = await src.stat();
      expect(st).toMatchObject({ url: 'oss://oss-bucket/a/b.bin', size: data.length, checksums: [{ algorithm: 'md5', hex: md5(data) }] });
      const { body } = await src.read({ start: 1000, end: 2000 }, { ifMatch: st.etag! });
      expect((await readAll(body)).equals(data.subarray(1000, 2000))).toBe(true);
    } finally {
      await clients.close();
    }
  });

  it('honours x-oss-qos-delay-time', async () => {
    const clients = new StorageClients({ forcePathStyle: true, env: ossEnv() });
    try {
      server.addFault({ fault: { kind: 'status', status: 503, ossDelayMs: 2500 } });
      const err = await rejection(clients.open('oss://oss-bucket/a/b.bin').read({ start: 0, end: 1 }));
      expect(err.code).toBe('ERR_THROTTLED');
      expect(err.retryAfterMs).toBe(2500);
    } finally {
      await clients.close();
    }
  });

  it('needs OSS_ENDPOINT and OSS credentials, and says so at open time', () => {
    const noEndpoint = thrown(() => new StorageClients({ env: { OSS_ACCESS_KEY_ID: 'a', OSS_ACCESS_KEY_SECRET: 'b' } }).open('oss://oss-bucket/a/b.bin'));
    expect(noEndpoint.code).toBe('ERR_CONFIG');
    expect(noEndpoint.message).toContain('OSS_ENDPOINT');
    expect(noEndpoint.message).toContain('oss://oss-bucket/a/b.bin');
    const noKeys = thrown(() => new StorageClients({ env: { OSS_ENDPOINT: server.endpoint } }).open('oss://oss-bucket/a/b.bin'));
    expect(noKeys.code).toBe('ERR_MISSING_CREDENTIALS');
    expect(noKeys.message).toContain('OSS_ACCESS_KEY_ID');
    expect(noKeys.message).toContain('OSS_ACCESS_KEY_SECRET');
  });

  it('uses virtual-hosted style and the endpoint region on Alibaba endpoints', () => {
    const s = resolveS3Settings(
      'oss',
      { env: { OSS_ENDPOINT: 'oss-cn-hangzhou.aliyuncs.com', OSS_ACCESS_KEY_ID: 'id', OSS_ACCESS_KEY_SECRET: 'secret' } },
      'oss://b/k',
    );
    expect(s).toMatchObject({ endpoint: 'https://oss-cn-hangzhou.aliyuncs.com', region: 'cn-hangzhou', forcePathStyle: false });
    expect(s.cacheKey).not.toContain('secret');
    const ip = resolveS3Settings('oss', { env: ossEnv({ OSS_REGION: 'oss-cn-shanghai' }) }, 'oss://b/k');
    expect(ip).toMatchObject({ region: 'cn-shanghai', forcePathStyle: false });
  });
});

interface S3rverInstance {
  run(): Promise<AddressInfo>;
  close(): Promise<void>;
}
type S3rverCtor = new (opts: Record<string, unknown>) => S3rverInstance;

describe('S3Source against s3rver', () => {
  let s3rver: S3rverInstance;
  let endpoint: string;
  let dir: string;
  let clients: StorageClients;
  const data = randomBytes(3 * 1024 * 1024 + 17);
  const s3rverEnv = { AWS_ACCESS_KEY_ID: 'S3RVER', AWS_SECRET_ACCESS_KEY: 'S3RVER' };

  beforeAll(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'roboflow-'));
    const S3rver = createRequire(import.meta.url)('s3rver') as S3rverCtor;
    s3rver = new S3rver({ port: 0, address: '127.0.0.1', silent: true, directory: dir });
    const addr = await s3rver.run();
    endpoint = `http://127.0.0.1:${addr.port}`;
    const sdk = new S3Client({
      endpoint,
      region: 'us-east-1',
      forcePathStyle: true,
      credentials: { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' },
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
    });
    try {
      await sdk.send(new CreateBucketCommand({ Bucket: 'interop' }));
      await sdk.send(new PutObjectCommand({ Bucket: 'interop', Key: 'dir/rec.mcap', Body: data }));
      await sdk.send(new PutObjectCommand({ Bucket: 'interop', Key: 'changing', Body: Buffer.from('version one') }));
    } finally {
      sdk.destroy();
    }
    clients = new StorageClients({ endpoint, env: s3rverEnv });
  });

  afterAll(async () => {
    await clients?.close();
    await s3rver?.close();
    await fs.rm(dir, { recursive: true, force: true });
  });

  it('stats with the MD5 checksum detected', async () => {
    const st = await clients.open('s3://interop/dir/rec.mcap').stat();
    expect(st.size).toBe(data.length);
    expect(st.etag).toBe(`"${md5(data)}"`);
    expect(st.checksums).toEqual([{ algorithm: 'md5', hex: md5(data) }]);
  });

  it('reads ranges whose bytes equal the object', async () => {
    const src = clients.open('s3://interop/dir/rec.mcap');
    const st = await src.stat();
    const parts: Buffer[] = [];
    const chunk = 1024 * 1024;
    for (let start = 0; start < data.length; start += chunk) {
      const { body } = await src.read({ start, end: Math.min(data.length, start + chunk) }, { ifMatch: st.etag! });
      parts.push(await readAll(body));
    }
    expect(Buffer.concat(parts).equals(data)).toBe(true);
  });

  it('detects a changed object even though s3rver ignores If-Match', async () => {
    const src = clients.open('s3://interop/changing');
    const st = await src.stat();
    const sdk = new S3Client({
      endpoint,
      region: 'us-east-1',
      forcePathStyle: true,
      credentials: { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' },
      requestChecksumCalculation: 'WHEN_REQUIRED',
    });
    try {
      await sdk.send(new PutObjectCommand({ Bucket: 'interop', Key: 'changing', Body: Buffer.from('version two!') }));
    } finally {
      sdk.destroy();
    }
    const err = await rejection(src.read({ start: 0, end: 5 }, { ifMatch: st.etag! }));
    expect(err.code).toBe('ERR_SOURCE_CHANGED');
    expect(err.message).toContain(st.etag!);
  });

  it('maps NoSuchKey to ERR_NOT_FOUND', async () => {
    const src = clients.open('s3://interop/missing.mcap');
    expect((await rejection(src.stat())).code).toBe('ERR_NOT_FOUND');
    const err = await rejection(src.read({ start: 0, end: 1 }));
    expect(err.code).toBe('ERR_NOT_FOUND');
    expect(err.message).toContain('s3://interop/missing.mcap');
  });

  it('maps a wrong key id to ERR_ACCESS_DENIED', async () => {
    const wrong = new StorageClients({ endpoint, env: { AWS_ACCESS_KEY_ID: 'NOPE', AWS_SECRET_ACCESS_KEY: 'S3RVER' } });
    try {
      expect((await rejection(wrong.open('s3://interop/dir/rec.mcap').stat())).code).toBe('ERR_ACCESS_DENIED');
    } finally {
      await wrong.close();
    }
  });
});
