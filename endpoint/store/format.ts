/**
 * On-disk formats. Every multi-byte integer is big-endian.
 *
 * snapshot, snapshot.next:
 *   "MTESNAP2" | epoch u64 | keyCheck[16] | nonce[12] | AES-GCM(ciphertext) | tag[16]
 *   AAD = the first 32 bytes, so the epoch cannot be edited without breaking the tag. The
 *   plaintext begins with the store's identity (identity.ts: who the store belongs to), then
 *   the content (content.ts).
 * journal:
 *   header  "MTEJRNL2" | epoch u64 | keyCheck[16] | HMAC[16] over the preceding 32 bytes
 *   records length u32 | group u32 | mac[8] | nonce[12] | ciphertext | tag[16]
 *     length: bytes of nonce..tag;
 *     group:  bytes from this record's first byte to the end of the group write it was part of
 *             (journal.ts writes records in groups, one fdatasync each);
 *     mac:    HMAC-SHA256 with the header key over "MTEJRHD2" | epoch | seq | length | group,
 *             cut to 8 bytes, so a damaged length or group field fails on its own;
 *     AAD:    "MTEJREC2" | epoch | seq | length | group, so a record cannot be moved to another
 *             position or epoch, and a dropped middle record breaks the next one's tag.
 *
 * Torn or tampered (scanJournal): only the last group write can have been cut by a crash or a
 * power cut, because a group is written only after the one before it was fsynced (and so
 * acknowledged). A record that fails is taken as torn only when the file ends inside its group
 * (known from an authenticated group field) and the damage looks like an interrupted write:
 * the record runs past the end of the file, or the file is zero from a 512-byte sector
 * boundary (or from where the write began) inside the failing record to its end, as blocks
 * allocated but never written read back. Anything else is damage to acknowledged data:
 * STORE_TAMPERED.
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

const SNAPSHOT_MAGIC = Buffer.from('MTESNAP2');
const JOURNAL_MAGIC = Buffer.from('MTEJRNL2');
const RECORD_AAD_TAG = Buffer.from('MTEJREC2');
const RECORD_MAC_TAG = Buffer.from('MTEJRHD2');
const SNAPSHOT_PREFIX = 8 + 8 + KEY_CHECK_BYTES;
export const JOURNAL_HEADER_BYTES = 8 + 8 + KEY_CHECK_BYTES + MAC_BYTES;
const RECORD_MAC_BYTES = 8;
/** length u32 | group u32 | mac[8] */
export const RECORD_HEADER_BYTES = 4 + 4 + RECORD_MAC_BYTES;
const MIN_RECORD = NONCE_BYTES + TAG_BYTES;
/**
 * Bounds one group write of several records (journal.ts), so a burst does not build one huge
 * buffer; a single record larger than this is written alone. Also the most a torn tail whose
 * group is unknown (its first header damaged) may span.
 */
export const MAX_GROUP_BYTES = 8 << 20;
/** The unit a disk writes atomically at the least; unwritten ones read back as zeros. */
const SECTOR_BYTES = 512;

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
  // Read only after a snapshot proved to be ours: another key's check here is damage.
  if (!sameBytes(body.subarray(16), keys.keyCheck)) {
    throw new StoreError(StoreCode.Tampered, `${file} header names another store key`);
  }
  if (!sameBytes(bytes.subarray(body.length, JOURNAL_HEADER_BYTES), mac(keys.header, body))) {
    throw new StoreError(StoreCode.Tampered, `${file} header fails authentication`);
  }
  return bytes.readBigUInt64BE(8);
}

function lengths(length: number, group: number): Buffer {
  const out = Buffer.alloc(8);
  out.writeUInt32BE(length, 0);
  out.writeUInt32BE(group, 4);
  return out;
}

function recordMac(keys: StoreKeys, epoch: bigint, seq: number, fields: Buffer): Buffer {
  const data = Buffer.concat([RECORD_MAC_TAG, u64(epoch), u64(BigInt(seq)), fields]);
  return mac(keys.header, data).subarray(0, RECORD_MAC_BYTES);
}

