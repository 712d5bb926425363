/**
 * Our X.509 identity (issue 6): the institution's certificate vouches for our cross-signing
 * master key, so that peers configured with the institution's CA see us verified without
 * comparing emoji. The private key is the vault's `x509-identity` key (RSASSA-PSS, SHA-512,
 * salt 64; HSM or TPM); the certificate chain comes from the configuration.
 *
 * The signature is a CMS SignedData in the master key's `signatures`, under our MXID, with the
 * key id `io.element.x509:<unpadded base64 of the root CA's SKI>` (what matrix-sdk-crypto 0.19
 * in matrix-sdk-crypto-wasm 18.9.0 writes and accepts; see /work/shared/notes/x509-identity.md):
 * v3, detached id-data content (the master key's canonical JSON without `signatures` and
 * `unsigned`), the chain's certificates, one SignerInfo identified by the leaf's SKI, SHA-512,
 * RSASSA-PSS (MGF1-SHA-512, salt 64), no signed attributes.
 *
 * Why we build it: the master key lives in the vault (cross-signing.ts), so the core's own
 * bootstrap (which signs the master it generates) is not used. The core can sign a master key
 * it did not generate, through the same callback, in OwnUserIdentity.verify(); but only once
 * that identity is published, so the first upload would go out unsigned. Building the same
 * structure here (the integration test checks it equals the core's, byte for byte, but for the
 * randomised PSS signature) lets the signature travel with the first upload through
 * cross-signing.ts's `extraMasterSignatures` hook, and the refresh below reuse it. The core
 * still gets our signer: its verify() path then signs with the vault too.
 */
import { X509Certificate, constants, verify } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import {
  CMSVersion,
  CertificateChoices,
  CertificateSet,
  ContentInfo,
  DigestAlgorithmIdentifier,
  DigestAlgorithmIdentifiers,
  SignatureAlgorithmIdentifier,
  SignerInfos,
  EncapsulatedContentInfo,
  SignedData,
  SignerIdentifier,
  SignerInfo,
  id_data,
  id_signedData,
} from '@peculiar/asn1-cms';
import { RsaSaPssParams, id_RSASSA_PSS, id_mgf1, id_sha512, sha512 } from '@peculiar/asn1-rsa';
import { AsnConvert, OctetString } from '@peculiar/asn1-schema';
import {
  AlgorithmIdentifier,
  AuthorityKeyIdentifier,
  Certificate,
  SubjectKeyIdentifier,
  id_ce_authorityKeyIdentifier,
  id_ce_subjectKeyIdentifier,
} from '@peculiar/asn1-x509';
import type { Vault } from '../../keyvault/vault.ts';
import type { HomeserverApi } from '../matrix/api.ts';
import {
  keyOf,
  publishedIdentity,
  signingBytes,
  unpadded,
  vaultMasterKeySigner,
} from './cross-signing.ts';

export const X509_ALGORITHM = 'io.element.x509';

export class X509ConfigError extends Error {
  readonly code = 'ENDPOINT_X509';
}

/** The configured chain, parsed and checked for what the signature needs. */
export interface X509Chain {
  /** Leaf first, then intermediates; the root left out. PEM, normalised. */
  pem: string;
  der: Uint8Array[];
  leafSki: Uint8Array;
  /** `io.element.x509:<root SKI>`: the key id the signature is stored under. */
  keyId: string;
  /** The earliest notAfter over the chain, ms since the epoch (the validity the core wants). */
  notAfterMs: number;
  leaf: X509Certificate;
}

export interface X509Material {
  /** Every configured CA certificate, PEM, for the crypto core's verifier. */
  caCertsPem: string | undefined;
  chain: X509Chain | undefined;
}

function splitPem(text: string): string[] {
  return text.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
}

function extension<T>(cert: Certificate, oid: string, type: new () => T): T | undefined {
  const ext = cert.tbsCertificate.extensions?.find((e) => e.extnID === oid);
  return ext ? AsnConvert.parse(ext.extnValue, type) : undefined;
}

