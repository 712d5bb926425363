import { z } from 'zod';
import { endpointContract, flowId } from '../../../contract.ts';
import { type JsonRoute, jsonRoute } from '../route.ts';
import { contactPath } from './contacts.ts';

export const flowPath = z.object({ flowId }).strict();
export const requestBody = endpointContract.verificationRequest.params.pick({
  userId: true,
  deviceId: true,
});
export const cancelBody = z
  .object({
    /** true when the emoji differ (m.mismatched_sas); otherwise a plain cancel (m.user). */
    mismatch: z.boolean().optional(),
  })
  .strict();
const empty = z.object({}).strict();
export const acknowledgeBody = endpointContract.identityAcknowledge.params.pick({
  masterKey: true,
});

/** A step on one flow: POST with an empty body, answered with the flow as it now is. */
function step(
  name: 'accept' | 'confirm',
  rpc: 'verificationAccept' | 'verificationConfirm',
  summary: string,
): JsonRoute {
  return jsonRoute({
    method: 'POST',
    url: `/v1/verifications/:flowId/${name}`,
    operationId: `${name}Verification`,
    summary,
    capability: 'verification',
    rpc,
    auth: true,
    params: flowPath,
    body: empty,
    bodyOptional: true,
    status: 200,
    response: endpointContract[rpc].result,
    errors: [404, 409],
    handle: ({ token, params }, { calls }) =>
      calls.call(rpc, { auth: { token }, flowId: params.flowId }),
  });
}

export const verificationRoutes: JsonRoute[] = [
  jsonRoute({
    method: 'GET',
    url: '/v1/verifications',
    operationId: 'listVerifications',
    summary:
      'Verification flows in progress or recently finished (incoming requests included), with their phase and, once they can be compared, the emoji and decimals.',
    capability: 'verification',
    rpc: 'verifications',
    auth: true,
    status: 200,
    response: endpointContract.verifications.result,
    handle: ({ token }, { calls }) => calls.call('verifications', { auth: { token } }),
  }),
  jsonRoute({
    method: 'POST',
    url: '/v1/verifications',
    operationId: 'requestVerification',
    summary:
      "Asks one device of a contact (or one of our own other devices) to verify by emoji (SAS); without `deviceId`, the contact in our direct room with them (any of their devices may answer), or else their only device (409 when there are several). SAS starts once the other side accepts; watch the flow's phase.",
    capability: 'verification',
    rpc: 'verificationRequest',
    auth: true,
    body: requestBody,
    status: 201,
    response: endpointContract.verificationRequest.result,
    errors: [404, 409],
    handle: ({ token, body }, { calls }) =>
      calls.call('verificationRequest', {
        auth: { token },
        userId: body.userId,
        ...(body.deviceId === undefined ? {} : { deviceId: body.deviceId }),
      }),
  }),
  jsonRoute({
    method: 'GET',
    url: '/v1/verifications/:flowId',
    operationId: 'getVerification',
    summary: 'One verification flow.',
    capability: 'verification',
    rpc: 'verification',
    auth: true,
    params: flowPath,
    status: 200,
    response: endpointContract.verification.result,
    errors: [404],
    handle: ({ token, params }, { calls }) =>
      calls.call('verification', { auth: { token }, flowId: params.flowId }),
  }),
  step('accept', 'verificationAccept', 'Accepts an incoming verification request.'),
  step(
    'confirm',
    'verificationConfirm',
    'The emoji (or decimals) are the same on both screens: the other side becomes verified, and is cross-signed by us.',
  ),
  jsonRoute({
    method: 'POST',
    url: '/v1/verifications/:flowId/cancel',
    operationId: 'cancelVerification',
    summary:
      'Cancels a verification at any step; `{"mismatch": true}` when the emoji differ. The body may be empty.',
    capability: 'verification',
    rpc: 'verificationCancel',
    auth: true,
    params: flowPath,
    body: cancelBody,
    bodyOptional: true,
    status: 200,
    response: endpointContract.verificationCancel.result,
    errors: [404, 409],
    handle: ({ token, params, body }, { calls }) =>
      calls.call('verificationCancel', {
        auth: { token },
        flowId: params.flowId,
        ...(body.mismatch === undefined ? {} : { mismatch: body.mismatch }),
      }),
  }),
  jsonRoute({
    method: 'POST',
    url: '/v1/contacts/:userId/identity/acknowledge',
    operationId: 'acknowledgeIdentity',
    summary:
      "Accepts a contact's changed cross-signing identity (pins the new master key), which lifts the block on sending to rooms they are in. Pass the `masterKey` the user was shown: refused (409) if the identity changed again since, or did not change at all.",
    capability: 'verification',
    rpc: 'identityAcknowledge',
    auth: true,
    params: contactPath,
    body: acknowledgeBody,
    bodyOptional: true,
    status: 200,
    response: endpointContract.identityAcknowledge.result,
    errors: [404, 409],
    handle: ({ token, params, body }, { calls }) =>
      calls.call('identityAcknowledge', {
        auth: { token },
        userId: params.userId,
        ...(body.masterKey === undefined ? {} : { masterKey: body.masterKey }),
      }),
  }),
  jsonRoute({
    method: 'POST',
    url: '/v1/contacts/:userId/identity/withdraw-verification',
    operationId: 'withdrawVerification',
    summary:
      'Stops requiring that this contact stays verified: a later identity change is then reported as a pin violation, not a verification violation.',
    capability: 'verification',
    rpc: 'identityWithdraw',
    auth: true,
    params: contactPath,
    body: empty,
    bodyOptional: true,
    status: 200,
    response: endpointContract.identityWithdraw.result,
    errors: [404, 409],
    handle: ({ token, params }, { calls }) =>
      calls.call('identityWithdraw', { auth: { token }, userId: params.userId }),
  }),
];
