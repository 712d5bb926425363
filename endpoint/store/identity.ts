/**
 * Whose store this is: the Matrix user id (and, once the homeserver assigned it, the device
 * id), kept at the start of every snapshot's sealed plaintext (format.ts), so it is
 * authenticated with the store key and survives every compaction. Opening a store with another
 * configured identity is refused (STORE_WRONG_IDENTITY): a data directory copied from another
 * account, even with that account's vault, must not come up as this endpoint.
 *
 * The configured user may be a localpart ("alice", as the endpoint's config usually has it) or
 * a full user id ("@alice:example.org"). Two full ids must be equal; otherwise localparts are
 * compared (case-insensitively, as homeservers treat logins). The full id and the device id are
 * recorded as soon as the endpoint knows them (DurableStore.bindIdentity, after login).
 */
import { z } from 'zod';
import { StoreCode, StoreError } from './errors.ts';

export interface StoreIdentity {
  /** A Matrix user id (@localpart:server) or, until the homeserver confirmed it, a localpart. */
  userId: string;
  /** The device id, once known. */
  deviceId?: string;
}

const printable = z
  .string()
  .min(1)
  .max(255)
  .regex(/^[\x21-\x7e]+$/);
const identitySchema = z.object({ userId: printable, deviceId: printable.optional() }).strict();
/** null: a store created without an identity (tests, tools); the first one given is adopted. */
const frameSchema = z.object({ v: z.literal(1), identity: identitySchema.nullable() }).strict();

const FRAME_LENGTH_BYTES = 2;

export function checkIdentityOption(identity: unknown): StoreIdentity {
  const parsed = identitySchema.safeParse(identity);
  if (!parsed.success) {
    throw new StoreError(
      StoreCode.BadOptions,
      'identity must be { userId, deviceId? }: printable ASCII, 1 to 255 characters each',
    );
  }
  const { userId, deviceId } = parsed.data;
  return deviceId === undefined ? { userId } : { userId, deviceId };
}

/** The snapshot plaintext: identity frame (u16 length, JSON), then `content`. */
export function frameSnapshot(identity: StoreIdentity | null, content: Uint8Array): Buffer {
  const json = Buffer.from(JSON.stringify({ v: 1, identity }), 'utf8');
  const length = Buffer.alloc(FRAME_LENGTH_BYTES);
  length.writeUInt16BE(json.length);
  return Buffer.concat([length, json, content]);
}

/** Splits an authenticated snapshot plaintext; `content` shares its memory. */
export function unframeSnapshot(plaintext: Buffer): {
  identity: StoreIdentity | null;
  content: Buffer;
} {
  const corrupt = (): StoreError =>
    new StoreError(StoreCode.Corrupt, 'the snapshot has no valid identity frame');
  if (plaintext.length < FRAME_LENGTH_BYTES) throw corrupt();
  const end = FRAME_LENGTH_BYTES + plaintext.readUInt16BE(0);
  if (plaintext.length < end) throw corrupt();
  let json: unknown;
  try {
    json = JSON.parse(plaintext.subarray(FRAME_LENGTH_BYTES, end).toString('utf8'));
  } catch {
    throw corrupt();
  }
  const parsed = frameSchema.safeParse(json);
  if (!parsed.success) throw corrupt();
  const identity = parsed.data.identity && checkIdentityOption(parsed.data.identity);
  return { identity, content: plaintext.subarray(end) };
}

function isFullId(id: string): boolean {
  return /^@[^:]+:.+$/.test(id);
}

function localpart(id: string): string {
  const bare = id.startsWith('@') ? id.slice(1) : id;
  const colon = bare.indexOf(':');
  return (colon === -1 ? bare : bare.slice(0, colon)).toLowerCase();
}

export function sameUser(a: string, b: string): boolean {
  return isFullId(a) && isFullId(b) ? a === b : localpart(a) === localpart(b);
}

function describe(identity: StoreIdentity): string {
  return identity.deviceId === undefined
    ? identity.userId
    : `${identity.userId} (device ${identity.deviceId})`;
}

/**
 * The identity to keep after `next` was asserted for a store that has `stored`: refused when
 * the user differs, or when both name a device and the devices differ.
 */
export function reconcileIdentity(
  stored: StoreIdentity | null,
  next: StoreIdentity,
  dir: string,
  what: string,
): StoreIdentity {
  if (stored === null) return next;
  const deviceClash =
    stored.deviceId !== undefined &&
    next.deviceId !== undefined &&
    stored.deviceId !== next.deviceId;
  if (!sameUser(stored.userId, next.userId) || deviceClash) {
    throw new StoreError(
      StoreCode.WrongIdentity,
      `the store in ${dir} belongs to ${describe(stored)}, not to ${describe(next)} (${what}): ` +
        "it is another account's or device's store; point the endpoint at its own data directory",
    );
  }
  // Keep the most specific of each: a full user id over a localpart, a known device id.
  const userId = isFullId(next.userId) || !isFullId(stored.userId) ? next.userId : stored.userId;
  const deviceId = next.deviceId ?? stored.deviceId;
  return deviceId === undefined ? { userId } : { userId, deviceId };
}

export function sameIdentity(a: StoreIdentity | null, b: StoreIdentity | null): boolean {
  return a?.userId === b?.userId && a?.deviceId === b?.deviceId;
}
