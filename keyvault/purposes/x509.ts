import { type PurposeContext, exactly, parseKeyObject, refusal } from './key-object.ts';

/**
 * `x509-identity` (RSASSA-PSS SHA-512): the institution's certificate vouches, through a CMS
 * signature by this key, for the owner's master key (endpoint/crypto/x509.ts). The CMS has no
 * signed attributes: the RSA signature covers the content itself, the master key's canonical
 * JSON; certificates are issued from the key's public part only (deploy/x509). So this accepts
 * exactly one message, the vault's own master key:
 *
 *   {"keys":{"ed25519:<M>":"<M>"},"usage":["master"],"user_id":"<owner>"}
 *
 * where <M> is this vault's `cross-signing-master` public key. Anything else (another user's
 * master key, a master key the homeserver made up, a subkey, a certificate, extra fields) is
 * refused: a signature over it would make every peer trusting the CA see it as our identity.
 */
export async function x509IdentityInput(
  message: Uint8Array,
  ctx: PurposeContext,
): Promise<Uint8Array> {
  const purpose = 'x509-identity';
  const key = parseKeyObject(purpose, message);
  if (key.userId !== ctx.owner) throw refusal(purpose, "the key is not the vault owner's");
  if (key.usage !== 'master') {
    throw refusal(purpose, 'the X.509 key signs only our master key: usage must be ["master"]');
  }
  if (key.publicKey !== (await ctx.masterPublic())) {
    throw refusal(purpose, "the master key is not this vault's cross-signing-master key");
  }
  return exactly(purpose, message, key);
}
