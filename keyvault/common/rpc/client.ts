import type { ChannelListener, FrameChannel } from './channel.ts';
import type { Contract, Params, Result } from './contract.ts';
import { RpcCode, RpcError } from './errors.ts';
import { describeIssues, parseJson, responseEnvelope, toBytes } from './envelope.ts';

export interface ClientOptions {
  /** Default per-call deadline. */
  timeoutMs?: number;
  /** Local diagnostics for frames that match no call (late, unsolicited or malformed). */
  onProtocolError?: (error: RpcError) => void;
}

export interface CallOptions {
  timeoutMs?: number;
  signal?: AbortSignal;
}

export interface RpcClient<C extends Contract> {
  call<M extends keyof C & string>(
    method: M,
    params: Params<C, M>,
    options?: CallOptions,
  ): Promise<Result<C, M>>;
  close(): void;
  readonly closed: boolean;
}

interface Pending {
  method: string;
  resolve: (value: unknown) => void;
  reject: (error: RpcError) => void;
  timer: NodeJS.Timeout;
}

export function createClient<C extends Contract>(
  channel: FrameChannel,
  contract: C,
  options: ClientOptions = {},
): RpcClient<C> {
  const defaultTimeout = options.timeoutMs ?? 10_000;
  const onProtocolError = options.onProtocolError ?? (() => undefined);
  const pending = new Map<number, Pending>();
  let nextId = 1;
  let closeReason: RpcError | undefined;
  let isClosed = false;

  const settle = (id: number): Pending | undefined => {
    const p = pending.get(id);
    if (p) {
      clearTimeout(p.timer);
      pending.delete(id);
    }
    return p;
  };

  const listener: ChannelListener = {
    frame(payload) {
      const json = parseJson(payload);
      const envelope = json ? responseEnvelope.safeParse(json.value) : undefined;
      if (!envelope?.success) {
        onProtocolError(
          new RpcError(
            RpcCode.BadFrame,
            envelope ? describeIssues(envelope.error, 'response') : 'the frame is not valid JSON',
          ),
        );
        return;
      }
      const message = envelope.data;
      if (message.id === null) {
        // The server could not read one of our frames. Remember why, in case it hangs up next.
        const error = message.ok
          ? undefined
          : new RpcError(message.error.code, message.error.message);
        if (error) {
          closeReason = error;
          onProtocolError(error);
        }
        return;
      }
      const p = settle(message.id);
      if (!p) return; // late answer to a call that already timed out
      if (!message.ok) {
        const { code, message: text, retryAfterMs } = message.error;
        p.reject(new RpcError(code, text, retryAfterMs === undefined ? {} : { retryAfterMs }));
        return;
      }
      const spec = contract[p.method] as C[keyof C];
      const decoded = spec.result.safeParse(message.result);
      if (!decoded.success) {
        p.reject(
          new RpcError(
            RpcCode.InvalidResult,
            `${p.method}: ${describeIssues(decoded.error, 'result')}`,
          ),
        );
        return;
      }
      p.resolve(decoded.data);
    },
    fatal(error) {
      closeReason = error;
      onProtocolError(error);
    },
    close() {
      isClosed = true;
      const reason = closeReason ? ` (${closeReason.code}: ${closeReason.message})` : '';
      for (const id of [...pending.keys()]) {
        const p = settle(id);
        p?.reject(
          new RpcError(RpcCode.Disconnected, `the connection closed during ${p.method}${reason}`),
        );
      }
    },
  };
  channel.attach(listener);

  return {
    get closed() {
      return isClosed || channel.closed;
    },
    close() {
      channel.close();
    },
    call(method, params, callOptions = {}) {
      return new Promise((resolve, reject) => {
        if (isClosed || channel.closed) {
          reject(
            new RpcError(RpcCode.Disconnected, `the connection is closed; ${method} was not sent`),
          );
          return;
        }
        if (!Object.hasOwn(contract, method)) {
          reject(new RpcError(RpcCode.UnknownMethod, `unknown method "${method}"`));
          return;
        }
        const spec = contract[method] as C[keyof C];
        const encoded = spec.params.safeEncode(params);
        if (!encoded.success) {
          reject(new RpcError(RpcCode.InvalidParams, describeIssues(encoded.error, 'params')));
          return;
        }
        const id = nextId++;
        const payload = toBytes({ v: 1, kind: 'request', id, method, params: encoded.data });
        if (payload.length > channel.maxFrameBytes) {
          reject(
            new RpcError(RpcCode.FrameTooLarge, `the ${method} request exceeds the frame limit`),
          );
          return;
        }
        const timeoutMs = callOptions.timeoutMs ?? defaultTimeout;
        const timer = setTimeout(() => {
          settle(id)?.reject(
            new RpcError(RpcCode.Timeout, `${method} got no answer within ${timeoutMs} ms`),
          );
        }, timeoutMs);
        pending.set(id, {
          method,
          resolve: resolve as (value: unknown) => void,
          reject,
          timer,
        });
        callOptions.signal?.addEventListener(
          'abort',
          () =>
            settle(id)?.reject(
              new RpcError(RpcCode.Timeout, `${method} was aborted by the caller`),
            ),
          { once: true },
        );
        channel.send(payload);
      });
    },
  };
}
