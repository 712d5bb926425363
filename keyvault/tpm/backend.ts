import {
  type KeyObject,
  createHash,
  createHmac,
  createPrivateKey,
  createPublicKey,
  randomBytes,
  randomInt,
  sign as edSign,
} from 'node:crypto';
import type { TpmConfig } from '../config.ts';
import {
  ACTIVATION_PROOF_LABEL,
  type ActivationRequest,
  type AttestationIdentity,
  type BackedUpSession,
  type BackupDecryptResult,
  type BackupKeyInfo,
  type DoctorCheck,
  type SealedSecret,
  PURPOSE_ALGORITHM,
  type PcrSelection,
  type ProvisionReport,
  type PublicKeyInfo,
  type Quote,
  SIGNING_PURPOSES,
  type SigningPurpose,
  type VaultBackend,
  VaultCode,
  VaultError,
  type VaultStatus,
} from '../vault.ts';
import { serialized } from '../serialized.ts';
import { backupKeyInfo, decryptBackedUp } from '../backup/decrypt.ts';
import { COMMAND_TIMEOUT_MS, COUNTER_ATTRIBUTES, type NvRef, TpmClient } from './client.ts';
import * as cmd from './commands.ts';
import { Reader } from './marshal.ts';
import type { CreatedObject, NvPublic } from './commands.ts';
import { TPM_ALG, TPM_CAP, TPM_RH, TPMA_NV, TPMA_SESSION } from './constants.ts';
import { RC, TpmError } from './rc.ts';
import { passwordSession } from './session.ts';
import {
  type CounterState,
  type TpmState,
  fromBlobs,
  readTpmState,
  toBlobs,
  writeTpmState,
} from './state.ts';
import {
  akTemplate,
  parsePublic,
  pcrPolicyDigest,
  rsaPssTemplate,
  sealTemplate,
} from './structures.ts';
import { TpmTransportError, connectSwtpm, openTpmDevice } from './transport/index.ts';

const ED25519_PKCS8_PREFIX = Buffer.from('302e020100300506032b657004220420', 'hex');
/** 2048 bits: the RSA size every TPM 2.0 supports (3072 is optional in the PC Client profile). */
const X509_RSA_BITS = 2048;
/** Where TCG's EK credential profile puts EK certificates: RSA-2048, ECC P-256, ECC P-384. */
const EK_CERT_INDICES = [0x01c00002, 0x01c0000a, 0x01c00016];
/** TCG's persistent EK handles: RSA-2048 (0x81010001), ECC P-256 (0x81010002). */
const EK_HANDLES = [0x81010001, 0x81010002];
const NEEDED_ALGS: [number, string][] = [
  [TPM_ALG.ECC, 'ECC'],
  [TPM_ALG.RSA, 'RSA'],
  [TPM_ALG.AES, 'AES'],
  [TPM_ALG.CFB, 'CFB'],
  [TPM_ALG.SHA256, 'SHA256'],
  [TPM_ALG.SHA512, 'SHA512'],
  [TPM_ALG.RSAPSS, 'RSAPSS'],
  [TPM_ALG.ECDSA, 'ECDSA'],
  [TPM_ALG.KEYEDHASH, 'KEYEDHASH'],
];

/**
 * Where a vault draws its counter's NV index from when the configuration names none: the
 * owner range of TCG's "Registry of Reserved TPM 2.0 Handles and Localities" (no index there
 * is assigned to anybody; EK certificates and platform indices live elsewhere).
 */
export const COUNTER_INDEX_RANGE = { first: 0x01800000, last: 0x01bfffff } as const;
/** Random picks before giving up (with 4 Mi indices, 64 taken in a row means something is wrong). */
const COUNTER_INDEX_TRIES = 64;

export interface TpmVaultOptions {
  /** How long one TPM command may take before the vault answers VAULT_NOT_RESPONDING. */
  commandTimeoutMs?: number;
  /** Draws a candidate NV index for the counter (default: random in COUNTER_INDEX_RANGE). For tests. */
  counterIndexCandidate?: () => number;
}

