import { z } from 'zod';
import { MAX_PAGE, endpointContract, eventId, pageToken, roomId } from '../../../contract.ts';
import { type JsonRoute, jsonRoute } from '../route.ts';
import { roomPath } from './rooms.ts';

export const DEFAULT_PAGE = 50;

export const timelineQuery = z
  .object({
    limit: z.coerce.number().int().min(1).max(MAX_PAGE).default(DEFAULT_PAGE),
    from: pageToken.optional(),
  })
  .strict();

export const sendBody = endpointContract.send.params.pick({
  body: true,
  replyTo: true,
  edit: true,
  thread: true,
});
export const reactBody = endpointContract.react.params.pick({ eventId: true, key: true });
export const redactBody = endpointContract.redact.params.pick({ reason: true });
/** Path parameters of the routes on one event of a room. */
export const eventPath = z.object({ roomId, eventId }).strict();

/** Shared by every route that queues a send: what the outbox and the room can refuse. */
const SEND_ERRORS = [404, 409, 507] as const;

export const messageRoutes: JsonRoute[] = [
  jsonRoute({
    method: 'GET',
    url: '/v1/rooms/:roomId/timeline',
    operationId: 'getTimeline',
    summary: `One page of a room's history, newest first, decrypted by the endpoint. Pass \`next\` as \`from\` for the page before.`,
    capability: 'messages.read',
    rpc: 'timeline',
    auth: true,
    params: roomPath,
    query: timelineQuery,
    status: 200,
    response: endpointContract.timeline.result,
    handle: ({ token, params, query }, { calls }) =>
      calls.call('timeline', {
        auth: { token },
        roomId: params.roomId,
        limit: query.limit,
        ...(query.from === undefined ? {} : { from: query.from }),
      }),
  }),
  jsonRoute({
    method: 'POST',
    url: '/v1/rooms/:roomId/messages',
    operationId: 'sendMessage',
    summary:
      'Queues a text message, encrypted for the room; answered once it is durably queued (it is sent exactly once).',
    description:
      "`replyTo`: the event this one replies to. `thread`: a reply in the thread with this root. `edit`: replaces the text of one of our own messages (409 NOT_OWN_MESSAGE otherwise). `excluded` lists the members and devices that, as the endpoint knows them now, will not get the room key; the `sent` event on the stream says who was left out when it went out. 413 MESSAGE_TOO_LARGE when the encrypted event would pass the homeserver's limit.",
    capability: 'messages.send',
    rpc: 'send',
    auth: true,
    params: roomPath,
    body: sendBody,
    status: 202,
    errors: SEND_ERRORS,
    response: endpointContract.send.result,
    handle: ({ token, params, body }, { calls }) =>
      calls.call('send', {
        auth: { token },
        roomId: params.roomId,
        body: body.body,
        ...(body.replyTo === undefined ? {} : { replyTo: body.replyTo }),
        ...(body.edit === undefined ? {} : { edit: body.edit }),
        ...(body.thread === undefined ? {} : { thread: body.thread }),
      }),
  }),
  jsonRoute({
    method: 'POST',
    url: '/v1/rooms/:roomId/reactions',
    operationId: 'react',
    summary:
      'Queues a reaction (an emoji or a short text `key`) to an event, encrypted like a message.',
    capability: 'messages.send',
    rpc: 'react',
    auth: true,
    params: roomPath,
    body: reactBody,
    status: 202,
    errors: SEND_ERRORS,
    response: endpointContract.react.result,
    handle: ({ token, params, body }, { calls }) =>
      calls.call('react', {
        auth: { token },
        roomId: params.roomId,
        eventId: body.eventId,
        key: body.key,
      }),
  }),
  jsonRoute({
    method: 'POST',
    url: '/v1/rooms/:roomId/events/:eventId/redact',
    operationId: 'redactEvent',
    summary:
      'Queues the redaction of an event: ours, or anyone\'s where our power level allows. The body may be empty or `{"reason": ...}`.',
    capability: 'messages.send',
    rpc: 'redact',
    auth: true,
    params: eventPath,
    body: redactBody,
    bodyOptional: true,
    status: 202,
    errors: SEND_ERRORS,
    response: endpointContract.redact.result,
    handle: ({ token, params, body }, { calls }) =>
      calls.call('redact', {
        auth: { token },
        roomId: params.roomId,
        eventId: params.eventId,
        ...(body.reason === undefined ? {} : { reason: body.reason }),
      }),
  }),
];
