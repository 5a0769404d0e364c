/**
 * The `aws-chunked` content encoding the AWS SDK streams uploads in, decoded for the test object
 * server, with the chunk signatures checked when the request was signed.
 */

import { createHash, createHmac } from 'node:crypto';
import { sameHex, type SigningContext } from './sigv4.js';

const EMPTY_SHA256 = createHash('sha256').update('').digest('hex');

/** A request body the server refuses, with the S3 error code and status to answer
 * (`IncompleteBody`, `SignatureDoesNotMatch`, ...). */
export class BadRequest extends Error {
  constructor(
    readonly s3Code: string,
    message: string,
    readonly status = 400,
  ) {
    super(message);
  }
}

/**
 * Decodes the `aws-chunked` content encoding the AWS SDK uses for streamed uploads
 * (`<hex-size>[;chunk-signature=<sig>]\r\n<data>\r\n ... 0\r\n<trailers>\r\n\r\n`). When
 * `signing` is given, each chunk signature is checked against the previous one, starting from
 * the request's seed signature (STREAMING-AWS4-HMAC-SHA256-PAYLOAD).
 */
export async function* decodeAwsChunked(
  src: AsyncIterable<Buffer>,
  signing: SigningContext | undefined,
  trailers: Map<string, string>,
): AsyncGenerator<Buffer> {
  type State = 'size' | 'data' | 'data-crlf' | 'trailer' | 'done';
  let state: State = 'size';
  let pending: Buffer | undefined;
  let remaining = 0;
  let chunkSig: string | undefined;
  let chunkHash = signing === undefined ? undefined : createHash('sha256');
  let prevSig = signing?.signature;

  const checkChunk = (): void => {
    if (signing === undefined || chunkHash === undefined) return;
    if (chunkSig === undefined) throw new BadRequest('SignatureDoesNotMatch', 'aws-chunked chunk without chunk-signature', 403);
    const sts = ['AWS4-HMAC-SHA256-PAYLOAD', signing.amzDate, signing.scope, prevSig, EMPTY_SHA256, chunkHash.digest('hex')].join('\n');
    const expected = createHmac('sha256', signing.signingKey).update(sts, 'utf8').digest('hex');
    if (!sameHex(expected, chunkSig)) throw new BadRequest('SignatureDoesNotMatch', 'aws-chunked chunk signature does not match', 403);
    prevSig = chunkSig;
    chunkHash = createHash('sha256');
  };

  for await (const incoming of src) {
    const buf: Buffer = pending === undefined ? incoming : Buffer.concat([pending, incoming]);
    pending = undefined;
    let i = 0;
    while (i < buf.length) {
      switch (state) {
        case 'size':
        case 'trailer': {
          const nl = buf.indexOf('\r\n', i);
          if (nl < 0) {
            if (buf.length - i > 16 * 1024) throw new BadRequest('IncompleteBody', 'aws-chunked header line too long');
            pending = buf.subarray(i);
            i = buf.length;
            break;
          }
          const line = buf.toString('latin1', i, nl);
          i = nl + 2;
          if (state === 'trailer') {
            // An empty line ends the trailers; the checksum trailers are checked by the caller.
            if (line === '') {
              state = 'done';
            } else {
              const colon = line.indexOf(':');
              if (colon > 0) trailers.set(line.slice(0, colon).trim().toLowerCase(), line.slice(colon + 1).trim());
            }
            break;
          }
          const m = /^([0-9a-fA-F]+)(?:;chunk-signature=([0-9a-f]+))?/.exec(line);
          if (m === null) throw new BadRequest('IncompleteBody', `malformed aws-chunked chunk header ${JSON.stringify(line.slice(0, 80))}`);
          remaining = parseInt(m[1] ?? '0', 16);
          chunkSig = m[2];
          if (remaining === 0) {
            checkChunk();
            state = 'trailer';
          } else {
            state = 'data';
          }
          break;
        }
        case 'data': {
          const n = Math.min(remaining, buf.length - i);
          const piece = buf.subarray(i, i + n);
          chunkHash?.update(piece);
          yield piece;
          remaining -= n;
          i += n;
          if (remaining === 0) {
            checkChunk();
            state = 'data-crlf';
          }
          break;
        }
        case 'data-crlf': {
          if (buf.length - i < 2) {
            pending = buf.subarray(i);
            i = buf.length;
            break;
          }
          if (buf[i] !== 13 || buf[i + 1] !== 10) throw new BadRequest('IncompleteBody', 'aws-chunked chunk not followed by CRLF');
          i += 2;
          state = 'size';
          break;
        }
        case 'done':
          // Some encoders end with one more CRLF; anything else after the trailers is ignored.
          i = buf.length;
          break;
        default: {
          const _exhaustive: never = state;
          throw new Error(`unreachable ${String(_exhaustive)}`);
        }
      }
    }
  }
  // Without trailers an encoder may stop right after the final `0\r\n` (+ optional CRLF).
  if (state !== 'done' && state !== 'trailer') throw new BadRequest('IncompleteBody', 'aws-chunked body ended inside a chunk');
}