async function readPem(path: string, what: string): Promise<string[]> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    throw new X509ConfigError(
      `x509: cannot read the ${what} ${path} (${(e as NodeJS.ErrnoException).code ?? 'error'})`,
    );
  }
  const pems = splitPem(text);
  if (pems.length === 0) throw new X509ConfigError(`x509: no PEM certificate in ${path}`);
  return pems;
}

/** Parses a chain (leaf first, root left out) and checks what the signature depends on. */
export function parseChain(pems: string[], source = 'the chain'): X509Chain {
  let parsed: { node: X509Certificate; asn: Certificate }[];
  try {
    parsed = pems.map((p) => {
      const node = new X509Certificate(p);
      return { node, asn: AsnConvert.parse(node.raw, Certificate) };
    });
  } catch {
    throw new X509ConfigError(`x509: ${source} holds a certificate that does not parse`);
  }
  const first = parsed[0];
  const last = parsed[parsed.length - 1];
  if (!first || !last) throw new X509ConfigError(`x509: ${source} is empty`);
  if (first.node.publicKey.asymmetricKeyType !== 'rsa') {
    throw new X509ConfigError(`x509: the leaf in ${source} must have an RSA key`);
  }
  const ski = extension(first.asn, id_ce_subjectKeyIdentifier, SubjectKeyIdentifier);
  if (!ski) {
    throw new X509ConfigError(`x509: the leaf in ${source} has no Subject Key Identifier`);
  }
  const aki = extension(last.asn, id_ce_authorityKeyIdentifier, AuthorityKeyIdentifier);
  if (!aki?.keyIdentifier) {
    throw new X509ConfigError(
      `x509: the last certificate in ${source} has no Authority Key Identifier`,
    );
  }
  return {
    pem: parsed.map((c) => c.node.toString().trim() + '\n').join(''),
    der: parsed.map((c) => new Uint8Array(c.node.raw)),
    leafSki: new Uint8Array(ski.buffer),
    keyId: `${X509_ALGORITHM}:${unpadded(new Uint8Array(aki.keyIdentifier.buffer))}`,
    notAfterMs: Math.min(...parsed.map((c) => new Date(c.node.validTo).getTime())),
    leaf: first.node,
  };
}

/** Reads the endpoint config's `x509` section (paths already absolute). */
export async function loadX509Material(config: {
  caCerts: string[];
  chain?: string | undefined;
}): Promise<X509Material> {
  const cas: string[] = [];
  for (const path of config.caCerts) cas.push(...(await readPem(path, 'CA certificate file')));
  const chain = config.chain
    ? parseChain(await readPem(config.chain, 'chain file'), config.chain)
    : undefined;
  return { caCertsPem: cas.length > 0 ? cas.join('\n') + '\n' : undefined, chain };
}

/** X.690: SET OF elements in ascending order of their encodings. */
function derOrder(a: Uint8Array, b: Uint8Array): number {
  for (let i = 0; i < Math.max(a.length, b.length); i++) {
    const d = (a[i] ?? 0) - (b[i] ?? 0);
    if (d !== 0) return d;
  }
  return 0;
}

