import pkcs11js from 'pkcs11js';
import type { Pkcs11Config } from '../config.ts';
import { SIGNING_PURPOSES, VaultCode, VaultError, type DoctorCheck } from '../vault.ts';
import { counterMissing, readCounter } from './counter.ts';
import { REQUIRED_MECHANISMS } from './mechanisms.ts';
import {
  PURPOSE_KEY_TYPE,
  PURPOSE_LABEL,
  assertHardwareBound,
  findVaultObject,
} from './objects.ts';
import { checkTokenSerial, findKek } from './provision.ts';
import { OPEN_STAGES, TokenConnection } from './session.ts';
import { checkStoreKeyVault, orphanStoreKeyFile } from './store-key.ts';
import { readStoreKeyFile, storeKeyFileExists } from './store-key-file.ts';
import { checkIdentityToken, readVaultIdentity, type VaultIdentity } from './vault-id.ts';

const RUN_PROVISION = 'missing: run "vault init"';

/** Runs one check; a VaultError's message is the sentence on what to fix. */
async function check(name: string, fn: () => Promise<string | undefined>): Promise<DoctorCheck> {
  try {
    const problem = await fn();
    return { check: name, ok: problem === undefined, detail: problem ?? 'ok' };
  } catch (e) {
    return {
      check: name,
      ok: false,
      detail: e instanceof VaultError ? e.message : 'unexpected error',
    };
  }
}

/** Checks on an open connection: the module, the token, the login, mechanisms, objects. */
export async function doctorChecks(
  conn: TokenConnection,
  stateDir: string,
): Promise<DoctorCheck[]> {
  const checks: DoctorCheck[] = [];
  checks.push(
    await check('module loads', async () => {
      await conn.moduleInfo();
      return undefined;
    }),
    await check('token found', async () => {
      await conn.tokenFlags();
      return undefined;
    }),
    await check('login works', async () =>
      (await conn.loggedIn())
        ? undefined
        : 'the session is not logged in as the user; check the PIN that config.pin points at',
    ),
  );
  for (const m of REQUIRED_MECHANISMS) {
    checks.push(
      await check(`mechanism ${m.name}`, () =>
        Promise.resolve(
          conn.mechanisms.found.includes(m.name)
            ? undefined
            : `the token lacks ${m.name} (0x${m.code.toString(16)}), needed for ${m.usedFor}; use a PKCS#11 module or token that supports it`,
        ),
      ),
    );
  }
  let vault: VaultIdentity | undefined;
  checks.push(
    await check('vault identity', async () => {
      const identity = await readVaultIdentity(stateDir);
      if (!identity) {
        if (await storeKeyFileExists(stateDir)) throw orphanStoreKeyFile(stateDir);
        return `${RUN_PROVISION} (no vault identity in ${stateDir})`;
      }
      checkIdentityToken(identity, stateDir, conn.identity.serial);
      vault = identity;
      return undefined;
    }),
  );
  /** A check of something that exists only once the vault has its identity. */
  const ofVault = (name: string, fn: (v: VaultIdentity) => Promise<string | undefined>) =>
    check(name, () => (vault ? fn(vault) : Promise.resolve(RUN_PROVISION)));
  checks.push(
    await ofVault('object mte-store-kek', (v) =>
      conn.run('checking the KEK', (p11, session) =>
        findKek(p11, session, v) ? undefined : RUN_PROVISION,
      ),
    ),
    await ofVault('store-key file', async (v) => {
      const file = await readStoreKeyFile(stateDir);
      if (!file) return `${RUN_PROVISION} (nothing in ${stateDir})`;
      checkTokenSerial(file.tokenSerial, conn.identity.serial);
      checkStoreKeyVault(file, v);
      return undefined;
    }),
  );
  for (const purpose of SIGNING_PURPOSES) {
    const label = PURPOSE_LABEL[purpose];
    checks.push(
      await ofVault(`object ${label}`, (v) =>
        conn.run(`checking ${label}`, (p11, session) => {
          const priv = findVaultObject(p11, session, v, pkcs11js.CKO_PRIVATE_KEY, purpose);
          const pub = findVaultObject(p11, session, v, pkcs11js.CKO_PUBLIC_KEY, purpose);
          if (!priv && !pub) return RUN_PROVISION;
          if (!priv || !pub)
            return `only half of the key pair is on the token; remove it and provision again`;
          assertHardwareBound(p11, session, priv, label, PURPOSE_KEY_TYPE[purpose]);
          return undefined;
        }),
      ),
    );
  }
  checks.push(
    await ofVault('object mte-counter', (v) =>
      conn.run('checking the counter', async (p11, session) => {
        if (readCounter(p11, session, v) !== undefined) return undefined;
        const missing = counterMissing(v, await storeKeyFileExists(stateDir));
        if (missing.code !== VaultCode.NotProvisioned) throw missing;
        return RUN_PROVISION;
      }),
    ),
  );
  return checks;
}

/**
 * Doctor for a configuration that may not open at all: reports the first opening step that
 * failed (module, token, login), and on success every check above, missing mechanisms included.
 */
export async function diagnosePkcs11(config: Pkcs11Config): Promise<DoctorCheck[]> {
  let reached = -1;
  let conn: TokenConnection;
  try {
    conn = await TokenConnection.open(config, {
      requireMechanisms: false,
      progress: (stage) => (reached = OPEN_STAGES.indexOf(stage)),
    });
  } catch (e) {
    const reason = e instanceof VaultError ? e.message : 'unexpected error';
    const failed = OPEN_STAGES[reached + 1] ?? 'opening';
    return OPEN_STAGES.map((stage, i) => ({
      check: stage,
      ok: i <= reached,
      detail: i <= reached ? 'ok' : i === reached + 1 ? reason : `not checked: "${failed}" failed`,
    }));
  }
  try {
    return await doctorChecks(conn, config.stateDir);
  } finally {
    conn.close();
  }
}
