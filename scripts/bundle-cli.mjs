/* global console */
// Bundles the `roboflow` command (dist/cli/bin.js and what it imports) into dist/bin/ with
// esbuild, after `tsc` has compiled src/ to dist/.
//
// Why: Node 20 loads an ES module graph file by file, and the AWS SDK alone is several hundred
// files. Bundled, `roboflow download s3://…` reaches its first request ~60 ms sooner (0.25 →
// 0.19 s for a 1 MiB object on a 2-core VM), which every short download pays. The library
// (dist/index.js) stays unbundled: its users bundle it themselves if they want.
//
// Kept outside the bundle: native addons (better-sqlite3, @node-rs/crc32), packages that start worker threads
// from their own files (pino and its transports) and drivers with optional native parts (pg).
// They are loaded from node_modules as before, and only by the commands that need them.
import { chmod, rm } from 'node:fs/promises';
import { build } from 'esbuild';

// Chunk names are content hashes: without this, every build would leave the previous ones behind.
await rm('dist/bin', { recursive: true, force: true });
const result = await build({
  // The demo's store runs on a thread whose program is loaded from a file beside the chunk that
  // starts it (`new URL('./file-server-thread.js', import.meta.url)`): every chunk is in dist/bin/.
  entryPoints: { roboflow: 'dist/cli/bin.js', 'file-server-thread': 'dist/cli/demo/file-server-thread.js' },
  outdir: 'dist/bin',
  bundle: true,
  // One file per lazily imported command module, so `download` does not load the database drivers.
  splitting: true,
  format: 'esm',
  platform: 'node',
  target: 'node20',
  // The ES module builds of the SDK: its CommonJS builds lose named exports across dynamic imports.
  mainFields: ['module', 'main'],
  external: ['@node-rs/crc32', 'better-sqlite3', 'pg', 'pg-native', 'pino', 'pino-pretty', 'thread-stream', 'prom-client'],
  // CommonJS modules inside the bundle call require() for Node built-ins.
  banner: { js: "import { createRequire as __roboflowRequire } from 'node:module'; const require = __roboflowRequire(import.meta.url);" },
  logLevel: 'warning',
  metafile: true,
});
await chmod('dist/bin/roboflow.js', 0o755);
const bytes = Object.values(result.metafile.outputs).reduce((n, o) => n + o.bytes, 0);
console.log(`dist/bin: roboflow.js and ${Object.keys(result.metafile.outputs).length - 1} chunks, ${(bytes / 2 ** 20).toFixed(1)} MiB`);
