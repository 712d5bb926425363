/**
 * The compartment manifest (deploy/compartments.json): one description of each compartment,
 * its command, OS user, files, devices, network and channels, from which the launcher, the
 * systemd units and the seL4 Microkit description are all made. An auditor reads this file
 * to answer "what can reach the keys?".
 *
 * Paths may use four placeholders, filled in by whoever deploys:
 *   {code}   the installed tree (read-only for every compartment)
 *   {config} operator-written configuration, one sub-folder per compartment (read-only)
 *   {state}  persistent state, one sub-folder per compartment (its only writable place)
 *   {run}    runtime sockets, one sub-folder per compartment
 */
import { readFile } from 'node:fs/promises';
import { z } from 'zod';
import { formatZodIssues } from '../../keyvault/common/zod-issues.ts';
import { ConfigError } from '../../keyvault/common/config-error.ts';

const NAME = z.string().regex(/^[a-z][a-z0-9-]{0,30}$/, 'lower-case letters, digits and -');
/** Absolute, or starting with a placeholder; never `..`, so an allow-list cannot climb out. */
const PATH = z
  .string()
  .min(1)
  .max(512)
  .regex(
    /^(\/|\{(code|config|state|run)\})/,
    'absolute, or starting with {code}/{config}/{state}/{run}',
  )
  .refine((p) => !p.split('/').includes('..'), 'no ".." segments');
const USER = z.string().regex(/^[a-z_][a-z0-9_-]{0,30}$/, 'a POSIX user name');

/**
 * `none`: no network at all. `homeserver`: the endpoint's way out. `loopback`: the gateway's
 * when it also serves the web UI on 127.0.0.1 (a browser cannot open the Unix socket).
 */
export const NETWORKS = ['none', 'homeserver', 'loopback'] as const;

const compartment = z
  .object({
    name: NAME,
    description: z.string().min(1).max(500),
    /** The program, relative to {code}; run with the launcher's Node. */
    entry: z.string().regex(/^[a-z][a-z0-9/_-]*\.ts$/, 'a .ts path inside the tree'),
    args: z.array(z.string().max(512)).max(32),
    /** Its own OS user: no two compartments share one. */
    user: USER,
    /** Readable besides {code} (config files, certificates). */
    read: z.array(PATH).max(32),
    /** Writable (and readable): its state or socket directory, nothing shared. */
    write: z.array(PATH).max(8),
    /** Device nodes it may open read-write (the TPM resource manager). */
    devices: z.array(z.string().regex(/^\/dev\/[a-z0-9]+$/)).max(8),
    /** `none`: no interface but loopback in its own namespace. `homeserver`: outbound to the homeserver. */
    network: z.enum(NETWORKS),
    /** Native Node addons (pkcs11js): only the vault needs them. */
    nativeAddons: z.boolean(),
    limits: z
      .object({
        memoryMiB: z.number().int().min(64).max(65_536),
        tasks: z.number().int().min(8).max(4096),
        openFiles: z.number().int().min(32).max(65_536),
      })
      .strict(),
  })
  .strict();
export type Compartment = z.infer<typeof compartment>;

const channelEnd = z.object({ compartment: NAME, fd: z.number().int().min(3).max(9) }).strict();

const channel = z.discriminatedUnion('kind', [
  /**
   * A socketpair made by the launcher; each end is inherited on the given fd. The first end
   * calls, the second answers. `reconnect`: the second end also listens on this path (inside
   * its own write directory, so only its user and root can connect), and outlives the first:
   * when the first end's compartment dies alone, the launcher restarts just that one and
   * connects it there, instead of restarting the stack.
   */
  z
    .object({
      name: NAME,
      kind: z.literal('socketpair'),
      ends: z.tuple([channelEnd, channelEnd]),
      reconnect: PATH.optional(),
    })
    .strict(),
  /** A Unix socket the compartment listens on, for clients outside the stack. */
  z.object({ name: NAME, kind: z.literal('unix-socket'), compartment: NAME, path: PATH }).strict(),
]);
export type Channel = z.infer<typeof channel>;

