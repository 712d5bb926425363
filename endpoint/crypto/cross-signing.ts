/**
 * Cross-signing with the master key held by the vault (issue 6).
 *
 * Why not `OlmMachine.bootstrapCrossSigning`: it makes all three keys inside the machine, so
 * the master seed would live in the endpoint's memory and sealed store. The master key is the
 * user's long-term identity (what peers verify and pin); a compromised endpoint that could
 * export it could mint a new identity nobody would notice. Here the master key is the vault's
 * `cross-signing-master` key (HSM, or TPM-sealed and used only in the vault process), and the
 * endpoint holds only the two subkeys, which the master can replace at any time:
 *
 *  1. generate the self-signing and user-signing seeds here (32 random bytes each);
 *  2. build the three public keys as /keys/device_signing/upload wants them;
 *  3. sign ssk and usk with the master *through the vault*; sign the master with our device
 *     key (as Element does, so our other devices see this device vouching for the identity);
 *     let the caller add more master signatures (the X.509 one);
 *  4. upload with user-interactive auth;
 *  5. /keys/query our own user so the machine knows the public identity (the Rust core's
 *     `import_cross_signing_keys` silently does nothing without it, and refuses subkeys whose
 *     public halves differ from the published ones);
 *  6. import ssk+usk (no master) into the machine and zero our copies of the seeds;
 *  7. sign our own device with the ssk, so stock clients see it cross-signed by its owner.
 *
 * Importing subkeys whose public keys match the published identity makes the Rust core mark
 * our own identity as verified (`get_public_identity_diff` only compares the keys it holds, so
 * a missing master does not count as a difference). Contacts signed with our usk, and our
 * devices signed with our ssk, are then trusted as they would be in Element.
 */
import { createPrivateKey, createPublicKey, randomBytes } from 'node:crypto';
import { stringify } from 'another-json';
import {
  type OlmMachine,
  SignatureUploadRequest,
  KeysQueryRequest,
  UserId,
} from '@matrix-org/matrix-sdk-crypto-wasm';
import type { Vault } from '../../keyvault/vault.ts';
import type { HomeserverApi, UiaAuth } from '../matrix/api.ts';

/** Whatever holds the master key: the endpoint sees only its public key and signatures. */
export interface MasterKeySigner {
  /** The Ed25519 public key, unpadded base64 of its 32 raw bytes (Matrix's key format). */
  publicKeyBase64(): Promise<string>;
  /** A pure Ed25519 signature (64 bytes) over `message`. */
  sign(message: Uint8Array): Promise<Uint8Array>;
}

/**
 * Extra signatures on the master key before upload, keyed by key id (e.g.
 * `io.element.x509:<ski>`), given the master key's canonical JSON without signatures.
 */
export type ExtraMasterSignatures = (
  canonicalMasterKeyBytes: Uint8Array,
) => Promise<Record<string, string>>;

export type CrossSigningOutcome = 'created' | 'present' | 'uploaded' | 'foreign' | 'replaced';

/** The vault's `cross-signing-master` key as a MasterKeySigner; the vault may be an RPC client. */
export function vaultMasterKeySigner(vault: Pick<Vault, 'publicKey' | 'sign'>): MasterKeySigner {
  return {
    publicKeyBase64: async () =>
      unpadded(ed25519RawFromSpki((await vault.publicKey('cross-signing-master')).spki)),
    sign: (message) => vault.sign('cross-signing-master', message),
  };
}

/** Matrix canonical JSON (sorted keys, compact), as matrix-js-sdk makes it. */
export function canonicalJson(value: unknown): string {
  const out = stringify(value);
  // another-json escapes control characters as "\U00XX", which is not JSON: refuse rather
  // than sign bytes no other implementation would reproduce. Our key objects never have any.
  JSON.parse(out);
  return out;
}

