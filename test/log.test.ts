import { execFile } from 'node:child_process';
import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { RoboflowError } from '../src/errors.js';
import { createLogger, type LoggerOptions } from '../src/log.js';
import { describeFull } from './tier.js';

/** A destination that keeps what it receives. */
function sink(): { stream: Writable; text: () => string; lines: () => Record<string, unknown>[] } {
  const chunks: string[] = [];
  const stream = new Writable({
    write(chunk: Buffer | string, _enc, cb) {
      chunks.push(chunk.toString());
      cb();
    },
  });
  const text = () => chunks.join('');
  return {
    stream,
    text,
    lines: () =>
      text()
        .split('\n')
        .filter((l) => l !== '')
        .map((l) => JSON.parse(l) as Record<string, unknown>),
  };
}

function logger(opts: Partial<LoggerOptions> = {}) {
  const out = sink();
  const log = createLogger({ pretty: false, destination: out.stream, env: {}, ...opts });
  return { log, out };
}

const SECRET_KEY = 'wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY';
const SESSION_TOKEN = 'FwoGZXIvYXdzEXAMPLESESSIONTOKENvalue0123456789';
const SIGNATURE = 'fe5f80f77d5fa3beca038a248ff027d0445342fe2855ddc963176630326f1024';
const PRESIGNED =
  'https://bucket.s3.amazonaws.com/rec/run-1.mcap?X-Amz-Algorithm=AWS4-HMAC-SHA256' +
  '&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20250101%2Fus-east-1%2Fs3%2Faws4_request' +
  `&X-Amz-Date=20250101T000000Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host&X-Amz-Signature=${SIGNATURE}`;

