import {
  type KeyObject,
  createHash,
  createPrivateKey,
  createPublicKey,
  randomBytes,
  sign as edSign,
} from 'node:crypto';
import type { TpmConfig } from '../config.ts';
import {
  type AttestationIdentity,
  type DoctorCheck,
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
import { NvCounterError, TpmClient } from './client.ts';
import * as cmd from './commands.ts';
import { TPM_ALG, TPM_CAP, TPM_RH } from './constants.ts';
import { RC, TpmError } from './rc.ts';
import { passwordSession } from './session.ts';
import { type TpmState, fromBlobs, readTpmState, toBlobs, writeTpmState } from './state.ts';
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
 * The TPM 2.0 backend. Secrets (the store key, the Ed25519 cross-signing seed) are generated
 * in this process, never by TPM2_GetRandom (whose answer crosses the bus in clear), and sealed
 * to the configured PCRs through salted, parameter-encrypted sessions. The X.509 RSA key and
 * the attestation key are generated inside the TPM and never leave it.
 */
export async function openTpmVault(config: TpmConfig): Promise<VaultBackend> {
  const transport = await guard('connecting to the TPM', () =>
    'device' in config.transport
      ? openTpmDevice(config.transport.device)
      : connectSwtpm(config.transport.swtpm),
  );
  const tpm = new TpmClient(transport);
  await guard('TPM2_Startup', () => tpm.startup());
  return serialized(new TpmVault(tpm, config));
}

class TpmVault implements VaultBackend {
  readonly backend = 'tpm' as const;
  readonly #tpm: TpmClient;
  readonly #config: TpmConfig;
  #crossSigning: KeyObject | undefined;

  constructor(tpm: TpmClient, config: TpmConfig) {
    this.#tpm = tpm;
    this.#config = config;
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
    await this.#provisioned('counterIndex');
    return guard('reading the NV counter', () =>
      this.#tpm.counterRead(this.#config.nvCounterIndex),
    );
  }

  async counterIncrement(): Promise<bigint> {
    await this.#provisioned('counterIndex');
    return guard('incrementing the NV counter', async () => {
      await this.#tpm.counterIncrement(this.#config.nvCounterIndex);
      return this.#tpm.counterRead(this.#config.nvCounterIndex);
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
    // Loading proves the public part is bound to a private part in this TPM.
    await guard('loading the X.509 identity key', () =>
      this.#tpm.withSrk((srk) => this.#tpm.withLoaded(srk, blobs, () => Promise.resolve())),
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
      this.#tpm.withSrk(async (srk) => {
        this.#checkSrk(state, srk.name);
        return this.#tpm.withLoaded(srk, blobs, (key) =>
          this.#tpm.run(cmd.signRsaPss(key, digest), [{ session: passwordSession() }]),
        );
      }),
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
        const q = await this.#tpm.run(
          cmd.quote({ handle: ak.handle, name: ak.name }, qualifyingData, pcrs),
          [{ session: passwordSession() }],
        );
        const values = await this.#tpm.pcrRead(pcrs);
        return {
          attest: new Uint8Array(q.attest),
          signature: new Uint8Array(q.signature),
          pcrValues: values.map((v) => ({ pcr: v.pcr, digest: new Uint8Array(v.digest) })),
        };
      }),
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
        counter: state?.counterIndex !== undefined,
        purposes: SIGNING_PURPOSES.filter((p) =>
          p === 'cross-signing-master'
            ? state?.crossSigningSeed !== undefined
            : state?.x509Identity !== undefined,
        ),
        attestationKey: state !== undefined,
      },
      counterGuarantee:
        'TPM NV counter: kept by the TPM itself, it only goes up; resetting it means clearing the TPM, which also destroys the sealed keys',
      warnings: [],
    };
  }

  async provision(): Promise<ProvisionReport> {
    const report: ProvisionReport = { created: [], kept: [] };
    const existing = await readTpmState(this.#config.stateDir);
    const { srkName, akName } = await guard('creating the storage and attestation primaries', () =>
      this.#tpm.withSrk((srk) =>
        this.#tpm.withPrimary(TPM_RH.ENDORSEMENT, akTemplate(), (ak) =>
          Promise.resolve({ srkName: srk.name.toString('hex'), akName: ak.name.toString('hex') }),
        ),
      ),
    );
    if (existing && existing.srkName !== srkName) {
      throw new VaultError(
        VaultCode.ForeignOrTampered,
        `the state in ${this.#config.stateDir} was provisioned on another TPM (or this one was cleared); refusing to replace its keys. Move it away to provision afresh.`,
      );
    }
    const state: TpmState = existing ?? {
      version: 1,
      kind: 'mte-tpm-vault',
      srkName,
      akName,
      pcrs: this.#config.pcrs,
    };
    (existing ? report.kept : report.created).push(
      'attestation key (derived from the endorsement seed)',
    );
    if (existing && existing.pcrs.join(',') !== [...this.#config.pcrs].join(',')) {
      throw new VaultError(
        VaultCode.Config,
        `the secrets are sealed to PCRs ${existing.pcrs.join(',')} but the configuration says ${this.#config.pcrs.join(',')}; resealing is not supported yet`,
      );
    }
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
        this.#tpm.withSrk((srk) => this.#tpm.createKey(srk, rsaPssTemplate(X509_RSA_BITS))),
      );
      state.x509Identity = fromBlobs(blobs);
      await save();
      report.created.push('X.509 identity key (RSA-2048, RSASSA-PSS/SHA-512)');
    }
    const counter = await guard('defining the NV counter', () =>
      this.#tpm.defineCounter(this.#config.nvCounterIndex),
    );
    state.counterIndex = this.#config.nvCounterIndex;
    await save();
    (counter === 'created' ? report.created : report.kept).push(
      `anti-rollback counter (NV index 0x${this.#config.nvCounterIndex.toString(16)})`,
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
          state.counterIndex === undefined
        ) {
          return Promise.reject(new Error('not fully provisioned'));
        }
        return Promise.resolve(`state in ${this.#config.stateDir}`);
      },
      'Run "vault init".',
    );
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

  async close(): Promise<void> {
    this.#crossSigning = undefined;
    await this.#tpm.close();
  }

  async #provisioned(field?: keyof TpmState): Promise<TpmState> {
    const state = await readTpmState(this.#config.stateDir);
    if (!state || (field && state[field] === undefined)) {
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
        'this TPM is not the one the vault was provisioned on (its storage key differs): the sealed state is useless here',
      );
    }
  }

  #seal(state: TpmState, secret: Uint8Array) {
    return guard('sealing', async () => {
      const values = await this.#tpm.pcrRead(state.pcrs);
      const policy = pcrPolicyDigest(
        state.pcrs,
        values.map((v) => v.digest),
      );
      return this.#tpm.withSrk((srk) => {
        this.#checkSrk(state, srk.name);
        return this.#tpm.seal(srk, secret, sealTemplate(policy));
      });
    });
  }

  #unseal(
    state: TpmState,
    blobs: { private: Buffer; public: Buffer },
    what: string,
  ): Promise<Buffer> {
    return guard(`unsealing the ${what}`, () =>
      this.#tpm.withSrk((srk) => {
        this.#checkSrk(state, srk.name);
        return this.#tpm.unseal(srk, blobs, state.pcrs);
      }),
    );
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

