import { endpointContract } from '../../../contract.ts';
import { type JsonRoute, jsonRoute } from '../route.ts';

export const statusRoutes: JsonRoute[] = [
  jsonRoute({
    method: 'GET',
    url: '/v1/status',
    operationId: 'getStatus',
    summary: 'Who the endpoint is (user, device, queued sends) and who the caller is.',
    capability: null,
    rpc: 'status',
    auth: true,
    status: 200,
    response: endpointContract.status.result,
    handle: ({ token }, { calls }) => calls.call('status', { auth: { token } }),
  }),
];
