import {
  type KeyObject,
  createCipheriv,
  createDecipheriv,
  createHmac,
  createPrivateKey,
  createPublicKey,
  diffieHellman,
  generateKeyPairSync,
  hkdfSync,
  timingSafeEqual,
} from 'node:crypto';
import { z } from 'zod';

/**
 * The server-side key backup's encryption, `m.megolm_backup.v1.curve25519-aes-sha2` (spec:
 * client-server API, "Server-side key backups"), written with Node's crypto so the vault can
 * decrypt a backed-up session without the crypto core: the backup's private key then never
 * enters the messaging process.
 *
 * Per session: an ephemeral X25519 key agrees a secret with the backup key; HKDF-SHA-256 (salt
 * of 32 zero bytes, empty info) stretches it to 80 bytes: an AES-256 key, an HMAC key and a CBC
 * IV. The MAC is HMAC-SHA-256 of an empty string, truncated to 8 bytes: a libolm bug the spec
 * adopted, so it authenticates the keys but not the ciphertext. The decrypted JSON is therefore
 * checked against the shape of a backed-up room key before anyone sees it.
 */

/** What the vault hands back: a backed-up room key, and nothing else. */
export const backedUpRoomKey = z
  .object({
    algorithm: z.literal('m.megolm.v1.aes-sha2'),
    sender_key: z.string().min(1).max(64),
    session_key: z.string().min(1).max(4096),
    sender_claimed_keys: z.record(z.string(), z.string().max(64)),
    forwarding_curve25519_key_chain: z.array(z.string().max(64)).max(64),
  })
  .loose();
export type BackedUpRoomKey = z.infer<typeof backedUpRoomKey>;

/** `session_data` as the homeserver stores it (unpadded base64 throughout). */
export const encryptedSessionData = z
  .object({
    ephemeral: z.string().min(1).max(64),
    ciphertext: z.string().min(1).max(65_536),
    mac: z.string().min(1).max(64),
  })
  .strict();
export type EncryptedSessionData = z.infer<typeof encryptedSessionData>;

export type BackupDecryptError =
  | { code: 'BACKUP_BAD_INPUT'; message: string }
  | { code: 'BACKUP_MAC_MISMATCH'; message: string }
  | { code: 'BACKUP_NOT_A_ROOM_KEY'; message: string };

/** A new backup key: the X25519 private scalar (32 bytes) and the public key, unpadded base64. */
export function generateBackupKey(): { privateKey: Uint8Array; publicKey: string } {
  const scalar = rawScalar(generateKeyPairSync('x25519').privateKey);
  return { privateKey: scalar, publicKey: publicKeyOf(scalar) };
}

/** The public half of a 32-byte private scalar, as the backup's `auth_data.public_key`. */
export function publicKeyOf(privateKey: Uint8Array): string {
  const spki = createPublicKey(privateKeyObject(privateKey)).export({
    format: 'der',
    type: 'spki',
  });
  return unpadded(spki.subarray(spki.length - 32).toString('base64'));
}

/**
 * Decrypts one backed-up session. Refuses, without saying more, a MAC that does not match (the
 * wrong backup key, or data made for another key) and JSON that is not a room key.
 */
export function decryptSession(
  privateKey: Uint8Array | KeyObject,
  data: EncryptedSessionData,
): { ok: true; key: BackedUpRoomKey } | { ok: false; error: BackupDecryptError } {
  const ephemeral = decodeBase64(data.ephemeral, 32);
  const mac = decodeBase64(data.mac, 8);
  const ciphertext = decodeBase64(data.ciphertext);
  if (!ephemeral || !mac || !ciphertext || ciphertext.length === 0 || ciphertext.length % 16) {
    return bad('BACKUP_BAD_INPUT', 'session_data is not base64 of the expected lengths');
  }
  const keys = deriveKeys(privateKey, ephemeral);
  if (!keys) return bad('BACKUP_BAD_INPUT', 'the ephemeral key is not a usable X25519 key');
  try {
    const expected = createHmac('sha256', keys.macKey)
      .update(Buffer.alloc(0))
      .digest()
      .subarray(0, 8);
    if (!timingSafeEqual(expected, mac)) {
      return bad('BACKUP_MAC_MISMATCH', 'the MAC does not match: not encrypted to this backup key');
    }
    let plain: Buffer;
    try {
      const decipher = createDecipheriv('aes-256-cbc', keys.aesKey, keys.iv);
      plain = Buffer.concat([decipher.update(ciphertext), decipher.final()]);
    } catch {
      return bad('BACKUP_NOT_A_ROOM_KEY', 'the ciphertext does not decrypt');
    }
    try {
      const parsed = backedUpRoomKey.safeParse(JSON.parse(plain.toString('utf8')));
      if (!parsed.success) return bad('BACKUP_NOT_A_ROOM_KEY', 'the plaintext is not a room key');
      return { ok: true, key: parsed.data };
    } catch {
      return bad('BACKUP_NOT_A_ROOM_KEY', 'the plaintext is not JSON');
    } finally {
      plain.fill(0);
    }
  } finally {
    keys.aesKey.fill(0);
    keys.macKey.fill(0);
    keys.iv.fill(0);
  }
}

