import type { ChannelListener, FrameChannel } from './channel.ts';
import type { Contract, Params, Result } from './contract.ts';
import { RpcCode, RpcError } from './errors.ts';
import {
  type ResponseEnvelope,
  describeIssues,
  parseJson,
  requestEnvelope,
  toBytes,
} from './envelope.ts';

export interface CallContext {
  method: string;
  /** Aborted when the connection closes or the handler runs past its deadline. */
  signal: AbortSignal;
}

export type Handlers<C extends Contract> = {
  [M in keyof C]: (params: Params<C, M>, ctx: CallContext) => Promise<Result<C, M>>;
};

export interface ServerOptions {
  /** Requests running at once on this connection; more get BUSY. */
  maxInFlight?: number;
  /** A handler running longer is answered with TIMEOUT (and its signal aborted). */
  handlerTimeoutMs?: number;
  /** Local diagnostics only: never sent to the peer. */
  onError?: (error: unknown, context: { method?: string }) => void;
  /**
   * Local diagnostics: a frame that could not be read (BAD_FRAME, answered and the channel
   * kept) or one that ended the channel (FRAME_TOO_LARGE, `fatal`). The peer has its reply.
   */
  onProtocolError?: (error: RpcError, context: { fatal: boolean }) => void;
}

export interface ServerConnection {
  close(): void;
  readonly closed: Promise<void>;
  /**
   * Why we ended the channel, when a frame made it impossible to go on (FRAME_TOO_LARGE);
   * undefined while it is open, and when the peer hung up or close() was called.
   */
  readonly reason: RpcError | undefined;
}

/** Serves `contract` on one channel. Nothing the peer sends can throw out of this function. */
/** Why a call's signal aborts once the call is over (or the channel closed). */
const CALL_FINISHED: Error = Object.freeze(new Error('the call is over'));

export function serve<C extends Contract>(
  channel: FrameChannel,
  contract: C,
  handlers: Handlers<C>,
  options: ServerOptions = {},
): ServerConnection {
  const maxInFlight = options.maxInFlight ?? 32;
  const handlerTimeoutMs = options.handlerTimeoutMs ?? 60_000;
  const onError = options.onError ?? (() => undefined);
  const onProtocolError = options.onProtocolError ?? (() => undefined);
  let reason: RpcError | undefined;
  const running = new Set<AbortController>();
  let resolveClosed: () => void = () => undefined;
  const closed = new Promise<void>((r) => (resolveClosed = r));

  const reply = (message: ResponseEnvelope): void => {
    const payload = toBytes(message);
    if (payload.length > channel.maxFrameBytes) {
      channel.send(
        toBytes({
          v: 1,
          kind: 'response',
          id: message.id,
          ok: false,
          error: { code: RpcCode.FrameTooLarge, message: 'the response exceeds the frame limit' },
        }),
      );
      return;
    }
    channel.send(payload);
  };
  const fail = (id: number | null, error: RpcError): void => {
    reply({ v: 1, kind: 'response', id, ok: false, error: error.toJSON() });
  };

  const handle = async (id: number, method: string, rawParams: unknown): Promise<void> => {
    if (!Object.hasOwn(contract, method) || !Object.hasOwn(handlers, method)) {
      fail(id, new RpcError(RpcCode.UnknownMethod, `unknown method "${method.slice(0, 64)}"`));
      return;
    }
    const spec = contract[method] as C[keyof C];
    const parsed = spec.params.safeParse(rawParams);
    if (!parsed.success) {
      fail(id, new RpcError(RpcCode.InvalidParams, describeIssues(parsed.error, 'params')));
      return;
    }
    if (running.size >= maxInFlight) {
      fail(id, new RpcError(RpcCode.Busy, `more than ${maxInFlight} requests in flight`));
      return;
    }
    const abort = new AbortController();
    running.add(abort);
    const handler = handlers[method] as (p: unknown, ctx: CallContext) => Promise<unknown>;
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        reject(
          new RpcError(RpcCode.Timeout, `${method} did not finish within ${handlerTimeoutMs} ms`),
        );
      }, handlerTimeoutMs);
    });
    // The slot stays taken until the handler itself settles, not when we stop waiting for it:
    // otherwise a peer could pile up work that outlives its timeouts.
    const work = Promise.resolve().then(() =>
      handler(parsed.data, { method, signal: abort.signal }),
    );
    const release = (): void => {
      running.delete(abort);
    };
    work.then(release, release);
    try {
      const result = await Promise.race([work, deadline]);
      const encoded = spec.result.safeEncode(result);
      if (!encoded.success) {
        onError(
          new Error(
            `handler result violates the contract: ${describeIssues(encoded.error, 'result')}`,
          ),
          {
            method,
          },
        );
        fail(id, new RpcError(RpcCode.Internal, 'internal error'));
        return;
      }
      if (!channel.closed) reply({ v: 1, kind: 'response', id, ok: true, result: encoded.data });
    } catch (e) {
      if (e instanceof RpcError) {
        fail(id, e);
      } else {
        onError(e, { method });
        fail(id, new RpcError(RpcCode.Internal, 'internal error'));
      }
    } finally {
      clearTimeout(timer);
      // A reason made once: abort() without one builds a DOMException with a stack per call,
      // which was the single largest cost of a cheap call (handlers look at signal.aborted).
      abort.abort(CALL_FINISHED);
    }
  };

  const listener: ChannelListener = {
    frame(payload) {
      const json = parseJson(payload);
      if (!json) {
        const error = new RpcError(RpcCode.BadFrame, 'the frame is not valid JSON');
        onProtocolError(error, { fatal: false });
        fail(null, error);
        return;
      }
      const envelope = requestEnvelope.safeParse(json.value);
      if (!envelope.success) {
        const error = new RpcError(RpcCode.BadFrame, describeIssues(envelope.error, 'request'));
        onProtocolError(error, { fatal: false });
        fail(requestId(json.value), error);
        return;
      }
      const { id, method, params } = envelope.data;
      handle(id, method, params).catch((e: unknown) => {
        onError(e, { method });
      });
    },
    fatal(error) {
      reason = error;
      onProtocolError(error, { fatal: true });
      fail(null, error);
    },
    close() {
      for (const a of running) a.abort(CALL_FINISHED);
      resolveClosed();
    },
  };
  channel.attach(listener);

  return {
    close: () => {
      channel.close();
    },
    closed,
    get reason() {
      return reason;
    },
  };
}

function requestId(value: unknown): number | null {
  if (typeof value !== 'object' || value === null || !('id' in value)) return null;
  const id = value.id;
  return typeof id === 'number' && Number.isSafeInteger(id) && id >= 0 ? id : null;
}
