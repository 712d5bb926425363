/**
 * A fake endpoint for the gateway's unit tests: the real RPC (serve/createClient over an
 * in-process channel) with handlers that answer from fixed data and record every call. Faking
 * this boundary is fine here; the integration tests run the gateway against the real endpoint.
 */
import {
  type Handlers,
  RpcError,
  createClient,
  inProcessPair,
  serve,
} from '../../keyvault/common/rpc/index.ts';
import {
  ATTACHMENT_CHUNK_BYTES,
  type EndpointContract,
  MAX_ATTACHMENT_BYTES,
  endpointContract,
} from '../../endpoint/contract.ts';

export const TOKEN = 'good-token_0123456789abcdefghijklmnopqrstuvw';
export const ROOM = '!room:example.org';
export const UPLOAD_ID = 'up_0123456789abcdefghijkl';
export const DOWNLOAD_ID = 'dl_0123456789abcdefghijkl';
/** What the fake endpoint serves as every attachment: 300 KiB, so two chunks. */
export const DOWNLOAD_BYTES = Buffer.from(
  Array.from({ length: 300 * 1024 }, (_, i) => (i * 7 + (i >> 8)) & 0xff),
);
export const EXCLUDED = [{ userId: '@eve:example.org', reason: 'no-cross-signing' as const }];

export interface Call {
  method: string;
  params: Record<string, unknown>;
}

function checkToken(params: { auth: { token: string } }): void {
  if (params.auth.token !== TOKEN) throw new RpcError('UNAUTHENTICATED', 'unknown token');
}

/** The browser refusals the gateway reported to the fake endpoint, in order. */
export const gatewayRefusals: string[] = [];

/** Transfers the gateway asked the fake endpoint to cancel, in order. */
export const cancelled: string[] = [];

export function defaultHandlers(): Handlers<EndpointContract> {
  let received = 0;
  return {
    ready: async () => Promise.resolve({}),
    gatewayRefusal: async ({ reason, count }) => {
      for (let i = 0; i < count; i++) gatewayRefusals.push(reason);
      return Promise.resolve({});
    },
    status: async (p) => {
      checkToken(p);
      return Promise.resolve({
        userId: '@bot:example.org',
        deviceId: 'DEVICE',
        pendingSends: 0,
        health: { vault: 'available', homeserver: 'reachable', storage: 'ok' },
        client: { name: 'ui', capabilities: ['rooms.read'] },
      });
    },
    rooms: async (p) => {
      checkToken(p);
      return Promise.resolve({
        rooms: [
          {
            roomId: ROOM,
            membership: 'join' as const,
            members: ['@bot:example.org'],
            encrypted: true,
            roomKeyRecipients: 'cross-signed' as const,
            showUnverifiedMessages: false,
          },
        ],
      });
    },
    timeline: async (p) => {
      checkToken(p);
      return Promise.resolve({
        items: [
          {
            eventId: '$e1',
            sender: '@a:example.org',
            ts: 1,
            kind: 'message' as const,
            decrypted: true,
            body: 'hi',
          },
        ],
        next: 'tok1',
      });
    },
    send: async (p) => {
      checkToken(p);
      return Promise.resolve({ txnId: 'txn1', excluded: EXCLUDED });
    },
    react: async (p) => {
      checkToken(p);
      return Promise.resolve({ txnId: 'txn-react', excluded: [] });
    },
    redact: async (p) => {
      checkToken(p);
      return Promise.resolve({ txnId: 'txn-redact' });
    },
    failedSends: async (p) => {
      checkToken(p);
      return Promise.resolve({ failed: [FAILED] });
    },
    retrySend: async (p) => {
      checkToken(p);
      return Promise.resolve({ txnId: p.txnId });
    },
    discardSend: async (p) => {
      checkToken(p);
      return Promise.resolve({});
    },
    uploadStart: async (p) => {
      checkToken(p);
      received = 0;
      return Promise.resolve({
        upload: UPLOAD_ID,
        chunkBytes: ATTACHMENT_CHUNK_BYTES,
        maxBytes: MAX_ATTACHMENT_BYTES,
      });
    },
    uploadChunk: async (p) => {
      checkToken(p);
      if (p.offset !== received) throw new RpcError('UPLOAD_INCOMPLETE', 'out of order');
      received += Buffer.from(p.data, 'base64').length;
      return Promise.resolve({ received });
    },
    uploadFinish: async (p) => {
      checkToken(p);
      return Promise.resolve({ txnId: 'txn-upload', excluded: EXCLUDED });
    },
    downloadStart: async (p) => {
      checkToken(p);
      return Promise.resolve({
        download: DOWNLOAD_ID,
        size: DOWNLOAD_BYTES.length,
        attachment: {
          msgtype: 'm.file' as const,
          name: 'report.pdf',
          mimetype: 'application/pdf',
          size: DOWNLOAD_BYTES.length,
          encrypted: true,
        },
        contentType: 'application/pdf',
        chunkBytes: ATTACHMENT_CHUNK_BYTES,
      });
    },
    downloadChunk: async (p) => {
      checkToken(p);
      const data = DOWNLOAD_BYTES.subarray(p.offset, p.offset + ATTACHMENT_CHUNK_BYTES);
      return Promise.resolve({
        data: data.toString('base64'),
        done: p.offset + data.length >= DOWNLOAD_BYTES.length,
      });
    },
    transferCancel: async (p) => {
      checkToken(p);
      cancelled.push(p.transfer);
      return Promise.resolve({});
    },
    join: async (p) => {
      checkToken(p);
      return Promise.resolve({});
    },
    decline: async (p) => {
      checkToken(p);
      return Promise.resolve({});
    },
    createRoom: async (p) => {
      checkToken(p);
      return Promise.resolve({ roomId: '!new:example.org' });
    },
    invite: async (p) => {
      checkToken(p);
      return Promise.resolve({});
    },
    leave: async (p) => {
      checkToken(p);
      return Promise.resolve({});
    },
    contacts: async (p) => {
      checkToken(p);
      return Promise.resolve({ contacts: [] });
    },
    contact: async (p) => {
      checkToken(p);
      return Promise.resolve({
        userId: p.userId,
        rooms: [ROOM],
        identity: { state: 'none' as const, wasVerified: false },
        devices: [],
      });
    },
    subscribe: async (p) => {
      checkToken(p);
      return Promise.resolve({ subscription: 'sub_0123456789abcdefghijkl', cursor: 10 });
    },
    events: async (p, ctx) => {
      checkToken(p);
      // Nothing new: wait out the poll (or until the call is abandoned).
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, p.waitMs);
        ctx.signal.addEventListener('abort', () => {
          clearTimeout(timer);
          resolve();
        });
      });
      return { events: [], cursor: p.after, gap: false };
    },
    unsubscribe: async (p) => {
      checkToken(p);
      return Promise.resolve({});
    },
    verifications: async (p) => {
      checkToken(p);
      return Promise.resolve({ verifications: [FLOW] });
    },
    verificationRequest: async (p) => {
      checkToken(p);
      return Promise.resolve({ ...FLOW, userId: p.userId, deviceId: p.deviceId });
    },
    verification: async (p) => {
      checkToken(p);
      if (p.flowId !== FLOW.flowId) throw new RpcError('NOT_FOUND', 'no such verification');
      return Promise.resolve(FLOW);
    },
    verificationAccept: async (p) => {
      checkToken(p);
      return Promise.resolve({ ...FLOW, phase: 'ready' as const });
    },
    verificationConfirm: async (p) => {
      checkToken(p);
      return Promise.resolve({ ...FLOW, phase: 'confirmed' as const });
    },
    verificationCancel: async (p) => {
      checkToken(p);
      return Promise.resolve({ ...FLOW, phase: 'cancelled' as const });
    },
    identityAcknowledge: async (p) => {
      checkToken(p);
      return Promise.resolve({ identity: { state: 'pinned' as const, wasVerified: false } });
    },
    identityWithdraw: async (p) => {
      checkToken(p);
      return Promise.resolve({ identity: { state: 'verified' as const, wasVerified: false } });
    },
    attest: async (p) => {
      checkToken(p);
      return Promise.resolve({ ...ATTESTED, userId: p.userId, deviceId: p.deviceId });
    },
    attestation: async (p) => {
      checkToken(p);
      return Promise.resolve({ result: { ...ATTESTED, userId: p.userId, deviceId: p.deviceId } });
    },
    evidence: async (p) => {
      checkToken(p);
      return Promise.resolve({ evidence: '{}' });
    },
    activate: async (p) => {
      checkToken(p);
      return Promise.resolve({ proof: Buffer.alloc(32).toString('base64') });
    },
    backupStatus: async (p) => {
      checkToken(p);
      return Promise.resolve(BACKUP_STATUS);
    },
    backupCreate: async (p) => {
      checkToken(p);
      return Promise.resolve(BACKUP_STATUS);
    },
    backupRotate: async (p) => {
      checkToken(p);
      return Promise.resolve({ ...BACKUP_STATUS, deletedVersion: '1' });
    },
    backupRecover: async (p) => {
      checkToken(p);
      return Promise.resolve({ version: '2', total: 3, imported: 3, failed: {} });
    },
  };
}

