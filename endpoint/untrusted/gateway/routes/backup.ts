import { endpointContract } from '../../../contract.ts';
import { type JsonRoute, jsonRoute } from '../route.ts';

/** The `backup` capability: the server-side key backup (endpoint/backup). */
export const backupRoutes: JsonRoute[] = [
  jsonRoute({
    method: 'GET',
    url: '/v1/backup',
    operationId: 'backupStatus',
    summary:
      "The key backup: its state (no-key, off, active, refused), the vault key's mode, the version uploaded to, and how many room keys are backed up. `refused` means the homeserver's current backup is not the one we made and signed: nothing is uploaded.",
    capability: 'backup',
    rpc: 'backupStatus',
    auth: true,
    status: 200,
    response: endpointContract.backupStatus.result,
    handle: ({ token }, { calls }) => calls.call('backupStatus', { auth: { token } }),
  }),
  jsonRoute({
    method: 'POST',
    url: '/v1/backup',
    operationId: 'backupCreate',
    summary:
      "Makes a backup version with the vault's backup key (signed by this device) and starts uploading every room key to it.",
    capability: 'backup',
    rpc: 'backupCreate',
    auth: true,
    status: 200,
    errors: [409],
    response: endpointContract.backupCreate.result,
    handle: ({ token }, { calls }) => calls.call('backupCreate', { auth: { token } }),
  }),
  jsonRoute({
    method: 'POST',
    url: '/v1/backup/rotate',
    operationId: 'backupRotate',
    summary:
      "Makes a new backup version with the vault's current backup key, uploads every room key to it, and only then deletes the old version.",
    capability: 'backup',
    rpc: 'backupRotate',
    auth: true,
    status: 200,
    errors: [409],
    response: endpointContract.backupRotate.result,
    handle: ({ token }, { calls }) => calls.call('backupRotate', { auth: { token } }),
  }),
  jsonRoute({
    method: 'POST',
    url: '/v1/backup/recover',
    operationId: 'backupRecover',
    summary:
      'Restores room keys from the current backup; the vault decrypts them (it must hold the backup key: vault mode, or a recovery key imported into it). Progress arrives as `backup` events.',
    capability: 'backup',
    rpc: 'backupRecover',
    auth: true,
    status: 200,
    errors: [404, 409],
    response: endpointContract.backupRecover.result,
    handle: ({ token }, { calls }) => calls.call('backupRecover', { auth: { token } }),
  }),
];
