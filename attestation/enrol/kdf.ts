import { createHash, createHmac } from 'node:crypto';
import { EnrolCode, EnrolError } from './errors.ts';

/**
 * The TPM's two key derivation functions (TPM 2.0 Part 1 §11.4.10), written here rather than
 * taken from keyvault/tpm/kdf.ts: the verifier must not import the vault, and a second,
 * separately written copy is itself a check (both are tested against the same vectors).
 */
export type HashName = 'sha256' | 'sha384';

export const DIGEST_BYTES: Readonly<Record<HashName, number>> = { sha256: 32, sha384: 48 };

/** Large enough for any key the credential protocol derives, small enough to bound the loop. */
const MAX_BITS = 8 * 1024;

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n);
  return b;
}

/** The label as the TPM hashes it: its octets and a terminating zero (Part 1 §11.4.10.2). */
function labelBytes(label: string): Buffer {
  if (!/^[\x21-\x7e]+$/.test(label)) {
    throw new EnrolError(EnrolCode.BadInput, 'a KDF label is printable ASCII without NUL');
  }
  return Buffer.concat([Buffer.from(label, 'ascii'), Buffer.alloc(1)]);
}

function checkBits(bits: number): void {
  if (!Number.isInteger(bits) || bits <= 0 || bits % 8 !== 0 || bits > MAX_BITS) {
    throw new EnrolError(EnrolCode.BadInput, `a KDF output of ${bits} bits is not supported`);
  }
}

/**
 * KDFa: SP 800-108 counter mode with HMAC as the PRF. Block i (from 1) is
 * HMAC(key, [i]32 || label || 0 || contextU || contextV || [bits]32); blocks are concatenated
 * and cut to `bits`. Only whole bytes are asked for here, so no masking of a last partial byte.
 */
export function kdfa(
  hash: HashName,
  key: Uint8Array,
  label: string,
  contextU: Uint8Array,
  contextV: Uint8Array,
  bits: number,
): Buffer {
  checkBits(bits);
  const fixed = [labelBytes(label), contextU, contextV, u32(bits)];
  const blocks: Buffer[] = [];
  for (let i = 1, have = 0; have < bits / 8; i++) {
    const h = createHmac(hash, key).update(u32(i));
    for (const part of fixed) h.update(part);
    const block = h.digest();
    blocks.push(block);
    have += block.length;
  }
  return cut(blocks, bits / 8);
}

/**
 * KDFe: the SP 800-56A concatenation KDF, used with ECDH. Block i (from 1) is
 * H([i]32 || Z || label || 0 || partyUInfo || partyVInfo); Z is the shared point's x-coordinate.
 */
export function kdfe(
  hash: HashName,
  z: Uint8Array,
  label: string,
  partyUInfo: Uint8Array,
  partyVInfo: Uint8Array,
  bits: number,
): Buffer {
  checkBits(bits);
  const fixed = [labelBytes(label), partyUInfo, partyVInfo];
  const blocks: Buffer[] = [];
  for (let i = 1, have = 0; have < bits / 8; i++) {
    const h = createHash(hash).update(u32(i)).update(z);
    for (const part of fixed) h.update(part);
    const block = h.digest();
    blocks.push(block);
    have += block.length;
  }
  return cut(blocks, bits / 8);
}

/** Concatenates and truncates, zeroing the intermediate blocks (they are key material). */
function cut(blocks: Buffer[], bytes: number): Buffer {
  const all = Buffer.concat(blocks);
  const out = Buffer.from(all.subarray(0, bytes));
  all.fill(0);
  for (const b of blocks) b.fill(0);
  return out;
}