/**
 * The TPM 2.0 backend. Secrets (the store key, the Ed25519 cross-signing seed, the counter's
 * authValue) are generated in this process, never by TPM2_GetRandom (whose answer crosses the
 * bus in clear), and sealed to the configured PCRs through salted, parameter-encrypted
 * sessions. The X.509 RSA key and the attestation key are generated inside the TPM and never
 * leave it.
 *
 * Counters and binding. Several vaults may share one TPM (several endpoints on a machine, or
 * another tenant), and none may use or disturb another's keys or counter:
 *
 * - Each vault has its own storage primary: the SRK template with a random `unique` chosen at
 *   provisioning and kept in the state file (state.parentUnique; state.srkName is that key's
 *   Name). Every blob of the vault (store key, cross-signing seed, X.509 key, the counter's
 *   authValue) is created under it, so another vault's blob fails TPM2_Load here with an
 *   integrity error (VAULT_FOREIGN_OR_TAMPERED). A cleared or different TPM derives another key
 *   from the same template: the Name check refuses it before anything is loaded. Binding by a
 *   parent rather than by a policy: it covers the X.509 key (a signing key with userWithAuth)
 *   as well as sealed data, costs nothing per command, and needs no secret in the state file.
 * - Each vault has its own anti-rollback counter: an NV counter index it picks at random in
 *   COUNTER_INDEX_RANGE (or the one `nvCounterIndex` names), skipping any index that exists:
 *   an index that is already there is never adopted (VAULT_COUNTER_FOREIGN when it is the
 *   configured one). It is defined not ORDERLY, written and read only with its own random
 *   authValue (COUNTER_ATTRIBUTES), which is sealed like the other secrets and goes to the TPM
 *   encrypted, once, in TPM2_NV_DefineSpace; afterwards only HMACs over it do, in sessions
 *   salted to the vault's primary. The index, its public area and its Name after the first
 *   increment (TPMA_NV_WRITTEN changes the Name) are recorded in the state file. Every counter
 *   operation first checks that the index is there with exactly that public area and Name,
 *   and then authorizes with the authValue: an index someone deleted, or replaced by one that
 *   looks the same (the owner can always delete and define indices), is refused with
 *   VAULT_COUNTER_FOREIGN, never counted on.
 * - Every TPM command has a deadline (client.ts COMMAND_TIMEOUT_MS, 5 s; RSA key generation
 *   120 s): a TPM that does not answer gives VAULT_NOT_RESPONDING, well within the RPC's own
 *   timeouts. The vault keeps working once the TPM answers again.
 */
export async function openTpmVault(
  config: TpmConfig,
  options: TpmVaultOptions = {},
): Promise<VaultBackend> {
  const timeoutMs = options.commandTimeoutMs ?? COMMAND_TIMEOUT_MS;
  const transport = await guard('connecting to the TPM', () =>
    'device' in config.transport
      ? openTpmDevice(config.transport.device)
      : connectSwtpm(config.transport.swtpm, { timeoutMs }),
  );
  const tpm = new TpmClient(transport, { commandTimeoutMs: timeoutMs });
  try {
    await guard('TPM2_Startup', () => tpm.startup());
    // A vault killed mid-command left its objects loaded; after three such kills every load
    // failed with OBJECT_MEMORY until the TPM was reset (found by test/soak).
    await guard('flushing what an earlier vault left in the TPM', () => tpm.flushLeftovers());
  } catch (e) {
    await tpm.close().catch(() => undefined);
    throw e;
  }
  return serialized(new TpmVault(tpm, config, options));
}

class TpmVault implements VaultBackend {
  readonly backend = 'tpm' as const;
  readonly #tpm: TpmClient;
  readonly #config: TpmConfig;
  readonly #options: TpmVaultOptions;
  #crossSigning: KeyObject | undefined;
  /**
   * The counter's authValue, unsealed on first use and kept for the vault's lifetime, with the
   * sealed blob it came from (a state file that names another blob is unsealed afresh).
   */
  #counterAuth: { sealed: string; value: Buffer } | undefined;

  constructor(tpm: TpmClient, config: TpmConfig, options: TpmVaultOptions) {
    this.#tpm = tpm;
    this.#config = config;
    this.#options = options;
  }

