/**
 * `roboflow config`: prints the effective configuration and where each value came from, or the
 * reference table of every key, environment variable and flag.
 *
 * A bad configuration prints every problem on stderr, one per line, and sets exit code 2 (a
 * usage error, as opposed to 1 for a failure at run time).
 */

import type { Command } from 'commander';
import { describeConfig, renderConfigReference } from '../config/describe.js';
import { addConfigFlags, configFromCommand } from './config-flags.js';
import { toRoboflowError } from '../errors.js';
import { redactText } from '../redact.js';

interface ConfigCommandOptions {
  readonly json?: boolean;
  readonly showSecrets?: boolean;
  readonly reference?: boolean;
}

export function registerConfigCommand(program: Command): Command {
  const cmd = program
    .command('config')
    .description(
      'print the effective configuration with the source of every value (default < file < environment < flag)',
    )
    .option('--json', 'print JSON instead of a table')
    .option('--show-secrets', 'print passwords in URLs instead of ****')
    .option('--reference', 'print every key with its environment variable, flag and default, as Markdown');
  addConfigFlags(cmd);
  cmd.action(async (opts: ConfigCommandOptions, command: Command) => {
    if (opts.reference) {
      process.stdout.write(renderConfigReference());
      return;
    }
    try {
      const loaded = await configFromCommand(command);
      const described = describeConfig(loaded, { showSecrets: opts.showSecrets === true });
      process.stdout.write(opts.json ? `${JSON.stringify(described.json, null, 2)}\n` : described.text);
    } catch (err) {
      const e = toRoboflowError(err, 'ERR_CONFIG');
      process.stderr.write(`${redactText(`roboflow config: ${e.code}: ${e.message}`)}\n`);
      process.exitCode = e.code === 'ERR_CONFIG' ? 2 : 1;
    }
  });
  return cmd;
}
