import { VaultCode, VaultError, type SigningPurpose } from '../vault.ts';

/**
 * The one input kind every purpose signs today: a Matrix cross-signing key object
 * `{"keys":{"ed25519:<pub>":"<pub>"},"usage":[<usage>],"user_id":<user>}` in Matrix canonical
 * JSON (keys sorted, no whitespace, UTF-8, no escapes), with `signatures` and `unsigned`
 * already removed, as the signing-JSON algorithm does before signing.
 *
 * The bytes are parsed, checked field by field, re-serialised here and compared with the input
 * byte for byte: whatever differs between JSON parsers (duplicate keys, `\u` escapes, a BOM,
 * whitespace, key order, number forms) cannot make a verifier read something other than what
 * was checked. What is signed is the re-serialisation, never the caller's buffer.
 */

/** A key object is under 400 bytes with the longest user id Matrix allows (255). */
export const MAX_KEY_OBJECT_BYTES = 1024;

/** What a purpose's check knows besides the message: the vault's own facts, never the caller's. */
export interface PurposeContext {
  /** The vault owner's Matrix user id, from the vault's own config file. */
  owner: string;
  /** The vault's cross-signing-master public key, unpadded base64 (asked of the backend). */
  masterPublic: () => Promise<string>;
}

export interface KeyObject {
  userId: string;
  usage: string;
  /** Unpadded base64 of the 32-byte Ed25519 public key (also the key id's suffix). */
  publicKey: string;
}

/** A refusal naming the rule broken, never the bytes (VAULT_SIGN_REFUSED). */
export function refusal(purpose: SigningPurpose, rule: string): VaultError {
  return new VaultError(VaultCode.SignRefused, `${purpose}: refused to sign: ${rule}`);
}

/** Unpadded base64 of exactly 32 bytes, in its one canonical spelling. */
export function isEd25519Base64(value: string): boolean {
  if (!/^[A-Za-z0-9+/]{43}$/.test(value)) return false;
  const raw = Buffer.from(value, 'base64');
  return raw.length === 32 && raw.toString('base64').replace(/=+$/, '') === value;
}

/** Printable ASCII: JSON escapes only `"` and `\` in it, as canonical JSON does. */
const PRINTABLE = /^[\x20-\x7e]*$/;

function str(value: string): string {
  if (!PRINTABLE.test(value)) throw new Error('purposes: refusing to serialise a non-ASCII string');
  return JSON.stringify(value);
}

/**
 * The canonical JSON of a key object. Written out by hand over printable ASCII strings, so it
 * is canonical by construction (keys in sorted order, only `"` and `\` escaped) and depends on no
 * serialiser's choices.
 */
export function keyObjectBytes(key: KeyObject): Uint8Array {
  const id = `ed25519:${key.publicKey}`;
  const text =
    `{"keys":{${str(id)}:${str(key.publicKey)}},` +
    `"usage":[${str(key.usage)}],` +
    `"user_id":${str(key.userId)}}`;
  return new TextEncoder().encode(text);
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/**
 * Parses `message` as a key object of the shape above, or throws VAULT_SIGN_REFUSED naming the
 * first rule it breaks. Checks the shape only: whose key it is and which usage is allowed are
 * the purpose's (cross-signing.ts, x509.ts), and so is the byte comparison (`exactly`), which
 * comes last so that a well-formed but wrong object is refused for what is wrong with it.
 */
export function parseKeyObject(purpose: SigningPurpose, message: Uint8Array): KeyObject {
  const refuse = (rule: string): never => {
    throw refusal(purpose, rule);
  };
  if (message.length > MAX_KEY_OBJECT_BYTES) {
    refuse(`the message is longer than a cross-signing key object (${MAX_KEY_OBJECT_BYTES} bytes)`);
  }
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(message);
  } catch {
    return refuse('the message is not UTF-8');
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    return refuse('the message is not JSON');
  }
  if (!isRecord(parsed)) return refuse('the message is not a JSON object');
  const fields = Object.keys(parsed).sort().join(',');
  if (fields !== 'keys,usage,user_id') {
    refuse(
      'a cross-signing key object has exactly the fields keys, usage and user_id (signatures and unsigned are removed before signing)',
    );
  }
  const { user_id: userId, usage, keys } = parsed;
  if (typeof userId !== 'string') return refuse('user_id is not a string');
  if (!Array.isArray(usage) || usage.length !== 1 || typeof usage[0] !== 'string') {
    return refuse('usage is not a list of exactly one string');
  }
  if (!isRecord(keys)) return refuse('keys is not an object');
  const entries = Object.entries(keys);
  const [only] = entries;
  if (entries.length !== 1 || !only) return refuse('keys does not hold exactly one key');
  const [id, value] = only;
  if (typeof value !== 'string' || !isEd25519Base64(value)) {
    return refuse('the key is not an unpadded base64 Ed25519 public key');
  }
  if (id !== `ed25519:${value}`) return refuse('the key id is not "ed25519:" and the key itself');
  return { userId, usage: usage[0], publicKey: value };
}

/**
 * The bytes to sign: the re-serialisation of `key`, if the caller sent exactly those bytes.
 * Catches every non-canonical spelling of an acceptable object.
 */
export function exactly(purpose: SigningPurpose, message: Uint8Array, key: KeyObject): Uint8Array {
  let canonical: Uint8Array;
  try {
    canonical = keyObjectBytes(key);
  } catch {
    throw refusal(purpose, 'the user id holds characters a key object never has');
  }
  if (!Buffer.from(canonical).equals(Buffer.from(message))) {
    throw refusal(purpose, 'the message is not in Matrix canonical JSON');
  }
  return canonical;
}