describe('createLogger', () => {
  it('writes one JSON object per line with level, time and message', () => {
    const { log, out } = logger();
    log.info({ bytes: 42 }, 'downloaded');
    log.warn('slow');
    const lines = out.lines();
    expect(lines).toHaveLength(2);
    expect(lines[0]).toMatchObject({ level: 'info', msg: 'downloaded', bytes: 42 });
    expect(typeof lines[0]?.time).toBe('string');
    expect(Number.isNaN(Date.parse(String(lines[0]?.time)))).toBe(false);
    expect(lines[1]).toMatchObject({ level: 'warn', msg: 'slow' });
  });

  it('filters by level', () => {
    const { log, out } = logger({ level: 'warn' });
    log.debug('no');
    log.info('no');
    log.warn('yes');
    log.error('yes too');
    expect(out.lines().map((l) => l.msg)).toEqual(['yes', 'yes too']);
    const silent = logger({ level: 'silent' });
    silent.log.fatal('nothing');
    expect(silent.out.text()).toBe('');
    const trace = logger({ level: 'trace' });
    trace.log.trace('everything');
    expect(trace.out.lines()[0]).toMatchObject({ level: 'trace', msg: 'everything' });
  });

  it('carries a job id through a child logger', () => {
    const { log, out } = logger();
    const jobLog = log.child({ jobId: 'job-123' });
    jobLog.info({ slot: 1 }, 'ready');
    jobLog.child({ downloadId: 7 }).warn('retrying');
    log.info('no job');
    const [a, b, c] = out.lines();
    expect(a).toMatchObject({ jobId: 'job-123', slot: 1, msg: 'ready' });
    expect(b).toMatchObject({ jobId: 'job-123', downloadId: 7, msg: 'retrying' });
    expect(c).not.toHaveProperty('jobId');
  });

  it('serializes errors with their code', () => {
    const { log, out } = logger();
    log.error({ err: new RoboflowError('ERR_NOT_FOUND', 'GET s3://b/k: HTTP 404', { status: 404 }) }, 'job failed');
    const [line] = out.lines();
    expect(line).toMatchObject({ msg: 'job failed', err: { type: 'RoboflowError', code: 'ERR_NOT_FOUND', status: 404 } });
    expect(String((line?.err as { stack: string }).stack)).toContain('RoboflowError');
  });

  it('never writes an AWS secret key, a session token or a presigned URL signature', () => {
    const env = { AWS_SECRET_ACCESS_KEY: SECRET_KEY, AWS_SESSION_TOKEN: SESSION_TOKEN };
    const { log, out } = logger({ env, level: 'trace' });
    // Fields named like secrets, at the top and nested.
    log.info({ secretAccessKey: SECRET_KEY, sessionToken: SESSION_TOKEN }, 'top');
    log.info({ credentials: { accessKeyId: 'AKIAIOSFODNN7EXAMPLE', secretAccessKey: SECRET_KEY } }, 'nested');
    log.info({ s3: { client: { config: { credentials: { secretAccessKey: SECRET_KEY } } } } }, 'deep');
    log.info({ request: { headers: { authorization: `AWS4-HMAC-SHA256 Signature=${SIGNATURE}` } } }, 'headers');
    // URL fields, in objects and lists.
    log.info({ url: PRESIGNED }, 'downloading');
    log.info({ job: { inputs: [{ url: PRESIGNED }], output: PRESIGNED } }, 'claimed');
    log.info({ source: new URL(PRESIGNED) }, 'as URL object');
    // Free text: the message, interpolation, an error's message and stack, any other field.
    log.warn(`GET ${PRESIGNED} failed`);
    log.warn('GET %s failed', PRESIGNED);
    log.error(new Error(`connect ECONNRESET ${PRESIGNED}`));
    log.error({ err: new RoboflowError('ERR_ACCESS_DENIED', `read ${PRESIGNED}: HTTP 403`) });
    log.info({ note: `key is ${SECRET_KEY}`, detail: `token ${SESSION_TOKEN}` }, 'free text');
    log.info(`env leak ${SECRET_KEY}`);
    // Child bindings.
    log.child({ jobId: 'j', input: PRESIGNED, password: 'hunter2' }).info('child');
    const text = out.text();
    expect(out.lines()).toHaveLength(14);
    expect(text).not.toContain(SECRET_KEY);
    expect(text).not.toContain(SESSION_TOKEN);
    expect(text).not.toContain(SIGNATURE);
    expect(text).not.toContain('hunter2');
    expect(text).not.toContain('AKIAIOSFODNN7EXAMPLE');
    // The URL stays recognisable.
    expect(text).toContain('https://bucket.s3.amazonaws.com/rec/run-1.mcap?');
    expect(text).toContain('X-Amz-Signature=REDACTED');
  });

  it('redacts in pretty output too', () => {
    const out = sink();
    const log = createLogger({ pretty: true, destination: out.stream, env: { AWS_SECRET_ACCESS_KEY: SECRET_KEY } });
    log.info({ url: PRESIGNED, jobId: 'job-9' }, 'downloading %s', PRESIGNED);
    log.info({ secretAccessKey: SECRET_KEY }, 'creds');
    const text = out.text();
    expect(text).toContain('downloading');
    expect(text).toContain('job-9');
    expect(text).not.toContain(SIGNATURE);
    expect(text).not.toContain(SECRET_KEY);
    expect(() => JSON.parse(text.split('\n')[0] ?? '')).toThrow();
  });
});

describeFull('createLogger defaults (compiled, in a child process)', () => {
  const fixture = new URL('./fixtures/log-stderr.mjs', import.meta.url).pathname;

  function run(args: string[]): Promise<{ stdout: string; stderr: string }> {
    return new Promise((resolve, reject) => {
      execFile(
        process.execPath,
        [fixture, ...args],
        { env: { PATH: process.env.PATH ?? '', TEST_URL: PRESIGNED, AWS_SECRET_ACCESS_KEY: SECRET_KEY } },
        (err, stdout, stderr) => (err ? reject(err) : resolve({ stdout, stderr })),
      );
    });
  }

  it('writes JSON lines to stderr, all of them even on process.exit, and nothing to stdout', async () => {
    const { stdout, stderr } = await run(['info']);
    expect(stdout).toBe('stdout stays clean\n');
    const lines = stderr.split('\n').filter((l) => l !== '').map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(lines).toHaveLength(200);
    expect(lines[199]).toMatchObject({ level: 'info', jobId: 'job-42', i: 199, msg: 'line' });
    expect(stderr).not.toContain(SIGNATURE);
    expect(stderr).not.toContain('debug line');
  });

  it('pretty-prints when asked, still on stderr and flushed', async () => {
    const { stdout, stderr } = await run(['debug', 'pretty']);
    expect(stdout).toBe('stdout stays clean\n');
    expect(stderr).toContain('debug line');
    expect(stderr).toContain('job-42');
    expect(stderr.match(/line/g)?.length).toBeGreaterThanOrEqual(201);
    expect(stderr).not.toContain(SIGNATURE);
  });
});
