import { z } from 'zod';
import { MAX_PAGE, endpointContract, pageToken } from '../../../contract.ts';
import { type JsonRoute, jsonRoute } from '../route.ts';
import { roomPath } from './rooms.ts';

export const DEFAULT_PAGE = 50;

export const timelineQuery = z
  .object({
    limit: z.coerce.number().int().min(1).max(MAX_PAGE).default(DEFAULT_PAGE),
    from: pageToken.optional(),
  })
  .strict();

export const sendBody = endpointContract.send.params.pick({ body: true, replyTo: true });

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
    capability: 'messages.send',
    rpc: 'send',
    auth: true,
    params: roomPath,
    body: sendBody,
    status: 202,
    errors: [409, 507],
    response: endpointContract.send.result,
    handle: ({ token, params, body }, { calls }) =>
      calls.call('send', {
        auth: { token },
        roomId: params.roomId,
        body: body.body,
        ...(body.replyTo === undefined ? {} : { replyTo: body.replyTo }),
      }),
  }),
];