export const BACKUP_STATUS = {
  state: 'active',
  key: { mode: 'vault', publicKey: 'a'.repeat(43), canDecrypt: true },
  version: '2',
  counts: { total: 3, backedUp: 3 },
  skipped: 0,
} as const;

export const ATTESTED = {
  userId: '@bob:example.org',
  deviceId: 'BOBDEVICE',
  state: 'passed' as const,
  at: 1_700_000_000_000,
  failures: [],
};

export const FAILED = {
  txnId: 'mte.0123456789abcdef01234567',
  roomId: ROOM,
  kind: 'text' as const,
  preview: 'hello',
  acceptedAt: 1_700_000_000_000,
  failedAt: 1_700_000_001_000,
  code: 'M_FORBIDDEN',
  reason: 'You are not allowed to send here.',
};

export const FLOW = {
  flowId: 'flow-1',
  userId: '@bob:example.org',
  deviceId: 'BOBDEVICE',
  weStarted: false,
  phase: 'requested' as const,
  timeRemainingMs: 600_000,
};

export interface FakeEndpoint {
  client: ReturnType<typeof createClient<EndpointContract>>;
  calls: Call[];
  close(): void;
}

export function fakeEndpoint(overrides: Partial<Handlers<EndpointContract>> = {}): FakeEndpoint {
  const [clientEnd, serverEnd] = inProcessPair();
  const calls: Call[] = [];
  const handlers = { ...defaultHandlers(), ...overrides } as Record<
    string,
    (params: unknown, ctx: unknown) => Promise<unknown>
  >;
  const recorded = Object.fromEntries(
    Object.entries(handlers).map(([method, handler]) => [
      method,
      (params: unknown, ctx: unknown) => {
        calls.push({ method, params: params as Record<string, unknown> });
        return handler(params, ctx);
      },
    ]),
  ) as unknown as Handlers<EndpointContract>;
  const server = serve(serverEnd, endpointContract, recorded, { maxInFlight: 1000 });
  const client = createClient(clientEnd, endpointContract, { timeoutMs: 5_000 });
  return {
    client,
    calls,
    close() {
      client.close();
      server.close();
    },
  };
}

export function bearer(token = TOKEN): { authorization: string } {
  return { authorization: `Bearer ${token}` };
}
