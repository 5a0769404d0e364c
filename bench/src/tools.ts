/**
 * The tools the benchmark runs: roboflow's CLI and the peers it is compared with. Each tool says
 * how to find its executable, how to ask its version, and the exact command line of one
 * download, so the report can print the commands that produced its numbers.
 *
 * The bench installs nothing: a tool that is not on this machine is reported as missing (with
 * `bash bench/setup` as the way to get it) and left out of the comparison.
 */

import { access, constants, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { runCommand } from './measure.js';
import type { ToolInfo } from './results.js';
import { parseVersionLine } from './results.js';
import { TOOL_SCRIPTS } from '../../test/support/package-root.js';

/** Dummy credentials: the benchmark's object server runs without signature checks, and real
 * credentials must never reach a benchmark's command lines or logs. */
export const BENCH_CREDENTIALS = {
  AWS_ACCESS_KEY_ID: 'test',
  AWS_SECRET_ACCESS_KEY: 'test',
  AWS_REGION: 'us-east-1',
} as const;

/** Everything that changes from one download to the next. */
export interface DownloadContext {
  /** `http://127.0.0.1:PORT` of the object server. */
  readonly endpoint: string;
  readonly bucket: string;
  readonly key: string;
  /** Path-style HTTP URL of the object. */
  readonly httpUrl: string;
  /** Absolute path of the file to write; its directory exists and is empty. */
  readonly dest: string;
  /** A directory for the tool's configuration files, kept for the whole bench. */
  readonly configDir: string;
}

export interface Invocation {
  readonly cmd: string;
  readonly args: readonly string[];
  readonly env: NodeJS.ProcessEnv;
}

export interface ToolSpec {
  readonly id: string;
  readonly label: string;
  /** Executable: an absolute path, or a name looked up on PATH. */
  readonly binary: string;
  /** True when the tool reads the object through one connection. */
  readonly singleStream: boolean;
  /** The tool prints one JSON result line when it succeeds (roboflow's `--json`). */
  readonly printsJson?: boolean;
  /** The command line with placeholders, for the report. */
  readonly template: string;
  /** How to learn the tool's version. */
  version(binaryPath: string, root: string): Promise<string | null>;
  /** One-time setup in `configDir` (configuration files). */
  prepare?(binaryPath: string, configDir: string, env: NodeJS.ProcessEnv): Promise<void>;
  invocation(binaryPath: string, ctx: DownloadContext, root: string): Invocation;
}

/** `process.env` without anything that would point a tool at a real account, a proxy, or
 * another endpoint, plus the dummy credentials. */
export function benchEnv(base: NodeJS.ProcessEnv = process.env): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(base)) {
    if (/^(AWS_|RCLONE_)/.test(k)) continue;
    if (/^(http|https|all|no)_proxy$/i.test(k)) continue;
    env[k] = v;
  }
  // Loopback only: a proxy from the environment must never see benchmark traffic.
  env.NO_PROXY = '127.0.0.1,localhost';
  env.no_proxy = env.NO_PROXY;
  return { ...env, ...BENCH_CREDENTIALS };
}

async function versionOf(binaryPath: string, args: readonly string[], env?: NodeJS.ProcessEnv): Promise<string | null> {
  const res = await runCommand(binaryPath, args, { timeoutMs: 20_000, ...(env ? { env } : {}) });
  return parseVersionLine(`${res.stdout}\n${res.stderr}`);
}

async function packageVersion(root: string, pkg: string): Promise<string | null> {
  try {
    const json = JSON.parse(await readFile(path.join(root, 'node_modules', pkg, 'package.json'), 'utf8')) as { version?: string };
    return json.version ?? null;
  } catch {
    return null;
  }
}

async function roboflowVersion(root: string): Promise<string | null> {
  try {
    const json = JSON.parse(await readFile(path.join(root, 'package.json'), 'utf8')) as { version?: string };
    return `roboflow-distributed ${json.version ?? '?'} (git working tree) on Node ${process.version}`;
  } catch {
    return null;
  }
}

