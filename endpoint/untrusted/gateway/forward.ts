import type { CallOptions, Params, Result, RpcClient } from '../../../keyvault/common/rpc/index.ts';
import type { EndpointContract } from '../../contract.ts';
import { GatewayError } from './errors.ts';
import type { Limits } from './limits.ts';

export type Method = keyof EndpointContract;

/**
 * The gateway's one way to the endpoint: ordinary calls take one of maxInFlight slots (waiting
 * in a bounded queue for at most queueTimeoutMs, else 503 BUSY), so a burst of UI requests
 * queues here instead of tripping the endpoint's own in-flight bound. Event-stream polls go
 * through `stream`, bounded instead by the subscriber limits.
 */
export interface EndpointCalls {
  call<M extends Method>(
    method: M,
    params: Params<EndpointContract, M>,
  ): Promise<Result<EndpointContract, M>>;
  stream<M extends Method>(
    method: M,
    params: Params<EndpointContract, M>,
    options: CallOptions,
  ): Promise<Result<EndpointContract, M>>;
  readonly inFlight: number;
  readonly queued: number;
}

export function endpointCalls(client: RpcClient<EndpointContract>, limits: Limits): EndpointCalls {
  let inFlight = 0;
  const waiting: { grant: () => void }[] = [];

  const busy = () =>
    new GatewayError(
      503,
      'BUSY',
      'The gateway has too many requests in flight; try again shortly.',
      {
        'retry-after': '1',
      },
    );

  const acquire = async (): Promise<void> => {
    if (inFlight < limits.maxInFlight) {
      inFlight++;
      return;
    }
    if (waiting.length >= limits.maxQueued) throw busy();
    await new Promise<void>((resolve, reject) => {
      const entry = {
        grant: () => {
          clearTimeout(timer);
          resolve();
        },
      };
      const timer = setTimeout(() => {
        const i = waiting.indexOf(entry);
        if (i >= 0) waiting.splice(i, 1);
        reject(busy());
      }, limits.queueTimeoutMs);
      waiting.push(entry);
    });
    // The slot was handed over by release(): inFlight already counts it.
  };

  const release = (): void => {
    const next = waiting.shift();
    if (next) next.grant();
    else inFlight--;
  };

  return {
    get inFlight() {
      return inFlight;
    },
    get queued() {
      return waiting.length;
    },
    async call(method, params) {
      await acquire();
      try {
        return await client.call(method, params, { timeoutMs: limits.endpointTimeoutMs });
      } finally {
        release();
      }
    },
    stream(method, params, options) {
      return client.call(method, params, options);
    },
  };
}
