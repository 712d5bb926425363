import {
  type KeyObject,
  constants,
  createPublicKey,
  generateKeyPair,
  randomBytes,
  sign,
  verify,
} from 'node:crypto';
import { access, mkdir, stat } from 'node:fs/promises';
import { promisify } from 'node:util';
import { type DevConfig, devConfig } from '../config.ts';
import {
  type AttestationIdentity,
  type BackedUpSession,
  type BackupDecryptResult,
  type BackupKeyInfo,
  type DoctorCheck,
  type SealedSecret,
  PURPOSE_ALGORITHM,
  type ProvisionReport,
  type PublicKeyInfo,
  type Quote,
  SIGNING_PURPOSES,
  type SigningPurpose,
  VaultCode,
  VaultError,
  type VaultBackend,
  type VaultStatus,
} from '../vault.ts';
import { DEV_REFUSED, DEV_WARNING } from './messages.ts';
import {
  COUNTER_MAX,
  type DevState,
  checkKeys,
  createIdentity,
  emptyState,
  loadKey,
  readIdentity,
  readState,
  statePath,
  wipeState,
  writeState,
} from './state.ts';
import { serialized } from '../serialized.ts';
import { backupKeyInfo, decryptBackedUp } from '../backup/decrypt.ts';

const MAX_MESSAGE_BYTES = 64 * 1024;
const generate = promisify(generateKeyPair);

/** RSASSA-PSS as the X.509 identity code expects; Node's MGF1 hash follows the digest (SHA-512). */
const PSS = { padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: 64 } as const;

/**
 * The software backend, for development and tests on machines without a TPM or HSM. It refuses
 * to open unless the config says so, and says it is insecure on every start and in status().
 */
export async function openDevVault(config: DevConfig): Promise<VaultBackend> {
  // Callers may hand us an object that never went through loadVaultConfig.
  const checked = devConfig.safeParse(config);
  if (!checked.success) throw new VaultError(VaultCode.InsecureRefused, DEV_REFUSED);
  process.stderr.write(`WARNING: ${DEV_WARNING}\n`);
  const vault = new DevVault(checked.data.stateDir);
  // Damage shows at start, not at the first signature.
  const state = await readState(vault.stateDir);
  if (state) {
    try {
      checkKeys(vault.stateDir, state);
    } finally {
      wipeState(state);
    }
  }
  return serialized(vault);
}

class DevVault implements VaultBackend {
  readonly backend = 'dev';
  readonly stateDir: string;
  #closed = false;
  /** Serialises read-modify-write of the state file within this process. */
  #queue: Promise<unknown> = Promise.resolve();

  constructor(stateDir: string) {
    this.stateDir = stateDir;
  }

  /** Released once per lifetime: serialized() enforces it for every backend. */
  async storeKey(): Promise<Uint8Array> {
    this.#open();
    // A copy: the caller owns it (and zeroises it); our decoded state is wiped below.
    const key = await this.#read((s) => s.storeKey && Uint8Array.from(s.storeKey));
    if (!key) throw notProvisioned('the store key');
    return key;
  }

  async counterRead(): Promise<bigint> {
    this.#open();
    const counter = await this.#read((s) => s.counter);
    if (counter === undefined) throw notProvisioned('the counter');
    return counter;
  }

