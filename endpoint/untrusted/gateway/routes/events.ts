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
import { type GatewayError, toGatewayError } from '../errors.ts';
import { type GatewayContext, type RouteDoc, requireBearer, routeInput } from '../route.ts';
import { SSE_HEARTBEAT, Subscribers, sseFrame } from '../sse.ts';
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
    .object({ error: z.object({ code: z.string(), message: z.string() }).strict() })
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
    '`event: error` (data: the error object, schema `StreamError`) ends the stream, e.g. when the token is revoked.',
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
  const heartbeat = setInterval(() => {
    if (!res.writableEnded) res.write(SSE_HEARTBEAT);
  }, limits.heartbeatMs);
  const waitMs = Math.min(limits.eventWaitMs, MAX_EVENT_WAIT_MS);
  try {
    await write(res, ': connected\n\n', signal);
    let after = cursor;
    if (lastEventId !== undefined) {
      if (lastEventId <= cursor) {
        after = lastEventId;
      } else {
        // An id this stream never gave (another endpoint run?): start from now, and say so.
        await write(res, sseFrame('gap', { after: lastEventId, cursor }, cursor), signal);
      }
    }
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
        await write(res, sseFrame('error', error.body()), signal);
        break;
      }
      if (page.gap) {
        const id = page.events.length === 0 ? page.cursor : undefined;
        await write(res, sseFrame('gap', { after, cursor: page.cursor }, id), signal);
      }
      for (const event of page.events) {
        const out = endpointContract.events.result.shape.events.element.safeParse(event);
        if (!out.success) continue; // validated on receipt already; never send what we cannot vouch for
        await write(res, sseFrame(out.data.type, out.data, out.data.seq), signal);
      }
      after = page.cursor;
    }
  } finally {
    clearInterval(heartbeat);
    open.delete(end);
    release();
    if (!res.writableEnded) res.end();
    unsubscribe();
  }
}

function retryDelay(error: GatewayError): number {
  const seconds = Number(error.headers['retry-after'] ?? '1');
  return Math.min(Number.isFinite(seconds) ? seconds * 1000 : 1000, 30_000);
}

/** Writes one frame; waits for the client to drain (a slow reader slows the polls, not memory). */
async function write(res: ServerResponse, text: string, signal: AbortSignal): Promise<void> {
  if (signal.aborted || res.writableEnded) return;
  if (!res.write(text)) await once(res, 'drain', { signal }).catch(() => undefined);
}
