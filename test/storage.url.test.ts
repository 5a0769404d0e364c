import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { RoboflowError } from '../src/errors.js';
import { redactSecrets, redactText, redactUrl, redactUrlsInText, secretsFromEnv } from '../src/redact.js';
import { isPathStyleEndpoint, joinOutputUrl, parseObjectUrl } from '../src/storage/url.js';
import { ossRegionFromEndpoint } from '../src/storage/s3.js';

function thrown(fn: () => unknown): RoboflowError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(RoboflowError);
    return err as RoboflowError;
  }
  throw new Error('expected a RoboflowError, nothing was thrown');
}

describe('parseObjectUrl: valid forms', () => {
  it('parses s3 and oss URLs, keeping keys verbatim', () => {
    expect(parseObjectUrl('s3://my-bucket/a/b/run 1.mcap')).toEqual({
      kind: 's3',
      bucket: 'my-bucket',
      key: 'a/b/run 1.mcap',
      display: 's3://my-bucket/a/b/run 1.mcap',
    });
    expect(parseObjectUrl('oss://bucket-1/x%20y?z#w')).toMatchObject({ kind: 'oss', bucket: 'bucket-1', key: 'x%20y?z#w' });
    expect(parseObjectUrl('S3://my.dotted.bucket/k')).toMatchObject({ kind: 's3', bucket: 'my.dotted.bucket', key: 'k' });
  });

  it('parses http(s) URLs into URL objects', () => {
    const p = parseObjectUrl('https://data.example.com:8443/rec/run.mcap?version=3');
    expect(p.kind).toBe('http');
    if (p.kind !== 'http') throw new Error('unreachable');
    expect(p.url.host).toBe('data.example.com:8443');
    expect(p.url.pathname).toBe('/rec/run.mcap');
    expect(p.display).toBe('https://data.example.com:8443/rec/run.mcap?version=3');
  });

  it('parses file URLs and plain paths into absolute paths', () => {
    expect(parseObjectUrl('file:///data/run%201.mcap')).toEqual({
      kind: 'file',
      path: '/data/run 1.mcap',
      display: 'file:///data/run%201.mcap',
    });
    expect(parseObjectUrl('file://localhost/data/x')).toMatchObject({ kind: 'file', path: '/data/x' });
    expect(parseObjectUrl('/abs/run.mcap')).toMatchObject({ kind: 'file', path: '/abs/run.mcap' });
    expect(parseObjectUrl('rel/run.mcap')).toMatchObject({ kind: 'file', path: path.resolve('rel/run.mcap') });
    // A colon without "//" is part of a file name, not a scheme.
    expect(parseObjectUrl('run:1.mcap')).toMatchObject({ kind: 'file', path: path.resolve('run:1.mcap') });
  });

  it('accepts folder forms for output prefixes only', () => {
    expect(parseObjectUrl('s3://bucket/out/', 'prefix')).toMatchObject({ kind: 's3', bucket: 'bucket', key: 'out/' });
    expect(parseObjectUrl('s3://bucket', 'prefix')).toMatchObject({ kind: 's3', bucket: 'bucket', key: '' });
    expect(parseObjectUrl('/data/out/', 'prefix')).toMatchObject({ kind: 'file', path: '/data/out' });
  });
});

