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

/**
 * The subcommand a tool was asked for, or the help text it should print: `help [COMMAND]`,
 * `--help`, `COMMAND --help`. An unknown name is echoed only if it looks like a command name
 * (a mistyped secret must not reach a log); extra positionals are refused.
 */
export function pickCommand<C extends string>(
  positionals: string[],
  help: boolean,
  texts: { main: string; commands: Readonly<Record<C, string>> },
): { help: string } | { command: C } {
  const known = (name: string): name is C => Object.hasOwn(texts.commands, name);
  const [name, ...extra] = positionals;
  if (name === undefined) {
    if (help) return { help: texts.main };
    throw new UsageError('no command given (try --help)');
  }
  if (name === 'help') {
    const topic = extra[0];
    if (topic !== undefined && !known(topic)) throw new UsageError('help: unknown command');
    return { help: topic === undefined ? texts.main : texts.commands[topic] };
  }
  if (!known(name)) {
    const shown = /^[a-z][a-z-]{0,19}$/.test(name) ? ` "${name}"` : '';
    throw new UsageError(
      `unknown command${shown} (commands: ${Object.keys(texts.commands).join(', ')})`,
    );
  }
  if (help) return { help: texts.commands[name] };
  if (extra.length > 0) throw new UsageError(`${name}: unexpected extra arguments`);
  return { command: name };
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
