import { lstat, mkdir, rm, stat } from 'node:fs/promises';
import { type Server, type Socket, createConnection, createServer } from 'node:net';
import { dirname } from 'node:path';

/**
 * Listens on a Unix socket that only its owner can reach: the socket is created inside a
 * directory of mode 0700 (a chmod after bind would leave a window), and a stale socket file
 * left by a crashed process is replaced; anything else at that path is refused, not removed
 * (a mistyped path must not delete a store file).
 */
export async function listenUnix(
  path: string,
  onConnection: (socket: Socket) => void,
): Promise<Server> {
  const dir = dirname(path);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const info = await stat(dir);
  if ((info.mode & 0o077) !== 0) {
    throw new Error(
      `refusing to listen in ${dir}: the directory is reachable by other users (mode ${(info.mode & 0o777).toString(8)})`,
    );
  }
  const existing = await lstat(path).catch(() => undefined);
  if (existing && !existing.isSocket()) {
    throw new Error(`refusing to listen on ${path}: something other than a socket is there`);
  }
  await rm(path, { force: true });
  const server = createServer(onConnection);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(path, () => {
      server.off('error', reject);
      resolve();
    });
  });
  return server;
}

export function connectUnix(path: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = createConnection(path);
    socket.once('connect', () => {
      socket.off('error', reject);
      resolve(socket);
    });
    socket.once('error', reject);
  });
}