describe('parseObjectUrl: errors', () => {
  it('rejects empty input with an example', () => {
    for (const input of ['', '   ']) {
      const err = thrown(() => parseObjectUrl(input));
      expect(err.code).toBe('ERR_BAD_URL');
      expect(err.message).toMatch(/empty URL; expected e\.g\. s3:\/\/my-bucket\//);
    }
  });

  it('rejects a missing bucket, a missing key and a folder key, naming the URL', () => {
    const cases: [string, RegExp][] = [
      ['s3:///key', /invalid URL "s3:\/\/\/key": the bucket name is missing; expected e\.g\. s3:\/\/my-bucket\//],
      ['s3://bucket', /"s3:\/\/bucket": the object key is missing/],
      ['s3://bucket/', /"s3:\/\/bucket\/": the object key is missing/],
      ['oss://bucket/dir/', /"oss:\/\/bucket\/dir\/": the key ends with "\/", which names a folder.*expected e\.g\. oss:\/\//],
    ];
    for (const [input, pattern] of cases) {
      const err = thrown(() => parseObjectUrl(input));
      expect(err.code).toBe('ERR_BAD_URL');
      expect(err.message).toMatch(pattern);
      expect(err.url).toBe(input);
    }
  });

  it('rejects invalid bucket names with the rule that is broken', () => {
    const cases: [string, RegExp][] = [
      ['s3://ab/k', /must be 3 to 63 characters/],
      [`s3://${'a'.repeat(64)}/k`, /must be 3 to 63 characters/],
      ['s3://My_Bucket/k', /only lower-case letters, digits, dots and hyphens/],
      ['s3://-bucket/k', /must start and end with a letter or digit/],
      ['s3://a..b/k', /two dots/],
      ['s3://192.168.1.10/k', /must not be an IP address/],
      ['s3://xn--bucket/k', /reserved prefix/],
      ['oss://my.bucket/k', /OSS allows no dots/],
    ];
    for (const [input, pattern] of cases) {
      const err = thrown(() => parseObjectUrl(input));
      expect(err.code).toBe('ERR_BAD_URL');
      expect(err.message).toMatch(pattern);
    }
  });

  it('rejects file URLs with a host, showing the three-slash form', () => {
    const err = thrown(() => parseObjectUrl('file://data/run.mcap'));
    expect(err.code).toBe('ERR_BAD_URL');
    expect(err.message).toContain('must not name a host ("data")');
    expect(err.message).toContain('file:///data/run.mcap');
  });

  it('rejects NUL bytes and directory paths', () => {
    const nul = thrown(() => parseObjectUrl('/data/a\0b'));
    expect(nul.code).toBe('ERR_BAD_URL');
    expect(nul.message).toContain('NUL byte');
    expect(nul.message).not.toContain('\0');
    expect(thrown(() => parseObjectUrl('s3://bucket/a\0b')).code).toBe('ERR_BAD_URL');
    expect(thrown(() => parseObjectUrl('/data/dir/')).message).toContain('names a directory');
    expect(thrown(() => parseObjectUrl('/data/..')).code).toBe('ERR_BAD_URL');
  });

  it('rejects credentials in an s3 URL without echoing them', () => {
    const err = thrown(() => parseObjectUrl('s3://AKIA:verysecret@bucket/key'));
    expect(err.code).toBe('ERR_BAD_URL');
    expect(err.message).not.toContain('verysecret');
    expect(err.message).toContain('REDACTED');
  });

  it('rejects unknown schemes listing the supported ones', () => {
    for (const input of ['ftp://host/file', 'gs://bucket/key']) {
      const err = thrown(() => parseObjectUrl(input));
      expect(err.code).toBe('ERR_UNSUPPORTED_SCHEME');
      expect(err.message).toContain(input.split(':')[0] + '://');
      expect(err.message).toContain('s3://, oss://, http://, https://, file://');
    }
  });

  it('rejects an HTTP URL without a path for a source', () => {
    expect(thrown(() => parseObjectUrl('https://example.com/')).message).toContain('names no object');
  });
});

describe('path-style decision', () => {
  it('uses path style for IP and localhost endpoints only', () => {
    expect(isPathStyleEndpoint('http://127.0.0.1:9000')).toBe(true);
    expect(isPathStyleEndpoint('http://[::1]:9000')).toBe(true);
    expect(isPathStyleEndpoint('http://localhost:4566')).toBe(true);
    expect(isPathStyleEndpoint('https://s3.us-west-2.amazonaws.com')).toBe(false);
    expect(isPathStyleEndpoint('https://minio.internal.example')).toBe(false);
    expect(isPathStyleEndpoint('not a url')).toBe(false);
  });

  it('derives the OSS region from the endpoint host', () => {
    expect(ossRegionFromEndpoint('https://oss-cn-hangzhou.aliyuncs.com')).toBe('cn-hangzhou');
    expect(ossRegionFromEndpoint('https://s3.oss-ap-southeast-1.aliyuncs.com')).toBe('ap-southeast-1');
    expect(ossRegionFromEndpoint('https://oss-cn-beijing-internal.aliyuncs.com')).toBe('cn-beijing');
    expect(ossRegionFromEndpoint('http://127.0.0.1:9000')).toBeUndefined();
  });
});

describe('joinOutputUrl', () => {
  it('joins under s3, oss and file prefixes, treating the prefix as a folder', () => {
    expect(joinOutputUrl('s3://bucket/out/', 'a/b.json')).toBe('s3://bucket/out/a/b.json');
    expect(joinOutputUrl('s3://bucket/out', 'b.json')).toBe('s3://bucket/out/b.json');
    expect(joinOutputUrl('oss://bucket', 'b.json')).toBe('oss://bucket/b.json');
    expect(joinOutputUrl('/data/out', 'x/y.txt')).toBe('/data/out/x/y.txt');
    expect(joinOutputUrl('file:///data/out/', 'sp ace.txt')).toBe('file:///data/out/sp%20ace.txt');
  });

  it('refuses unsafe names', () => {
    for (const name of ['../x', 'a/../../x', '/etc/passwd', 'a\0b', '', './x', 'a//b']) {
      const err = thrown(() => joinOutputUrl('s3://bucket/out/', name));
      expect(err.code).toBe('ERR_UNSAFE_PATH');
    }
  });

  it('refuses http prefixes: outputs need a writable store', () => {
    expect(thrown(() => joinOutputUrl('https://example.com/out/', 'x')).code).toBe('ERR_UNSUPPORTED_SCHEME');
  });
});

describe('redaction', () => {
  it('redacts SigV4 presigned URLs but keeps the rest readable', () => {
    const signed =
      'https://bucket.s3.amazonaws.com/run.mcap?X-Amz-Algorithm=AWS4-HMAC-SHA256' +
      '&X-Amz-Credential=AKIAEXAMPLE%2F20240501%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20240501T000000Z' +
      '&X-Amz-Expires=3600&X-Amz-SignedHeaders=host&X-Amz-Security-Token=FwoGZXIvYXdzEXAMPLE' +
      '&X-Amz-Signature=0123456789abcdef';
    const out = redactUrl(signed);
    expect(out).toBe(
      'https://bucket.s3.amazonaws.com/run.mcap?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=REDACTED' +
        '&X-Amz-Date=20240501T000000Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host&X-Amz-Security-Token=REDACTED' +
        '&X-Amz-Signature=REDACTED',
    );
  });

  it('redacts OSS, Azure and token parameters and user-info passwords', () => {
    expect(redactUrl('https://b.oss-cn-hangzhou.aliyuncs.com/k?OSSAccessKeyId=LTAI&Expires=1&Signature=abc%3D&security-token=tok')).toBe(
      'https://b.oss-cn-hangzhou.aliyuncs.com/k?OSSAccessKeyId=REDACTED&Expires=1&Signature=REDACTED&security-token=REDACTED',
    );
    expect(redactUrl('https://acct.blob.core.windows.net/c/b?sv=2022&sig=xyz')).toBe('https://acct.blob.core.windows.net/c/b?sv=2022&sig=REDACTED');
    expect(redactUrl('https://user:hunter2@example.com/a?token=t&x=1#access_token=abc')).toBe(
      'https://user:REDACTED@example.com/a?token=REDACTED&x=1#access_token=REDACTED',
    );
    expect(redactUrl('https://ghp_abcdef@example.com/a')).toBe('https://REDACTED@example.com/a');
    expect(redactUrl('s3://bucket/key')).toBe('s3://bucket/key');
    expect(redactUrl('postgres://app:pw@db:5432/jobs')).toBe('postgres://app:REDACTED@db:5432/jobs');
  });

  it('redacts URLs inside text and known secret values', () => {
    expect(redactUrlsInText('failed GET https://x/y?Signature=s3cr3t: 403')).toBe('failed GET https://x/y?Signature=REDACTED: 403');
    expect(redactSecrets('key=abcd1234 and abcd1234xyz', ['abcd1234', 'abcd1234xyz', ''])).toBe('key=REDACTED and REDACTED');
    const env = { AWS_SECRET_ACCESS_KEY: 'wJalrXUtnFEMI', OSS_ACCESS_KEY_SECRET: 'ossSecretValue', HOME: '/root' };
    expect(secretsFromEnv(env)).toEqual(['wJalrXUtnFEMI', 'ossSecretValue']);
    expect(redactText('secret wJalrXUtnFEMI in https://h/p?sig=1', env)).toBe('secret REDACTED in https://h/p?sig=REDACTED');
  });

  it('does not mangle text with placeholder credentials too short to be real secrets', () => {
    const env = { AWS_ACCESS_KEY_ID: 't', AWS_SECRET_ACCESS_KEY: 'test' };
    expect(secretsFromEnv(env)).toEqual([]);
    expect(redactText('bucket name "b" must be 3 to 63 characters long', env)).toBe('bucket name "b" must be 3 to 63 characters long');
  });
});
