/**
 * The plumbing the gateway's command-line clients (messages.ts, verify.ts) share: the options
 * every one of them takes, the bearer token, one JSON request to the gateway with its refusals
 * turned into one-line errors, argument checking and output that never passes a control code
 * from a peer to the terminal.
 */
import { readFile } from 'node:fs/promises';
import type { ParseArgsOptionsConfig } from 'node:util';
import { z } from 'zod';
import { UsageError, parseCommandLine } from '../../../keyvault/common/cli-main.ts';
import { type GatewayTarget, gatewayRequest } from '../gateway/client.ts';

/** The options every gateway CLI takes, for parseCommandLine (spread with its own). */
export const GATEWAY_OPTIONS = {
  socket: { type: 'string' },
  'token-file': { type: 'string' },
  json: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
} as const;

/**
 * The command line: the common options and the tool's own, then COMMAND [ARGS]. With --help it
 * prints the usage on stdout and answers undefined (the tool exits 0); no command is an error.
 */
export function commandLine<const T extends ParseArgsOptionsConfig>(
  argv: string[],
  usage: string,
  options: T,
) {
  const { values, positionals } = parseCommandLine(argv, { ...GATEWAY_OPTIONS, ...options });
  // The merged options are generic here, so their values' type is not resolved; --help is ours.
  if ((values as { help?: boolean }).help === true) {
    process.stdout.write(`${usage}\n`);
    return undefined;
  }
  const [command, ...args] = positionals;
  if (command === undefined) throw new UsageError('a command is needed (see --help)');
  return { values, command, args };
}

export interface GatewayContext {
  target: GatewayTarget;
  token: string;
  json: boolean;
  /** The largest JSON answer accepted from the gateway. */
  maxResponseBytes: number;
}

/** The context from the common options: the socket (default api.sock), the token, --json. */
export async function gatewayContext(
  values: { socket?: string | undefined; 'token-file'?: string | undefined; json?: boolean },
  maxResponseBytes: number,
): Promise<GatewayContext> {
  return {
    target: { socketPath: values.socket ?? 'api.sock' },
    token: await readToken(values['token-file']),
    json: values.json === true,
    maxResponseBytes,
  };
}

/** The bearer token from --token-file, else MTE_TOKEN; never from the command line. */
export async function readToken(file: string | undefined): Promise<string> {
  let token = process.env.MTE_TOKEN;
  if (file !== undefined) {
    try {
      token = await readFile(file, 'utf8');
    } catch (e) {
      throw new UsageError(`cannot read the token file ${file}`, { cause: e });
    }
  }
  token = token?.trim();
  if (!token) throw new UsageError('no token: give --token-file FILE or set MTE_TOKEN');
  return token;
}

// --- the gateway ----------------------------------------------------------------------------

const errorSchema = z.object({ error: z.object({ code: z.string(), message: z.string() }) });

/** A request that did not get an answer: the gateway is not there, or the transport broke. */
export function unreachable(e: unknown): Error {
  const code = (e as NodeJS.ErrnoException).code;
  return new Error(
    code === 'ENOENT' || code === 'ECONNREFUSED'
      ? 'cannot reach the gateway: is it running, and is --socket right?'
      : `the gateway request failed (${code ?? 'error'})`,
    { cause: e },
  );
}

/** One JSON request to the gateway; a refusal becomes an error with its code and sentence. */
export async function call(
  ctx: GatewayContext,
  method: string,
  path: string,
  body?: object,
): Promise<unknown> {
  let res;
  try {
    res = await gatewayRequest(ctx.target, path, {
      method,
      token: ctx.token,
      ...(body === undefined ? {} : { body }),
      maxResponseBytes: ctx.maxResponseBytes,
    });
  } catch (e) {
    throw unreachable(e);
  }
  return answerOf(res.status, res.text);
}

/** The JSON of an answer (undefined when it is not JSON), or the refusal it carries, thrown. */
export function answerOf(status: number, text: string): unknown {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text) as unknown;
  } catch {
    parsed = undefined;
  }
  if (status >= 400) {
    const error = errorSchema.safeParse(parsed);
    throw new Error(
      error.success
        ? clean(`${error.data.error.code}: ${error.data.error.message}`)
        : `the gateway answered ${status}`,
    );
  }
  return parsed;
}

// --- arguments and output -------------------------------------------------------------------

/** A command-line value checked against the contract's schema; a bad one is a usage error. */
export function arg<T>(schema: z.ZodType<T>, value: string | undefined, name: string): T {
  const parsed = schema.safeParse(value);
  if (!parsed.success) {
    throw new UsageError(`${name}: ${parsed.error.issues[0]?.message ?? 'invalid'}`);
  }
  return parsed.data;
}

/** Everything printed came from the gateway and, before it, from peers: no control codes. */
export function clean(text: string): string {
  // eslint-disable-next-line no-control-regex -- exactly what is being removed
  return text.replace(/[\u0000-\u001f\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g, ' ');
}

/** The --json output: the value, indented, on stdout. */
export function print(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
}