/** The CMS SignedData (PEM, label CMS) over `content`, given the leaf key's signature. */
export function cmsSignature(chain: X509Chain, signature: Uint8Array): string {
  // SHA-512 with explicit NULL parameters (the core refuses other digest parameters).
  const digest = () => new DigestAlgorithmIdentifier({ algorithm: id_sha512, parameters: null });
  const pss = new SignatureAlgorithmIdentifier({
    algorithm: id_RSASSA_PSS,
    parameters: AsnConvert.serialize(
      new RsaSaPssParams({
        hashAlgorithm: sha512,
        maskGenAlgorithm: new AlgorithmIdentifier({
          algorithm: id_mgf1,
          parameters: AsnConvert.serialize(sha512),
        }),
        saltLength: 64,
      }),
    ),
  });
  const certificates = [...chain.der]
    .sort(derOrder)
    .map((der) => new CertificateChoices({ certificate: AsnConvert.parse(der, Certificate) }));
  const signedData = new SignedData({
    version: CMSVersion.v3,
    digestAlgorithms: new DigestAlgorithmIdentifiers([digest()]),
    encapContentInfo: new EncapsulatedContentInfo({ eContentType: id_data }),
    certificates: new CertificateSet(certificates),
    signerInfos: new SignerInfos([
      new SignerInfo({
        version: CMSVersion.v3,
        sid: new SignerIdentifier({
          subjectKeyIdentifier: new SubjectKeyIdentifier(chain.leafSki),
        }),
        digestAlgorithm: digest(),
        signatureAlgorithm: pss,
        signature: new OctetString(signature),
      }),
    ]),
  });
  const der = AsnConvert.serialize(
    new ContentInfo({ contentType: id_signedData, content: AsnConvert.serialize(signedData) }),
  );
  const b64 = Buffer.from(der)
    .toString('base64')
    .replace(/(.{64})/g, '$1\n')
    .trim();
  return `-----BEGIN CMS-----\n${b64}\n-----END CMS-----\n`;
}

/** What the crypto core's X.509 signer callback must return (the .d.ts omits the scheme). */
export interface RawX509Signature {
  signature_scheme: 'RsaPssSha512';
  signature_bytes: Uint8Array;
  certificate_chain: string;
}

/** Our user and the vault's cross-signing master key (unpadded base64 Ed25519). */
export interface OwnMaster {
  userId: string;
  masterPublic: string;
}

export class X509RefusedError extends Error {
  readonly code = 'ENDPOINT_X509_REFUSED';
}

/** The canonical JSON of our master key as the vault holds it (what we may sign, exactly). */
export function ourMasterKeyBytes(own: OwnMaster): Uint8Array {
  return signingBytes({
    user_id: own.userId,
    usage: ['master'],
    keys: { [`ed25519:${own.masterPublic}`]: own.masterPublic },
  });
}

/**
 * The only thing the x509-identity key ever signs: our own master key, the vault's. Anything
 * else (another user's key, a master key the homeserver made up, extra fields) is refused:
 * a CMS signature over it would make every peer trusting our CA see it as our identity.
 * Requires the exact canonical bytes, so no JSON parser differences (duplicate keys, escapes)
 * can make a verifier read something else. The error names the field, never any value.
 */
export function assertOurMasterKey(bytes: Uint8Array, own: OwnMaster): void {
  const refuse = (why: string): never => {
    throw new X509RefusedError(`x509: refusing to sign: not our cross-signing master key (${why})`);
  };
  let parsed: unknown;
  try {
    parsed = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes));
  } catch {
    return refuse('not JSON');
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    return refuse('not a JSON object');
  }
  const o = parsed as Record<string, unknown>;
  const fields = Object.keys(o).sort().join(',');
  if (fields !== 'keys,usage,user_id') refuse('unexpected fields');
  if (o.user_id !== own.userId) refuse('another user');
  if (!Array.isArray(o.usage) || o.usage.length !== 1 || o.usage[0] !== 'master') {
    refuse('usage is not ["master"]');
  }
  const keys = o.keys;
  if (typeof keys !== 'object' || keys === null || Array.isArray(keys)) refuse('no keys');
  const entries = Object.entries(keys as Record<string, unknown>);
  const [only] = entries;
  if (
    entries.length !== 1 ||
    !only ||
    only[0] !== `ed25519:${own.masterPublic}` ||
    only[1] !== own.masterPublic
  ) {
    refuse("the key is not the vault's master key");
  }
  if (!Buffer.from(bytes).equals(Buffer.from(ourMasterKeyBytes(own)))) {
    refuse('not canonical JSON');
  }
}

export interface VaultX509Signer {
  chain: X509Chain;
  /** Whose master key this signer signs (and nothing else). */
  own: OwnMaster;
  /**
   * The crypto core's `raw_x509_signer`: signs the given bytes with the vault's key, once
   * assertOurMasterKey accepts them.
   */
  rawSigner: (item: Uint8Array) => Promise<RawX509Signature>;
  /** The crypto core's `raw_x509_validity`: the chain's earliest notAfter, ms. */
  rawValidity: () => number;
  /**
   * cross-signing.ts's hook: `{ "io.element.x509:<ski>": "<CMS PEM>" }` for our master key
   * (refuses any other bytes).
   */
  extraMasterSignatures: (canonicalMasterKeyBytes: Uint8Array) => Promise<Record<string, string>>;
}

