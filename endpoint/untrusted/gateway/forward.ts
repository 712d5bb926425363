import { createHash } from 'node:crypto';
import type { CallOptions, Params, Result, RpcClient } from '../../../keyvault/common/rpc/index.ts';
import { type EndpointContract, SEND_METHODS } from '../../contract.ts';
import { GatewayError } from './errors.ts';
import type { Limits } from './limits.ts';

export type Method = keyof EndpointContract;

/**
 * The part of maxInFlight one token may hold at once. The rest is always free for the other
 * tokens, so a client pipelining requests fills its own share and queue, never another's: its
 * surplus gets 503 BUSY, the others are served as if it were not there. Half, because one UI
 * alone still gets most of the endpoint's parallelism (8 of 16 by default), and two floods at
 * once still leave the queue's round robin to a third.
 */
export const TOKEN_IN_FLIGHT_SHARE = 0.5;

/**
 * The gateway's one way to the endpoint: ordinary calls take one of maxInFlight slots (waiting
 * in a bounded queue for at most queueTimeoutMs, else 503 BUSY), so a burst of UI requests
 * queues here instead of tripping the endpoint's own in-flight bound. Event-stream polls go
 * through `stream`, bounded instead by the subscriber limits.
 *
 * Slots and the queue are shared fairly between tokens (the gateway cannot tell clients apart
 * otherwise; whether a token is any good is the endpoint's call): each token holds at most its
 * share of the slots, a freed slot goes to the tokens with calls waiting in turn, and when the
 * queue is full a newcomer displaces the newest call of the token with the longest queue, if
 * that is longer than its own. So a flood only ever queues behind, and is refused instead of,
 * itself.
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
  /** Tokens with calls in flight or waiting (for tests and status). */
  readonly tokens: number;
}

interface Waiter {
  grant(): void;
  refuse(): void;
}

/** One token's calls: how many are in flight, and those waiting, oldest first. */
interface Lane {
  key: string;
  inFlight: number;
  waiting: Waiter[];
}

/**
 * The map key for a token's lane: its SHA-256, so the gateway's memory never holds the tokens
 * of calls that have finished in any recognisable form, and nothing here could log one. (No
 * constant-time concern: the key only picks a queue; the endpoint authenticates.)
 */
function laneKey(params: unknown): string {
  const token = (params as { auth?: { token?: unknown } } | undefined)?.auth?.token;
  if (typeof token !== 'string') return '';
  return createHash('sha256').update(token, 'utf8').digest('hex');
}

/**
 * Sends (SEND_METHODS) get slots of their own, so a send never waits behind a crowd of slow
 * reads (timelines, attachment downloads), and a flood of sends cannot take the reads' slots
 * either. 4: a send's work at the endpoint is a durable write; a UI sends one at a time.
 */
export { SEND_METHODS };
export const SEND_SLOTS = 4;

export function endpointCalls(client: RpcClient<EndpointContract>, limits: Limits): EndpointCalls {
  const reads = slotPool(client, limits);
  const sends = slotPool(client, {
    ...limits,
    maxInFlight: SEND_SLOTS,
    maxQueued: Math.max(SEND_SLOTS, Math.floor(limits.maxQueued / 4)),
  });
  return {
    get inFlight() {
      return reads.inFlight + sends.inFlight;
    },
    get queued() {
      return reads.queued + sends.queued;
    },
    get tokens() {
      return reads.tokens + sends.tokens;
    },
    call(method, params) {
      return (SEND_METHODS.has(method) ? sends : reads).call(method, params);
    },
    stream(method, params, options) {
      return client.call(method, params, options);
    },
  };
}

/** maxInFlight slots shared fairly between tokens (see EndpointCalls). */
function slotPool(client: RpcClient<EndpointContract>, limits: Limits): EndpointCalls {
  const share = Math.max(1, Math.floor(limits.maxInFlight * TOKEN_IN_FLIGHT_SHARE));
  const lanes = new Map<string, Lane>();
  /** Lanes with calls waiting, in the order they get a freed slot (a granted lane goes last). */
  const turn = new Set<Lane>();
  let inFlight = 0;
  let queued = 0;

  const busy = () =>
    new GatewayError(
      503,
      'BUSY',
      'The gateway has too many requests in flight; try again shortly.',
      {
        'retry-after': '1',
      },
    );

  const forget = (lane: Lane): void => {
    if (lane.inFlight === 0 && lane.waiting.length === 0) lanes.delete(lane.key);
  };

  const dequeue = (lane: Lane, waiter: Waiter): boolean => {
    const i = lane.waiting.indexOf(waiter);
    if (i < 0) return false;
    lane.waiting.splice(i, 1);
    queued--;
    if (lane.waiting.length === 0) turn.delete(lane);
    return true;
  };

  /** Hands free slots to waiting calls, one lane at a time, skipping lanes at their share. */
  const dispatch = (): void => {
    while (inFlight < limits.maxInFlight) {
      let next: Lane | undefined;
      for (const lane of turn) {
        if (lane.inFlight < share) {
          next = lane;
          break;
        }
      }
      const waiter = next?.waiting[0];
      if (next === undefined || waiter === undefined) return;
      dequeue(next, waiter);
      if (next.waiting.length > 0) {
        turn.delete(next);
        turn.add(next);
      }
      next.inFlight++;
      inFlight++;
      waiter.grant();
    }
  };

  /** The lane with the most calls waiting (the first such, in turn order). */
  const longest = (): Lane | undefined => {
    let found: Lane | undefined;
    for (const lane of turn) {
      if (found === undefined || lane.waiting.length > found.waiting.length) found = lane;
    }
    return found;
  };

  const acquire = async (key: string): Promise<Lane> => {
    let lane = lanes.get(key);
    if (lane === undefined) {
      lane = { key, inFlight: 0, waiting: [] };
      lanes.set(key, lane);
    }
    const mine = lane;
    if (inFlight < limits.maxInFlight && mine.inFlight < share && mine.waiting.length === 0) {
      mine.inFlight++;
      inFlight++;
      return mine;
    }
    if (queued >= limits.maxQueued) {
      const victim = longest();
      if (victim === undefined || victim.waiting.length <= mine.waiting.length) {
        forget(mine);
        throw busy();
      }
      // The biggest queue pays for the newcomer: its newest call is refused instead.
      const shed = victim.waiting[victim.waiting.length - 1];
      if (shed) {
        dequeue(victim, shed);
        shed.refuse();
        forget(victim);
      }
    }
    await new Promise<void>((resolve, reject) => {
      const waiter: Waiter = {
        grant: () => {
          clearTimeout(timer);
          resolve();
        },
        refuse: () => {
          clearTimeout(timer);
          reject(busy());
        },
      };
      const timer = setTimeout(() => {
        if (dequeue(mine, waiter)) forget(mine);
        reject(busy());
      }, limits.queueTimeoutMs);
      mine.waiting.push(waiter);
      queued++;
      turn.add(mine);
    });
    // dispatch() counted the slot for this lane when it granted it.
    return mine;
  };

  const release = (lane: Lane): void => {
    lane.inFlight--;
    inFlight--;
    dispatch();
    forget(lane);
  };

  return {
    get inFlight() {
      return inFlight;
    },
    get queued() {
      return queued;
    },
    get tokens() {
      return lanes.size;
    },
    async call(method, params) {
      const lane = await acquire(laneKey(params));
      try {
        return await client.call(method, params, { timeoutMs: limits.endpointTimeoutMs });
      } finally {
        release(lane);
      }
    },
    stream(method, params, options) {
      return client.call(method, params, options);
    },
  };
}
