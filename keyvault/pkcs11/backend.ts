import pkcs11js from 'pkcs11js';
import type { Pkcs11Config } from '../config.ts';
import {
  SIGNING_PURPOSES,
  VaultCode,
  VaultError,
  type AttestationIdentity,
  type BackedUpSession,
  type BackupDecryptResult,
  type BackupKeyInfo,
  type DoctorCheck,
  type SealedSecret,
  type ProvisionReport,
  type PublicKeyInfo,
  type Quote,
  type SigningPurpose,
  type VaultBackend,
  type VaultStatus,
} from '../vault.ts';
import { COUNTER_GUARANTEE, counterMissing, incrementCounter, readCounter } from './counter.ts';
import { doctorChecks } from './doctor.ts';
import { requireMechanisms } from './mechanisms.ts';
import { findVaultObject, type ObjectRole } from './objects.ts';
import { checkTokenSerial, findKek, provision } from './provision.ts';
import type { TokenConnection } from './session.ts';
import { checkPurpose, publicKey, sign } from './signing.ts';
import {
  checkStoreKeyVault,
  kekMissing,
  orphanStoreKeyFile,
  sealSecretUnderKek,
  unsealSecretUnderKek,
  unsealStoreKey,
} from './store-key.ts';
import { backupKeyInfo, decryptBackedUp } from '../backup/decrypt.ts';
import { readStoreKeyFile, storeKeyFileExists } from './store-key-file.ts';
import {
  checkIdentityToken,
  noIdentity,
  readVaultIdentity,
  type VaultIdentity,
} from './vault-id.ts';

const MAX_RANDOM_BYTES = 1024;

const NO_ATTESTATION =
  'a PKCS#11 token cannot produce TPM quotes or hold an attestation key; use the tpm backend for remote attestation';

/**
 * One vault on a PKCS#11 token (a token may hold several: each has its own id, recorded in its
 * state dir, and only ever touches the objects carrying it). Calls are serialised: the counter
 * is read-modify-write, and a reconnect must not race another call on the same session.
 */
export class Pkcs11Vault implements VaultBackend {
  readonly backend = 'pkcs11' as const;
  readonly #conn: TokenConnection;
  readonly #config: Pkcs11Config;
  #queue: Promise<unknown> = Promise.resolve();
  /** Read from the state dir on first use, then kept: it never changes once written. */
  #identity: VaultIdentity | undefined;

  constructor(conn: TokenConnection, config: Pkcs11Config) {
    this.#conn = conn;
    this.#config = config;
  }

