import { z } from 'zod';
import { endpointContract, userId } from '../../../contract.ts';
import { type JsonRoute, jsonRoute } from '../route.ts';

export const contactPath = z.object({ userId }).strict();

export const contactRoutes: JsonRoute[] = [
  jsonRoute({
    method: 'GET',
    url: '/v1/contacts',
    operationId: 'listContacts',
    summary:
      'The users this client shares visible rooms with, their devices and how far each is trusted.',
    capability: 'contacts.read',
    rpc: 'contacts',
    auth: true,
    status: 200,
    response: endpointContract.contacts.result,
    handle: ({ token }, { calls }) => calls.call('contacts', { auth: { token } }),
  }),
  jsonRoute({
    method: 'GET',
    url: '/v1/contacts/:userId',
    operationId: 'getContact',
    summary: 'One contact, who must share a room this client may see.',
    capability: 'contacts.read',
    rpc: 'contact',
    auth: true,
    params: contactPath,
    status: 200,
    response: endpointContract.contact.result,
    handle: ({ token, params }, { calls }) =>
      calls.call('contact', { auth: { token }, userId: params.userId }),
  }),
];