function recordAad(epoch: bigint, seq: number, fields: Buffer): Buffer {
  return Buffer.concat([RECORD_AAD_TAG, u64(epoch), u64(BigInt(seq)), fields]);
}

/** The bytes a record of `payloadBytes` takes in the journal. */
export function recordBytes(payloadBytes: number): number {
  return RECORD_HEADER_BYTES + NONCE_BYTES + payloadBytes + TAG_BYTES;
}

/**
 * Seals the records of one group write, the first at sequence number `seq`. Each record's
 * group field says how far the group reaches from it, so that open can tell a torn last write
 * from damage to an earlier, acknowledged one.
 */
export function sealGroup(
  keys: StoreKeys,
  epoch: bigint,
  seq: number,
  payloads: readonly Uint8Array[],
): Buffer {
  const sizes = payloads.map((p) => recordBytes(p.length));
  let rest = sizes.reduce((a, b) => a + b, 0);
  if (rest > 0xffffffff) {
    throw new StoreError(StoreCode.BadOptions, 'a journal group too large for its group field');
  }
  const frames = payloads.map((payload, i) => {
    const fields = lengths(NONCE_BYTES + payload.length + TAG_BYTES, rest);
    rest -= sizes[i] ?? 0;
    const sealed = seal(keys.journal, recordAad(epoch, seq + i, fields), payload);
    return Buffer.concat([fields, recordMac(keys, epoch, seq + i, fields), sealed]);
  });
  return Buffer.concat(frames);
}

export interface JournalScan {
  /** Decrypted record payloads, in order. */
  payloads: Buffer[];
  /** Bytes of header and intact records; anything after is a torn tail. */
  validLength: number;
  /** Bytes dropped after validLength (of the last, unacknowledged group write). */
  tornBytes: number;
}

/** Where the run of zero bytes that ends the file begins (`bytes.length` if it ends otherwise). */
function trailingZeros(bytes: Buffer, from: number): number {
  let i = bytes.length;
  while (i > from && bytes[i - 1] === 0) i--;
  return i;
}

function allZero(bytes: Buffer, from: number, to: number): boolean {
  for (let i = from; i < to; i++) if (bytes[i] !== 0) return false;
  return true;
}

/** Zero runs shorter than this are not taken for an unwritten unit (except at end of file). */
const MIN_UNWRITTEN = 8;

/**
 * Whether the bytes [from, to) meet a part of a write that never reached the disk. A write
 * [writeStart, writeEnd) lands in units: its range cut at 512-byte sector boundaries. A unit
 * that did not land reads as zeros where the file was extended over it. It counts when it is
 * zero throughout and either the file is zero from its start to the end (the unwritten end of
 * an append), or it is at least `minBytes` long, so that the few zero bytes any record has
 * (the high bytes of its length field) never pass for one, nor does a single flipped bit.
 */
function meetsUnwritten(
  bytes: Buffer,
  zerosFrom: number,
  range: { from: number; to: number },
  write: { start: number; end: number },
  minBytes: number,
): boolean {
  const end = Math.min(write.end, bytes.length);
  const from = Math.max(range.from, write.start);
  const to = Math.min(range.to, end);
  if (from >= to) return false;
  // Zero from a unit boundary in [from, to) to the end of the file.
  const lo = Math.max(zerosFrom, from);
  if (lo < to) {
    const boundary = lo === write.start ? lo : Math.ceil(lo / SECTOR_BYTES) * SECTOR_BYTES;
    if (boundary < to) return true;
  }
  // A whole unit, zero throughout, meeting [from, to).
  for (let s = Math.floor(from / SECTOR_BYTES); s * SECTOR_BYTES < to; s++) {
    const unitStart = Math.max(s * SECTOR_BYTES, write.start);
    const unitEnd = Math.min((s + 1) * SECTOR_BYTES, end);
    if (unitEnd - unitStart >= minBytes && allZero(bytes, unitStart, unitEnd)) return true;
  }
  return false;
}

function tampered(file: string, seq: number, at: number, what: string): StoreError {
  return new StoreError(
    StoreCode.Tampered,
    `${file}: record ${seq} (at byte ${at}) ${what}; it is not the torn end of an unacknowledged ` +
      'write, so acknowledged data was modified or damaged: the store is refused',
  );
}

