import { randomBytes } from 'node:crypto';
import { type IncomingMessage, type ServerResponse, createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { describe, expect, it } from 'vitest';
import {
  decryptAttachment,
  encryptAttachment,
  parseEncryptedFile,
} from '../../endpoint/media/index.ts';
import {
  ClientCode,
  HomeserverClient,
  type LoginResult,
  MatrixApiError,
} from '../../endpoint/matrix/index.ts';
import { startSynapse } from '../fixtures/index.ts';
import { useFixture } from '../fixtures/lifecycle.ts';

// The media, single-event, redaction and state calls against a real Synapse, checked by what
// the server stored and serves back. One scripted server at the end stands in for an older
// homeserver without authenticated media, which no Synapse we can start is.
const synapse = useFixture(() => startSynapse());

async function account(): Promise<{ client: HomeserverClient; session: LoginResult }> {
  const user = await synapse().registerUser();
  const client = new HomeserverClient({ baseUrl: synapse().baseUrl });
  const session = await client.login(user.localpart, user.password);
  return { client, session };
}

async function failure(promise: Promise<unknown>): Promise<MatrixApiError> {
  try {
    await promise;
  } catch (e) {
    if (e instanceof MatrixApiError) return e;
    throw e;
  }
  throw new Error('expected a MatrixApiError');
}

const txn = (): string => `txn-${randomBytes(6).toString('hex')}`;

describe('media against Synapse', () => {
  it('uploads and downloads (authenticated media) the same bytes', async () => {
    const { client } = await account();
    const bytes = randomBytes(200_000);
    const mxc = await client.upload(bytes, {
      contentType: 'application/octet-stream',
      filename: 'blob.bin',
    });
    expect(mxc).toMatch(/^mxc:\/\/localhost\/[A-Za-z0-9_-]+$/);
    const back = await client.download(mxc, { maxBytes: bytes.length });
    expect(Buffer.from(back).equals(bytes)).toBe(true);

    // Another user of the same server reads it too (media is not per-user), with its token.
    const other = await account();
    const theirs = await other.client.download(mxc, { maxBytes: 1024 * 1024 });
    expect(Buffer.from(theirs).equals(bytes)).toBe(true);
  });

  it('carries an encrypted attachment: encrypt, upload, download, decrypt', async () => {
    const { client } = await account();
    const plain = randomBytes(70_000);
    const { ciphertext, file } = encryptAttachment(plain);
    const url = await client.upload(ciphertext, { contentType: 'application/octet-stream' });
    // What a peer's event would carry, checked as a peer's would be.
    const received = parseEncryptedFile(JSON.parse(JSON.stringify({ ...file, url })));
    const downloaded = await client.download(received.url, { maxBytes: 1024 * 1024 });
    expect(Buffer.from(decryptAttachment(downloaded, received)).equals(plain)).toBe(true);
  });

  it('stops a download over maxBytes with RESPONSE_TOO_LARGE', async () => {
    const { client } = await account();
    const bytes = randomBytes(4096);
    const mxc = await client.upload(bytes, { contentType: 'application/octet-stream' });
    const error = await failure(client.download(mxc, { maxBytes: 4095 }));
    expect(error).toMatchObject({
      errcode: ClientCode.ResponseTooLarge,
      status: 200,
      retryable: false,
    });
    expect(error.message).toMatch(/exceeds 4095 bytes/);
    expect(await client.download(mxc, { maxBytes: 4096 })).toHaveLength(4096);
  });

  it('reports missing media as 404 M_NOT_FOUND, not as a reason to try the legacy route', async () => {
    const { client } = await account();
    const error = await failure(
      client.download('mxc://localhost/NoSuchMedia0123', { maxBytes: 1024 }),
    );
    expect(error).toMatchObject({ status: 404, errcode: 'M_NOT_FOUND' });
    expect(error.message).toMatch(/^GET \/_matrix\/client\/v1\/media\/download/);
  });

  it('refuses a malformed mxc URI and a bad content type before sending anything', async () => {
    const { client, session } = await account();
    for (const mxc of ['https://localhost/x', 'mxc://localhost/../x', 'mxc://../x']) {
      const error = await failure(client.download(mxc, { maxBytes: 10 }));
      expect(error).toMatchObject({ errcode: ClientCode.BadRequest, status: 0 });
    }
    const bad = await failure(
      client.upload(new Uint8Array(1), { contentType: 'text/plain\r\nx-evil: 1' }),
    );
    expect(bad).toMatchObject({ errcode: ClientCode.BadRequest, status: 0 });
    const name = await failure(
      client.upload(new Uint8Array(1), { contentType: 'text/plain', filename: 'a\nb' }),
    );
    expect(name.errcode).toBe(ClientCode.BadRequest);
    expect(JSON.stringify([bad, name])).not.toContain(session.accessToken);
  });

  it('reads the upload limit from the media config', async () => {
    const { client } = await account();
    const config = await client.mediaConfig();
    if (config.uploadSize !== undefined) {
      expect(Number.isSafeInteger(config.uploadSize)).toBe(true);
      expect(config.uploadSize).toBeGreaterThan(0);
    }
    // Synapse advertises its max_upload_size (50M unless configured).
    expect(config).toEqual({ uploadSize: 50 * 1024 * 1024 });
  });
});

describe('events, redactions and state against Synapse', () => {
  it('fetches a sent event, redacts it, and fetches it again redacted', async () => {
    const { client, session } = await account();
    const roomId = await client.createRoom({ encrypted: false });
    const content = { msgtype: 'm.text', body: `to be redacted ${txn()}` };
    const eventId = await client.sendEvent(roomId, 'm.room.message', txn(), content);
    const before = await client.event(roomId, eventId);
    expect(before).toMatchObject({
      type: 'm.room.message',
      event_id: eventId,
      sender: session.userId,
      content,
    });
    expect(before).not.toHaveProperty('room_id');

    const redactTxn = txn();
    const redaction = await client.redact(roomId, eventId, redactTxn, 'test reason');
    expect(redaction).toMatch(/^\$/);
    // The same txnId is the same redaction, as a retry after a lost response would send.
    await expect(client.redact(roomId, eventId, redactTxn, 'test reason')).resolves.toBe(redaction);

    const after = await client.event(roomId, eventId);
    expect(after.content).toEqual({});
    const because = after.unsigned?.redacted_because as Record<string, unknown> | undefined;
    expect(because).toMatchObject({ event_id: redaction, type: 'm.room.redaction' });

    // `redacts` is in content from room v11 on (Synapse's default is v12) and top-level before;
    // Synapse sends both, and the schema keeps the top-level one for pre-v11 rooms.
    const fetched = await client.event(roomId, redaction);
    expect(fetched.content).toMatchObject({ redacts: eventId, reason: 'test reason' });
    expect(fetched.redacts).toBe(eventId);

    // And /sync carries it the same way, with the timeline's flags.
    const sync = await client.sync({ timeoutMs: 0 });
    const timeline = sync.rooms?.join?.[roomId]?.timeline;
    expect(typeof timeline?.limited).toBe('boolean');
    const synced = timeline?.events?.find((e) => e.event_id === redaction);
    expect(synced?.redacts).toBe(eventId);
  });

  it('refuses to fetch an event that does not exist (404 M_NOT_FOUND)', async () => {
    const { client } = await account();
    const roomId = await client.createRoom({ encrypted: false });
    const error = await failure(client.event(roomId, '$NoSuchEvent'));
    expect(error).toMatchObject({ status: 404, errcode: 'M_NOT_FOUND' });
  });

  it('reads m.room.encryption in an encrypted room and nothing in a plain one', async () => {
    const { client, session } = await account();
    const encrypted = await client.createRoom({});
    const plain = await client.createRoom({ encrypted: false });
    expect(await client.roomState(encrypted, 'm.room.encryption', '')).toEqual({
      algorithm: 'm.megolm.v1.aes-sha2',
    });
    expect(await client.roomState(plain, 'm.room.encryption', '')).toBeUndefined();
    // A non-empty state key is a path segment of its own.
    expect(await client.roomState(plain, 'm.room.member', session.userId)).toMatchObject({
      membership: 'join',
    });
    // Not in the room: the server's refusal, not "unset".
    const stranger = await account();
    const error = await failure(stranger.client.roomState(plain, 'm.room.encryption', ''));
    expect(error).toMatchObject({ status: 403, errcode: 'M_FORBIDDEN' });
  });
});

describe('a homeserver without authenticated media (scripted)', () => {
  it('falls back to /_matrix/media/v3 for downloads (without the token) and the config', async () => {
    const bytes = randomBytes(1000);
    const seen: { url: string; authorization: string | undefined }[] = [];
    const answer = (req: IncomingMessage, res: ServerResponse): void => {
      const url = req.url ?? '';
      seen.push({ url, authorization: req.headers.authorization });
      const json = (status: number, body: unknown): void => {
        res.writeHead(status, { 'content-type': 'application/json' });
        res.end(JSON.stringify(body));
      };
      if (url.startsWith('/_matrix/client/v1/')) {
        json(404, { errcode: 'M_UNRECOGNIZED', error: 'Unrecognized request' });
      } else if (url === '/_matrix/media/v3/download/old.example/Media1') {
        // Chunked, no content-length: the bound is enforced while streaming.
        res.writeHead(200, { 'content-type': 'application/octet-stream' });
        res.write(bytes.subarray(0, 400));
        res.end(bytes.subarray(400));
      } else if (url === '/_matrix/media/v3/config') {
        json(200, { 'm.upload.size': 1234 });
      } else {
        json(404, { errcode: 'M_NOT_FOUND' });
      }
    };
    const server = createServer(answer);
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    try {
      const { port } = server.address() as AddressInfo;
      const token = 'syt_old_server_token';
      const client = new HomeserverClient({
        baseUrl: `http://127.0.0.1:${port}`,
        session: { userId: '@me:old.example', deviceId: 'DEV', accessToken: token },
      });
      const back = await client.download('mxc://old.example/Media1', { maxBytes: 1000 });
      expect(Buffer.from(back).equals(bytes)).toBe(true);
      expect(await client.mediaConfig()).toEqual({ uploadSize: 1234 });
      expect(seen).toEqual([
        {
          url: '/_matrix/client/v1/media/download/old.example/Media1',
          authorization: `Bearer ${token}`,
        },
        { url: '/_matrix/media/v3/download/old.example/Media1', authorization: undefined },
        { url: '/_matrix/client/v1/media/config', authorization: `Bearer ${token}` },
        { url: '/_matrix/media/v3/config', authorization: `Bearer ${token}` },
      ]);
      // The legacy route's own bound holds too.
      const big = await failure(client.download('mxc://old.example/Media1', { maxBytes: 999 }));
      expect(big.errcode).toBe(ClientCode.ResponseTooLarge);
    } finally {
      server.closeAllConnections();
      await new Promise<void>((resolve) => {
        server.close(() => {
          resolve();
        });
      });
    }
  });
});