/** roboflow's CLI with a given number of connections and chunk size (and any extra flags). */
export function roboflowTool(id: string, label: string, connections: number, chunkSize: string, extra: readonly string[] = []): ToolSpec {
  return {
    id,
    label,
    binary: process.execPath,
    singleStream: connections === 1,
    printsJson: true,
    template: `node dist/bin/roboflow.js download s3://<bucket>/<key> <dest> --connections ${connections} --chunk-size ${chunkSize} --endpoint <endpoint> --json${extra.map((f) => ` ${f}`).join('')}`,
    version: (_bin, root) => roboflowVersion(root),
    invocation: (bin, ctx, root) => ({
      cmd: bin,
      args: [
        path.join(root, 'dist/bin/roboflow.js'),
        'download',
        `s3://${ctx.bucket}/${ctx.key}`,
        ctx.dest,
        '--connections',
        String(connections),
        '--chunk-size',
        chunkSize,
        '--endpoint',
        ctx.endpoint,
        '--json',
        ...extra,
      ],
      env: benchEnv(),
    }),
  };
}

export const ROBOFLOW_ID = 'roboflow';
export const ROBOFLOW_NO_CHECKSUM_ID = 'roboflow-no-checksum';
export const ROBOFLOW_PROCESS_ID = 'roboflow-process';

