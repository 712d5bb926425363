import bs58 from 'bs58';

/**
 * A Matrix recovery key: how a 32-byte key is written for people (spec appendix,
 * "Cryptographic key representation"), the format Element prints and accepts. The bytes are
 * 0x8B 0x01, the key, and a parity byte (the XOR of all bytes before it, so that the XOR of
 * all bytes is zero), in base58 with the Bitcoin alphabet, shown in groups of four.
 */
const PREFIX = [0x8b, 0x01] as const;
const KEY_BYTES = 32;
const ENCODED_BYTES = PREFIX.length + KEY_BYTES + 1;

export type RecoveryKeyError =
  | { code: 'RECOVERY_KEY_MALFORMED'; message: string }
  | { code: 'RECOVERY_KEY_TYPO'; message: string };

export function encodeRecoveryKey(key: Uint8Array): string {
  if (key.length !== KEY_BYTES) throw new Error(`a recovery key holds ${String(KEY_BYTES)} bytes`);
  const bytes = new Uint8Array(ENCODED_BYTES);
  try {
    bytes.set(PREFIX, 0);
    bytes.set(key, PREFIX.length);
    bytes[ENCODED_BYTES - 1] = bytes.subarray(0, ENCODED_BYTES - 1).reduce((p, b) => p ^ b, 0);
    return (bs58.encode(bytes).match(/.{1,4}/g) ?? []).join(' ');
  } finally {
    bytes.fill(0);
  }
}

/**
 * Reads a recovery key as a person typed or pasted it (any whitespace between groups). The
 * errors say what is wrong in a line a CLI can print, and never repeat the key.
 */
export function decodeRecoveryKey(
  text: string,
): { ok: true; key: Uint8Array } | { ok: false; error: RecoveryKeyError } {
  const compact = text.replace(/\s+/g, '');
  if (!/^[1-9A-HJ-NP-Za-km-z]+$/.test(compact)) {
    return malformed('not a recovery key: only base58 letters and digits, in groups of four');
  }
  const bytes = bs58.decode(compact);
  try {
    if (bytes.length !== ENCODED_BYTES || bytes[0] !== PREFIX[0] || bytes[1] !== PREFIX[1]) {
      return malformed('not a recovery key: wrong length or prefix (is it another kind of key?)');
    }
    if (bytes.reduce((p, b) => p ^ b, 0) !== 0) {
      return {
        ok: false,
        error: {
          code: 'RECOVERY_KEY_TYPO',
          message: 'the recovery key has a typo: its check digit does not match',
        },
      };
    }
    return { ok: true, key: bytes.slice(PREFIX.length, PREFIX.length + KEY_BYTES) };
  } finally {
    bytes.fill(0);
  }
}

function malformed(message: string): { ok: false; error: RecoveryKeyError } {
  return { ok: false, error: { code: 'RECOVERY_KEY_MALFORMED', message } };
}