  /** Released once per lifetime: serialized() enforces it for every backend. */
  async storeKey(): Promise<Uint8Array> {
    const state = await this.#provisioned('storeKey');
    const key = await this.#unseal(
      state,
      toBlobs(state.storeKey as NonNullable<TpmState['storeKey']>),
      'store key',
    );
    const copy = new Uint8Array(key);
    key.fill(0);
    return copy;
  }

  async counterRead(): Promise<bigint> {
    const state = await this.#provisioned('counter');
    return this.#withCounter(state, 'reading the NV counter', (ref, auth, parent) =>
      this.#tpm.counterRead(ref, auth, parent),
    );
  }

  async counterIncrement(): Promise<bigint> {
    const state = await this.#provisioned('counter');
    return this.#withCounter(state, 'incrementing the NV counter', async (ref, auth, parent) => {
      await this.#tpm.counterIncrement(ref, auth, parent);
      return this.#tpm.counterRead(ref, auth, parent);
    });
  }

  async publicKey(purpose: SigningPurpose): Promise<PublicKeyInfo> {
    checkPurpose(purpose);
    if (purpose === 'cross-signing-master') {
      const key = await this.#crossSigningKey();
      const spki = createPublicKey(key).export({ type: 'spki', format: 'der' });
      return { purpose, algorithm: PURPOSE_ALGORITHM[purpose], spki: new Uint8Array(spki) };
    }
    const state = await this.#provisioned('x509Identity');
    const blobs = toBlobs(state.x509Identity as NonNullable<TpmState['x509Identity']>);
    // Loading proves the public part is bound to a private part under this vault's primary.
    await guard('loading the X.509 identity key', () =>
      this.#withParent(state, (parent) =>
        this.#tpm.withLoaded(parent, blobs, () => Promise.resolve()),
      ),
    );
    return { purpose, algorithm: PURPOSE_ALGORITHM[purpose], spki: rsaSpki(blobs.public) };
  }

  async sign(purpose: SigningPurpose, message: Uint8Array): Promise<Uint8Array> {
    checkPurpose(purpose);
    if (purpose === 'cross-signing-master') {
      return new Uint8Array(edSign(null, message, await this.#crossSigningKey()));
    }
    const state = await this.#provisioned('x509Identity');
    const blobs = toBlobs(state.x509Identity as NonNullable<TpmState['x509Identity']>);
    const digest = createHash('sha512').update(message).digest();
    const signature = await guard('signing with the X.509 identity key', () =>
      this.#withParent(state, (parent) =>
        this.#tpm.withLoaded(parent, blobs, (key) =>
          this.#tpm.run(cmd.signRsaPss(key, digest), [{ session: passwordSession() }]),
        ),
      ),
    );
    return new Uint8Array(signature);
  }

  async quote(qualifyingData: Uint8Array, selection: PcrSelection): Promise<Quote> {
    const state = await this.#provisioned();
    const pcrs = [...new Set(selection.pcrs)].sort((a, b) => a - b);
    if (pcrs.length === 0 || qualifyingData.length > 64) {
      throw new VaultError(
        VaultCode.BadRequest,
        'a quote needs at least one PCR and at most 64 bytes of qualifying data',
      );
    }
    return guard('quoting PCRs', () =>
      this.#tpm.withPrimary(TPM_RH.ENDORSEMENT, akTemplate(), async (ak) => {
        if (ak.name.toString('hex') !== state.akName) {
          throw new VaultError(
            VaultCode.ForeignOrTampered,
            'the attestation key differs from the one provisioned: this is another TPM, or it was cleared',
          );
        }
        // PCR_Read is a second command: a PCR extended in between would make the listed
        // values disagree with the quote. Check here and quote again (a verifier checks too).
        let q: { attest: Buffer; signature: Buffer } | undefined;
        let values: { pcr: number; digest: Buffer }[] = [];
        for (let attempt = 0; attempt < 3; attempt++) {
          q = await this.#tpm.run(
            cmd.quote({ handle: ak.handle, name: ak.name }, qualifyingData, pcrs),
            [{ session: passwordSession() }],
          );
          values = await this.#tpm.pcrRead(pcrs);
          const listed = createHash('sha256');
          for (const v of values) listed.update(v.digest);
          if (listed.digest().equals(quotedPcrDigest(q.attest))) break;
          q = undefined;
        }
        if (!q) {
          throw new VaultError(
            VaultCode.HardwareError,
            'the PCRs kept changing while they were quoted (three tries): try again',
          );
        }
        return {
          attest: new Uint8Array(q.attest),
          signature: new Uint8Array(q.signature),
          pcrValues: values.map((v) => ({ pcr: v.pcr, digest: new Uint8Array(v.digest) })),
        };
      }),
    );
  }

  async activateCredential(request: ActivationRequest): Promise<Uint8Array> {
    const state = await this.#provisioned();
    if (!/^[A-Za-z0-9_-]{16,64}$/.test(request.challengeId)) {
      throw new VaultError(VaultCode.BadRequest, 'a challenge id is 16-64 base64url characters');
    }
    return guard('activating a credential', () =>
      this.#tpm.withPrimary(TPM_RH.ENDORSEMENT, akTemplate(), async (ak) => {
        if (ak.name.toString('hex') !== state.akName) {
          throw new VaultError(
            VaultCode.ForeignOrTampered,
            'the attestation key differs from the one provisioned: this is another TPM, or it was cleared',
          );
        }
        const ek = await this.#persistentEk();
        // The EK's policy is PolicySecret(endorsement); the session is salted to our own
        // parent and encrypts the answer, so the credential never crosses the bus in clear.
        return this.#withParent(state, (parent) =>
          this.#tpm.withSession('policy', parent, async (session) => {
            await this.#tpm.run(cmd.policySecret(TPM_RH.ENDORSEMENT, session.handle), [
              { session: passwordSession() },
            ]);
            session.attributes = TPMA_SESSION.continueSession | TPMA_SESSION.encrypt;
            const credential = await this.#tpm.run(
              cmd.activateCredential(
                { handle: ak.handle, name: ak.name },
                ek,
                request.credentialBlob,
                request.encryptedSecret,
              ),
              [{ session: passwordSession() }, { session }],
            );
            try {
              return new Uint8Array(
                createHmac('sha256', credential)
                  .update(Buffer.from(ACTIVATION_PROOF_LABEL, 'ascii'))
                  .update(ak.name)
                  .update(Buffer.from(request.challengeId, 'ascii'))
                  .digest(),
              );
            } finally {
              credential.fill(0);
            }
          }),
        );
      }),
    );
  }

  /** The EK the manufacturer certified: persisted at the TCG handle for RSA-2048, then P-256. */
  async #persistentEk(): Promise<{ handle: number; name: Buffer }> {
    for (const handle of EK_HANDLES) {
      try {
        const { name } = await this.#tpm.run(cmd.readPublic(handle));
        return { handle, name };
      } catch (e) {
        if (e instanceof TpmError && (e.base === RC.HANDLE || e.base === RC.VALUE)) continue;
        throw e;
      }
    }
    throw new VaultError(
      VaultCode.NotSupported,
      'this TPM has no persisted endorsement key (0x81010001 or 0x81010002): credential activation needs the EK its certificate is for',
    );
  }

  async attestationIdentity(): Promise<AttestationIdentity> {
    const state = await this.#provisioned();
    const ak = await guard('reading the attestation key', () =>
      this.#tpm.withPrimary(TPM_RH.ENDORSEMENT, akTemplate(), (key) => {
        if (key.name.toString('hex') !== state.akName) {
          throw new VaultError(
            VaultCode.ForeignOrTampered,
            'the attestation key differs from the one provisioned: this is another TPM, or it was cleared',
          );
        }
        return Promise.resolve({
          akPublic: new Uint8Array(key.public.raw),
          akName: new Uint8Array(key.name),
        });
      }),
    );
    for (const index of EK_CERT_INDICES) {
      const cert = await guard('reading the EK certificate', () => this.#tpm.nvReadAll(index));
      if (cert && cert.length > 0) return { ...ak, ekCertificate: new Uint8Array(trimDer(cert)) };
    }
    return ak;
  }

  async random(n: number): Promise<Uint8Array> {
    if (!Number.isInteger(n) || n < 1 || n > 1024)
      throw new VaultError(VaultCode.BadRequest, 'random: n must be 1..1024');
    return new Uint8Array(await guard('TPM2_GetRandom', () => this.#tpm.getRandom(n)));
  }

  async status(): Promise<VaultStatus> {
    const state = await readTpmState(this.#config.stateDir);
    const identity = await guard('reading TPM properties', () => this.#tpm.identity());
    const capabilities = await this.#algorithms();
    return {
      backend: 'tpm',
      identity: `${identity} via ${this.#tpm.transport.description}`,
      capabilities,
      provisioned: {
        storeKey: state?.storeKey !== undefined,
        counter: state?.counter?.name !== undefined,
        ...(state?.counter?.start === undefined ? {} : { counterStart: state.counter.start }),
        purposes: SIGNING_PURPOSES.filter((p) =>
          p === 'cross-signing-master'
            ? state?.crossSigningSeed !== undefined
            : state?.x509Identity !== undefined,
        ),
        attestationKey: state !== undefined,
      },
      counterGuarantee:
        "TPM NV counter of this vault's own: kept by the TPM itself, it only goes up, and only this vault can move it; removing or replacing it takes the owner hierarchy and is detected (VAULT_COUNTER_FOREIGN)",
      warnings: [],
    };
  }

  async provision(): Promise<ProvisionReport> {
    const report: ProvisionReport = { created: [], kept: [] };
    const existing = await readTpmState(this.#config.stateDir);
    if (existing && existing.pcrs.join(',') !== [...this.#config.pcrs].join(',')) {
      throw new VaultError(
        VaultCode.Config,
        `the secrets are sealed to PCRs ${existing.pcrs.join(',')} but the configuration says ${this.#config.pcrs.join(',')}; resealing is not supported yet`,
      );
    }
    const unique = existing ? Buffer.from(existing.parentUnique, 'hex') : randomBytes(32);
    const { srkName, akName } = await guard('creating the storage and attestation primaries', () =>
      this.#tpm.withSrk(
        (srk) =>
          this.#tpm.withPrimary(TPM_RH.ENDORSEMENT, akTemplate(), (ak) =>
            Promise.resolve({ srkName: srk.name.toString('hex'), akName: ak.name.toString('hex') }),
          ),
        unique,
      ),
    );
    if (existing && existing.srkName !== srkName) {
      throw new VaultError(
        VaultCode.ForeignOrTampered,
        `the state in ${this.#config.stateDir} was provisioned on another TPM (or this one was cleared); refusing to replace its keys. Move it away to provision afresh.`,
      );
    }
    const state: TpmState = existing ?? {
      version: 2,
      kind: 'mte-tpm-vault',
      parentUnique: unique.toString('hex'),
      srkName,
      akName,
      pcrs: this.#config.pcrs,
    };
    (existing ? report.kept : report.created).push(
      "storage primary (this vault's own) and attestation key (the TPM's)",
    );
    if (state.counter?.name !== undefined) this.#checkConfiguredIndex(state.counter);
    const save = () => writeTpmState(this.#config.stateDir, state);
    await save();

    for (const [field, label] of [
      ['storeKey', 'store key (sealed to PCRs)'],
      ['crossSigningSeed', 'cross-signing master seed (Ed25519, sealed to PCRs)'],
    ] as const) {
      if (state[field]) {
        report.kept.push(label);
        continue;
      }
      const secret = randomBytes(32);
      try {
        state[field] = fromBlobs(await this.#seal(state, secret));
      } finally {
        secret.fill(0);
      }
      await save();
      report.created.push(label);
    }
    if (state.x509Identity) {
      report.kept.push('X.509 identity key (RSA-2048, RSASSA-PSS/SHA-512)');
    } else {
      const blobs = await guard('creating the X.509 identity key', () =>
        this.#withParent(state, (parent) =>
          this.#tpm.createKey(parent, rsaPssTemplate(X509_RSA_BITS)),
        ),
      );
      state.x509Identity = fromBlobs(blobs);
      await save();
      report.created.push('X.509 identity key (RSA-2048, RSASSA-PSS/SHA-512)');
    }
    const counter = await this.#provisionCounter(state, save);
    (counter === 'created' ? report.created : report.kept).push(
      `anti-rollback counter (NV index 0x${(state.counter?.index ?? 0).toString(16)}, this vault's own)`,
    );
    return report;
  }

  async doctor(): Promise<DoctorCheck[]> {
    const checks: DoctorCheck[] = [];
    const check = async (name: string, run: () => Promise<string>, fix: string): Promise<void> => {
      try {
        checks.push({ check: name, ok: true, detail: await run() });
      } catch (e) {
        checks.push({
          check: name,
          ok: false,
          detail: `${e instanceof Error ? e.message : String(e)}. ${fix}`,
        });
      }
    };
    await check(
      'TPM reachable',
      () => this.#tpm.identity(),
      'Check the transport in the configuration.',
    );
    await check(
      'algorithms',
      async () => {
        const { found, missing } = await this.#algorithms();
        if (missing.length > 0) throw new Error(`missing ${missing.join(', ')}`);
        return found.join(', ');
      },
      'This TPM cannot hold the keys this vault needs.',
    );
    await check(
      'owner hierarchy usable',
      () =>
        this.#tpm.withSrk((srk) =>
          Promise.resolve(`storage primary ${srk.name.toString('hex').slice(0, 16)}…`),
        ),
      'The owner hierarchy may have an authorization value set; this vault expects it empty.',
    );
    await check(
      'PCRs readable',
      async () =>
        (await this.#tpm.pcrRead(this.#config.pcrs)).map((v) => v.pcr).join(',') +
        ' (SHA-256 bank)',
      'Enable the SHA-256 PCR bank.',
    );
    const state = await readTpmState(this.#config.stateDir).catch(() => undefined);
    await check(
      'provisioned',
      () => {
        if (
          !state?.storeKey ||
          !state.crossSigningSeed ||
          !state.x509Identity ||
          state.counter?.name === undefined
        ) {
          return Promise.reject(new Error('not fully provisioned'));
        }
        return Promise.resolve(`state in ${this.#config.stateDir}`);
      },
      'Run "vault init".',
    );
    if (state?.counter?.name !== undefined) {
      const counter = state.counter;
      await check(
        "the anti-rollback counter is this vault's",
        async () => {
          const value = await this.#withCounter(
            state,
            'reading the NV counter',
            (ref, auth, parent) => this.#tpm.counterRead(ref, auth, parent),
          );
          return `NV index 0x${counter.index.toString(16)} at ${value}`;
        },
        'Someone removed or replaced the counter: the store can no longer be protected against rollback here; restore from a backup onto a freshly provisioned vault.',
      );
    }
    if (state?.storeKey) {
      const sealed = state.storeKey;
      await check(
        'sealing policy matches the current PCRs',
        async () => {
          const values = await this.#tpm.pcrRead(state.pcrs);
          const now = pcrPolicyDigest(
            state.pcrs,
            values.map((v) => v.digest),
          );
          const policy = parsePublic(Buffer.from(sealed.public, 'base64')).authPolicy;
          if (!now.equals(policy))
            throw new Error(
              `PCRs ${state.pcrs.join(',')} differ from when the secrets were sealed`,
            );
          return 'the store key would unseal now';
        },
        'The boot state changed: if the change is legitimate, re-provision from a backup; if not, investigate.',
      );
    }
    return checks;
  }

  /** Sealed like the store key: under this vault's primary, to its PCRs. */
  async sealSecret(secret: Uint8Array): Promise<SealedSecret> {
    const state = await this.#provisioned('storeKey');
    return { backend: 'tpm', ...fromBlobs(await this.#seal(state, secret)) };
  }

  async unsealSecret(sealed: SealedSecret): Promise<Uint8Array> {
    if (sealed.backend !== 'tpm') {
      throw new VaultError(VaultCode.ForeignOrTampered, 'the secret was sealed by another backend');
    }
    const state = await this.#provisioned('storeKey');
    return this.#unseal(state, toBlobs(sealed), 'sealed secret');
  }

  backupKey(): Promise<BackupKeyInfo | null> {
    return backupKeyInfo(this.#config.stateDir);
  }

  backupDecrypt(publicKey: string, sessions: BackedUpSession[]): Promise<BackupDecryptResult[]> {
    return decryptBackedUp(this, this.#config.stateDir, publicKey, sessions);
  }

  async close(): Promise<void> {
    this.#crossSigning = undefined;
    this.#counterAuth?.value.fill(0);
    this.#counterAuth = undefined;
    await this.#tpm.close();
  }

  async #provisioned(field?: keyof TpmState): Promise<TpmState> {
    const state = await readTpmState(this.#config.stateDir);
    if (
      !state ||
      (field && state[field] === undefined) ||
      (field === 'counter' && state.counter?.name === undefined)
    ) {
      throw new VaultError(
        VaultCode.NotProvisioned,
        `the TPM vault in ${this.#config.stateDir} is not provisioned: run "vault init"`,
      );
    }
    return state;
  }

  #checkSrk(state: TpmState, name: Buffer): void {
    if (name.toString('hex') !== state.srkName) {
      throw new VaultError(
        VaultCode.ForeignOrTampered,
        "this vault's storage key differs from the one provisioned (another TPM, a cleared one, or an altered state file): the sealed state is useless here",
      );
    }
  }

  /** This vault's own storage primary, checked against the Name pinned at provisioning. */
  #withParent<R>(state: TpmState, use: (parent: CreatedObject) => Promise<R>): Promise<R> {
    return this.#tpm.withSrk(
      (parent) => {
        this.#checkSrk(state, parent.name);
        return use(parent);
      },
      Buffer.from(state.parentUnique, 'hex'),
    );
  }

  #seal(state: TpmState, secret: Uint8Array) {
    return guard('sealing', () =>
      this.#withParent(state, (parent) => this.#sealUnder(state, parent, secret)),
    );
  }

  async #sealUnder(state: TpmState, parent: CreatedObject, secret: Uint8Array) {
    const values = await this.#tpm.pcrRead(state.pcrs);
    const policy = pcrPolicyDigest(
      state.pcrs,
      values.map((v) => v.digest),
    );
    return this.#tpm.seal(parent, secret, sealTemplate(policy));
  }

  #unseal(
    state: TpmState,
    blobs: { private: Buffer; public: Buffer },
    what: string,
  ): Promise<Buffer> {
    return guard(`unsealing the ${what}`, () =>
      this.#withParent(state, (parent) => this.#tpm.unseal(parent, blobs, state.pcrs)),
    );
  }

  /** A configured nvCounterIndex must name the counter this vault recorded, or none. */
  #checkConfiguredIndex(counter: CounterState): void {
    const configured = this.#config.nvCounterIndex;
    if (configured !== undefined && configured !== counter.index) {
      throw new VaultError(
        VaultCode.Config,
        `nvCounterIndex names 0x${configured.toString(16)} but this vault's counter is NV index 0x${counter.index.toString(16)}; remove nvCounterIndex from the configuration or set it to that`,
      );
    }
  }

  async #authValue(state: TpmState, parent: CreatedObject): Promise<Buffer> {
    const sealed = (state.counter as CounterState).auth;
    if (this.#counterAuth?.sealed === sealed.private) return this.#counterAuth.value;
    const value = await this.#tpm.unseal(parent, toBlobs(sealed), state.pcrs);
    this.#counterAuth?.value.fill(0);
    this.#counterAuth = { sealed: sealed.private, value };
    return value;
  }

  /**
   * Runs a counter operation after checking the index is the one this vault defined: there,
   * with the public area and Name recorded at provisioning, and (by the operation itself,
   * authorized with the index's authValue) knowing that authValue.
   */
  #withCounter<T>(
    state: TpmState,
    doing: string,
    op: (ref: NvRef, authValue: Buffer, parent: CreatedObject) => Promise<T>,
  ): Promise<T> {
    const counter = state.counter as CounterState;
    this.#checkConfiguredIndex(counter);
    const where = `the anti-rollback counter (NV index 0x${counter.index.toString(16)})`;
    return guard(doing, () =>
      this.#withParent(state, async (parent) => {
        const auth = await this.#authValue(state, parent);
        const pub = await this.#tpm.nvPublic(counter.index);
        if (!pub) {
          throw new VaultError(
            VaultCode.CounterForeign,
            `${where} is gone: someone deleted it (or the owner hierarchy was cleared); the vault never counts on another`,
          );
        }
        if (
          pub.raw.toString('hex') !== counter.public ||
          pub.name.toString('hex') !== counter.name
        ) {
          throw new VaultError(
            VaultCode.CounterForeign,
            `${where} is not the one this vault defined (attributes 0x${pub.attributes.toString(16)}, Name ${pub.name.toString('hex').slice(0, 16)}…, not as recorded): someone replaced it`,
          );
        }
        try {
          return await op({ handle: counter.index, name: pub.name }, auth, parent);
        } catch (e) {
          if (isAuthFailure(e)) {
            throw new VaultError(
              VaultCode.CounterForeign,
              `${where} does not answer to this vault's authorization: someone replaced it with a look-alike`,
            );
          }
          throw e;
        }
      }),
    );
  }

  /**
   * Gives the vault a counter of its own: an NV index nobody has defined (the configured one,
   * or a random one in COUNTER_INDEX_RANGE), defined with a fresh authValue sealed into the
   * state first, so that a provisioning interrupted after TPM2_NV_DefineSpace resumes with the
   * same index and authValue. An index that exists is never adopted: it is ours only if it
   * answers to the authValue this vault recorded before defining it.
   */
  async #provisionCounter(state: TpmState, save: () => Promise<void>): Promise<'created' | 'kept'> {
    if (state.counter?.name !== undefined) {
      await this.#withCounter(state, 'checking the NV counter', (ref, auth, parent) =>
        this.#tpm.counterRead(ref, auth, parent),
      );
      return 'kept';
    }
    const configured = this.#config.nvCounterIndex;
    const candidate = this.#options.counterIndexCandidate ?? randomCounterIndex;
    return guard('defining the NV counter', () =>
      this.#withParent(state, async (parent): Promise<'created'> => {
        let resumed = state.counter !== undefined;
        if (state.counter && configured !== undefined && configured !== state.counter.index) {
          state.counter.index = configured;
          resumed = false;
        }
        if (!state.counter) {
          const auth = randomBytes(32);
          const sealed = fromBlobs(
            await this.#sealUnder(state, parent, auth).catch((e: unknown) => {
              auth.fill(0);
              throw e;
            }),
          );
          this.#counterAuth?.value.fill(0);
          this.#counterAuth = { sealed: sealed.private, value: auth };
          state.counter = { index: configured ?? candidate(), auth: sealed };
          await save();
        }
        const counter = state.counter;
        const auth = await this.#authValue(state, parent);
        for (let tries = 1; ; tries++) {
          const pub = await this.#claimIndex(counter.index, auth, parent, resumed);
          if (pub) {
            counter.public = pub.raw.toString('hex');
            counter.name = pub.name.toString('hex');
            const ref = { handle: counter.index, name: pub.name };
            counter.start = (await this.#tpm.counterRead(ref, auth, parent)).toString();
            await save();
            return 'created';
          }
          if (configured !== undefined) {
            throw new VaultError(
              VaultCode.CounterForeign,
              `NV index 0x${configured.toString(16)} (nvCounterIndex) already exists and is not this vault's: an existing index is never adopted; name a free one, or leave nvCounterIndex out and the vault picks one`,
            );
          }
          if (tries >= COUNTER_INDEX_TRIES) {
            throw new VaultError(
              VaultCode.HardwareError,
              `no free NV index in 0x${COUNTER_INDEX_RANGE.first.toString(16)}-0x${COUNTER_INDEX_RANGE.last.toString(16)} after ${tries} random tries`,
            );
          }
          counter.index = candidate();
          resumed = false;
          await save();
        }
      }),
    );
  }

  /**
   * Defines our counter at `index` and answers its public area, or undefined when the index is
   * someone else's. An index that exists is ours only when this provisioning resumes one that
   * stopped after defining it: then it has exactly our attributes and answers to our
   * authValue (an authorization attempt changes nothing on an index that does not).
   */
  async #claimIndex(
    index: number,
    auth: Buffer,
    parent: CreatedObject,
    resumed: boolean,
  ): Promise<NvPublic | undefined> {
    const existing = await this.#tpm.nvPublic(index);
    if (!existing) {
      try {
        return await this.#tpm.defineCounter(index, auth, parent);
      } catch (e) {
        // Someone defined it between our look and our definition.
        if (e instanceof TpmError && e.base === RC.NV_DEFINED) return undefined;
        throw e;
      }
    }
    const looksOurs =
      (existing.attributes & ~TPMA_NV.WRITTEN) === COUNTER_ATTRIBUTES &&
      existing.dataSize === 8 &&
      existing.authPolicy.length === 0;
    if (!resumed || !looksOurs) return undefined;
    const ref = { handle: index, name: existing.name };
    try {
      if (existing.attributes & TPMA_NV.WRITTEN) await this.#tpm.counterRead(ref, auth, parent);
      else await this.#tpm.counterIncrement(ref, auth, parent);
    } catch (e) {
      if (isAuthFailure(e)) return undefined;
      throw e;
    }
    return this.#tpm.nvPublic(index);
  }

  async #crossSigningKey(): Promise<KeyObject> {
    if (this.#crossSigning) return this.#crossSigning;
    const state = await this.#provisioned('crossSigningSeed');
    const seed = await this.#unseal(
      state,
      toBlobs(state.crossSigningSeed as NonNullable<TpmState['crossSigningSeed']>),
      'cross-signing seed',
    );
    const der = Buffer.concat([ED25519_PKCS8_PREFIX, seed]);
    try {
      // The seed lives on only inside this KeyObject, in this process.
      this.#crossSigning = createPrivateKey({ key: der, format: 'der', type: 'pkcs8' });
    } finally {
      seed.fill(0);
      der.fill(0);
    }
    return this.#crossSigning;
  }

  async #algorithms(): Promise<{ found: string[]; missing: string[] }> {
    const { data } = await guard('reading TPM algorithms', () =>
      this.#tpm.run(cmd.getCapability(TPM_CAP.ALGS, 0, 128)),
    );
    data.u32();
    const count = data.u32();
    const present = new Set<number>();
    for (let i = 0; i < count; i++) {
      present.add(data.u16());
      data.u32();
    }
    return {
      found: NEEDED_ALGS.filter(([a]) => present.has(a)).map(([, n]) => n),
      missing: NEEDED_ALGS.filter(([a]) => !present.has(a)).map(([, n]) => n),
    };
  }
}