/** Every tool of the download scenario, roboflow first. */
export function downloadTools(): ToolSpec[] {
  return [
    roboflowTool(ROBOFLOW_ID, 'roboflow 16 × 8 MiB', 16, '8MiB'),
    // What the peers that verify nothing (axel, aria2c, curl, rclone --ignore-checksum) are fairly
    // compared with: the same download without verifying the store's checksum.
    roboflowTool(ROBOFLOW_NO_CHECKSUM_ID, 'roboflow 16 × 8 MiB --no-checksum', 16, '8MiB', ['--no-checksum']),
    // What the peers that return with their bytes in the page cache (all but the one timed with
    // `sync`) are fairly compared with: the same verified download without fdatasync.
    roboflowTool(ROBOFLOW_PROCESS_ID, 'roboflow 16 × 8 MiB --durability process', 16, '8MiB', ['--durability', 'process']),
    roboflowTool('roboflow-1', 'roboflow 1 connection', 1, '8MiB'),
    {
      id: 'sdk-getobject',
      label: 'AWS SDK v3 GetObject → file',
      binary: process.execPath,
      singleStream: true,
      template: `node ${TOOL_SCRIPTS.sdkGetObject} --endpoint <endpoint> --bucket <bucket> --key <key> --dest <dest>`,
      version: async (_bin, root) => {
        const v = await packageVersion(root, '@aws-sdk/client-s3');
        return v === null ? null : `@aws-sdk/client-s3 ${v} on Node ${process.version}`;
      },
      invocation: (bin, ctx, root) => ({
        cmd: bin,
        args: [
          path.join(root, TOOL_SCRIPTS.sdkGetObject),
          '--endpoint',
          ctx.endpoint,
          '--bucket',
          ctx.bucket,
          '--key',
          ctx.key,
          '--dest',
          ctx.dest,
        ],
        env: benchEnv(),
      }),
    },
    {
      id: 'curl',
      label: 'curl',
      binary: 'curl',
      singleStream: true,
      template: 'curl -sSf -o <dest> <http-url>',
      version: (bin) => versionOf(bin, ['--version']),
      invocation: (bin, ctx) => ({ cmd: bin, args: ['-sSf', '-o', ctx.dest, ctx.httpUrl], env: benchEnv() }),
    },
    {
      id: 'axel',
      label: 'axel -n 16',
      binary: 'axel',
      singleStream: false,
      template: 'axel -n 16 -q -o <dest> <http-url>',
      version: (bin) => versionOf(bin, ['--version']),
      invocation: (bin, ctx) => ({ cmd: bin, args: ['-n', '16', '-q', '-o', ctx.dest, ctx.httpUrl], env: benchEnv() }),
    },
    {
      id: 'aria2c',
      label: 'aria2c -x16 -s16 -k8M',
      binary: 'aria2c',
      singleStream: false,
      template:
        'aria2c -x16 -s16 -k8M --allow-overwrite=true --file-allocation=none --auto-file-renaming=false -q -d <dir> -o <name> <http-url>',
      version: (bin) => versionOf(bin, ['--version']),
      invocation: (bin, ctx) => ({
        cmd: bin,
        args: [
          '-x16',
          '-s16',
          '-k8M',
          '--allow-overwrite=true',
          '--file-allocation=none',
          '--auto-file-renaming=false',
          '-q',
          '-d',
          path.dirname(ctx.dest),
          '-o',
          path.basename(ctx.dest),
          ctx.httpUrl,
        ],
        env: benchEnv(),
      }),
    },
    rcloneTool('rclone', 'rclone (16 streams)', false),
    rcloneTool('rclone-ignore-checksum', 'rclone --ignore-checksum', true),
    // rclone returns with the bytes in the page cache; roboflow returns after fdatasync. On a
    // disk slower than the network that is most of the difference, so the bench also times rclone
    // until its file is on disk.
    rcloneTool('rclone-ignore-checksum-sync', 'rclone --ignore-checksum, then sync --data', true, true),
    {
      id: 'aws-s3-cp',
      label: 'aws s3 cp (CLI v2)',
      // Debian's awscli is v2 at this path; another `aws` (v1, from pip) may come first on PATH.
      binary: '/usr/bin/aws',
      singleStream: false,
      template:
        'AWS_CONFIG_FILE=<config> /usr/bin/aws s3 cp s3://<bucket>/<key> <dest> --endpoint-url <endpoint> --no-progress --only-show-errors',
      version: (bin) => versionOf(bin, ['--version']),
      prepare: async (bin, configDir, env) => {
        const configFile = path.join(configDir, 'aws-config');
        await writeFile(configFile, '');
        const set = async (key: string, value: string): Promise<void> => {
          const res = await runCommand(bin, ['configure', 'set', key, value], {
            timeoutMs: 30_000,
            env: { ...env, AWS_CONFIG_FILE: configFile },
          });
          if (res.exitCode !== 0) throw new Error(`aws configure set ${key} failed: ${res.stderr.trim() || res.spawnError || ''}`);
        };
        await set('default.region', BENCH_CREDENTIALS.AWS_REGION);
        await set('default.s3.max_concurrent_requests', '16');
        await set('default.s3.multipart_chunksize', '8MB');
        await set('default.s3.addressing_style', 'path');
      },
      invocation: (bin, ctx) => ({
        cmd: bin,
        args: [
          's3',
          'cp',
          `s3://${ctx.bucket}/${ctx.key}`,
          ctx.dest,
          '--endpoint-url',
          ctx.endpoint,
          '--no-progress',
          '--only-show-errors',
        ],
        env: {
          ...benchEnv(),
          AWS_CONFIG_FILE: path.join(ctx.configDir, 'aws-config'),
          AWS_SHARED_CREDENTIALS_FILE: path.join(ctx.configDir, 'aws-credentials-unused'),
        },
      }),
    },
  ];
}

