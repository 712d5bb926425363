import { chmod, chown, lstat, readFile, stat, unlink } from 'node:fs/promises';
import { connect } from 'node:net';
import { dirname, resolve } from 'node:path';
import type { FastifyInstance } from 'fastify';

/** Where the gateway listens: a Unix socket (the default), or loopback TCP when asked for. */
export type ListenConfig =
  | {
      socket: string;
      /** Let this group (name or gid) connect too: the socket becomes 0660, group-owned. */
      socketGroup?: string | number;
    }
  | { tcp: { host: string; port: number } };

export interface Listening {
  /** The socket path, or `http://host:port`. */
  address: string;
  socketPath?: string;
  tcp?: { host: string; port: number };
}

/** TCP is for loopback only: the gateway must never be reachable from another machine. */
export const LOOPBACK_HOSTS: readonly string[] = ['127.0.0.1', '::1'];

export class ListenError extends Error {
  override name = 'ListenError';
}

/**
 * Starts `app` listening. A Unix socket is created with mode 0600 (0660 and chgrp'd when a
 * group is configured) under a umask, so there is no moment when others may connect; the
 * socket's directory must belong to us (or root) and not be writable by others, and an existing
 * path must be a stale socket (which is removed), never a live one or another kind of file.
 */
export async function listenGateway(
  app: FastifyInstance,
  config: ListenConfig,
): Promise<Listening> {
  if ('tcp' in config) return listenTcp(app, config.tcp);
  return listenUnixSocket(app, resolve(config.socket), config.socketGroup);
}

/**
 * The checks listenGateway makes before it binds, without binding: for main.ts to fail fast,
 * before it starts the endpoint, when the address can never work.
 */
export async function checkListenConfig(config: ListenConfig): Promise<void> {
  if ('tcp' in config) {
    if (!LOOPBACK_HOSTS.includes(config.tcp.host)) {
      throw new ListenError(
        `refusing to listen on TCP host "${config.tcp.host.slice(0, 64)}": only ${LOOPBACK_HOSTS.join(' and ')} are allowed`,
      );
    }
    return;
  }
  if (config.socketGroup !== undefined) await groupId(config.socketGroup);
  await checkDirectory(dirname(resolve(config.socket)));
}

async function listenTcp(
  app: FastifyInstance,
  tcp: { host: string; port: number },
): Promise<Listening> {
  if (!LOOPBACK_HOSTS.includes(tcp.host)) {
    throw new ListenError(
      `refusing to listen on TCP host "${tcp.host.slice(0, 64)}": only ${LOOPBACK_HOSTS.join(' and ')} are allowed`,
    );
  }
  if (!Number.isInteger(tcp.port) || tcp.port < 0 || tcp.port > 65535) {
    throw new ListenError('the TCP port must be an integer from 0 to 65535');
  }
  await app.listen({ host: tcp.host, port: tcp.port });
  const address = app.server.address();
  const port = typeof address === 'object' && address !== null ? address.port : tcp.port;
  const host = tcp.host.includes(':') ? `[${tcp.host}]` : tcp.host;
  return { address: `http://${host}:${port}`, tcp: { host: tcp.host, port } };
}

async function listenUnixSocket(
  app: FastifyInstance,
  path: string,
  group: string | number | undefined,
): Promise<Listening> {
  const gid = group === undefined ? undefined : await groupId(group);
  await checkDirectory(dirname(path));
  await removeStaleSocket(path);
  await app.ready();
  // The socket is born 0600: the umask covers the bind. (It is process-wide for these few
  // ticks, which can only make a file created meanwhile more private, never less.)
  const previous = process.umask(0o177);
  try {
    await app.listen({ path });
  } finally {
    process.umask(previous);
  }
  if (gid !== undefined) {
    await chown(path, -1, gid);
    await chmod(path, 0o660);
  } else {
    await chmod(path, 0o600);
  }
  return { address: path, socketPath: path };
}

async function checkDirectory(dir: string): Promise<void> {
  let info;
  try {
    info = await stat(dir);
  } catch {
    throw new ListenError(`the socket's directory ${dir} does not exist`);
  }
  if (!info.isDirectory()) throw new ListenError(`${dir} is not a directory`);
  if ((info.mode & 0o002) !== 0) {
    throw new ListenError(
      `refusing to create the socket in ${dir}: the directory is writable by others (chmod o-w)`,
    );
  }
  const uid = process.getuid?.();
  if (uid !== undefined && info.uid !== uid && info.uid !== 0) {
    throw new ListenError(
      `refusing to create the socket in ${dir}: it belongs to another user (uid ${info.uid})`,
    );
  }
}

/** An existing path is removed only when it is a socket nobody answers on. */
async function removeStaleSocket(path: string): Promise<void> {
  let info;
  try {
    info = await lstat(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw e;
  }
  if (!info.isSocket()) {
    throw new ListenError(`refusing to replace ${path}: it exists and is not a socket`);
  }
  if (await answers(path)) {
    throw new ListenError(`${path} is in use: another gateway is listening there`);
  }
  await unlink(path);
}

function answers(path: string): Promise<boolean> {
  return new Promise((resolveAnswer) => {
    const socket = connect(path);
    socket.once('connect', () => {
      socket.destroy();
      resolveAnswer(true);
    });
    socket.once('error', () => {
      socket.destroy();
      resolveAnswer(false);
    });
  });
}

/** A group name from /etc/group (Node has no getgrnam), or a gid as given. */
async function groupId(group: string | number): Promise<number> {
  if (typeof group === 'number') return group;
  if (/^[0-9]+$/.test(group)) return Number(group);
  const text = await readFile('/etc/group', 'utf8').catch(() => '');
  for (const line of text.split('\n')) {
    const [name, , gid] = line.split(':');
    if (name === group && gid !== undefined && /^[0-9]+$/.test(gid)) return Number(gid);
  }
  throw new ListenError(`unknown group "${group.slice(0, 32)}"`);
}