/**
 * Encrypts one session for a backup key, as a client uploading to the backup does. The vault
 * never needs this; tests use it, and the cross-check against the crypto core runs both ways.
 */
export function encryptSession(publicKey: string, session: BackedUpRoomKey): EncryptedSessionData {
  const { privateKey: ephemeralKey } = generateKeyPairSync('x25519');
  const ephemeralScalar = rawScalar(ephemeralKey);
  try {
    const backupPublic = decodeBase64(publicKey, 32);
    if (!backupPublic) throw new Error('not a 32-byte public key');
    const secret = diffieHellman({
      privateKey: ephemeralKey,
      publicKey: publicKeyObject(backupPublic),
    });
    const okm = Buffer.from(hkdfSync('sha256', secret, Buffer.alloc(32), Buffer.alloc(0), 80));
    secret.fill(0);
    const cipher = createCipheriv('aes-256-cbc', okm.subarray(0, 32), okm.subarray(64, 80));
    const plain = Buffer.from(JSON.stringify(session), 'utf8');
    const ciphertext = Buffer.concat([cipher.update(plain), cipher.final()]);
    const mac = createHmac('sha256', okm.subarray(32, 64)).update(Buffer.alloc(0)).digest();
    okm.fill(0);
    plain.fill(0);
    return {
      ephemeral: publicKeyOf(ephemeralScalar),
      ciphertext: unpadded(ciphertext.toString('base64')),
      mac: unpadded(mac.subarray(0, 8).toString('base64')),
    };
  } finally {
    ephemeralScalar.fill(0);
  }
}

function deriveKeys(
  privateKey: Uint8Array | KeyObject,
  ephemeral: Uint8Array,
): { aesKey: Buffer; macKey: Buffer; iv: Buffer } | undefined {
  let secret: Buffer;
  try {
    secret = diffieHellman({
      privateKey: privateKey instanceof Uint8Array ? privateKeyObject(privateKey) : privateKey,
      publicKey: publicKeyObject(ephemeral),
    });
  } catch {
    return undefined; // a low-order point: Node refuses an all-zero shared secret
  }
  const okm = Buffer.from(hkdfSync('sha256', secret, Buffer.alloc(32), Buffer.alloc(0), 80));
  secret.fill(0);
  const out = {
    aesKey: Buffer.from(okm.subarray(0, 32)),
    macKey: Buffer.from(okm.subarray(32, 64)),
    iv: Buffer.from(okm.subarray(64, 80)),
  };
  okm.fill(0);
  return out;
}

// X25519 keys move in and out of Node as DER with a fixed prefix (RFC 8410): PKCS#8 for the
// private scalar, SPKI for the public point.
const PKCS8_X25519 = Buffer.from('302e020100300506032b656e04220420', 'hex');
const SPKI_X25519 = Buffer.from('302a300506032b656e032100', 'hex');

/**
 * The scalar as a Node key, made once for a batch of decryptions (making it per session was
 * most of a restore's time). It lives in this process only, as long as the caller keeps it.
 */
export function privateKeyObject(scalar: Uint8Array): KeyObject {
  if (scalar.length !== 32) throw new Error('a backup private key is 32 bytes');
  const der = Buffer.concat([PKCS8_X25519, scalar]);
  try {
    return createPrivateKey({ key: der, format: 'der', type: 'pkcs8' });
  } finally {
    der.fill(0);
  }
}

function publicKeyObject(point: Uint8Array): KeyObject {
  return createPublicKey({
    key: Buffer.concat([SPKI_X25519, point]),
    format: 'der',
    type: 'spki',
  });
}

/** The raw 32-byte scalar of an X25519 private key (the last 32 bytes of its PKCS#8). */
function rawScalar(key: KeyObject): Uint8Array {
  const der = key.export({ format: 'der', type: 'pkcs8' });
  const scalar = new Uint8Array(der.subarray(der.length - 32));
  der.fill(0);
  return scalar;
}

function decodeBase64(text: string, length?: number): Buffer | undefined {
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(text)) return undefined;
  const bytes = Buffer.from(text, 'base64');
  if (length !== undefined && bytes.length !== length) return undefined;
  return bytes;
}

const unpadded = (b64: string): string => b64.replace(/=+$/, '');

function bad(
  code: BackupDecryptError['code'],
  message: string,
): { ok: false; error: BackupDecryptError } {
  return { ok: false, error: { code, message } };
}