function rcloneTool(id: string, label: string, ignoreChecksum: boolean, syncAfter = false): ToolSpec {
  const extra = ignoreChecksum ? ['--ignore-checksum'] : [];
  return {
    id,
    label,
    binary: 'rclone',
    singleStream: false,
    template: `rclone copyto bench:<bucket>/<key> <dest> --multi-thread-streams 16 --multi-thread-cutoff 1M${ignoreChecksum ? ' --ignore-checksum' : ''}${syncAfter ? ' && sync --data <dest>' : ''} (remote "bench" from RCLONE_CONFIG_BENCH_*: type s3, provider Other, path style)`,
    version: (bin) => versionOf(bin, ['version']),
    invocation: (bin, ctx) => {
      const env = benchEnv();
      // Debian's rclone 1.60 refuses to start while AWS_CA_BUNDLE is set (benchEnv drops it).
      Object.assign(env, {
        RCLONE_CONFIG: path.join(ctx.configDir, 'rclone.conf'),
        RCLONE_CONFIG_BENCH_TYPE: 's3',
        RCLONE_CONFIG_BENCH_PROVIDER: 'Other',
        RCLONE_CONFIG_BENCH_ENDPOINT: ctx.endpoint,
        RCLONE_CONFIG_BENCH_ACCESS_KEY_ID: BENCH_CREDENTIALS.AWS_ACCESS_KEY_ID,
        RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY: BENCH_CREDENTIALS.AWS_SECRET_ACCESS_KEY,
        RCLONE_CONFIG_BENCH_REGION: BENCH_CREDENTIALS.AWS_REGION,
        RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE: 'true',
      });
      const args = [
        'copyto',
        `bench:${ctx.bucket}/${ctx.key}`,
        ctx.dest,
        '--multi-thread-streams',
        '16',
        // 1.60 panics with a cutoff of 0.
        '--multi-thread-cutoff',
        '1M',
        ...extra,
      ];
      if (!syncAfter) return { cmd: bin, args, env };
      // GNU time measures the shell and what it waited for: rclone, then sync.
      return {
        cmd: '/bin/sh',
        args: ['-c', '"$0" "$@" && exec sync --data -- "$ROBOFLOW_BENCH_DEST"', bin, ...args],
        env: { ...env, ROBOFLOW_BENCH_DEST: ctx.dest },
      };
    },
    prepare: async (_bin, configDir) => {
      // An empty config file: everything comes from the environment, and rclone does not warn
      // about a missing file or read the user's own remotes.
      await writeFile(path.join(configDir, 'rclone.conf'), '');
    },
  };
}

/** Resolves an executable: an absolute path is checked as is, a name is looked up on PATH. */
export async function findExecutable(binary: string, envPath = process.env.PATH ?? ''): Promise<string | null> {
  const candidates = path.isAbsolute(binary) ? [binary] : envPath.split(':').filter((d) => d !== '').map((d) => path.join(d, binary));
  for (const c of candidates) {
    try {
      await access(c, constants.X_OK);
      return c;
    } catch {
      // Not here; try the next directory.
    }
  }
  return null;
}

export interface ResolvedTool {
  readonly spec: ToolSpec;
  readonly path: string;
}

/**
 * Finds every tool, asks its version and prepares its configuration. Missing tools come back in
 * `infos` with `available: false` and the reason; they are not run.
 */
export async function resolveTools(
  specs: readonly ToolSpec[],
  root: string,
  configDir: string,
  extraChecks: (spec: ToolSpec) => Promise<string | null> = async () => null,
): Promise<{ resolved: ResolvedTool[]; infos: ToolInfo[] }> {
  const resolved: ResolvedTool[] = [];
  const infos: ToolInfo[] = [];
  for (const spec of specs) {
    const found = await findExecutable(spec.binary);
    const base = { id: spec.id, label: spec.label, command: spec.template };
    if (found === null) {
      infos.push({ ...base, binary: spec.binary, version: null, available: false, reason: `${spec.binary} not found (run: bash bench/setup)` });
      continue;
    }
    const problem = await extraChecks(spec);
    if (problem !== null) {
      infos.push({ ...base, binary: found, version: null, available: false, reason: problem });
      continue;
    }
    const version = await spec.version(found, root);
    try {
      await spec.prepare?.(found, configDir, benchEnv());
    } catch (err) {
      infos.push({ ...base, binary: found, version, available: false, reason: (err as Error).message });
      continue;
    }
    infos.push({ ...base, binary: found, version, available: true });
    resolved.push({ spec, path: found });
  }
  return { resolved, infos };
}
