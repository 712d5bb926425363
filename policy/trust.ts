/**
 * The policy's words for who gets room keys and whose messages are shown. Policy owns them;
 * the endpoint maps them onto the crypto engine's settings (endpoint/crypto/settings.ts), so
 * policy never depends on the engine or the endpoint.
 *
 * - `identity-based` (MSC4153, the default): room keys only to devices cross-signed by their
 *   owner's identity; `verified-devices-only`: only to devices of users we verified;
 *   `all-devices`: to every device (legacy behaviour).
 * - `cross-signed-or-legacy`: show messages from cross-signed or never-cross-signed senders;
 *   `cross-signed`: only cross-signed; `untrusted`: everything.
 */
export type SharingStrategy = 'identity-based' | 'verified-devices-only' | 'all-devices';
export type DecryptionTrust = 'cross-signed-or-legacy' | 'cross-signed' | 'untrusted';

export interface TrustSettings {
  sharing: SharingStrategy;
  decryption: DecryptionTrust;
  /** Room keys only to devices with a fresh passing remote attestation (`attested-only`). */
  requireAttestation?: boolean;
}