/** What gets signed: the object without `signatures` and `unsigned` (spec: signing JSON). */
export function signingBytes(object: Record<string, unknown>): Uint8Array {
  const rest = { ...object };
  delete rest.signatures;
  delete rest.unsigned;
  return new TextEncoder().encode(canonicalJson(rest));
}

export interface CrossSigningKey {
  user_id: string;
  usage: string[];
  keys: Record<string, string>;
  signatures?: Record<string, Record<string, string>>;
}

const ED25519_SPKI_PREFIX = Buffer.from('302a300506032b6570032100', 'hex');
const ED25519_PKCS8_PREFIX = Buffer.from('302e020100300506032b657004220420', 'hex');

export function ed25519RawFromSpki(spki: Uint8Array): Uint8Array {
  const der = Buffer.from(spki);
  if (der.length !== 44 || !der.subarray(0, 12).equals(ED25519_SPKI_PREFIX)) {
    throw new Error('cross-signing: the vault master key is not an Ed25519 SubjectPublicKeyInfo');
  }
  return new Uint8Array(der.subarray(12));
}

/** The public key of a 32-byte Ed25519 seed. The DER copy of the seed is zeroed after use. */
export function ed25519PublicFromSeed(seed: Uint8Array): Uint8Array {
  const pkcs8 = Buffer.concat([ED25519_PKCS8_PREFIX, seed]);
  try {
    const spki = createPublicKey(
      createPrivateKey({ key: pkcs8, format: 'der', type: 'pkcs8' }),
    ).export({ format: 'der', type: 'spki' });
    return ed25519RawFromSpki(spki);
  } finally {
    pkcs8.fill(0);
  }
}

export function unpadded(bytes: Uint8Array): string {
  return Buffer.from(bytes).toString('base64').replace(/=+$/, '');
}

export interface PublishedIdentity {
  master?: CrossSigningKey;
  selfSigning?: CrossSigningKey;
  userSigning?: CrossSigningKey;
}

/** The only ed25519 public key of a cross-signing key, or undefined. */
export function keyOf(key: CrossSigningKey | undefined): string | undefined {
  const values = Object.entries(key?.keys ?? {})
    .filter(([id]) => id.startsWith('ed25519:'))
    .map(([, v]) => v);
  return values.length === 1 ? values[0] : undefined;
}

export interface VaultCrossSigningContext {
  machine: OlmMachine;
  api: HomeserverApi;
  /** Sends a request the machine built and reports the response back to it. */
  send: (request: KeysQueryRequest | SignatureUploadRequest) => Promise<void>;
  master: MasterKeySigner;
  uia: UiaAuth | undefined;
  extraMasterSignatures?: ExtraMasterSignatures | undefined;
  /**
   * Replace a published identity that is not the vault's (the operator asked, for this start:
   * `serve --replace-identity`, after a recovery onto new hardware). Peers see the change.
   */
  replaceForeign?: boolean | undefined;
  warn: (message: string) => void;
  info: (message: string) => void;
}

/**
 * Makes sure the account's cross-signing identity is the vault's master key, with subkeys this
 * machine holds. Idempotent: a restart with everything in place uploads and signs nothing.
 */