function randomCounterIndex(): number {
  return randomInt(COUNTER_INDEX_RANGE.first, COUNTER_INDEX_RANGE.last + 1);
}

/** The TPM refused an authorization by the index's authValue: not the index we defined. */
function isAuthFailure(e: unknown): boolean {
  return (
    e instanceof TpmError &&
    (e.command === 'NV_Increment' || e.command === 'NV_Read') &&
    (e.base === RC.BAD_AUTH || e.base === RC.AUTH_FAIL || e.rc === RC.NV_AUTHORIZATION)
  );
}

function checkPurpose(purpose: string): asserts purpose is SigningPurpose {
  if (!(SIGNING_PURPOSES as readonly string[]).includes(purpose)) {
    throw new VaultError(VaultCode.BadRequest, `unknown signing purpose "${purpose.slice(0, 40)}"`);
  }
}

/** TPMS_ATTEST (quote) → its pcrDigest: magic, type, qualifiedSigner, extraData, clockInfo,
 * firmwareVersion, then TPMS_QUOTE_INFO { TPML_PCR_SELECTION, TPM2B_DIGEST }. */
function quotedPcrDigest(attest: Buffer): Buffer {
  const r = new Reader(attest);
  r.u32();
  r.u16();
  r.tpm2b();
  r.tpm2b();
  r.bytes(17);
  r.u64();
  const banks = r.u32();
  for (let i = 0; i < banks; i++) {
    r.u16();
    r.bytes(r.u8());
  }
  return r.tpm2b();
}

