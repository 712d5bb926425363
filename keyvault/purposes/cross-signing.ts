import { type PurposeContext, exactly, parseKeyObject, refusal } from './key-object.ts';

/**
 * `cross-signing-master` (Ed25519): the user's long-term identity. In Matrix the master key
 * signs only the owner's two subkeys; the self-signing key signs the owner's devices and the
 * user-signing key signs other users' master keys (endpoint/crypto/cross-signing.ts bootstrap,
 * step 3; SAS verification signs with the user-signing key inside the crypto core). So this
 * accepts exactly the canonical JSON of one of the owner's subkeys:
 *
 *   {"keys":{"ed25519:<pub>":"<pub>"},"usage":["self_signing"],"user_id":"<owner>"}
 *   {"keys":{"ed25519:<pub>":"<pub>"},"usage":["user_signing"],"user_id":"<owner>"}
 *
 * with <pub> any Ed25519 key but the master's own. Not accepted: another user's key, a master
 * key (ours or another's), device keys, key backup auth_data (the next purpose to
 * add, see README.md), anything with more fields or in another spelling.
 */
const SUBKEY_USAGES: ReadonlySet<string> = new Set(['self_signing', 'user_signing']);

export async function crossSigningMasterInput(
  message: Uint8Array,
  ctx: PurposeContext,
): Promise<Uint8Array> {
  const purpose = 'cross-signing-master';
  const key = parseKeyObject(purpose, message);
  if (key.userId !== ctx.owner) throw refusal(purpose, "the key is not the vault owner's");
  if (!SUBKEY_USAGES.has(key.usage)) {
    throw refusal(
      purpose,
      'the master key signs only a self-signing or user-signing key: usage must be exactly ["self_signing"] or ["user_signing"]',
    );
  }
  if (key.publicKey === (await ctx.masterPublic())) {
    throw refusal(purpose, 'a subkey cannot be the master key itself');
  }
  return exactly(purpose, message, key);
}