  #serial<T>(fn: () => Promise<T>): Promise<T> {
    const result = this.#queue.then(fn);
    this.#queue = result.catch(() => undefined);
    return result;
  }

  /**
   * This vault's identity: NotProvisioned before `vault init`; refused when it was made on
   * another token, or when a store-key file sits there without one.
   */
  async #vault(): Promise<VaultIdentity> {
    if (this.#identity) return this.#identity;
    const { stateDir } = this.#config;
    const identity = await readVaultIdentity(stateDir);
    if (!identity) {
      throw (await storeKeyFileExists(stateDir))
        ? orphanStoreKeyFile(stateDir)
        : noIdentity(stateDir);
    }
    checkIdentityToken(identity, stateDir, this.#conn.identity.serial);
    this.#identity = identity;
    return identity;
  }

  /** Released once per lifetime: serialized() enforces it for every backend. */
  storeKey(): Promise<Uint8Array> {
    return this.#serial(async () => {
      const vault = await this.#vault();
      const file = await readStoreKeyFile(this.#config.stateDir);
      if (!file) {
        throw new VaultError(
          VaultCode.NotProvisioned,
          `no store-key file in ${this.#config.stateDir}; run "vault init"`,
        );
      }
      checkTokenSerial(file.tokenSerial, this.#conn.identity.serial);
      checkStoreKeyVault(file, vault);
      const key = await this.#conn.run('decrypting the store key', (p11, session) => {
        const kek = findKek(p11, session, vault);
        if (!kek) throw kekMissing(this.#config.stateDir);
        return unsealStoreKey(p11, session, kek, file, vault);
      });
      return key;
    });
  }

  counterRead(): Promise<bigint> {
    return this.#serial(async () => {
      const vault = await this.#vault();
      return this.#conn.run('reading the counter', async (p11, session) => {
        const value = readCounter(p11, session, vault);
        if (value === undefined) {
          throw counterMissing(vault, await storeKeyFileExists(this.#config.stateDir));
        }
        return value;
      });
    });
  }

  counterIncrement(): Promise<bigint> {
    return this.#serial(async () => {
      const vault = await this.#vault();
      return this.#conn.run('incrementing the counter', async (p11, session) => {
        const value = incrementCounter(p11, session, vault);
        if (value === undefined) {
          throw counterMissing(vault, await storeKeyFileExists(this.#config.stateDir));
        }
        return value;
      });
    });
  }

  publicKey(purpose: SigningPurpose): Promise<PublicKeyInfo> {
    return this.#serial(async () => {
      const checked = checkPurpose(purpose);
      const vault = await this.#vault();
      return this.#conn.run('reading a public key', (p11, session) =>
        publicKey(p11, session, vault, checked),
      );
    });
  }

  sign(purpose: SigningPurpose, message: Uint8Array): Promise<Uint8Array> {
    return this.#serial(async () => {
      const checked = checkPurpose(purpose);
      requireMechanisms(this.#conn.mechanisms);
      const vault = await this.#vault();
      return this.#conn.run('signing', (p11, session) =>
        sign(p11, session, vault, checked, message),
      );
    });
  }

  quote(): Promise<Quote> {
    return Promise.reject(new VaultError(VaultCode.NotSupported, NO_ATTESTATION));
  }

  attestationIdentity(): Promise<AttestationIdentity> {
    return Promise.reject(new VaultError(VaultCode.NotSupported, NO_ATTESTATION));
  }

  activateCredential(): Promise<Uint8Array> {
    return Promise.reject(new VaultError(VaultCode.NotSupported, NO_ATTESTATION));
  }

  random(n: number): Promise<Uint8Array> {
    return this.#serial(async () => {
      if (!Number.isInteger(n) || n < 1 || n > MAX_RANDOM_BYTES) {
        throw new VaultError(
          VaultCode.BadRequest,
          `random: n must be an integer from 1 to ${MAX_RANDOM_BYTES}`,
        );
      }
      return this.#conn.run('generating random bytes', (p11, session) => {
        return new Uint8Array(p11.C_GenerateRandom(session, Buffer.alloc(n)));
      });
    });
  }

  sealSecret(secret: Uint8Array): Promise<SealedSecret> {
    return this.#serial(async () => {
      const vault = await this.#vault();
      const sealed = await this.#conn.run('sealing a secret', (p11, session) => {
        const kek = findKek(p11, session, vault);
        if (!kek) throw kekMissing(this.#config.stateDir);
        return sealSecretUnderKek(p11, session, kek, this.#conn.identity.serial, vault, secret);
      });
      return { backend: 'pkcs11', ...sealed };
    });
  }

  /** Not queued itself: it runs inside backupDecrypt's turn (or a caller's own). */
  async #unseal(sealed: SealedSecret): Promise<Uint8Array> {
    if (sealed.backend !== 'pkcs11') {
      throw new VaultError(VaultCode.ForeignOrTampered, 'the secret was sealed by another backend');
    }
    const vault = await this.#vault();
    return this.#conn.run('unsealing a secret', (p11, session) => {
      const kek = findKek(p11, session, vault);
      if (!kek) throw kekMissing(this.#config.stateDir);
      return unsealSecretUnderKek(p11, session, kek, this.#conn.identity.serial, vault, sealed);
    });
  }

  unsealSecret(sealed: SealedSecret): Promise<Uint8Array> {
    return this.#serial(() => this.#unseal(sealed));
  }

  backupKey(): Promise<BackupKeyInfo | null> {
    return backupKeyInfo(this.#config.stateDir);
  }

  backupDecrypt(publicKey: string, sessions: BackedUpSession[]): Promise<BackupDecryptResult[]> {
    return this.#serial(() =>
      decryptBackedUp(
        { unsealSecret: (s) => this.#unseal(s) },
        this.#config.stateDir,
        publicKey,
        sessions,
      ),
    );
  }

  provision(): Promise<ProvisionReport> {
    return this.#serial(async () => {
      requireMechanisms(this.#conn.mechanisms);
      const { report, identity } = await this.#conn.run('provisioning', (p11, session) =>
        provision(p11, session, this.#conn.identity.serial, this.#config.stateDir),
      );
      this.#identity = identity;
      return report;
    });
  }

  status(): Promise<VaultStatus> {
    return this.#serial(async () => {
      const { identity, mechanisms } = this.#conn;
      const { stateDir } = this.#config;
      const warnings: string[] = [];
      let vault: VaultIdentity | undefined;
      try {
        vault = await this.#vault();
      } catch (e) {
        if (!(e instanceof VaultError)) throw e;
        if (e.code !== VaultCode.NotProvisioned) warnings.push(e.message);
      }
      const storeKeyThere = await storeKeyFileExists(stateDir);
      const onToken = await this.#conn.run('reading status', (p11, session) => {
        if (!vault) return { kek: false, counter: false, purposes: [] };
        const scope = vault;
        const has = (cls: number, role: ObjectRole) =>
          findVaultObject(p11, session, scope, cls, role) !== undefined;
        let counter = false;
        try {
          counter = readCounter(p11, session, scope) !== undefined;
          if (!counter && storeKeyThere) throw counterMissing(scope, true);
        } catch (e) {
          if (!(e instanceof VaultError) || e.code !== VaultCode.CounterForeign) throw e;
          warnings.push(e.message);
        }
        return {
          kek: has(pkcs11js.CKO_SECRET_KEY, 'store-kek'),
          counter,
          purposes: SIGNING_PURPOSES.filter(
            (p) => has(pkcs11js.CKO_PRIVATE_KEY, p) && has(pkcs11js.CKO_PUBLIC_KEY, p),
          ),
        };
      });
      let storeKeyFile = false;
      try {
        const file = await readStoreKeyFile(stateDir);
        storeKeyFile = file !== undefined;
        if (file && file.tokenSerial !== identity.serial) {
          warnings.push('the store-key file belongs to another token (its serial differs)');
        } else if (file && vault && file.vaultId !== vault.hex) {
          warnings.push(
            `the store-key file belongs to another vault (vault id ${file.vaultId}, not ${vault.hex})`,
          );
        }
      } catch (e) {
        warnings.push(e instanceof VaultError ? e.message : 'the store-key file cannot be read');
      }
      if (identity.manufacturer.startsWith('SoftHSM')) {
        warnings.push(
          'SoftHSM2 is a software token: its keys are files in its token directory, protected only by the PIN and file permissions',
        );
      }
      warnings.push(
        'the anti-rollback counter is weaker than a TPM NV counter (see counterGuarantee)',
      );
      if (mechanisms.missing.length > 0) {
        warnings.push(`the token lacks ${mechanisms.missing.join(', ')}`);
      }
      const flags = await this.#conn.tokenFlags();
      if ((flags & pkcs11js.CKF_USER_PIN_COUNT_LOW) !== 0) {
        warnings.push('the token reports a low PIN retry count: wrong PINs were entered');
      }
      return {
        backend: 'pkcs11' as const,
        identity: `token "${identity.label}" (${identity.manufacturer} ${identity.model}, serial ${identity.serial})${vault ? `, vault ${vault.hex}` : ''}`,
        capabilities: { found: mechanisms.found, missing: mechanisms.missing },
        provisioned: {
          storeKey: onToken.kek && storeKeyFile,
          counter: onToken.counter,
          ...(onToken.counter ? { counterStart: '0' } : {}),
          purposes: onToken.purposes,
          attestationKey: false,
        },
        counterGuarantee: COUNTER_GUARANTEE,
        warnings: warnings.slice(0, 16),
      };
    });
  }

  doctor(): Promise<DoctorCheck[]> {
    return this.#serial(() => doctorChecks(this.#conn, this.#config.stateDir));
  }

  close(): Promise<void> {
    return this.#serial(() => {
      this.#conn.close();
      return Promise.resolve();
    });
  }
}
