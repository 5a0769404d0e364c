/**
 * Sample robot episodes: valid, indexed MCAP files shaped like a ROS 2 recording, for tests,
 * benchmarks and the demo.
 *
 * An episode has a front camera (`sensor_msgs/msg/Image`, 30 Hz), an IMU (200 Hz), wheel odometry
 * (50 Hz) and TF (100 Hz), serialised as CDR with `ros2msg` schemas, in uncompressed chunks (fast
 * to write and read). Camera frames carry pseudo-random pixels, so the file does not compress and
 * any corruption changes its checksum. The episode is as long as it must be to reach the requested
 * size; frames shrink for small files (640×480 RGB, ~0.9 MB, from ~37 MB up) so that even a
 * small file has a few frames of every topic.
 *
 * Deterministic: the same options give the same bytes. Written through a small write buffer to a
 * temporary file that is renamed into place when complete, so sizes of several GiB never sit in
 * memory and a half-written episode is never mistaken for a finished one.
 */

import { open, rename, rm, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { McapWriter } from '@mcap/core';
import type { IWritable } from '@mcap/core';
import { abortError, RoboflowError } from '../../errors.js';
import { fsyncDir } from '../../prefetch/resume-state.js';
import { generatedContent, mulberry32 } from './content.js';

/** The topics an episode has unless told otherwise. */
export const SAMPLE_TOPICS = ['/camera/front/image_raw', '/imu', '/odom', '/tf'] as const;

/**
 * - `indexed`: summary with statistics, chunk and message indexes (what recorders write).
 * - `no-statistics`: indexed, but without a Statistics record.
 * - `unindexed`: no summary section at all; readers must stream the file.
 */
export type SampleEpisodeLayout = 'indexed' | 'no-statistics' | 'unindexed';

export interface SampleEpisodeOptions {
  /** Size to aim for; the file ends up within a few percent of it (above ~100 KiB). */
  readonly sizeBytes: number;
  /** Same seed, same bytes. (Default: 1) */
  readonly seed?: number;
  /**
   * Topics to record. The message type follows the name: `camera`/`image` → Image, `imu` → Imu,
   * `odom` → Odometry, `tf` → TFMessage. (Default: `SAMPLE_TOPICS`)
   */
  readonly topics?: readonly string[];
  /** (Default: `indexed`) */
  readonly layout?: SampleEpisodeLayout;
  readonly signal?: AbortSignal;
}

export interface SampleEpisodeChannel {
  readonly id: number;
  readonly topic: string;
  readonly schemaName: string;
  readonly messageEncoding: string;
  readonly messageCount: number;
}

export interface SampleEpisode {
  readonly path: string;
  readonly bytes: number;
  readonly messageCount: number;
  readonly channels: readonly SampleEpisodeChannel[];
  /** Log time of the first message, ns since the epoch, decimal. */
  readonly startTime: string;
  /** Log time of the last message. */
  readonly endTime: string;
}

const MiB = 1024 * 1024;
/** Writes are gathered up to this size: few syscalls, little memory. */
const WRITE_BUFFER = 4 * MiB;
/** MCAP chunk size: a few camera frames per chunk, as recorders do. */
const CHUNK_SIZE = 4 * MiB;
/** A full-size frame: 640×480 RGB. */
const FULL_WIDTH = 640;
const FULL_HEIGHT = 480;
/** Frames are sized so a file holds about this many, until they reach full size. */
const MIN_FRAMES = 40;
/** 2023-11-14T22:13:20Z: a fixed start so episodes are reproducible. */
const START_NS = 1_700_000_000n * 1_000_000_000n;
/** Record overhead of one message in a chunk (opcode, length, channel, sequence, two times) plus
 * its message index entry. */
const MESSAGE_OVERHEAD = 1 + 8 + 2 + 4 + 8 + 8 + 16;

// ---------------------------------------------------------------------------------------------
// Schemas (ros2msg, with dependencies appended the way ROS 2 recorders do)
// ---------------------------------------------------------------------------------------------

const SEPARATOR = '\n================================================================================\n';
const DEP = {
  header: 'MSG: std_msgs/Header\nbuiltin_interfaces/Time stamp\nstring frame_id',
  time: 'MSG: builtin_interfaces/Time\nint32 sec\nuint32 nanosec',
  quaternion: 'MSG: geometry_msgs/Quaternion\nfloat64 x\nfloat64 y\nfloat64 z\nfloat64 w',
  vector3: 'MSG: geometry_msgs/Vector3\nfloat64 x\nfloat64 y\nfloat64 z',
  point: 'MSG: geometry_msgs/Point\nfloat64 x\nfloat64 y\nfloat64 z',
  pose: 'MSG: geometry_msgs/Pose\ngeometry_msgs/Point position\ngeometry_msgs/Quaternion orientation',
  poseCov: 'MSG: geometry_msgs/PoseWithCovariance\ngeometry_msgs/Pose pose\nfloat64[36] covariance',
  twist: 'MSG: geometry_msgs/Twist\ngeometry_msgs/Vector3 linear\ngeometry_msgs/Vector3 angular',
  twistCov: 'MSG: geometry_msgs/TwistWithCovariance\ngeometry_msgs/Twist twist\nfloat64[36] covariance',
  transformStamped:
    'MSG: geometry_msgs/TransformStamped\nstd_msgs/Header header\nstring child_frame_id\ngeometry_msgs/Transform transform',
  transform: 'MSG: geometry_msgs/Transform\ngeometry_msgs/Vector3 translation\ngeometry_msgs/Quaternion rotation',
} as const;

type Kind = 'image' | 'imu' | 'odom' | 'tf';

interface KindSpec {
  readonly schemaName: string;
  readonly definition: string;
  readonly frameId: string;
  readonly periodNs: bigint;
}

const KINDS: Record<Kind, KindSpec> = {
  image: {
    schemaName: 'sensor_msgs/msg/Image',
    definition: [
      'std_msgs/Header header\nuint32 height\nuint32 width\nstring encoding\nuint8 is_bigendian\nuint32 step\nuint8[] data',
      DEP.header,
      DEP.time,
    ].join(SEPARATOR),
    frameId: 'camera_front_optical',
    periodNs: 33_333_333n,
  },
  imu: {
    schemaName: 'sensor_msgs/msg/Imu',
    definition: [
      'std_msgs/Header header\ngeometry_msgs/Quaternion orientation\nfloat64[9] orientation_covariance\n' +
        'geometry_msgs/Vector3 angular_velocity\nfloat64[9] angular_velocity_covariance\n' +
        'geometry_msgs/Vector3 linear_acceleration\nfloat64[9] linear_acceleration_covariance',
      DEP.header,
      DEP.time,
      DEP.quaternion,
      DEP.vector3,
    ].join(SEPARATOR),
    frameId: 'imu_link',
    periodNs: 5_000_000n,
  },
  odom: {
    schemaName: 'nav_msgs/msg/Odometry',
    definition: [
      'std_msgs/Header header\nstring child_frame_id\ngeometry_msgs/PoseWithCovariance pose\ngeometry_msgs/TwistWithCovariance twist',
      DEP.header,
      DEP.time,
      DEP.poseCov,
      DEP.pose,
      DEP.point,
      DEP.quaternion,
      DEP.twistCov,
      DEP.twist,
      DEP.vector3,
    ].join(SEPARATOR),
    frameId: 'odom',
    periodNs: 20_000_000n,
  },
  tf: {
    schemaName: 'tf2_msgs/msg/TFMessage',
    definition: [
      'geometry_msgs/TransformStamped[] transforms',
      DEP.transformStamped,
      DEP.header,
      DEP.time,
      DEP.transform,
      DEP.vector3,
      DEP.quaternion,
    ].join(SEPARATOR),
    frameId: 'odom',
    periodNs: 10_000_000n,
  },
};

function kindOf(topic: string): Kind {
  const t = topic.toLowerCase();
  if (t.includes('camera') || t.includes('image')) return 'image';
  if (t.includes('imu')) return 'imu';
  if (t.includes('odom')) return 'odom';
  if (/(^|\/)tf(_static)?$/.test(t)) return 'tf';
  throw new RoboflowError(
    'ERR_CONFIG',
    `sample episode topic ${JSON.stringify(topic)}: cannot tell its message type; ` +
      `use a name containing camera/image, imu, odom, or ending in /tf`,
  );
}

// ---------------------------------------------------------------------------------------------
// CDR (little-endian, XCDR1 as ROS 2 uses it)
// ---------------------------------------------------------------------------------------------

/** Encapsulation header: CDR_LE, no options. */
const CDR_LE = [0x00, 0x01, 0x00, 0x00] as const;

/** Serialises one message; alignment is relative to the end of the encapsulation header. */
class CdrWriter {
  #buf: Buffer;
  #view: DataView;
  #pos = 4;

  constructor(capacity: number) {
    this.#buf = Buffer.alloc(Math.max(64, capacity + 4));
    this.#view = new DataView(this.#buf.buffer, this.#buf.byteOffset, this.#buf.byteLength);
    this.#buf.set(CDR_LE, 0);
  }

  #reserve(size: number, align: number): void {
    const rel = this.#pos - 4;
    this.#pos += (align - (rel % align)) % align;
    if (this.#pos + size > this.#buf.length) {
      const next = Buffer.alloc(Math.max(this.#buf.length * 2, this.#pos + size));
      this.#buf.copy(next);
      this.#buf = next;
      this.#view = new DataView(next.buffer, next.byteOffset, next.byteLength);
    }
  }

  u8(v: number): this {
    this.#reserve(1, 1);
    this.#view.setUint8(this.#pos, v);
    this.#pos += 1;
    return this;
  }
  u32(v: number): this {
    this.#reserve(4, 4);
    this.#view.setUint32(this.#pos, v, true);
    this.#pos += 4;
    return this;
  }
  i32(v: number): this {
    this.#reserve(4, 4);
    this.#view.setInt32(this.#pos, v, true);
    this.#pos += 4;
    return this;
  }
  f64(...vs: number[]): this {
    for (const v of vs) {
      this.#reserve(8, 8);
      this.#view.setFloat64(this.#pos, v, true);
      this.#pos += 8;
    }
    return this;
  }
  string(s: string): this {
    const bytes = Buffer.from(s, 'utf8');
    this.u32(bytes.length + 1);
    this.#reserve(bytes.length + 1, 1);
    this.#buf.set(bytes, this.#pos);
    this.#buf[this.#pos + bytes.length] = 0;
    this.#pos += bytes.length + 1;
    return this;
  }
  /** `uint8[]`: a length, then the bytes. */
  bytes(data: Uint8Array): this {
    this.u32(data.length);
    this.#reserve(data.length, 1);
    this.#buf.set(data, this.#pos);
    this.#pos += data.length;
    return this;
  }
  header(stampNs: bigint, frameId: string): this {
    return this.i32(Number(stampNs / 1_000_000_000n))
      .u32(Number(stampNs % 1_000_000_000n))
      .string(frameId);
  }

  finish(): Uint8Array {
    return this.#buf.subarray(0, this.#pos);
  }
}

// ---------------------------------------------------------------------------------------------
// Payloads
// ---------------------------------------------------------------------------------------------

/** Sensor noise: mulberry32 from a seed of its own. */
function prng(seed: number): () => number {
  return mulberry32(seed ^ 0x9e3779b9);
}

const IDENTITY_3 = [1, 0, 0, 0, 1, 0, 0, 0, 1];
const DIAG_6 = Array.from({ length: 36 }, (_, i) => (i % 7 === 0 ? 0.01 : 0));

interface ImageShape {
  readonly width: number;
  readonly height: number;
}

/** Frame size for a file of `sizeBytes` shared by `cameras` camera topics. */
function imageShape(sizeBytes: number, cameras: number): ImageShape {
  const perFrame = Math.floor(sizeBytes / (MIN_FRAMES * Math.max(1, cameras)));
  const width = perFrame >= FULL_WIDTH * 3 ? FULL_WIDTH : Math.max(1, Math.floor(perFrame / 3));
  const height = Math.min(FULL_HEIGHT, Math.max(1, Math.floor(perFrame / (width * 3))));
  return { width, height };
}

class PayloadMaker {
  readonly #noise: () => number;
  readonly #seed: number;
  #pixelCursor = 0;

  constructor(seed: number) {
    this.#seed = seed;
    this.#noise = prng(seed);
  }

  #n(scale: number): number {
    return (this.#noise() - 0.5) * 2 * scale;
  }

  image(t: bigint, frameId: string, shape: ImageShape): Uint8Array {
    const step = shape.width * 3;
    const len = step * shape.height;
    const pixels = generatedContent(this.#seed, this.#pixelCursor, this.#pixelCursor + len);
    this.#pixelCursor += len;
    return new CdrWriter(len + 64)
      .header(t, frameId)
      .u32(shape.height)
      .u32(shape.width)
      .string('rgb8')
      .u8(0)
      .u32(step)
      .bytes(pixels)
      .finish();
  }

  imu(t: bigint, frameId: string, seconds: number): Uint8Array {
    const yaw = 0.1 * seconds;
    return new CdrWriter(360)
      .header(t, frameId)
      .f64(0, 0, Math.sin(yaw / 2), Math.cos(yaw / 2))
      .f64(...IDENTITY_3.map((v) => v * 1e-4))
      .f64(this.#n(0.01), this.#n(0.01), 0.1 + this.#n(0.01))
      .f64(...IDENTITY_3.map((v) => v * 1e-5))
      .f64(this.#n(0.05), this.#n(0.05), 9.81 + this.#n(0.05))
      .f64(...IDENTITY_3.map((v) => v * 1e-3))
      .finish();
  }

  odom(t: bigint, frameId: string, seconds: number): Uint8Array {
    // One metre per second around a 10 m circle.
    const a = seconds / 10;
    return new CdrWriter(720)
      .header(t, frameId)
      .string('base_link')
      .f64(10 * Math.cos(a), 10 * Math.sin(a), 0)
      .f64(0, 0, Math.sin((a + Math.PI / 2) / 2), Math.cos((a + Math.PI / 2) / 2))
      .f64(...DIAG_6)
      .f64(1 + this.#n(0.02), 0, 0, 0, 0, 0.1 + this.#n(0.005))
      .f64(...DIAG_6)
      .finish();
  }

  tf(t: bigint, frameId: string, seconds: number): Uint8Array {
    const a = seconds / 10;
    const w = new CdrWriter(256).u32(2);
    w.header(t, frameId).string('base_link');
    w.f64(10 * Math.cos(a), 10 * Math.sin(a), 0).f64(0, 0, Math.sin(a / 2), Math.cos(a / 2));
    w.header(t, 'base_link').string('camera_front_optical');
    w.f64(0.3, 0, 1.2).f64(-0.5, 0.5, -0.5, 0.5);
    return w.finish();
  }
}

// ---------------------------------------------------------------------------------------------
// Output
// ---------------------------------------------------------------------------------------------

/**
 * `IWritable` over a file handle that gathers writes into `WRITE_BUFFER`-sized batches. It keeps
 * the buffers it is given until they are flushed; McapWriter hands over fresh copies, so that is
 * safe.
 */
class BufferedFileWritable implements IWritable {
  readonly #fh: FileHandle;
  #position = 0n;
  #flushed = 0;
  #pending: Uint8Array[] = [];
  #pendingBytes = 0;

  constructor(fh: FileHandle) {
    this.#fh = fh;
  }

  position(): bigint {
    return this.#position;
  }

  async write(buffer: Uint8Array): Promise<void> {
    this.#position += BigInt(buffer.byteLength);
    if (buffer.byteLength === 0) return;
    this.#pending.push(buffer);
    this.#pendingBytes += buffer.byteLength;
    if (this.#pendingBytes >= WRITE_BUFFER) await this.flush();
  }

  async flush(): Promise<void> {
    let buffers = this.#pending;
    this.#pending = [];
    this.#pendingBytes = 0;
    while (buffers.length > 0) {
      const { bytesWritten } = await this.#fh.writev(buffers, this.#flushed);
      this.#flushed += bytesWritten;
      // A short write (rare on files, but allowed) leaves the rest for the next round.
      let skip = bytesWritten;
      const rest: Uint8Array[] = [];
      for (const b of buffers) {
        if (skip >= b.byteLength) {
          skip -= b.byteLength;
        } else {
          rest.push(skip > 0 ? b.subarray(skip) : b);
          skip = 0;
        }
      }
      buffers = rest;
    }
  }
}

interface ChannelPlan {
  readonly id: number;
  readonly topic: string;
  readonly kind: Kind;
  readonly spec: KindSpec;
  next: bigint;
  count: number;
}

/** Rough size of everything that is not message data, to stop at the right moment. */
function overheadEstimate(
  channels: readonly ChannelPlan[],
  layout: SampleEpisodeLayout,
  chunks: number,
): number {
  const schemas = channels.reduce((n, c) => n + 25 + c.spec.schemaName.length + c.spec.definition.length, 0);
  const chans = channels.reduce((n, c) => n + 25 + c.topic.length, 0);
  const closing = 13 + 29 + 8; // DataEnd, Footer, magic
  const chunkRecords = (chunks + 1) * (60 + 15 * channels.length);
  if (layout === 'unindexed') return schemas + chans + closing + chunkRecords;
  const stats = layout === 'indexed' ? 60 + 10 * channels.length : 0;
  const chunkIndexes = (chunks + 1) * (90 + 10 * channels.length);
  return 2 * (schemas + chans) + stats + chunkIndexes + 6 * 26 + closing + chunkRecords;
}

function checkOptions(filePath: string, opts: SampleEpisodeOptions): void {
  if (!Number.isSafeInteger(opts.sizeBytes) || opts.sizeBytes <= 0) {
    throw new RoboflowError('ERR_CONFIG', `sample episode ${filePath}: sizeBytes must be a positive integer, got ${opts.sizeBytes}`);
  }
  if (opts.seed !== undefined && !Number.isSafeInteger(opts.seed)) {
    throw new RoboflowError('ERR_CONFIG', `sample episode ${filePath}: seed must be a safe integer, got ${opts.seed}`);
  }
  if (opts.topics !== undefined && opts.topics.length === 0) {
    throw new RoboflowError('ERR_CONFIG', `sample episode ${filePath}: topics must not be empty`);
  }
}

/**
 * Writes a sample episode of about `sizeBytes` to `filePath` (through `<filePath>.partial`, renamed
 * when complete) and reports what it contains. Every topic gets at least one message, so a tiny
 * size gives the smallest valid episode (~10 KiB) rather than an error.
 */
export async function writeSampleEpisode(filePath: string, opts: SampleEpisodeOptions): Promise<SampleEpisode> {
  checkOptions(filePath, opts);
  const seed = opts.seed ?? 1;
  const layout = opts.layout ?? 'indexed';
  const topics = opts.topics ?? SAMPLE_TOPICS;
  const kinds = topics.map(kindOf);
  const shape = imageShape(opts.sizeBytes, kinds.filter((k) => k === 'image').length);
  const indexed = layout !== 'unindexed';
  const payloads = new PayloadMaker(seed);
  const partial = `${filePath}.partial`;

  const fh = await open(partial, 'w');
  let ok = false;
  try {
    const out = new BufferedFileWritable(fh);
    const writer = new McapWriter({
      writable: out,
      chunkSize: CHUNK_SIZE,
      useStatistics: layout === 'indexed',
      useSummaryOffsets: indexed,
      useChunkIndex: indexed,
      useMessageIndex: indexed,
      useAttachmentIndex: indexed,
      useMetadataIndex: indexed,
      repeatSchemas: indexed,
      repeatChannels: indexed,
    });
    await writer.start({ profile: 'ros2', library: 'roboflow-distributed sample episode' });

    const schemaIds = new Map<Kind, number>();
    const channels: ChannelPlan[] = [];
    for (const [i, topic] of topics.entries()) {
      const kind = kinds[i]!;
      const spec = KINDS[kind];
      let schemaId = schemaIds.get(kind);
      if (schemaId === undefined) {
        schemaId = await writer.registerSchema({
          name: spec.schemaName,
          encoding: 'ros2msg',
          data: Buffer.from(spec.definition, 'utf8'),
        });
        schemaIds.set(kind, schemaId);
      }
      const id = await writer.registerChannel({ topic, schemaId, messageEncoding: 'cdr', metadata: new Map() });
      channels.push({ id, topic, kind, spec, next: START_NS, count: 0 });
    }

    let total = 0;
    let lastTime = START_NS;
    let unflushed = 0;
    let chunks = 0;
    let lastPosition = out.position();
    while (true) {
      let ch = channels[0]!;
      for (const c of channels) if (c.next < ch.next) ch = c;
      const everyTopicOnce = channels.every((c) => c.count > 0);
      const estimate = Number(out.position()) + unflushed + overheadEstimate(channels, layout, chunks);
      if (everyTopicOnce && estimate >= opts.sizeBytes) break;
      if (opts.signal?.aborted) throw abortError(opts.signal, `writing sample episode ${filePath}`);

      const t = ch.next;
      const seconds = Number(t - START_NS) / 1e9;
      let data: Uint8Array;
      switch (ch.kind) {
        case 'image':
          data = payloads.image(t, ch.spec.frameId, shape);
          break;
        case 'imu':
          data = payloads.imu(t, ch.spec.frameId, seconds);
          break;
        case 'odom':
          data = payloads.odom(t, ch.spec.frameId, seconds);
          break;
        case 'tf':
          data = payloads.tf(t, ch.spec.frameId, seconds);
          break;
        default: {
          const _exhaustive: never = ch.kind;
          throw new Error(`unknown kind ${String(_exhaustive)}`);
        }
      }
      await writer.addMessage({ channelId: ch.id, sequence: ch.count, logTime: t, publishTime: t, data });
      ch.count += 1;
      ch.next += ch.spec.periodNs;
      total += 1;
      lastTime = t;
      // A chunk reached the file when the position moved; the message just added went with it.
      if (out.position() !== lastPosition) {
        lastPosition = out.position();
        unflushed = 0;
        chunks += 1;
      } else {
        unflushed += MESSAGE_OVERHEAD + data.byteLength;
      }
    }

    await writer.end();
    await out.flush();
    await fh.sync();
    const bytes = Number(out.position());
    await fh.close();
    await rename(partial, filePath);
    ok = true;
    await fsyncDir(path.dirname(filePath));
    return {
      path: filePath,
      bytes,
      messageCount: total,
      channels: channels.map((c) => ({
        id: c.id,
        topic: c.topic,
        schemaName: c.spec.schemaName,
        messageEncoding: 'cdr',
        messageCount: c.count,
      })),
      startTime: START_NS.toString(),
      endTime: lastTime.toString(),
    };
  } finally {
    if (!ok) {
      await fh.close().catch(() => undefined);
      await rm(partial, { force: true });
    }
  }
}

