import { createHash } from 'node:crypto';

/**
 * What a quote's qualifyingData commits to. TPM2B_DATA holds at most one digest, so it carries
 * SHA-256 of a domain-separated, length-prefixed encoding of every field, never the raw fields:
 * no field can be moved into another, and the label makes the digest useless for any other
 * protocol.
 *
 * The verifier recomputes it from what it knows by itself (its own nonce and identity; the
 * attester's user, device and keys as its Olm session and device list report them), never
 * from what the evidence claims. That is what ties "this TPM" to "this Matrix device": a
 * genuine TPM's quote relayed for another device, or for another verifier, or for another
 * request, does not match.
 */
export const BINDING_LABEL = 'mte-attestation-quote v1';

export interface QuoteBinding {
  /** The verifier's single-use nonce (32 bytes). */
  nonce: Uint8Array;
  verifier: { userId: string; deviceId: string };
  attester: {
    userId: string;
    deviceId: string;
    /** Unpadded base64, as Matrix writes device keys. */
    ed25519: string;
    curve25519: string;
    /** The attester's cross-signing master key (unpadded base64). */
    masterKey: string;
  };
  /** SHA-256 PCR bank indices, ascending. */
  pcrs: readonly number[];
  /** The AK's Name (nameAlg || digest). */
  akName: Uint8Array;
}

function field(hash: ReturnType<typeof createHash>, value: Uint8Array | string): void {
  const bytes = typeof value === 'string' ? Buffer.from(value, 'utf8') : Buffer.from(value);
  const length = Buffer.alloc(4);
  length.writeUInt32BE(bytes.length);
  hash.update(length).update(bytes);
}

export function qualifyingData(b: QuoteBinding): Buffer {
  const hash = createHash('sha256');
  field(hash, BINDING_LABEL);
  field(hash, b.nonce);
  field(hash, b.verifier.userId);
  field(hash, b.verifier.deviceId);
  field(hash, b.attester.userId);
  field(hash, b.attester.deviceId);
  field(hash, b.attester.ed25519);
  field(hash, b.attester.curve25519);
  field(hash, b.attester.masterKey);
  field(hash, Buffer.from(b.pcrs.map((p) => p)));
  field(hash, b.akName);
  return hash.digest();
}
