import { once } from 'node:events';
import type { ServerResponse } from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { z } from 'zod';
import {
  MAX_EVENT_WAIT_MS,
  type StreamEvent,
  endpointContract,
  streamEvent,
} from '../../../contract.ts';
import { GatewayError, toGatewayError } from '../errors.ts';
import { type GatewayContext, type RouteDoc, requireBearer, routeInput } from '../route.ts';
import { SSE_HEARTBEAT, Subscribers, slowReaderMs, sseFrame } from '../sse.ts';
import { parseInput } from '../validate.ts';

/** `Last-Event-ID`: the `id` of the last event the client saw, to resume after it. */
export const eventsHeaders = z
  .object({
    'Last-Event-ID': z
      .string()
      .regex(/^(?:-1|0|[1-9][0-9]{0,14})$/, 'expected the id of an event from this stream')
      .optional(),
  })
  .strict();

/** What the stream's frames carry, for the OpenAPI description (components.schemas). */
export const streamFrames = {
  StreamEvent: streamEvent,
  StreamGap: z.object({ after: z.number().int(), cursor: z.number().int() }).strict(),
  StreamError: z
    .object({
      error: z.object({ code: z.string(), message: z.string() }).strict(),
      /** The id of the last frame before this one: resume after it (also this frame's id). */
      lastEventId: z.number().int(),
    })
    .strict(),
};

/** Every `event:` name an endpoint event goes out under: its `type`, as the contract lists them. */
export const STREAM_EVENT_TYPES: readonly string[] = streamEvent.options.map(
  (option) => option.shape.type.value,
);

export const eventsRoute: RouteDoc = {
  method: 'GET',
  url: '/v1/events',
  operationId: 'streamEvents',
  summary:
    'Server-Sent Events: new messages, edits, reactions and redactions, membership, verification and identity changes, and what became of our sends, as they arrive.',
  description: [
    `Each event is \`id: <seq>\`, \`event: <type>\`, \`data: <JSON>\`, where the type is one of ${STREAM_EVENT_TYPES.map((t) => `\`${t}\``).join(', ')} and the JSON (schema \`StreamEvent\`) has the same \`seq\` and \`type\`.`,
    'Reconnect with `Last-Event-ID` to resume after that event.',
    '`event: gap` comes in two forms, both meaning "refetch": with `roomId` (a `StreamEvent`), events of that room were missed while the endpoint was away; with `{after, cursor}` (schema `StreamGap`, no `type`), this stream dropped events (the client was away too long): refetch every timeline.',
    '`sent` says a queued send went out (with who was left out, `excluded`); `send-failed` that the outbox gave up on one (see GET /v1/outbox/failed).',
    '`event: error` (data: the error object, schema `StreamError`) ends the stream: `UNAUTHENTICATED` or `FORBIDDEN_CAPABILITY` when the token is revoked or loses `events.stream` (within about a second of the policy edit), `SLOW_READER` when the client took nothing of the stream for two heartbeat intervals (30 s by default). Its `id` (and `lastEventId`) is the last event before it: reconnecting with that `Last-Event-ID` replays what the stream did not deliver, or sends `event: gap` if the endpoint no longer holds it.',
    'A comment line (`: heartbeat`) is sent every 15 s.',
  ].join(' '),
  capability: 'events.stream',
  rpc: 'subscribe, events, unsubscribe',
  auth: true,
  headers: eventsHeaders,
  status: 200,
  contentType: 'text/event-stream',
  schemas: streamFrames,
  errors: [429, 503],
};

/** Errors after which a poll is simply tried again; any other ends the stream. */
const RETRY = new Set(['TIMEOUT', 'BUSY', 'RATE_LIMITED']);

/** GET /v1/events: one subscription per connection, fed by long polls. */
export async function eventsPlugin(
  app: FastifyInstance,
  opts: { ctx: GatewayContext; subscribers: Subscribers },
): Promise<void> {
  const { ctx, subscribers } = opts;
  const open = new Set<() => void>();
  // Streams never end by themselves: end them so close() does not wait for clients.
  app.addHook('preClose', async () => {
    for (const end of open) end();
    return Promise.resolve();
  });
  app.route({
    method: 'GET',
    url: eventsRoute.url,
    onRequest: requireBearer,
    handler: async (request, reply) => {
      await stream(request, reply, ctx, subscribers, open);
    },
  });
  return Promise.resolve();
}

