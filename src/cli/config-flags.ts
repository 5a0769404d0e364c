/**
 * The configuration as command-line flags: `addConfigFlags()` adds a flag for every key that has
 * one (from the field table, src/config.ts) plus `--config <file>` to a command, and
 * `configFromCommand()` loads the configuration with what was given. The only place the
 * configuration meets commander.
 */

import { Option, type Command } from 'commander';
import { displayValue, FIELDS, KEYS, type ConfigKey, type FieldSpec } from '../config.js';
import { CONFIG_ENV, loadConfig, type FlagValue, type LoadedConfig } from '../config/load.js';

function collect(value: string, previous: string[] | undefined): string[] {
  return [...(previous ?? []), value];
}

const FLAGGED_KEYS = KEYS.filter((k) => (FIELDS[k] as FieldSpec).flag !== undefined);

/**
 * Adds every configuration flag, plus `--config <file>`, to `command`. No flag has a commander
 * default, so a flag left out never hides the file or the environment.
 */
export function addConfigFlags(command: Command): Command {
  command.addOption(new Option('--config <file>', `config file, .toml or .json (env ${CONFIG_ENV})`));
  for (const key of FLAGGED_KEYS) {
    const f = FIELDS[key] as FieldSpec;
    const spec = f.flag;
    if (spec === undefined) continue;
    const help = `${f.doc} (${f.env}; default ${displayValue(key, f.default)})`;
    const option = new Option(spec.spec, help);
    if (spec.repeatable) option.argParser(collect);
    command.addOption(option);
    if (spec.negatable) command.addOption(new Option(`--no-${spec.spec.slice(2)}`, `turn ${spec.spec} off`));
  }
  return command;
}

/** Loads the configuration from the flags `addConfigFlags` added to `command`. */
export async function configFromCommand(
  command: Command,
  opts: { env?: NodeJS.ProcessEnv; cwd?: string } = {},
): Promise<LoadedConfig> {
  const values = command.optsWithGlobals<Record<string, unknown>>();
  const flags: Partial<Record<ConfigKey, FlagValue>> = {};
  for (const key of FLAGGED_KEYS) {
    const spec = (FIELDS[key] as FieldSpec).flag;
    if (spec === undefined) continue;
    const attr = new Option(spec.spec).attributeName();
    const v = values[attr];
    if (v !== undefined) flags[key] = v as FlagValue;
  }
  const configPath = values['config'];
  return loadConfig({
    flags,
    env: opts.env ?? process.env,
    cwd: opts.cwd ?? process.cwd(),
    ...(typeof configPath === 'string' ? { configPath } : {}),
  });
}