export const manifestSchema = z
  .object({
    version: z.literal(1),
    compartments: z.array(compartment).min(1).max(16),
    channels: z.array(channel).max(32),
  })
  .strict()
  .superRefine((m, ctx) => {
    const names = new Set<string>();
    const users = new Set<string>();
    for (const [i, c] of m.compartments.entries()) {
      if (names.has(c.name))
        ctx.addIssue({
          code: 'custom',
          path: ['compartments', i, 'name'],
          message: `"${c.name}" appears twice`,
        });
      if (users.has(c.user))
        ctx.addIssue({
          code: 'custom',
          path: ['compartments', i, 'user'],
          message: `user "${c.user}" is shared by two compartments`,
        });
      names.add(c.name);
      users.add(c.user);
    }
    const fds = new Map<string, Set<number>>();
    for (const [i, ch] of m.channels.entries()) {
      const ends =
        ch.kind === 'socketpair'
          ? ch.ends.map((e) => ({ c: e.compartment, fd: e.fd }))
          : [{ c: ch.compartment, fd: undefined }];
      for (const end of ends) {
        if (!names.has(end.c))
          ctx.addIssue({
            code: 'custom',
            path: ['channels', i],
            message: `unknown compartment "${end.c}"`,
          });
        if (end.fd === undefined) continue;
        const used = fds.get(end.c) ?? new Set<number>();
        if (used.has(end.fd))
          ctx.addIssue({
            code: 'custom',
            path: ['channels', i],
            message: `fd ${end.fd} of "${end.c}" used twice`,
          });
        used.add(end.fd);
        fds.set(end.c, used);
      }
      if (ch.kind === 'socketpair' && ch.reconnect !== undefined) {
        const callee = m.compartments.find((c) => c.name === ch.ends[1].compartment);
        const path = ch.reconnect;
        if (callee && !callee.write.some((w) => path.startsWith(`${w}/`))) {
          ctx.addIssue({
            code: 'custom',
            path: ['channels', i, 'reconnect'],
            message: `must lie inside a write path of "${callee.name}" (the end that listens)`,
          });
        }
      }
      if (ch.kind === 'socketpair' && ch.ends[0].compartment === ch.ends[1].compartment) {
        ctx.addIssue({
          code: 'custom',
          path: ['channels', i],
          message: 'a channel joins two different compartments',
        });
      }
    }
  });
export type Manifest = z.infer<typeof manifestSchema>;

export interface Placeholders {
  code: string;
  config: string;
  state: string;
  run: string;
}

/** Fills in {code}, {config}, {state} and {run}. */
export function expand(path: string, where: Placeholders): string {
  return path.replace(/\{(code|config|state|run)\}/g, (_m, key: keyof Placeholders) => where[key]);
}

export function parseManifest(json: unknown, source = 'manifest'): Manifest {
  const parsed = manifestSchema.safeParse(json);
  if (!parsed.success) throw new ConfigError(`${source}: ${formatZodIssues(parsed.error)}`);
  return parsed.data;
}

export async function loadManifest(path: string): Promise<Manifest> {
  let json: unknown;
  try {
    json = JSON.parse(await readFile(path, 'utf8'));
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new ConfigError(
      code ? `cannot read the manifest ${path}: ${code}` : `the manifest ${path} is not valid JSON`,
    );
  }
  return parseManifest(json, path);
}

/**
 * Compartments that may be restarted alone: every channel they have, they call, and its
 * callee listens for a reconnection. (The others' deaths restart the stack.)
 */
export function restartableAlone(m: Manifest): Set<string> {
  const out = new Set<string>();
  for (const c of m.compartments) {
    const mine = m.channels.filter(
      (ch) => ch.kind === 'socketpair' && ch.ends.some((e) => e.compartment === c.name),
    );
    if (
      mine.length > 0 &&
      mine.every(
        (ch) =>
          ch.kind === 'socketpair' &&
          ch.reconnect !== undefined &&
          ch.ends[0].compartment === c.name,
      )
    ) {
      out.add(c.name);
    }
  }
  return out;
}

/** Compartments that listen for a reconnection, so do not stop when a caller's channel closes. */
export function outlivesCallers(m: Manifest): Set<string> {
  const out = new Set<string>();
  for (const ch of m.channels) {
    if (ch.kind === 'socketpair' && ch.reconnect !== undefined) out.add(ch.ends[1].compartment);
  }
  return out;
}

/** The socketpair ends a compartment inherits, by fd. */
export function channelEnds(
  m: Manifest,
  name: string,
): { channel: string; fd: number; peer: string }[] {
  const out: { channel: string; fd: number; peer: string }[] = [];
  for (const ch of m.channels) {
    if (ch.kind !== 'socketpair') continue;
    const [a, b] = ch.ends;
    if (a.compartment === name) out.push({ channel: ch.name, fd: a.fd, peer: b.compartment });
    if (b.compartment === name) out.push({ channel: ch.name, fd: b.fd, peer: a.compartment });
  }
  return out;
}
