import { z } from 'zod';
import { deviceId, endpointContract, userId } from '../../../contract.ts';
import { type JsonRoute, jsonRoute } from '../route.ts';

const devicePath = z.object({ userId, deviceId }).strict();

const evidenceBody = z
  .object({
    /** 32 random bytes, base64: the auditor's own nonce, so the evidence is fresh for them. */
    nonce: endpointContract.evidence.params.shape.nonce,
    /** Who the evidence is for: it is bound into the quote. */
    verifier: endpointContract.evidence.params.shape.verifier,
  })
  .strict();

export const attestationRoutes: JsonRoute[] = [
  jsonRoute({
    method: 'POST',
    url: '/v1/contacts/:userId/devices/:deviceId/attestation',
    operationId: 'attestDevice',
    summary:
      "Asks a contact's device to prove with a TPM quote, over an Olm-encrypted to-device exchange, that its keys live in a genuine, measured TPM; answers with the verdict (a failure lists one code per reason). Takes up to 20 s (a first contact makes two round trips: credential activation, then the quote).",
    capability: 'attestation',
    rpc: 'attest',
    auth: true,
    params: devicePath,
    status: 200,
    errors: [404],
    response: endpointContract.attest.result,
    handle: ({ token, params }, { calls }) =>
      calls.call('attest', { auth: { token }, userId: params.userId, deviceId: params.deviceId }),
  }),
  jsonRoute({
    method: 'GET',
    url: '/v1/contacts/:userId/devices/:deviceId/attestation',
    operationId: 'getDeviceAttestation',
    summary:
      "The last attestation verdict for a contact's device; absent if there is none or the device's keys changed since.",
    capability: 'attestation',
    rpc: 'attestation',
    auth: true,
    params: devicePath,
    status: 200,
    errors: [404],
    response: endpointContract.attestation.result,
    handle: ({ token, params }, { calls }) =>
      calls.call('attestation', {
        auth: { token },
        userId: params.userId,
        deviceId: params.deviceId,
      }),
  }),
  jsonRoute({
    method: 'POST',
    url: '/v1/attestation/evidence',
    operationId: 'ownEvidence',
    summary:
      "This endpoint's own evidence (a TPM quote bound to the given nonce and verifier), as JSON text, for offline checking with `node attestation/main.ts verify`.",
    capability: 'attestation',
    rpc: 'evidence',
    auth: true,
    body: evidenceBody,
    status: 200,
    response: endpointContract.evidence.result,
    handle: ({ token, body }, { calls }) =>
      calls.call('evidence', { auth: { token }, nonce: body.nonce, verifier: body.verifier }),
  }),
];

const activationBody = z
  .object({
    credentialBlob: endpointContract.activate.params.shape.credentialBlob,
    encryptedSecret: endpointContract.activate.params.shape.encryptedSecret,
    challengeId: endpointContract.activate.params.shape.challengeId,
  })
  .strict();

attestationRoutes.push(
  jsonRoute({
    method: 'POST',
    url: '/v1/attestation/activation',
    operationId: 'activateCredential',
    summary:
      "Credential activation for an institution's attestation CA (`node attestation/main.ts enrol`): the vault runs TPM2_ActivateCredential on a credential made for this endpoint's EK and AK, and answers the proof (never the credential).",
    capability: 'attestation',
    rpc: 'activate',
    auth: true,
    body: activationBody,
    status: 200,
    response: endpointContract.activate.result,
    handle: ({ token, body }, { calls }) => calls.call('activate', { auth: { token }, ...body }),
  }),
);
