import { chmod } from 'node:fs/promises';
import type { Server, Socket } from 'node:net';
import { type ChannelOptions, type FrameChannel, socketChannel } from './channel.ts';
import type { RpcError } from './errors.ts';
import type { ServerConnection } from './server.ts';
import { listenUnix } from './unix.ts';

/** How one peer's channel ended. */
export interface PeerEnd {
  /** Set when we ended it because of what the peer sent (FRAME_TOO_LARGE). */
  reason: RpcError | undefined;
  /** A newer connection took its place. */
  replaced: boolean;
  /** close() ended it. */
  stopping: boolean;
}

export interface OneAtATimeOptions {
  /** The first peer: a socketpair end its launcher passed on an fd. */
  first?: Socket;
  /**
   * Where later peers connect (a restarted peer, after the first one left). Created inside a
   * 0700 directory, mode 0600: only our own user (and root, the launcher) can connect. Without
   * it there is one peer, and `done` resolves when it leaves.
   */
  listenPath?: string;
  channel?: ChannelOptions;
  /** Serves one peer's channel. */
  serve(channel: FrameChannel): ServerConnection;
  onEnd?(end: PeerEnd): void;
}

export interface OneAtATime {
  /** Resolves once no peer is served and none can come: after close(), or, without a listenPath, once the first peer left. */
  readonly done: Promise<void>;
  /** Stops listening (the socket file goes), closes the current peer's channel, waits for it. */
  close(): Promise<void>;
}

/**
 * Serves one peer at a time, first on `first`, then on whoever connects to `listenPath`. What a
 * peer sends can end its own channel (an oversize frame, a hang-up mid-request), never the
 * server: the next peer is served as if nothing happened. A new connection replaces the
 * current one rather than waiting for it: only the launcher can connect, and it does so for a
 * restarted peer, whose predecessor is gone even if its socket's close is not yet seen here.
 */
export async function serveOneAtATime(options: OneAtATimeOptions): Promise<OneAtATime> {
  interface Entry {
    connection: ServerConnection;
    replaced: boolean;
  }
  let current: Entry | undefined;
  let stopping = false;
  let server: Server | undefined;
  let resolveDone: () => void = () => undefined;
  const done = new Promise<void>((resolve) => (resolveDone = resolve));
  const settle = (): void => {
    if (current === undefined && (stopping || server === undefined)) resolveDone();
  };

  const take = (socket: Socket): void => {
    if (stopping) {
      socket.destroy();
      return;
    }
    // One we are already ending (its reason is set) is not replaced: it was ended for what it sent.
    if (current && current.connection.reason === undefined) {
      current.replaced = true;
      current.connection.close();
    }
    const entry: Entry = {
      connection: options.serve(socketChannel(socket, options.channel)),
      replaced: false,
    };
    current = entry;
    void entry.connection.closed.then(() => {
      if (current === entry) current = undefined;
      options.onEnd?.({ reason: entry.connection.reason, replaced: entry.replaced, stopping });
      settle();
    });
  };

  if (options.listenPath !== undefined) {
    server = await listenUnix(options.listenPath, take);
    await chmod(options.listenPath, 0o600);
  }
  if (options.first) take(options.first);
  settle();

  return {
    done,
    async close() {
      stopping = true;
      // Listening stops (and the socket file goes) at once; the callback waits for the
      // connections the server accepted, so only after the current one is closed below.
      const listening = new Promise<void>((resolve) => {
        if (server) {
          server.close(() => {
            resolve();
          });
        } else resolve();
      });
      current?.connection.close();
      settle();
      await done;
      await listening;
    },
  };
}
