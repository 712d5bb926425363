/**
 * The shell every command-line tool here runs in (vault, policy): errors end as one line on
 * stderr ("tool: message"), never a stack trace, which may hold values; usage errors exit 2,
 * other failures 1; and the process exits when the command is done, so a library's leftover
 * handle cannot keep it alive.
 */
import { type ParseArgsOptionsConfig, parseArgs } from 'node:util';

export class UsageError extends Error {}

/**
 * parseArgs, strict, with positionals; a bad option becomes a UsageError naming the option
 * (parseArgs never echoes a value), without its hint about positionals.
 */
export function parseCommandLine<const T extends ParseArgsOptionsConfig>(
  argv: string[],
  options: T,
) {
  try {
    return parseArgs({ args: argv, allowPositionals: true, strict: true, options });
  } catch (e) {
    throw new UsageError((e as Error).message.split('. ')[0] ?? 'bad arguments');
  }
}

export function oneLine(e: unknown, max = 1000): string {
  const message = e instanceof Error ? e.message : 'unexpected failure';
  return message.replace(/\s*\n\s*/g, ' ').slice(0, max);
}

export function runMain(tool: string, run: (argv: string[]) => Promise<number>): void {
  const die = (e: unknown): never => {
    process.stderr.write(`${tool}: ${oneLine(e)}\n`);
    process.exit(e instanceof UsageError ? 2 : 1);
  };
  process.on('uncaughtException', die);
  process.on('unhandledRejection', die);
  run(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (e: unknown) => die(e),
  );
}
