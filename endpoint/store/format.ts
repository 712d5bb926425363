/**
 * On-disk formats. Every multi-byte integer is big-endian.
 *
 * snapshot, snapshot.next:
 *   "MTESNAP1" | epoch u64 | keyCheck[16] | nonce[12] | AES-GCM(ciphertext) | tag[16]
 *   AAD = the first 32 bytes, so the epoch cannot be edited without breaking the tag.
 * journal:
 *   header  "MTEJRNL1" | epoch u64 | keyCheck[16] | HMAC[16] over the preceding 32 bytes
 *   records length u32 | nonce[12] | ciphertext | tag[16]      (length covers nonce..tag)
 *   record AAD = "MTEJREC1" | epoch u64 | seq u64, so a record cannot be moved to another
 *   position or epoch, and a dropped middle record breaks the next one's tag.
 */
import { timingSafeEqual } from 'node:crypto';
import { StoreCode, StoreError } from './errors.ts';
import {
  KEY_CHECK_BYTES,
  MAC_BYTES,
  NONCE_BYTES,
  TAG_BYTES,
  mac,
  seal,
  unseal,
  type StoreKeys,
} from './keys.ts';

const SNAPSHOT_MAGIC = Buffer.from('MTESNAP1');
const JOURNAL_MAGIC = Buffer.from('MTEJRNL1');
const RECORD_AAD_TAG = Buffer.from('MTEJREC1');
const SNAPSHOT_PREFIX = 8 + 8 + KEY_CHECK_BYTES;
export const JOURNAL_HEADER_BYTES = 8 + 8 + KEY_CHECK_BYTES + MAC_BYTES;
const LENGTH_BYTES = 4;
const MIN_RECORD = NONCE_BYTES + TAG_BYTES;
/** Far above any real transaction; a larger length field can only be damage. */
const MAX_RECORD = 1 << 30;

function u64(value: bigint): Buffer {
  const out = Buffer.alloc(8);
  out.writeBigUInt64BE(value);
  return out;
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && timingSafeEqual(a, b);
}

export function sealSnapshot(keys: StoreKeys, epoch: bigint, plaintext: Uint8Array): Buffer {
  const prefix = Buffer.concat([SNAPSHOT_MAGIC, u64(epoch), keys.keyCheck]);
  return Buffer.concat([prefix, seal(keys.snapshot, prefix, plaintext)]);
}

/** Reads the epoch without decrypting; refuses a file sealed under another key. */
export function snapshotEpoch(keys: StoreKeys, bytes: Uint8Array, file: string): bigint {
  const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (buf.length < SNAPSHOT_PREFIX || !sameBytes(buf.subarray(0, 8), SNAPSHOT_MAGIC)) {
    throw new StoreError(StoreCode.Tampered, `${file} is not a store snapshot`);
  }
  if (!sameBytes(buf.subarray(16, SNAPSHOT_PREFIX), keys.keyCheck)) {
    throw wrongKey(file);
  }
  return buf.readBigUInt64BE(8);
}

export function openSnapshot(
  keys: StoreKeys,
  bytes: Uint8Array,
  file: string,
): { epoch: bigint; plaintext: Buffer } {
  const epoch = snapshotEpoch(keys, bytes, file);
  const plaintext = unseal(
    keys.snapshot,
    bytes.subarray(0, SNAPSHOT_PREFIX),
    bytes.subarray(SNAPSHOT_PREFIX),
  );
  if (plaintext === null) {
    throw new StoreError(StoreCode.Tampered, `${file} fails authentication (modified or damaged)`);
  }
  return { epoch, plaintext };
}

export function journalHeader(keys: StoreKeys, epoch: bigint): Buffer {
  const body = Buffer.concat([JOURNAL_MAGIC, u64(epoch), keys.keyCheck]);
  return Buffer.concat([body, mac(keys.header, body)]);
}

export function journalEpoch(keys: StoreKeys, bytes: Buffer, file: string): bigint {
  if (bytes.length < JOURNAL_HEADER_BYTES || !sameBytes(bytes.subarray(0, 8), JOURNAL_MAGIC)) {
    throw new StoreError(StoreCode.Tampered, `${file} has no valid journal header`);
  }
  const body = bytes.subarray(0, JOURNAL_HEADER_BYTES - MAC_BYTES);
  if (!sameBytes(body.subarray(16), keys.keyCheck)) throw wrongKey(file);
  if (!sameBytes(bytes.subarray(body.length, JOURNAL_HEADER_BYTES), mac(keys.header, body))) {
    throw new StoreError(StoreCode.Tampered, `${file} header fails authentication`);
  }
  return bytes.readBigUInt64BE(8);
}

function recordAad(epoch: bigint, seq: number): Buffer {
  return Buffer.concat([RECORD_AAD_TAG, u64(epoch), u64(BigInt(seq))]);
}

export function sealRecord(
  keys: StoreKeys,
  epoch: bigint,
  seq: number,
  plaintext: Uint8Array,
): Buffer {
  const sealed = seal(keys.journal, recordAad(epoch, seq), plaintext);
  const length = Buffer.alloc(LENGTH_BYTES);
  length.writeUInt32BE(sealed.length);
  return Buffer.concat([length, sealed]);
}

export interface JournalScan {
  /** Decrypted record payloads, in order. */
  payloads: Buffer[];
  /** Bytes of header and intact records; anything after is a torn tail. */
  validLength: number;
  /** Bytes dropped after validLength. */
  tornBytes: number;
}

/**
 * Walks the records after the header. A record cut short (a write interrupted by kill -9 or a
 * crash: the tail is shorter than its length says, or is all zeroes as a filesystem leaves a
 * block allocated before its data was written) ends the journal and is reported as torn; it
 * was never acknowledged, because a commit is only reported after its record is fsynced. A
 * complete record that fails authentication is tampering, never silently skipped.
 */
export function scanJournal(
  keys: StoreKeys,
  bytes: Buffer,
  epoch: bigint,
  file: string,
): JournalScan {
  const payloads: Buffer[] = [];
  let offset = JOURNAL_HEADER_BYTES;
  while (offset < bytes.length) {
    const rest = bytes.subarray(offset);
    if (rest.every((b) => b === 0)) break;
    if (rest.length < LENGTH_BYTES) break;
    const length = rest.readUInt32BE(0);
    if (length < MIN_RECORD || length > MAX_RECORD) {
      throw new StoreError(
        StoreCode.Tampered,
        `${file}: record ${payloads.length} has an invalid length`,
      );
    }
    if (rest.length < LENGTH_BYTES + length) break;
    const sealed = rest.subarray(LENGTH_BYTES, LENGTH_BYTES + length);
    const plaintext = unseal(keys.journal, recordAad(epoch, payloads.length), sealed);
    if (plaintext === null) {
      throw new StoreError(
        StoreCode.Tampered,
        `${file}: record ${payloads.length} fails authentication (modified, reordered or removed records)`,
      );
    }
    payloads.push(plaintext);
    offset += LENGTH_BYTES + length;
  }
  return { payloads, validLength: offset, tornBytes: bytes.length - offset };
}

function wrongKey(file: string): StoreError {
  return new StoreError(
    StoreCode.WrongKey,
    `${file} was sealed under a different store key: this store belongs to another vault (or the vault was re-provisioned). ` +
      'Open it with the vault it was created with; it cannot be read with this one',
  );
}