/**
 * The vault's `x509-identity` key with the configured chain, for `own`'s master key only.
 * Refuses a chain whose leaf is not the vault's key: such a signature would be uploaded and
 * silently ignored by every peer.
 */
export async function vaultX509Signer(
  vault: Pick<Vault, 'publicKey' | 'sign'>,
  chain: X509Chain,
  own: OwnMaster,
): Promise<VaultX509Signer> {
  const info = await vault.publicKey('x509-identity');
  const vaultKey = Buffer.from(info.spki);
  const leafKey = chain.leaf.publicKey.export({ type: 'spki', format: 'der' });
  if (!vaultKey.equals(leafKey)) {
    throw new X509ConfigError(
      "x509: the chain's leaf certificate is not for the vault's x509-identity key (issue it with node deploy/x509/main.ts issue --vault-config ...)",
    );
  }
  const sign = (bytes: Uint8Array) => {
    assertOurMasterKey(bytes, own);
    return vault.sign('x509-identity', bytes);
  };
  return {
    chain,
    own: { ...own },
    rawSigner: async (item) => ({
      signature_scheme: 'RsaPssSha512',
      signature_bytes: await sign(item),
      certificate_chain: chain.pem,
    }),
    rawValidity: () => chain.notAfterMs,
    extraMasterSignatures: async (bytes) => ({
      [chain.keyId]: cmsSignature(chain, await sign(bytes)),
    }),
  };
}

/** What the service wires in: the engine's part, the cross-signing hook, and the refresh. */
export interface X509Setup {
  engine: { caCertsPem?: string | undefined; signer?: VaultX509Signer | undefined };
  extraMasterSignatures?: VaultX509Signer['extraMasterSignatures'];
  /** Makes the published master key carry a signature by the configured chain. */
  refresh?: (
    api: Pick<HomeserverApi, 'keysQuery' | 'signaturesUpload'>,
  ) => Promise<X509RefreshOutcome>;
}

/** `foreign`: the published master key is not the vault's; nothing was signed. */
export type X509RefreshOutcome = 'current' | 'signed' | 'no-identity' | 'foreign';

/**
 * `userId` is ours (the session's); the master key is the vault's `cross-signing-master`, the
 * only key the x509-identity key will ever sign for.
 */
export async function x509Setup(
  vault: Pick<Vault, 'publicKey' | 'sign'>,
  material: X509Material,
  userId: string,
): Promise<X509Setup> {
  const signer = material.chain
    ? await vaultX509Signer(vault, material.chain, {
        userId,
        masterPublic: await vaultMasterKeySigner(vault).publicKeyBase64(),
      })
    : undefined;
  return {
    engine: { caCertsPem: material.caCertsPem, signer },
    ...(signer
      ? {
          extraMasterSignatures: signer.extraMasterSignatures,
          refresh: (api) => refreshMasterSignature(api, signer),
        }
      : {}),
  };
}

function cmsSignedData(pem: string): SignedData {
  const b64 = pem.replace(/-----(BEGIN|END) CMS-----/g, '').replace(/\s+/g, '');
  const info = AsnConvert.parse(Buffer.from(b64, 'base64'), ContentInfo);
  return AsnConvert.parse(info.content, SignedData);
}

/** The certificates inside a CMS signature we (or anyone) made, DER. */
export function cmsCertificates(pem: string): Uint8Array[] {
  const signed = cmsSignedData(pem);
  const out: Uint8Array[] = [];
  if (!signed.certificates) return out;
  for (const choice of signed.certificates) {
    if (choice.certificate) out.push(new Uint8Array(AsnConvert.serialize(choice.certificate)));
  }
  return out;
}

