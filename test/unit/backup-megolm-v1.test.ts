import * as wasm from '@matrix-org/matrix-sdk-crypto-wasm';
import { beforeAll, describe, expect, it } from 'vitest';
import {
  type BackedUpRoomKey,
  decryptSession,
  encryptSession,
  generateBackupKey,
  publicKeyOf,
} from '../../keyvault/backup/index.ts';

// Our backup decryption (Node's crypto, for the vault) against the crypto core's own backup
// code, the implementation Element uses: each encrypts what the other decrypts.

const fromB64 = (s: string): Uint8Array => new Uint8Array(Buffer.from(s, 'base64'));

const session: BackedUpRoomKey = {
  algorithm: 'm.megolm.v1.aes-sha2',
  sender_key: 'qmuE1sfvIRwZFoWo0xpAXLM9kl4Ybv1vPVyQqUVK1gY',
  session_key: 'AQAAAABvWMNZjKFtebYIePKieQguozuoLgzeY6wKcyJjLJcJhkqG6n5hQf5wKa5wGg',
  sender_claimed_keys: { ed25519: 'ptVAHKPNIHvSCKvS7sn1qpGgu4CKUNI+3ddDqqOjx8A' },
  forwarding_curve25519_key_chain: [],
};

beforeAll(async () => {
  await wasm.initAsync();
});

describe('m.megolm_backup.v1.curve25519-aes-sha2, ours against the crypto core', () => {
  it('derives the same public key from a private key as the core', () => {
    const core = wasm.BackupDecryptionKey.createRandomKey();
    expect(publicKeyOf(fromB64(core.toBase64()))).toBe(core.megolmV1PublicKey.publicKeyBase64);
    core.free();
  });

  it('what we encrypt, the core decrypts to the same room key', () => {
    const core = wasm.BackupDecryptionKey.createRandomKey();
    const data = encryptSession(core.megolmV1PublicKey.publicKeyBase64, session);
    expect(JSON.parse(core.decryptV1(data.ephemeral, data.mac, data.ciphertext))).toEqual(session);
    core.free();
  });

  it('what the core backs up, we decrypt: every session of a real OlmMachine', async () => {
    const ours = generateBackupKey();
    const machine = await wasm.OlmMachine.initialize(
      new wasm.UserId('@alice:example.org'),
      new wasm.DeviceId('BACKUPTEST'),
    );
    try {
      // An outbound session per room, shared with nobody: the core keeps its inbound half.
      const settings = new wasm.EncryptionSettings();
      for (const room of ['!one:example.org', '!two:example.org']) {
        await machine.shareRoomKey(new wasm.RoomId(room), [], settings);
      }
      await machine.enableBackupV1(ours.publicKey, '1');
      const request = await machine.backupRoomKeys();
      expect(request).toBeInstanceOf(wasm.KeysBackupRequest);
      const body = JSON.parse(request?.body ?? '{}') as {
        rooms: Record<string, { sessions: Record<string, { session_data: unknown }> }>;
      };
      const exported = JSON.parse(await machine.exportRoomKeys(() => true)) as (BackedUpRoomKey & {
        room_id: string;
        session_id: string;
      })[];
      expect(exported).toHaveLength(2);
      for (const key of exported) {
        const uploaded = body.rooms[key.room_id]?.sessions[key.session_id];
        expect(uploaded).toBeDefined();
        const result = decryptSession(
          ours.privateKey,
          uploaded?.session_data as Parameters<typeof decryptSession>[1],
        );
        expect(result.ok).toBe(true);
        if (!result.ok) continue;
        expect(result.key.session_key).toBe(key.session_key);
        expect(result.key.sender_key).toBe(key.sender_key);
      }
    } finally {
      machine.close();
    }
  });

  it('data for another backup key is refused by its MAC, and says nothing of the plaintext', () => {
    const mine = generateBackupKey();
    const theirs = generateBackupKey();
    const result = decryptSession(mine.privateKey, encryptSession(theirs.publicKey, session));
    expect(result).toEqual({
      ok: false,
      error: { code: 'BACKUP_MAC_MISMATCH', message: expect.any(String) as string },
    });
    expect(JSON.stringify(result)).not.toContain(session.session_key);
  });

  it('tampered ciphertext is refused (the MAC does not cover it: the shape check does)', () => {
    const key = generateBackupKey();
    const data = encryptSession(key.publicKey, session);
    const bytes = Buffer.from(data.ciphertext, 'base64');
    bytes[0] = (bytes[0] ?? 0) ^ 0x01; // the first block: CBC garbles it, the JSON breaks
    const result = decryptSession(key.privateKey, {
      ...data,
      ciphertext: bytes.toString('base64').replace(/=+$/, ''),
    });
    expect(result.ok).toBe(false);
    if (!result.ok) expect(result.error.code).toBe('BACKUP_NOT_A_ROOM_KEY');
  });

  it('decrypts only room keys: any other JSON encrypted to the key is refused', () => {
    const key = generateBackupKey();
    const notAKey = { ...session, algorithm: 'm.something.else' } as unknown as BackedUpRoomKey;
    const result = decryptSession(key.privateKey, encryptSession(key.publicKey, notAKey));
    expect(result.ok).toBe(false);
    if (!result.ok) expect(result.error.code).toBe('BACKUP_NOT_A_ROOM_KEY');
  });

  it('malformed session_data gets a typed error, not a throw', () => {
    const key = generateBackupKey();
    const good = encryptSession(key.publicKey, session);
    for (const data of [
      { ...good, ephemeral: 'not base64!' },
      { ...good, ephemeral: Buffer.alloc(31).toString('base64') },
      { ...good, mac: 'AAAA' },
      { ...good, ciphertext: Buffer.alloc(15).toString('base64') },
      // A low-order point: the shared secret would be all zeroes.
      { ...good, ephemeral: Buffer.alloc(32).toString('base64').replace(/=+$/, '') },
    ]) {
      const result = decryptSession(key.privateKey, data);
      expect(result.ok).toBe(false);
      if (!result.ok) expect(result.error.code).toBe('BACKUP_BAD_INPUT');
    }
  });
});
