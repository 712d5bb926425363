import { z } from 'zod';
import { endpointContract, roomId } from '../../../contract.ts';
import { type JsonRoute, jsonRoute } from '../route.ts';

/** Path parameters of every per-room route. */
export const roomPath = z.object({ roomId }).strict();

const createRoomParams = endpointContract.createRoom.params.shape;
/** POST /v1/rooms: the contract's createRoom params without the token; `invite` may be left out. */
export const createRoomBody = z
  .object({
    invite: createRoomParams.invite.optional(),
    isDirect: createRoomParams.isDirect,
    name: createRoomParams.name,
  })
  .strict();

export const inviteBody = endpointContract.invite.params.pick({ userId: true });
const empty = z.object({}).strict();

export const roomRoutes: JsonRoute[] = [
  jsonRoute({
    method: 'GET',
    url: '/v1/rooms',
    operationId: 'listRooms',
    summary: 'Joined and invited rooms this client may see.',
    capability: 'rooms.read',
    rpc: 'rooms',
    auth: true,
    status: 200,
    response: endpointContract.rooms.result,
    handle: ({ token }, { calls }) => calls.call('rooms', { auth: { token } }),
  }),
  jsonRoute({
    method: 'POST',
    url: '/v1/rooms',
    operationId: 'createRoom',
    summary: 'Creates an encrypted room (or a direct chat) and invites these users.',
    capability: 'rooms.create',
    rpc: 'createRoom',
    auth: true,
    body: createRoomBody,
    status: 201,
    response: endpointContract.createRoom.result,
    handle: ({ token, body }, { calls }) =>
      calls.call('createRoom', {
        auth: { token },
        invite: body.invite ?? [],
        ...(body.isDirect === undefined ? {} : { isDirect: body.isDirect }),
        ...(body.name === undefined ? {} : { name: body.name }),
      }),
  }),
  jsonRoute({
    method: 'POST',
    url: '/v1/rooms/:roomId/invite',
    operationId: 'inviteToRoom',
    summary: 'Invites a user to a room.',
    capability: 'rooms.manage',
    rpc: 'invite',
    auth: true,
    params: roomPath,
    body: inviteBody,
    status: 200,
    response: endpointContract.invite.result,
    handle: ({ token, params, body }, { calls }) =>
      calls.call('invite', { auth: { token }, roomId: params.roomId, userId: body.userId }),
  }),
  jsonRoute({
    method: 'POST',
    url: '/v1/rooms/:roomId/leave',
    operationId: 'leaveRoom',
    summary: 'Leaves a room (or declines an invitation). The body may be empty or {}.',
    capability: 'rooms.manage',
    rpc: 'leave',
    auth: true,
    params: roomPath,
    body: empty,
    bodyOptional: true,
    status: 200,
    response: endpointContract.leave.result,
    handle: ({ token, params }, { calls }) =>
      calls.call('leave', { auth: { token }, roomId: params.roomId }),
  }),
  answerInvite(
    'join',
    'joinRoom',
    "Accepts an invitation to a room (the policy's room allow-list applies). The body may be empty or {}.",
  ),
  answerInvite(
    'decline',
    'declineInvite',
    'Declines an invitation to a room. The body may be empty or {}.',
  ),
];

/** POST /v1/rooms/:roomId/join|decline: answers an invitation (rooms.join, not rooms.manage). */
function answerInvite(rpc: 'join' | 'decline', operationId: string, summary: string): JsonRoute {
  return jsonRoute({
    method: 'POST',
    url: `/v1/rooms/:roomId/${rpc}`,
    operationId,
    summary,
    capability: 'rooms.join',
    rpc,
    auth: true,
    params: roomPath,
    body: empty,
    bodyOptional: true,
    status: 200,
    response: endpointContract[rpc].result,
    errors: [404, 409],
    handle: ({ token, params }, { calls }) =>
      calls.call(rpc, { auth: { token }, roomId: params.roomId }),
  });
}
