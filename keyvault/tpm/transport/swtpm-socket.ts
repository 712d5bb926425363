import { type Socket, createConnection } from 'node:net';
import {
  MAX_RESPONSE_BYTES,
  TPM_HEADER_BYTES,
  type TpmTransport,
  TpmTransportError,
  notAnswered,
} from './transport.ts';

/**
 * The swtpm socket interface: a data channel carrying raw TPM command and response bytes, and
 * a control channel (swtpm's CMD_* protocol: a big-endian u32 command, a u32 result first in
 * the reply). Commands are serialised: a TPM handles one at a time.
 */
/**
 * TCP ports (data P, control P+1, as tpm2-tools assume), or Unix sockets: a vault in a network
 * namespace without network (the launcher's sandbox) reaches swtpm only through those.
 */
export type SwtpmAddress =
  { host: string; port: number; ctrlPort: number } | { path: string; ctrlPath: string };

type Endpoint = { host: string; port: number } | { path: string };

function endpoints(address: SwtpmAddress): {
  data: Endpoint;
  ctrl: Endpoint;
  name: string;
  ctrlName: string;
} {
  if ('path' in address) {
    return {
      data: { path: address.path },
      ctrl: { path: address.ctrlPath },
      name: address.path,
      ctrlName: address.ctrlPath,
    };
  }
  return {
    data: { host: address.host, port: address.port },
    ctrl: { host: address.host, port: address.ctrlPort },
    name: `${address.host}:${address.port}`,
    ctrlName: `${address.host}:${address.ctrlPort}`,
  };
}

export const SwtpmControl = {
  Init: 0x02,
  Shutdown: 0x03,
  SetLocality: 0x05,
} as const;

export interface SwtpmTransport extends TpmTransport {
  /** Sends a control command; returns the result code swtpm answered (0 is success). */
  control(command: number, payload?: Uint8Array): Promise<number>;
}

