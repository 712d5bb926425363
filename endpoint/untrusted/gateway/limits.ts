import { MAX_BODY_CHARS } from '../../contract.ts';

/**
 * Every bound the gateway enforces. The defaults are safe for one machine's handful of UIs;
 * a deployment may tighten them (or loosen them, knowingly) through the gateway config.
 * String lengths and page sizes are not here: they come from the endpoint contract's schemas,
 * so the HTTP surface and the RPC cannot disagree.
 */
export interface Limits {
  /**
   * Largest request body. The biggest valid body is a message of MAX_BODY_CHARS UTF-16 code
   * units, up to 3 UTF-8 bytes each (96 KiB), plus JSON quoting; 128 KiB admits every such
   * message and nothing much bigger, so a valid message is never refused as too large.
   */
  bodyLimitBytes: number;
  /**
   * Open connections at once: SSE streams plus a few UIs' requests. At the cap a new
   * connection closes one that has not sent a request yet, rather than being refused itself
   * (connections.ts), so idle sockets cannot lock real clients out.
   */
  maxConnections: number;
  /** The whole request (headers and body) must arrive within this (Node's requestTimeout). */
  requestTimeoutMs: number;
  /**
   * The headers must arrive within this, counted from the accept (a connection that sends
   * nothing) or from a request's first byte: a slowloris client is cut off early. Checked
   * every twentieth of it (at most 250 ms), so it holds to within 5%.
   */
  headersTimeoutMs: number;
  /** An idle keep-alive connection is closed after this. */
  keepAliveTimeoutMs: number;
  /**
   * A socket with no traffic either way for this long is closed. Above the longest a request
   * can legitimately wait (queue + endpoint call) and above the SSE heartbeat interval.
   */
  idleTimeoutMs: number;
  /** Open event streams overall: each holds one long poll at the endpoint. */
  maxSubscribers: number;
  /** Open event streams per token: one UI cannot take every stream slot. */
  maxSubscribersPerToken: number;
  /**
   * Ordinary (non-stream) calls in flight to the endpoint at once. The endpoint's RPC server
   * answers BUSY beyond its own bound, so the gateway queues instead of tripping it.
   */
  maxInFlight: number;
  /** Calls waiting for an in-flight slot; beyond this a request gets 503 BUSY at once. */
  maxQueued: number;
  /** How long a call may wait in the queue before it gets 503 BUSY. */
  queueTimeoutMs: number;
  /** Deadline of one endpoint call (the homeserver may be slow; we do not wait forever). */
  endpointTimeoutMs: number;
  /** How long each event poll waits at the endpoint (below the contract's MAX_EVENT_WAIT_MS). */
  eventWaitMs: number;
  /** A comment line on every event stream this often keeps proxies and idle timers quiet. */
  heartbeatMs: number;
  /** Longest path parameter (a percent-encoded 255-character Matrix id is at most 765). */
  maxParamLength: number;
}

export const DEFAULT_LIMITS: Readonly<Limits> = Object.freeze({
  bodyLimitBytes: 128 * 1024,
  maxConnections: 256,
  requestTimeoutMs: 15_000,
  headersTimeoutMs: 5_000,
  keepAliveTimeoutMs: 5_000,
  idleTimeoutMs: 60_000,
  maxSubscribers: 64,
  maxSubscribersPerToken: 8,
  maxInFlight: 16,
  maxQueued: 128,
  queueTimeoutMs: 10_000,
  endpointTimeoutMs: 30_000,
  eventWaitMs: 20_000,
  heartbeatMs: 15_000,
  maxParamLength: 3 * 255 + 3,
});

// Keep the body limit honest if the contract's message bound ever grows.
if (DEFAULT_LIMITS.bodyLimitBytes < MAX_BODY_CHARS * 3 + 4096) {
  throw new Error('gateway: the default body limit is below the largest valid message');
}

export function resolveLimits(overrides: Partial<Limits> = {}): Limits {
  const limits: Limits = { ...DEFAULT_LIMITS };
  for (const [key, value] of Object.entries(overrides) as [keyof Limits, unknown][]) {
    if (value === undefined) continue;
    if (!Object.hasOwn(DEFAULT_LIMITS, key)) throw new TypeError(`unknown gateway limit "${key}"`);
    if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 1) {
      throw new TypeError(`gateway limit "${key}" must be a positive integer`);
    }
    limits[key] = value;
  }
  if (limits.maxSubscribersPerToken > limits.maxSubscribers) {
    limits.maxSubscribersPerToken = limits.maxSubscribers;
  }
  return limits;
}