/** NV indices are often larger than the certificate: keep the DER SEQUENCE, drop the padding. */
function trimDer(nv: Buffer): Buffer {
  if (nv[0] !== 0x30) return nv;
  const first = nv[1] ?? 0;
  if (first < 0x80) return nv.subarray(0, 2 + first);
  const octets = first & 0x7f;
  const length = nv.subarray(2, 2 + octets).reduce((n, b) => n * 256 + b, 0);
  return nv.subarray(0, Math.min(nv.length, 2 + octets + length));
}

function rsaSpki(publicRaw: Buffer): Uint8Array {
  const rsa = parsePublic(publicRaw).rsa;
  if (!rsa)
    throw new VaultError(VaultCode.ForeignOrTampered, 'the X.509 identity key is not an RSA key');
  const e = Buffer.alloc(4);
  e.writeUInt32BE(rsa.exponent);
  const key = createPublicKey({
    key: {
      kty: 'RSA',
      n: rsa.modulus.toString('base64url'),
      e: e.subarray(e.findIndex((b) => b !== 0)).toString('base64url'),
    },
    format: 'jwk',
  });
  return new Uint8Array(key.export({ type: 'spki', format: 'der' }));
}

/** Maps TPM and transport failures onto vault codes with a sentence saying what was going on. */
async function guard<T>(doing: string, run: () => Promise<T>): Promise<T> {
  try {
    return await run();
  } catch (e) {
    if (e instanceof VaultError) throw e;
    if (e instanceof TpmTransportError) {
      if (e.code === 'TPM_TIMEOUT')
        throw new VaultError(VaultCode.NotResponding, `${doing}: ${e.message}`);
      throw new VaultError(
        e.code === 'TPM_UNREACHABLE' || e.code === 'TPM_CLOSED'
          ? VaultCode.Unreachable
          : VaultCode.HardwareError,
        `${doing}: ${e.message}`,
      );
    }
    if (e instanceof TpmError) {
      if (e.command === 'Unseal' && (e.base === RC.POLICY_FAIL || e.base === RC.PCR_CHANGED)) {
        throw new VaultError(
          VaultCode.PolicyMismatch,
          `${doing}: the TPM refused: the PCR values differ from those the secret was sealed to (${e.message})`,
        );
      }
      if (e.command === 'ActivateCredential') {
        // INTEGRITY: made for another AK Name or EK; SIZE/VALUE/FAILURE: a secret for another
        // EK (swtpm answers FAILURE for that one command and keeps working). Not retryable.
        throw new VaultError(
          VaultCode.ForeignOrTampered,
          `${doing}: the credential was not made for this TPM's EK and attestation key (${e.message})`,
        );
      }
      if (
        e.command === 'Load' &&
        (e.base === RC.INTEGRITY || e.base === RC.HANDLE || e.base === RC.BINDING)
      ) {
        throw new VaultError(
          VaultCode.ForeignOrTampered,
          `${doing}: the blob does not load under this vault's storage key: it belongs to another vault (or another TPM), or was altered (${e.message})`,
        );
      }
      throw new VaultError(VaultCode.HardwareError, `${doing}: ${e.message}`);
    }
    throw new VaultError(
      VaultCode.HardwareError,
      `${doing}: ${e instanceof Error ? e.message : 'unexpected failure'}`,
    );
  }
}