/**
 * Expiry refresh: when the published master key has no signature from the configured chain
 * (a renewed certificate in the chain file, read at start), signs it again and uploads the
 * signature. A signature whose certificates are exactly the configured chain and which
 * verifies over our master key is left alone, so a restart with the same chain signs nothing.
 *
 * The /keys/query answer is the homeserver's word: only the vault's master key is signed
 * (`foreign` otherwise), and what is signed and uploaded is built here, not taken from it.
 */
export async function refreshMasterSignature(
  api: Pick<HomeserverApi, 'keysQuery' | 'signaturesUpload'>,
  signer: VaultX509Signer,
): Promise<X509RefreshOutcome> {
  const { userId, masterPublic } = signer.own;
  const published = await publishedIdentity(api, userId);
  const master = published.master;
  const publishedPublic = keyOf(master);
  if (!master || !publishedPublic) return 'no-identity';
  if (publishedPublic !== masterPublic) return 'foreign';
  // The published key, as peers will check the signature against it, must be ours exactly
  // (throws otherwise: a master key with other fields would not verify under our signature).
  const bytes = signingBytes({ ...master });
  assertOurMasterKey(bytes, signer.own);
  const existing = master.signatures?.[userId]?.[signer.chain.keyId];
  if (existing && currentSignature(existing, signer.chain, bytes)) return 'current';
  const sigs = await signer.extraMasterSignatures(bytes);
  const signed = {
    user_id: userId,
    usage: ['master'],
    keys: { [`ed25519:${masterPublic}`]: masterPublic },
    signatures: { [userId]: sigs },
  };
  const answer = JSON.parse(
    await api.signaturesUpload(JSON.stringify({ [userId]: { [masterPublic]: signed } })),
  ) as { failures?: Record<string, Record<string, unknown>> };
  const failure = answer.failures?.[userId]?.[masterPublic];
  if (failure) {
    throw new Error(
      `x509: the homeserver refused the X.509 signature: ${JSON.stringify(failure).slice(0, 300)}`,
    );
  }
  return 'signed';
}

/**
 * The refresh at start, which never fails the start: whatever goes wrong (the homeserver
 * refuses the upload, serves a master key that is not ours or JSON we cannot canonicalise) is
 * one warning line, and the endpoint runs on with the signature it has.
 */
export async function refreshAtStart(
  refresh: NonNullable<X509Setup['refresh']>,
  api: Pick<HomeserverApi, 'keysQuery' | 'signaturesUpload'>,
  log: { warn(message: string): void; info(message: string): void },
): Promise<X509RefreshOutcome | 'failed'> {
  try {
    const done = await refresh(api);
    if (done === 'signed') log.info('x509: signed our master key with the configured chain');
    if (done === 'foreign') {
      log.warn("x509: the published cross-signing master key is not the vault's; not signing it");
    }
    return done;
  } catch (e) {
    const message = (e instanceof Error ? e.message : String(e)).replace(/\s+/g, ' ');
    log.warn(`x509: master key signature not refreshed: ${message.slice(0, 300)}`);
    return 'failed';
  }
}

/**
 * A published CMS signature is current when it carries exactly the configured chain and its
 * signature verifies, with the leaf's key, over `content` (our master key's canonical JSON).
 */
function currentSignature(cmsPem: string, chain: X509Chain, content: Uint8Array): boolean {
  try {
    const inside = cmsCertificates(cmsPem)
      .map((c) => Buffer.from(c).toString('base64'))
      .sort();
    const ours = chain.der.map((c) => Buffer.from(c).toString('base64')).sort();
    const sameChain = inside.length === ours.length && inside.every((c, i) => c === ours[i]);
    if (!sameChain) return false;
    const signerInfos = cmsSignedData(cmsPem).signerInfos;
    const [only] = signerInfos;
    if (signerInfos.length !== 1 || !only || only.signedAttrs) return false;
    return verify(
      'sha512',
      content,
      { key: chain.leaf.publicKey, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: 64 },
      new Uint8Array(only.signature.buffer),
    );
  } catch {
    return false; // unparsable: replace it
  }
}