export async function ensureVaultCrossSigning(
  ctx: VaultCrossSigningContext,
): Promise<CrossSigningOutcome> {
  const userId = ctx.machine.userId.toString();
  const masterPublic = await ctx.master.publicKeyBase64();
  const published = await publishedIdentity(ctx.api, userId);
  const publishedMaster = keyOf(published.master);
  if (published.master && publishedMaster !== masterPublic && ctx.replaceForeign === true) {
    ctx.warn(
      "crypto: replacing the account's published cross-signing identity with the vault's master key, as asked (--replace-identity): peers see the identity change and must verify again",
    );
    await bootstrap(ctx, userId, masterPublic, false);
    return 'replaced';
  }
  if (published.master && publishedMaster !== masterPublic) {
    // Replacing an identity breaks every peer's trust in this user (and their pins): never
    // automatic. The operator resets it deliberately, or verifies this device from the other.
    ctx.warn(
      "crypto: this account's published cross-signing master key is not the vault's; not replacing it. Reset the identity deliberately or verify this device from another one.",
    );
    return 'foreign';
  }
  const status = await ctx.machine.crossSigningStatus();
  const haveSubkeys = status.hasSelfSigning && status.hasUserSigning;
  status.free();
  if (publishedMaster === masterPublic && haveSubkeys) {
    await learnOwnIdentity(ctx, userId, masterPublic);
    const fresh = await ctx.machine.crossSigningStatus();
    const stillHave = fresh.hasSelfSigning && fresh.hasUserSigning;
    fresh.free();
    // The machine drops subkeys that differ from the published ones (clear_if_differs).
    if (stillHave) {
      await signOwnDeviceIfNeeded(ctx, userId);
      return 'present';
    }
  }
  // Either nothing is published, or the vault's master is but this machine lost its subkeys
  // (a crash between upload and import): new subkeys under the same master are safe.
  const republish = publishedMaster === masterPublic;
  await bootstrap(ctx, userId, masterPublic, republish);
  return republish ? 'uploaded' : 'created';
}

async function bootstrap(
  ctx: VaultCrossSigningContext,
  userId: string,
  masterPublic: string,
  masterPublished: boolean,
): Promise<void> {
  const deviceKeyId = `ed25519:${ctx.machine.deviceId.toString()}`;
  const sskSeed = new Uint8Array(randomBytes(32));
  const uskSeed = new Uint8Array(randomBytes(32));
  try {
    const sskPublic = unpadded(ed25519PublicFromSeed(sskSeed));
    const uskPublic = unpadded(ed25519PublicFromSeed(uskSeed));
    const masterKeyId = `ed25519:${masterPublic}`;
    const master: CrossSigningKey = {
      user_id: userId,
      usage: ['master'],
      keys: { [masterKeyId]: masterPublic },
    };
    const selfSigning: CrossSigningKey = {
      user_id: userId,
      usage: ['self_signing'],
      keys: { [`ed25519:${sskPublic}`]: sskPublic },
    };
    const userSigning: CrossSigningKey = {
      user_id: userId,
      usage: ['user_signing'],
      keys: { [`ed25519:${uskPublic}`]: uskPublic },
    };
    for (const subkey of [selfSigning, userSigning]) {
      const signature = await ctx.master.sign(signingBytes({ ...subkey }));
      subkey.signatures = { [userId]: { [masterKeyId]: unpadded(signature) } };
    }
    const masterBytes = signingBytes({ ...master });
    const masterSignatures: Record<string, string> = {};
    // The device key vouches for the master, as Element's bootstrap does.
    const bySelf = await ctx.machine.sign(new TextDecoder().decode(masterBytes));
    const deviceSignature = bySelf.get(new UserId(userId))?.get(deviceKeyId);
    bySelf.free();
    const deviceSig = deviceSignature?.signature?.toBase64();
    if (deviceSig) masterSignatures[deviceKeyId] = deviceSig;
    if (ctx.extraMasterSignatures) {
      Object.assign(masterSignatures, await ctx.extraMasterSignatures(masterBytes));
    }
    if (Object.keys(masterSignatures).length > 0) {
      master.signatures = { [userId]: masterSignatures };
    }
    // A published master is left as it is (with the signatures it has): the spec lets the
    // upload carry subkeys alone, and Synapse fails (500) on re-uploading the same master.
    await ctx.api.deviceSigningUpload(
      JSON.stringify({
        ...(masterPublished ? {} : { master_key: master }),
        self_signing_key: selfSigning,
        user_signing_key: userSigning,
      }),
      ctx.uia,
    );
    await learnOwnIdentity(ctx, userId, masterPublic);
    const imported = await ctx.machine.importCrossSigningKeys(
      undefined,
      unpadded(sskSeed),
      unpadded(uskSeed),
    );
    const ok = imported.hasSelfSigning && imported.hasUserSigning && !imported.hasMaster;
    imported.free();
    if (!ok) {
      // The machine did not take the subkeys (it did not see the identity we just uploaded).
      // The next start re-bootstraps under the same master.
      throw new Error('cross-signing: the crypto core did not import the new subkeys');
    }
    ctx.info('crypto: cross-signing set up with the vault master key');
  } finally {
    // The machine keeps its own (pickled, sealed) copy; ours goes now. The base64 strings
    // passed to the import are immutable JS strings we cannot wipe: they die with the GC.
    sskSeed.fill(0);
    uskSeed.fill(0);
  }
  await signOwnDeviceIfNeeded(ctx, userId);
}

