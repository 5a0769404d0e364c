#!/usr/bin/env node
/**
 * The `roboflow` command. Each subcommand lives in its own module and registers itself on the
 * program (`registerXCommand(program)`); this file only builds the program, turns usage errors
 * into one line and exit code 2, and runs when it is the process entry (not when imported, so
 * tests and other tools can call `main()`).
 *
 * Commands report their own failures and set `process.exitCode`; signal handling is theirs too,
 * because what a signal means differs (a download stops resumably, a worker drains first).
 */

import { readFileSync, realpathSync } from 'node:fs';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { Command, CommanderError } from 'commander';
import { toRoboflowError } from '../errors.js';
import { redactText } from '../redact.js';

type Register = (program: Command) => unknown;

/**
 * Each command's module, loaded only when needed: the modules behind them (the AWS SDK, the
 * database drivers, prom-client) cost about a second of CPU to load, which every short command
 * would pay otherwise. In the order `--help` lists them.
 */
const COMMANDS: Readonly<Record<string, () => Promise<Register>>> = {
  download: async () => (await import('./download.js')).registerDownloadCommand,
  worker: async () => (await import('./worker.js')).registerWorkerCommand,
  jobs: async () => (await import('./jobs.js')).registerJobsCommand,
  config: async () => (await import('./config.js')).registerConfigCommand,
  demo: async () => (await import('./demo/command.js')).registerDemoCommand,
};

function packageVersion(): string {
  // dist/cli/main.js, src/cli/main.ts and the bundle's files in dist/bin/ all sit two levels
  // below package.json.
  const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version?: string };
  return pkg.version ?? '0.0.0';
}

/**
 * The program with the command named by `argv` registered (every command when `argv` names none
 * of them, for `--help` and suggestions); parsing errors throw instead of exiting.
 */
export async function createProgram(argv: readonly string[] = []): Promise<Command> {
  const program = new Command()
    .name('roboflow')
    .description('workers for a distributed robotics-data pipeline: parallel range downloads, prefetch, job queue')
    .version(packageVersion(), '-V, --version')
    // Settings inherited by the subcommands registered below: errors come back to main() as
    // exceptions and are printed once, in our format, instead of by commander.
    .exitOverride()
    .configureOutput({ outputError: () => undefined })
    .showSuggestionAfterError(true);
  const named = argv.find((a) => !a.startsWith('-'));
  // `--version` alone needs no command: loading all five (the AWS SDK among them) took ~0.5 s.
  const versionOnly = named === undefined && argv.some((a) => a === '-V' || a === '--version');
  const wanted = named !== undefined && named in COMMANDS ? [named] : versionOnly ? [] : Object.keys(COMMANDS);
  for (const name of wanted) {
    const load = COMMANDS[name];
    if (load) (await load())(program);
  }
  return program;
}

/** Runs the CLI on `argv` (the arguments after the script) and resolves with the exit code. */
export async function main(argv: readonly string[] = process.argv.slice(2)): Promise<number> {
  process.exitCode = undefined;
  const program = await createProgram(argv);
  try {
    await program.parseAsync([...argv], { from: 'user' });
    return Number(process.exitCode ?? 0);
  } catch (err) {
    if (err instanceof CommanderError) {
      // --help and --version end here too, with exit code 0 and their text already printed.
      if (err.exitCode === 0) return 0;
      const message = err.message.replace(/^error:\s*/i, '').replace(/\s*\n\s*/g, ' ');
      process.stderr.write(`roboflow: ${redactText(message)} [ERR_CONFIG]\n`);
      return 2;
    }
    // A flag parser that threw (bad --chunk-size) or a command that let an error escape.
    const e = toRoboflowError(err);
    process.stderr.write(`${redactText(`roboflow: ${e.message} [${e.code}]`).replace(/\s*\n\s*/g, ' ')}\n`);
    return e.code === 'ERR_CONFIG' ? 2 : 1;
  }
}

/** True when this module is the script node was started with (npm bins are symlinks). */
function isEntry(): boolean {
  const script = process.argv[1];
  if (script === undefined) return false;
  try {
    return pathToFileURL(realpathSync(script)).href === pathToFileURL(realpathSync(fileURLToPath(import.meta.url))).href;
  } catch {
    return false;
  }
}

let started = false;

/**
 * Runs the command line of this process and sets its exit code. The `roboflow` bin
 * (`dist/bin/roboflow.js`, a bundle of `bin.ts`) calls it; so does running this module directly.
 */
export function runAsProcess(): void {
  if (started) return;
  started = true;
  // The AWS SDK warns on every start that its releases after January 2027 need Node 22; the
  // version we ship with is pinned, and the multi-line warning would break the CLI's promise of
  // one line on stderr per failure. Its documented switch turns it off; a user may still set it.
  process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
  let settled = false;
  // If the event loop empties while the command's promise is still pending, something awaited a
  // callback that can no longer come. Node would exit 0 and a caller would take an unfinished
  // download or run for a success; make it a loud failure instead.
  process.once('beforeExit', () => {
    if (settled) return;
    process.stderr.write('roboflow: internal error: the command stopped before it finished (nothing left to wait for) [ERR_IO]\n');
    process.exitCode = 70;
  });
  main().then(
    (code) => {
      settled = true;
      process.exitCode = code;
    },
    (err: unknown) => {
      settled = true;
      process.stderr.write(`roboflow: ${redactText(String(err))}\n`);
      process.exitCode = 1;
    },
  );
}

if (isEntry()) runAsProcess();
