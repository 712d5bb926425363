import type { Socket } from 'node:net';
import { RpcError } from './errors.ts';
import { DEFAULT_MAX_FRAME_BYTES, FrameDecoder, encodeFrame } from './frame.ts';

/** What the client and server need from a transport: whole frames in, whole frames out. */
export interface FrameChannel {
  readonly maxFrameBytes: number;
  /** Sends one frame. Silently dropped once the channel is closed. */
  send(payload: Uint8Array): void;
  attach(listener: ChannelListener): void;
  /** Closes after pending writes are flushed. */
  close(): void;
  readonly closed: boolean;
}

export interface ChannelListener {
  frame(payload: Buffer): void;
  /** The stream cannot continue (oversize frame); the channel closes right after this call. */
  fatal(error: RpcError): void;
  close(): void;
}

/** Bytes of unread output after which a socket channel stops reading its peer's input. */
export const WRITE_BUFFER_LIMIT = 4 * 1024 * 1024;

export interface ChannelOptions {
  maxFrameBytes?: number;
}

/** A channel over a connected stream socket (Unix socket, socketpair fd, TCP for tests). */
export function socketChannel(socket: Socket, options: ChannelOptions = {}): FrameChannel {
  const maxFrameBytes = options.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES;
  const decoder = new FrameDecoder(maxFrameBytes);
  let listener: ChannelListener | undefined;
  let closed = false;
  let ended = false;

  const deliver = (chunk: Buffer): void => {
    if (!listener) return;
    let frames: Buffer[];
    try {
      frames = decoder.push(chunk);
    } catch (e) {
      if (e instanceof RpcError) listener.fatal(e);
      channel.close();
      return;
    }
    for (const f of frames) listener.frame(f);
  };

  socket.on('error', () => {
    // Reported as a close: the peer went away or the socket broke; callers reject pending calls.
    socket.destroy();
  });
  socket.on('close', () => {
    closed = true;
    ended = true;
    listener?.close();
  });

  const channel: FrameChannel = {
    maxFrameBytes,
    get closed() {
      return closed || socket.destroyed;
    },
    send(payload) {
      if (closed || socket.destroyed || !socket.writable) return;
      socket.write(encodeFrame(payload));
      // A peer that sends requests but never reads the answers must not make us buffer them
      // without bound: stop reading its requests until it has taken what we wrote.
      if (socket.writableLength > WRITE_BUFFER_LIMIT && !socket.isPaused()) {
        socket.pause();
        socket.once('drain', () => socket.resume());
      }
    },
    attach(l) {
      listener = l;
      // Read only from now on: until then the socket's own bounded buffer (and the kernel's)
      // holds what the peer sends, not a list of ours.
      socket.on('data', deliver);
      if (ended) {
        setImmediate(() => {
          l.close();
        });
      }
    },
    close() {
      if (closed) return;
      closed = true;
      socket.end();
      // A peer that never reads must not keep us half-open forever.
      setTimeout(() => socket.destroy(), 1000).unref();
    },
  };
  return channel;
}

/**
 * Two linked channels in one process for unit tests. Frames cross as bytes with the same size
 * bound and the same asynchronous delivery as a socket, so the code under test cannot tell.
 */
export function inProcessPair(options: ChannelOptions = {}): [FrameChannel, FrameChannel] {
  const maxFrameBytes = options.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES;
  const ends: InProcessEnd[] = [new InProcessEnd(maxFrameBytes), new InProcessEnd(maxFrameBytes)];
  const [a, b] = ends as [InProcessEnd, InProcessEnd];
  a.peer = b;
  b.peer = a;
  return [a, b];
}

class InProcessEnd implements FrameChannel {
  readonly maxFrameBytes: number;
  peer: InProcessEnd | undefined;
  #listener: ChannelListener | undefined;
  #inbox: Buffer[] = [];
  #closed = false;

  constructor(maxFrameBytes: number) {
    this.maxFrameBytes = maxFrameBytes;
  }

  get closed(): boolean {
    return this.#closed;
  }

  send(payload: Uint8Array): void {
    if (this.#closed) return;
    const copy = Buffer.from(payload);
    const peer = this.peer;
    setImmediate(() => peer?.receive(copy));
  }

  receive(payload: Buffer): void {
    if (this.#closed) return;
    if (!this.#listener) {
      this.#inbox.push(payload);
      return;
    }
    if (payload.length > this.maxFrameBytes) {
      this.#listener.fatal(
        new RpcError(
          'FRAME_TOO_LARGE',
          `frame of ${payload.length} bytes exceeds the limit of ${this.maxFrameBytes} bytes`,
        ),
      );
      this.close();
      return;
    }
    this.#listener.frame(payload);
  }

  attach(listener: ChannelListener): void {
    this.#listener = listener;
    for (const p of this.#inbox.splice(0)) this.receive(p);
  }

  close(): void {
    if (this.#closed) return;
    // Let frames already sent arrive first, as a socket's end() would.
    setImmediate(() => {
      if (this.#closed) return;
      this.#closed = true;
      this.#listener?.close();
      this.peer?.close();
    });
  }
}