/**
 * An out-of-band /keys/query for our own user, so the machine holds the published identity;
 * then checks that the identity the machine now holds has the vault's master key. The answer
 * is the homeserver's: it could serve its own master key signing our real subkeys, and the
 * machine would count that identity as verified (it compares only the subkeys it holds).
 * The endpoint refuses to start rather than trust it.
 */
async function learnOwnIdentity(
  ctx: VaultCrossSigningContext,
  userId: string,
  masterPublic: string,
): Promise<void> {
  await ctx.send(ctx.machine.queryKeysForUsers([new UserId(userId)]));
  if (!(await ownMasterMatches(ctx.machine, userId, masterPublic))) {
    throw new OwnIdentityMismatchError(
      "cross-signing: the homeserver served our identity with a master key that is not the vault's; refusing to trust it",
    );
  }
}

export class OwnIdentityMismatchError extends Error {
  readonly code = 'ENDPOINT_OWN_IDENTITY_MISMATCH';
}

/**
 * Whether the machine's view of our own identity has exactly the vault's master key
 * (`masterPublic`, unpadded base64). False when the machine knows no identity for us, or its
 * master key has any other (or more than one) ed25519 key. For the runtime check too: call it
 * when our own identity is updated.
 */
export async function ownMasterMatches(
  machine: Pick<OlmMachine, 'getIdentity'>,
  userId: string,
  masterPublic: string,
): Promise<boolean> {
  const identity = await machine.getIdentity(new UserId(userId));
  if (!identity) return false;
  try {
    if (!('userSigningKey' in identity)) return false; // not an own identity
    const master = JSON.parse(identity.masterKey) as CrossSigningKey;
    return master.user_id === userId && keyOf(master) === masterPublic;
  } catch {
    return false;
  } finally {
    identity.free();
  }
}

async function signOwnDeviceIfNeeded(ctx: VaultCrossSigningContext, userId: string): Promise<void> {
  const device = await ctx.machine.getDevice(new UserId(userId), ctx.machine.deviceId, 5);
  if (!device) throw new Error('cross-signing: our own device is unknown to the crypto core');
  try {
    if (device.isCrossSignedByOwner()) return;
    await ctx.send(await device.verify());
  } finally {
    device.free();
  }
}

/** What the homeserver publishes as `userId`'s cross-signing keys (its word, not verified). */
export async function publishedIdentity(
  api: Pick<HomeserverApi, 'keysQuery'>,
  userId: string,
): Promise<PublishedIdentity> {
  const response = JSON.parse(
    await api.keysQuery(JSON.stringify({ device_keys: { [userId]: [] } })),
  ) as {
    master_keys?: Record<string, CrossSigningKey>;
    self_signing_keys?: Record<string, CrossSigningKey>;
    user_signing_keys?: Record<string, CrossSigningKey>;
  };
  const out: PublishedIdentity = {};
  const master = response.master_keys?.[userId];
  const selfSigning = response.self_signing_keys?.[userId];
  const userSigning = response.user_signing_keys?.[userId];
  if (master) out.master = master;
  if (selfSigning) out.selfSigning = selfSigning;
  if (userSigning) out.userSigning = userSigning;
  return out;
}