function checkPurpose(purpose: string): asserts purpose is SigningPurpose {
  if (!(SIGNING_PURPOSES as readonly string[]).includes(purpose)) {
    throw new VaultError(VaultCode.BadRequest, `unknown signing purpose "${purpose.slice(0, 40)}"`);
  }
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
      throw new VaultError(
        e.code === 'TPM_UNREACHABLE' || e.code === 'TPM_CLOSED'
          ? VaultCode.Unreachable
          : VaultCode.HardwareError,
        `${doing}: ${e.message}`,
      );
    }
    if (e instanceof NvCounterError) {
      throw new VaultError(
        VaultCode.ForeignOrTampered,
        `${doing}: ${e.message}; someone replaced the anti-rollback counter`,
      );
    }
    if (e instanceof TpmError) {
      if (e.command === 'Unseal' && (e.base === RC.POLICY_FAIL || e.base === RC.PCR_CHANGED)) {
        throw new VaultError(
          VaultCode.PolicyMismatch,
          `${doing}: the TPM refused: the PCR values differ from those the secret was sealed to (${e.message})`,
        );
      }
      if (
        e.command === 'Load' &&
        (e.base === RC.INTEGRITY || e.base === RC.HANDLE || e.base === RC.BINDING)
      ) {
        throw new VaultError(
          VaultCode.ForeignOrTampered,
          `${doing}: the blob does not belong to this TPM or was altered (${e.message})`,
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