export async function connectSwtpm(
  address: SwtpmAddress,
  options: { timeoutMs?: number } = {},
): Promise<SwtpmTransport> {
  const timeoutMs = options.timeoutMs ?? 30_000;
  const where = endpoints(address);
  const description = `swtpm ${where.name}`;
  let socket = await open(where.data, description, timeoutMs);
  let queue: Promise<unknown> = Promise.resolve();
  let closed = false;
  /**
   * Set when we dropped the connection because the TPM did not answer: the next command
   * connects again (swtpm serves one connection at a time and takes the next one once it
   * runs again). A connection the other side closed stays closed: that TPM went away.
   */
  let reconnect = false;

  const exchange = async (command: Uint8Array, deadline: number, limit: number) => {
    const left = deadline - Date.now();
    // Still waiting behind an earlier command when its time ran out: never sent at all.
    if (left <= 0) throw notAnswered(description, limit);
    if (socket.destroyed && reconnect && !closed) {
      socket = await open(where.data, description, left).catch((e: unknown) => {
        throw e instanceof TpmTransportError && e.code === 'TPM_TIMEOUT'
          ? notAnswered(description, limit)
          : e;
      });
      reconnect = false;
    }
    if (closed || socket.destroyed) {
      throw new TpmTransportError('TPM_CLOSED', `${description}: transport is closed`);
    }
    return exchangeOn(socket, command, Math.max(1, deadline - Date.now()), () => {
      reconnect = true;
      return notAnswered(description, limit);
    });
  };

  const exchangeOn = (
    s: Socket,
    command: Uint8Array,
    waitMs: number,
    onTimeout: () => Error,
  ): Promise<Uint8Array> =>
    new Promise((resolve, reject) => {
      const chunks: Buffer[] = [];
      let length = 0;
      let expected = -1;
      const finish = (error?: Error, response?: Uint8Array): void => {
        clearTimeout(timer);
        s.off('data', onData);
        s.off('close', onClose);
        if (error) reject(error);
        else resolve(response ?? new Uint8Array());
      };
      const onData = (chunk: Buffer): void => {
        chunks.push(chunk);
        length += chunk.length;
        if (expected < 0 && length >= TPM_HEADER_BYTES) {
          const head = Buffer.concat(chunks);
          expected = head.readUInt32BE(2);
          if (expected < TPM_HEADER_BYTES || expected > MAX_RESPONSE_BYTES) {
            s.destroy();
            finish(
              new TpmTransportError(
                'TPM_BAD_RESPONSE',
                `${description}: response header claims ${expected} bytes`,
              ),
            );
            return;
          }
        }
        if (expected >= 0 && length >= expected) {
          const all = Buffer.concat(chunks);
          if (length > expected) {
            s.destroy();
            finish(
              new TpmTransportError(
                'TPM_BAD_RESPONSE',
                `${description}: ${length - expected} unexpected trailing bytes`,
              ),
            );
            return;
          }
          finish(undefined, new Uint8Array(all));
        }
      };
      const onClose = (): void => {
        finish(
          new TpmTransportError(
            'TPM_UNREACHABLE',
            `${description}: connection closed during a command`,
          ),
        );
      };
      // The answer to this command can no longer be told from the next one's: drop the
      // connection (a late answer goes nowhere).
      const timer = setTimeout(() => {
        const error = onTimeout();
        s.off('close', onClose);
        s.destroy();
        finish(error);
      }, waitMs);
      s.on('data', onData);
      s.once('close', onClose);
      s.write(command);
    });

  return {
    description,
    send(command, sendOptions = {}) {
      if (closed || (socket.destroyed && !reconnect)) {
        return Promise.reject(
          new TpmTransportError('TPM_CLOSED', `${description}: transport is closed`),
        );
      }
      const limit = sendOptions.timeoutMs ?? timeoutMs;
      const deadline = Date.now() + limit;
      const next = queue.then(() => exchange(command, deadline, limit));
      queue = next.catch(() => undefined);
      return next;
    },
    async control(command, payload = new Uint8Array()) {
      const ctrl = await open(where.ctrl, `swtpm control ${where.ctrlName}`, timeoutMs);
      try {
        const request = Buffer.alloc(4 + payload.length);
        request.writeUInt32BE(command, 0);
        request.set(payload, 4);
        const reply = await readAtLeast(ctrl, request, 4, timeoutMs);
        return reply.readUInt32BE(0);
      } finally {
        ctrl.destroy();
      }
    },
    close() {
      closed = true;
      return new Promise((resolve) => {
        if (socket.destroyed) {
          resolve();
          return;
        }
        socket.once('close', () => {
          resolve();
        });
        socket.end();
        setTimeout(() => socket.destroy(), 1000).unref();
      });
    },
  };
}

function open(target: Endpoint, description: string, timeoutMs: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = createConnection({ ...target, timeout: timeoutMs });
    socket.once('connect', () => {
      socket.setTimeout(0);
      socket.off('error', onError);
      socket.on('error', () => socket.destroy());
      resolve(socket);
    });
    const onError = (e: NodeJS.ErrnoException): void => {
      reject(
        new TpmTransportError(
          'TPM_UNREACHABLE',
          `${description}: ${e.code ?? 'connection failed'}`,
        ),
      );
    };
    socket.once('error', onError);
    socket.once('timeout', () => {
      socket.destroy();
      reject(new TpmTransportError('TPM_TIMEOUT', `${description}: connect timed out`));
    });
  });
}

function readAtLeast(
  socket: Socket,
  request: Buffer,
  n: number,
  timeoutMs: number,
): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let total = 0;
    const timer = setTimeout(() => {
      reject(new TpmTransportError('TPM_TIMEOUT', 'swtpm control: no reply'));
    }, timeoutMs);
    socket.on('data', (chunk: Buffer) => {
      chunks.push(chunk);
      total += chunk.length;
      if (total >= n) {
        clearTimeout(timer);
        resolve(Buffer.concat(chunks));
      }
    });
    socket.once('close', () => {
      clearTimeout(timer);
      if (total < n)
        reject(new TpmTransportError('TPM_BAD_RESPONSE', 'swtpm control: short reply'));
    });
    socket.write(request);
  });
}
