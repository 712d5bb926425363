import { ConfigError } from '../../../keyvault/common/config-error.ts';
import { readFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { REPO_ROOT } from '../../../keyvault/common/entries.ts';
import { z } from 'zod';
import { DEFAULT_LIMITS, type Limits } from './limits.ts';
import type { ListenConfig } from './listen.ts';
import { describeIssues } from './validate.ts';

/**
 * The gateway's config file (JSON). Paths are relative to the file. Example:
 *
 *   { "socket": "run/gateway.sock", "endpointConfig": "endpoint.json" }
 *
 * `tcp` (loopback only) replaces `socket`; `socketGroup` makes the socket 0660 for that
 * group; `limits` overrides any of the defaults in limits.ts. `ui` (off unless given) adds the
 * web UI's listener on loopback: `{ "port": 8008 }`, optionally `host` (::1), `names` (extra
 * Host names a browser may use) and `dir` (the built UI).
 */
const limitKeys = Object.keys(DEFAULT_LIMITS) as (keyof Limits)[];
const limitsSchema = z
  .object(
    Object.fromEntries(
      limitKeys.map((k) => [
        k,
        z
          .number()
          .int()
          .positive()
          .max(2 ** 31)
          .optional(),
      ]),
    ) as Record<keyof Limits, z.ZodOptional<z.ZodNumber>>,
  )
  .strict();

export const gatewayConfigSchema = z
  .object({
    socket: z.string().min(1).max(4096).optional(),
    socketGroup: z
      .union([z.string().regex(/^[A-Za-z_][A-Za-z0-9_.-]{0,31}$/), z.number().int().min(0)])
      .optional(),
    tcp: z
      .object({
        host: z.enum(['127.0.0.1', '::1'], 'the TCP host must be 127.0.0.1 or ::1 (loopback)'),
        port: z.number().int().min(0).max(65535),
      })
      .strict()
      .optional(),
    endpointConfig: z.string().min(1).max(4096),
    limits: limitsSchema.optional(),
    ui: z
      .object({
        host: z
          .enum(['127.0.0.1', '::1'], 'the web UI host must be 127.0.0.1 or ::1 (loopback)')
          .default('127.0.0.1'),
        port: z.number().int().min(0).max(65535),
        /** More Host names a browser may use for it (an /etc/hosts alias of loopback). */
        names: z
          .array(
            z
              .string()
              .regex(
                /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$/,
                'expected a lower-case host name',
              ),
          )
          .max(4)
          .optional(),
        /** The built UI (node endpoint/untrusted/web/build.ts); default its dist/ folder. */
        dir: z.string().min(1).max(4096).optional(),
      })
      .strict()
      .optional(),
  })
  .strict()
  .refine((c) => (c.socket === undefined) !== (c.tcp === undefined), {
    message: 'give either "socket" or "tcp" (loopback), not both and not neither',
  })
  .refine((c) => c.socketGroup === undefined || c.socket !== undefined, {
    message: '"socketGroup" only applies to "socket"',
    path: ['socketGroup'],
  });

export { ConfigError };

export interface GatewayConfig {
  listen: ListenConfig;
  /** Absolute path of the endpoint compartment's config file. */
  endpointConfig: string;
  limits: Partial<Limits>;
  /** The web UI's loopback listener, when configured (off by default). */
  ui?: UiConfig;
}

export interface UiConfig {
  host: '127.0.0.1' | '::1';
  port: number;
  names: string[];
  /** Absolute path of the built UI's directory. */
  dir: string;
}

/** Where the build puts the UI (endpoint/untrusted/web/build.ts). */
export const DEFAULT_UI_DIR = join(REPO_ROOT, 'endpoint/untrusted/web/dist/');

/** Reads and validates the config; every failure is one line naming the file and the field. */
export async function loadGatewayConfig(path: string): Promise<GatewayConfig> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    throw new ConfigError(
      `cannot read the config ${path}: ${(e as NodeJS.ErrnoException).code ?? 'error'}`,
    );
  }
  if (text.length > 65_536) throw new ConfigError(`the config ${path} is too large`);
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    throw new ConfigError(`the config ${path} is not valid JSON`);
  }
  const parsed = gatewayConfigSchema.safeParse(json);
  if (!parsed.success) {
    throw new ConfigError(
      `the config ${path} is invalid: ${describeIssues('config', parsed.error)}`,
    );
  }
  const c = parsed.data;
  const base = dirname(resolve(path));
  const listen: ListenConfig = c.tcp
    ? { tcp: c.tcp }
    : {
        socket: resolve(base, c.socket ?? ''),
        ...(c.socketGroup === undefined ? {} : { socketGroup: c.socketGroup }),
      };
  const limits: Partial<Limits> = {};
  for (const [k, v] of Object.entries(c.limits ?? {})) {
    if (v !== undefined) limits[k as keyof Limits] = v;
  }
  return {
    listen,
    endpointConfig: resolve(base, c.endpointConfig),
    limits,
    ...(c.ui === undefined
      ? {}
      : {
          ui: {
            host: c.ui.host,
            port: c.ui.port,
            names: c.ui.names ?? [],
            dir: c.ui.dir === undefined ? DEFAULT_UI_DIR : resolve(base, c.ui.dir),
          },
        }),
  };
}