/**
 * Walks the records after the header, and decides what a failing record means (see the top of
 * this file): the torn end of the last group write (dropped, reported as `tornBytes`), or
 * damage to something that was acknowledged (STORE_TAMPERED, never skipped).
 */
export function scanJournal(
  keys: StoreKeys,
  bytes: Buffer,
  epoch: bigint,
  file: string,
): JournalScan {
  const payloads: Buffer[] = [];
  const end = bytes.length;
  const zerosFrom = trailingZeros(bytes, JOURNAL_HEADER_BYTES);
  let offset = JOURNAL_HEADER_BYTES;
  /** Start and end of the group the last intact record belongs to. */
  let groupStart = offset;
  let groupEnd = offset;
  const torn = (): JournalScan => ({ payloads, validLength: offset, tornBytes: end - offset });
  while (offset < end) {
    const seq = payloads.length;
    // Whether the previous record's group write reaches past here (this record continues it,
    // or the tail of that group was torn off at an earlier open and a new write began here).
    const continues = groupEnd > offset;
    if (end - offset < RECORD_HEADER_BYTES) {
      // The header itself is cut off by the end of the file: a write that did not finish.
      return torn();
    }
    const fields = bytes.subarray(offset, offset + 8);
    const given = bytes.subarray(offset + 8, offset + RECORD_HEADER_BYTES);
    const header = { from: offset, to: offset + RECORD_HEADER_BYTES };
    if (!sameBytes(given, recordMac(keys, epoch, seq, fields))) {
      // Nothing in a damaged header can be believed. Torn only if an unwritten unit of the
      // last write covers part of it: in the group the previous record began (when the file
      // ends inside that group), or else in a new write of at most MAX_GROUP_BYTES, where
      // only a whole zero sector (or zeros to the end of the file) will do.
      if (
        continues &&
        end <= groupEnd &&
        meetsUnwritten(
          bytes,
          zerosFrom,
          header,
          { start: groupStart, end: groupEnd },
          MIN_UNWRITTEN,
        )
      ) {
        return torn();
      }
      if (
        end - offset <= MAX_GROUP_BYTES &&
        meetsUnwritten(bytes, zerosFrom, header, { start: offset, end }, SECTOR_BYTES)
      ) {
        return torn();
      }
      throw tampered(file, seq, offset, 'has a header that fails authentication');
    }
    const length = fields.readUInt32BE(0);
    const group = fields.readUInt32BE(4);
    const size = RECORD_HEADER_BYTES + length;
    if (length < MIN_RECORD || group < size) {
      // Authentic but impossible: not written by this code (or a bug). Never guess.
      throw tampered(file, seq, offset, 'has an authentic but inconsistent header');
    }
    // Authentic headers cannot lie, so a group field that does not meet the previous group's
    // end means a new write began here.
    const inGroup = continues && offset + group === groupEnd;
    const write = { start: inGroup ? groupStart : offset, end: offset + group };
    if (offset + size > end) return torn(); // runs past the end of the file, inside its group
    const sealed = bytes.subarray(offset + RECORD_HEADER_BYTES, offset + size);
    const plaintext = unseal(keys.journal, recordAad(epoch, seq, fields), sealed);
    if (plaintext === null) {
      const record = { from: offset, to: offset + size };
      if (end <= write.end && meetsUnwritten(bytes, zerosFrom, record, write, MIN_UNWRITTEN)) {
        return torn();
      }
      throw tampered(
        file,
        seq,
        offset,
        end > write.end
          ? 'fails authentication, and a later write follows it'
          : 'fails authentication (modified, reordered or removed records)',
      );
    }
    payloads.push(plaintext);
    groupStart = write.start;
    groupEnd = write.end;
    offset += size;
  }
  return { payloads, validLength: offset, tornBytes: 0 };
}

function wrongKey(file: string): StoreError {
  return new StoreError(
    StoreCode.WrongKey,
    `${file} was sealed under a different store key: this store belongs to another vault (or the vault was re-provisioned). ` +
      'Open it with the vault it was created with; it cannot be read with this one',
  );
}