async function stream(
  request: FastifyRequest,
  reply: FastifyReply,
  ctx: GatewayContext,
  subscribers: Subscribers,
  open: Set<() => void>,
): Promise<void> {
  const { calls, limits } = ctx;
  const { token } = routeInput(eventsRoute, request);
  const header = parseInput(
    eventsHeaders,
    { 'Last-Event-ID': request.headers['last-event-id'] },
    'header',
  )['Last-Event-ID'];
  const lastEventId = header === undefined ? undefined : Number(header);
  const release = subscribers.acquire(token);
  const auth = { token };
  const res = reply.raw;
  const controller = new AbortController();
  const { signal } = controller;
  const closed = () => signal.aborted;
  /** Why we end the stream ourselves, if we do: said in the last frame. */
  let ending: GatewayError | undefined;
  const end = (): void => {
    controller.abort();
  };
  // Listen for the client leaving from the start: it may go while we subscribe.
  res.on('close', end);
  let subscription: string;
  let cursor: number;
  try {
    ({ subscription, cursor } = await calls.call('subscribe', { auth }));
  } catch (e) {
    res.off('close', end);
    release();
    throw e;
  }
  const unsubscribe = () => {
    // The endpoint forgets the subscription now rather than when it expires.
    calls
      .stream('unsubscribe', { auth, subscription }, { timeoutMs: limits.endpointTimeoutMs })
      .catch(() => undefined);
  };
  if (closed()) {
    reply.hijack();
    res.end();
    release();
    unsubscribe();
    return;
  }
  open.add(end);
  reply.hijack();
  res.writeHead(200, {
    'content-type': 'text/event-stream; charset=utf-8',
    'cache-control': 'no-store',
    'x-content-type-options': 'nosniff',
    'x-accel-buffering': 'no',
  });
  const out = progressWriter(res, slowReaderMs(limits), (stalledMs) => {
    ending = slowReader(stalledMs);
    end();
  });
  const heartbeat = setInterval(() => {
    // A heartbeat behind unsent ones would only pile up: the reader has not taken the last.
    if (!res.writableEnded && out.pending === 0) out.send(SSE_HEARTBEAT);
  }, limits.heartbeatMs);
  const waitMs = Math.min(limits.eventWaitMs, MAX_EVENT_WAIT_MS);
  /** The id of the last frame queued to the reader: where it resumes (Last-Event-ID). */
  let delivered = cursor;
  try {
    await out.write(': connected\n\n', signal);
    let after = cursor;
    if (lastEventId !== undefined) {
      if (lastEventId <= cursor) {
        after = lastEventId;
      } else {
        // An id this stream never gave (another endpoint run?): start from now, and say so.
        await out.write(sseFrame('gap', { after: lastEventId, cursor }, cursor), signal);
      }
    }
    delivered = after;
    while (!signal.aborted) {
      let page: { events: StreamEvent[]; cursor: number; gap: boolean };
      try {
        page = await calls.stream(
          'events',
          { auth, subscription, after, waitMs },
          { timeoutMs: waitMs + limits.endpointTimeoutMs, signal },
        );
      } catch (e) {
        if (closed()) break;
        const error = toGatewayError(e);
        if (RETRY.has(error.code)) {
          await sleep(retryDelay(error), undefined, { signal }).catch(() => undefined);
          continue;
        }
        // Revoked, no longer allowed, the subscription gone: the reader is told, then we end.
        ending = error;
        break;
      }
      // `delivered` moves only past frames actually queued: a frame not written because the
      // stream was cut off meanwhile is replayed on resume.
      if (closed()) break;
      if (page.gap) {
        const id = page.events.length === 0 ? page.cursor : undefined;
        await out.write(sseFrame('gap', { after, cursor: page.cursor }, id), signal);
        if (id !== undefined) delivered = id;
      }
      for (const event of page.events) {
        const parsed = endpointContract.events.result.shape.events.element.safeParse(event);
        if (!parsed.success) continue; // validated on receipt already; never send what we cannot vouch for
        if (closed()) break;
        await out.write(sseFrame(parsed.data.type, parsed.data, parsed.data.seq), signal);
        delivered = parsed.data.seq;
      }
      if (closed()) break;
      after = page.cursor;
      // Past the events this client may not see, too.
      delivered = after;
    }
  } finally {
    clearInterval(heartbeat);
    out.stop();
    open.delete(end);
    release();
    if (!res.writableEnded) {
      // Queued behind what the reader has not taken yet: it reads this last, and the id line
      // makes an EventSource resume exactly after the last event it got.
      if (ending)
        res.end(sseFrame('error', { ...ending.body(), lastEventId: delivered }, delivered));
      else res.end();
    }
    unsubscribe();
  }
}

function slowReader(stalledMs: number): GatewayError {
  return new GatewayError(
    503,
    'SLOW_READER',
    `The stream took nothing for ${Math.round(stalledMs / 1000)} s and was closed; reconnect with Last-Event-ID to get what was missed.`,
  );
}

/**
 * Writes to the stream and watches that they go out. A write counts as done when the socket
 * took it (its callback); if some have been waiting for `cutoffMs` with none done meanwhile,
 * the reader is too slow and `onStall` is called once. A reader taking anything at all, however
 * slowly, is not cut off: only one that takes nothing.
 */
function progressWriter(res: ServerResponse, cutoffMs: number, onStall: (ms: number) => void) {
  let pending = 0;
  let progressAt = Date.now();
  let stalled = false;
  const check = (): void => {
    if (stalled || pending === 0) return;
    const ms = Date.now() - progressAt;
    if (ms >= cutoffMs) {
      stalled = true;
      onStall(ms);
    }
  };
  const watchdog = setInterval(check, Math.max(10, Math.floor(cutoffMs / 4)));
  const send = (text: string): boolean => {
    if (res.writableEnded || stalled) return true;
    if (pending === 0) progressAt = Date.now();
    pending++;
    return res.write(text, () => {
      pending--;
      progressAt = Date.now();
    });
  };
  return {
    get pending() {
      return pending;
    },
    send,
    /** One frame; waits for the socket to drain (a slow reader slows the polls, not memory). */
    async write(text: string, signal: AbortSignal): Promise<void> {
      if (signal.aborted || res.writableEnded) return;
      if (!send(text)) await once(res, 'drain', { signal }).catch(() => undefined);
    },
    stop(): void {
      clearInterval(watchdog);
    },
  };
}

function retryDelay(error: GatewayError): number {
  const seconds = Number(error.headers['retry-after'] ?? '1');
  return Math.min(Number.isFinite(seconds) ? seconds * 1000 : 1000, 30_000);
}
