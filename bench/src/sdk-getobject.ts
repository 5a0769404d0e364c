/**
 * What a TypeScript user writes today to download an object: one AWS SDK v3 `GetObject`, its
 * body piped to a file. A child entry of the benchmark, run as
 * `node build/bench/src/sdk-getobject.js --endpoint URL --bucket B --key K --dest FILE`, so it is
 * measured from outside like every other tool.
 *
 * The client keeps the SDK's defaults (checksum validation included) except for what a custom
 * endpoint needs: path-style addressing. Credentials and region come from the environment.
 */

import { createWriteStream } from 'node:fs';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { parseArgs } from 'node:util';
import { GetObjectCommand, S3Client } from '@aws-sdk/client-s3';

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      endpoint: { type: 'string' },
      bucket: { type: 'string' },
      key: { type: 'string' },
      dest: { type: 'string' },
    },
  });
  const { endpoint, bucket, key, dest } = values;
  if (!endpoint || !bucket || !key || !dest) {
    throw new Error('usage: sdk-getobject --endpoint URL --bucket BUCKET --key KEY --dest FILE');
  }
  const client = new S3Client({ endpoint, forcePathStyle: true, region: process.env.AWS_REGION ?? 'us-east-1' });
  const started = process.hrtime.bigint();
  try {
    const res = await client.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
    if (res.Body === undefined) throw new Error(`GetObject s3://${bucket}/${key} returned no body`);
    await pipeline(res.Body as Readable, createWriteStream(dest));
  } finally {
    client.destroy();
  }
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  process.stdout.write(`${JSON.stringify({ bucket, key, dest, seconds })}\n`);
}

main().catch((err: unknown) => {
  process.stderr.write(`sdk-getobject: ${(err as Error).message ?? String(err)}\n`);
  process.exitCode = 1;
});
