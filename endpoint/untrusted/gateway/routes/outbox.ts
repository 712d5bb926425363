import { z } from 'zod';
import { endpointContract } from '../../../contract.ts';
import { type JsonRoute, jsonRoute } from '../route.ts';

/** The contract's own transaction-id format (`mte.` and 24 hex digits), as a path parameter. */
export const failedPath = z
  .object({ txnId: endpointContract.retrySend.params.shape.txnId })
  .strict();
const empty = z.object({}).strict();

/** The sends the outbox gave up on: list them, queue one again, or drop one. */
export const outboxRoutes: JsonRoute[] = [
  jsonRoute({
    method: 'GET',
    url: '/v1/outbox/failed',
    operationId: 'listFailedSends',
    summary:
      'Sends the outbox gave up on (the homeserver refused them), in rooms this client may see, with the reason.',
    capability: 'messages.send',
    rpc: 'failedSends',
    auth: true,
    status: 200,
    response: endpointContract.failedSends.result,
    handle: ({ token }, { calls }) => calls.call('failedSends', { auth: { token } }),
  }),
  jsonRoute({
    method: 'POST',
    url: '/v1/outbox/failed/:txnId/retry',
    operationId: 'retryFailedSend',
    summary:
      'Queues a failed send again, with the same transaction id (so it still goes out at most once). The body may be empty or {}.',
    capability: 'messages.send',
    rpc: 'retrySend',
    auth: true,
    params: failedPath,
    body: empty,
    bodyOptional: true,
    status: 202,
    errors: [404, 409, 507],
    response: endpointContract.retrySend.result,
    handle: ({ token, params }, { calls }) =>
      calls.call('retrySend', { auth: { token }, txnId: params.txnId }),
  }),
  jsonRoute({
    method: 'POST',
    url: '/v1/outbox/failed/:txnId/discard',
    operationId: 'discardFailedSend',
    summary: 'Drops a failed send for good. The body may be empty or {}.',
    capability: 'messages.send',
    rpc: 'discardSend',
    auth: true,
    params: failedPath,
    body: empty,
    bodyOptional: true,
    status: 200,
    errors: [404],
    response: endpointContract.discardSend.result,
    handle: ({ token, params }, { calls }) =>
      calls.call('discardSend', { auth: { token }, txnId: params.txnId }),
  }),
];