  counterIncrement(): Promise<bigint> {
    this.#open();
    return this.#mutate(async () => {
      const state = (await readState(this.stateDir)) ?? emptyState();
      try {
        if (state.counter === undefined) throw notProvisioned('the counter');
        if (state.counter >= COUNTER_MAX) {
          throw new VaultError(VaultCode.HardwareError, 'the counter is at its maximum');
        }
        state.counter += 1n;
        // Written (and fsynced) before the new value is returned: it must survive a crash.
        await writeState(this.stateDir, state);
        return state.counter;
      } finally {
        wipeState(state);
      }
    });
  }

  async publicKey(purpose: SigningPurpose): Promise<PublicKeyInfo> {
    this.#open();
    const key = await this.#key(checkPurpose(purpose));
    const spki = createPublicKey(key).export({ format: 'der', type: 'spki' });
    return { purpose, algorithm: PURPOSE_ALGORITHM[purpose], spki: new Uint8Array(spki) };
  }

  async sign(purpose: SigningPurpose, message: Uint8Array): Promise<Uint8Array> {
    this.#open();
    checkPurpose(purpose);
    if (!(message instanceof Uint8Array) || message.length > MAX_MESSAGE_BYTES) {
      throw new VaultError(VaultCode.BadRequest, `message: at most ${MAX_MESSAGE_BYTES} bytes`);
    }
    const key = await this.#key(purpose);
    const signature =
      purpose === 'cross-signing-master'
        ? sign(null, message, key)
        : sign('sha512', message, { key, ...PSS });
    return new Uint8Array(signature);
  }

  quote(): Promise<Quote> {
    return Promise.reject(notSupported('quotes'));
  }

  attestationIdentity(): Promise<AttestationIdentity> {
    return Promise.reject(notSupported('an attestation identity'));
  }

  activateCredential(): Promise<Uint8Array> {
    return Promise.reject(notSupported('credential activation'));
  }

  random(n: number): Promise<Uint8Array> {
    this.#open();
    if (!Number.isInteger(n) || n < 1 || n > 1024) {
      return Promise.reject(new VaultError(VaultCode.BadRequest, 'n: between 1 and 1024'));
    }
    return Promise.resolve(new Uint8Array(randomBytes(n)));
  }

  async status(): Promise<VaultStatus> {
    this.#open();
    const vaultId = (await readIdentity(this.stateDir))?.vaultId;
    const provisioned = await this.#read((state) => ({
      storeKey: state.storeKey !== undefined,
      counter: state.counter !== undefined,
      ...(state.counter !== undefined ? { counterStart: '0' } : {}),
      purposes: SIGNING_PURPOSES.filter((p) => state.keys[p] !== undefined),
      attestationKey: false,
    }));
    return {
      backend: 'dev',
      identity: vaultId ? `software, vault ${vaultId}` : 'software',
      capabilities: { found: ['ed25519', 'rsa-pss-sha512', 'random'], missing: [] },
      provisioned,
      counterGuarantee:
        'none: the counter is a number in a file that anyone who can write the state directory can roll back',
      warnings: [DEV_WARNING],
    };
  }

  provision(): Promise<ProvisionReport> {
    this.#open();
    return this.#mutate(async () => {
      await mkdir(this.stateDir, { recursive: true, mode: 0o700 });
      // Refuses another vault's or a damaged state file before anything is made: provisioning
      // over it would hide the damage, or bind a stranger's keys to a new identity.
      const existing = await readState(this.stateDir);
      const known = await readIdentity(this.stateDir);
      const { identity, created: madeIdentity } = known
        ? { identity: known, created: false }
        : await createIdentity(this.stateDir);
      const state = existing ?? emptyState(identity.vaultId);
      try {
        checkKeys(this.stateDir, state);
        const report: ProvisionReport = { created: [], kept: [] };
        const note = (what: string, existed: boolean) =>
          (existed ? report.kept : report.created).push(what);

        note('vault id', !madeIdentity);
        note('store key', state.storeKey !== undefined);
        state.storeKey ??= new Uint8Array(randomBytes(32));
        note('counter', state.counter !== undefined);
        state.counter ??= 0n;
        for (const purpose of SIGNING_PURPOSES) {
          note(`${purpose} key (${PURPOSE_ALGORITHM[purpose]})`, state.keys[purpose] !== undefined);
          state.keys[purpose] ??= await generatePkcs8(purpose);
        }
        if (report.created.some((what) => what !== 'vault id')) {
          await writeState(this.stateDir, state);
        }
        return report;
      } finally {
        wipeState(state);
      }
    });
  }

  async doctor(): Promise<DoctorCheck[]> {
    this.#open();
    const checks: DoctorCheck[] = [];
    const check = async (name: string, run: () => Promise<string | undefined>) => {
      try {
        const problem = await run();
        checks.push({ check: name, ok: problem === undefined, detail: problem ?? '' });
      } catch (e) {
        checks.push({ check: name, ok: false, detail: e instanceof Error ? e.message : 'failed' });
      }
    };
    await check('software ed25519 and RSA-PSS (SHA-512) sign and verify', () => selfTest());
    await check('state directory exists and only its owner can reach it', async () => {
      const info = await stat(this.stateDir).catch(() => undefined);
      if (!info?.isDirectory()) return `create ${this.stateDir} (init does) or fix stateDir`;
      await access(this.stateDir, 2 /* W_OK */);
      if ((info.mode & 0o077) !== 0) return `chmod 700 ${this.stateDir}`;
      return undefined;
    });
    await check('state file is valid and fully provisioned', async () => {
      const state = await readState(this.stateDir);
      if (!state) return `no ${statePath(this.stateDir)}: run init`;
      try {
        checkKeys(this.stateDir, state);
        const complete =
          state.storeKey !== undefined &&
          state.counter !== undefined &&
          SIGNING_PURPOSES.every((p) => state.keys[p] !== undefined);
        return complete ? undefined : 'something is missing: run init';
      } finally {
        wipeState(state);
      }
    });
    return checks;
  }

  /** In clear, like every dev secret: the backend is insecure by design (DEV_WARNING). */
  sealSecret(secret: Uint8Array): Promise<SealedSecret> {
    this.#open();
    return Promise.resolve({ backend: 'dev', clear: Buffer.from(secret).toString('base64') });
  }

  unsealSecret(sealed: SealedSecret): Promise<Uint8Array> {
    this.#open();
    if (sealed.backend !== 'dev') {
      return Promise.reject(
        new VaultError(VaultCode.ForeignOrTampered, 'the secret was sealed by another backend'),
      );
    }
    return Promise.resolve(new Uint8Array(Buffer.from(sealed.clear, 'base64')));
  }

  backupKey(): Promise<BackupKeyInfo | null> {
    this.#open();
    return backupKeyInfo(this.stateDir);
  }

  backupDecrypt(publicKey: string, sessions: BackedUpSession[]): Promise<BackupDecryptResult[]> {
    this.#open();
    return decryptBackedUp(this, this.stateDir, publicKey, sessions);
  }

  close(): Promise<void> {
    this.#closed = true;
    return Promise.resolve();
  }

  #open(): void {
    if (this.#closed) throw new VaultError(VaultCode.BadRequest, 'the vault is closed');
  }

  /**
   * State is read from the file on each use and wiped after: nothing secret stays in our
   * buffers between calls, and another process's init is seen at once.
   */
  async #read<T>(pick: (state: DevState) => T): Promise<T> {
    const state = (await readState(this.stateDir)) ?? emptyState();
    try {
      return pick(state);
    } finally {
      wipeState(state);
    }
  }

  async #key(purpose: SigningPurpose): Promise<KeyObject> {
    const key = await this.#read((state) => loadKey(this.stateDir, state, purpose));
    if (!key) throw notProvisioned(`the ${purpose} key`);
    return key;
  }

  #mutate<T>(run: () => Promise<T>): Promise<T> {
    const result = this.#queue.then(run);
    this.#queue = result.catch(() => undefined);
    return result;
  }
}

async function generatePkcs8(purpose: SigningPurpose): Promise<Uint8Array<ArrayBuffer>> {
  const { privateKey } =
    purpose === 'cross-signing-master'
      ? await generate('ed25519')
      : await generate('rsa', { modulusLength: 3072 });
  const der = privateKey.export({ format: 'der', type: 'pkcs8' });
  const copy = new Uint8Array(der);
  der.fill(0);
  return copy;
}

function checkPurpose(purpose: SigningPurpose): SigningPurpose {
  if (!(SIGNING_PURPOSES as readonly string[]).includes(purpose)) {
    throw new VaultError(VaultCode.BadRequest, 'purpose: not a signing purpose');
  }
  return purpose;
}

async function selfTest(): Promise<string | undefined> {
  const message = randomBytes(32);
  const ed = await generate('ed25519');
  if (!verify(null, message, ed.publicKey, sign(null, message, ed.privateKey))) {
    return 'ed25519 self-test failed: this Node.js build cannot sign';
  }
  // 2048 bits proves the mechanism faster than 3072; 1024 is too small for PSS with SHA-512.
  const rsa = await generate('rsa', { modulusLength: 2048 });
  const sig = sign('sha512', message, { key: rsa.privateKey, ...PSS });
  if (!verify('sha512', message, { key: rsa.publicKey, ...PSS }, sig)) {
    return 'RSA-PSS self-test failed: this Node.js build cannot sign';
  }
  return undefined;
}

const notProvisioned = (what: string) =>
  new VaultError(VaultCode.NotProvisioned, `${what} is not provisioned: run init`);

const notSupported = (what: string) =>
  new VaultError(VaultCode.NotSupported, `the dev backend has no TPM and cannot provide ${what}`);
