import { readFileSync, statSync } from 'node:fs';
import { access, constants } from 'node:fs/promises';
import { basename } from 'node:path';
import pkcs11js, { type PKCS11 } from 'pkcs11js';
import type { Pkcs11Config } from '../config.ts';
import { readSecret } from '../common/secret.ts';
import { VaultCode, VaultError } from '../vault.ts';
import { ckrName, ckrOf, needsReconnect, toVaultError } from './errors.ts';
import { checkMechanisms, requireMechanisms, type MechanismCheck } from './mechanisms.ts';
import { parseTokenUri, tokenMatches, type TokenIdentity, type TokenSelector } from './uri.ts';

type Handle = Buffer;

/**
 * One logged-in read/write session on the token the URI names, and the module state under it.
 * Every token operation goes through run(), which sets the whole stack up again (initialise,
 * find the token, open a session, log in) once when the module or the token went away.
 */
export class TokenConnection {
  readonly identity: TokenIdentity;
  readonly mechanisms: MechanismCheck;
  readonly #config: Pkcs11Config;
  readonly #selector: TokenSelector;
  readonly #p11: PKCS11;
  #slot: Handle;
  #session: Handle;
  /** False when another user of the module in this process initialised it: not ours to end. */
  #ownsInit: boolean;
  #closed = false;

  private constructor(
    config: Pkcs11Config,
    selector: TokenSelector,
    p11: PKCS11,
    ownsInit: boolean,
    found: FoundToken,
    mechanisms: MechanismCheck,
    session: Handle,
  ) {
    this.#config = config;
    this.#selector = selector;
    this.#p11 = p11;
    this.#ownsInit = ownsInit;
    this.#slot = found.slot;
    this.identity = found.identity;
    this.mechanisms = mechanisms;
    this.#session = session;
  }

  /**
   * Loads the module, finds the token, checks mechanisms (before login, so a token that cannot
   * do the job never costs a PIN attempt), opens a session and logs in.
   */
  static async open(
    config: Pkcs11Config,
    options: { requireMechanisms: boolean; progress?: (stage: OpenStage) => void },
  ): Promise<TokenConnection> {
    const selector = parseTokenUri(config.token);
    const p11 = await loadModule(config.module);
    const ownsInit = initialize(p11, config.module);
    options.progress?.('module loads');
    try {
      const found = findToken(p11, selector, config.token);
      options.progress?.('token found');
      const mechanisms = checkMechanisms(
        guard('listing mechanisms', () => p11.C_GetMechanismList(found.slot)),
      );
      if (options.requireMechanisms) requireMechanisms(mechanisms);
      const session = await openAndLogin(p11, found.slot, config);
      options.progress?.('login works');
      return new TokenConnection(config, selector, p11, ownsInit, found, mechanisms, session);
    } catch (e) {
      if (ownsInit) finalize(p11);
      throw toVaultError(e, 'opening the token');
    }
  }

  /**
   * Runs `op` on the session; after a module or token failure, reconnects and retries once.
   * Any other failure is checked against the token still being there (#gone), so a token that
   * went away is reported as such, not as whatever its absence looked like.
   */
  async run<T>(what: string, op: (p11: PKCS11, session: Handle) => T | Promise<T>): Promise<T> {
    if (this.#closed) throw new VaultError(VaultCode.BadRequest, 'the vault is closed');
    try {
      return await op(this.#p11, this.#session);
    } catch (e) {
      if (!needsReconnect(e)) throw this.#failure(e, what);
    }
    await this.#reconnect();
    try {
      return await op(this.#p11, this.#session);
    } catch (e) {
      throw this.#failure(e, what);
    }
  }

  #failure(e: unknown, what: string): VaultError {
    const mapped = toVaultError(e, what);
    if (CONCLUSIVE.has(mapped.code)) return mapped;
    return this.#gone(what) ?? mapped;
  }

  /**
   * Whether the token still answers, as itself. SoftHSM answers a deleted token directory with
   * CKR_GENERAL_ERROR from most calls and with empty results from C_FindObjects, which would
   * otherwise look like tampering, a foreign counter or an unprovisioned vault.
   */
  #gone(what: string): VaultError | undefined {
    let serial: string;
    try {
      serial = this.#p11.C_GetTokenInfo(this.#slot).serialNumber.trimEnd();
    } catch (e) {
      const code = ckrOf(e);
      return new VaultError(
        VaultCode.TokenNotFound,
        `${what} failed: the token no longer answers (${code === undefined ? 'no answer' : ckrName(code)}): it was removed, or its storage is gone (for SoftHSM2, its token directory was deleted); restore it and restart the vault`,
      );
    }
    if (serial !== this.identity.serial) {
      return new VaultError(
        VaultCode.TokenNotFound,
        `${what} failed: the slot now holds another token (serial ${serial}, expected ${this.identity.serial}); reopen the vault`,
      );
    }
    return undefined;
  }

  /** Whether the session is still logged in as the user (for doctor). */
  loggedIn(): Promise<boolean> {
    return this.run('reading the session state', (p11, session) => {
      return p11.C_GetSessionInfo(session).state === CKS_RW_USER_FUNCTIONS;
    });
  }

  /** The module's own description and version, e.g. "Implementation of PKCS11 2.6". */
  moduleInfo(): Promise<string> {
    return this.run('reading module information', (p11) => {
      const info = p11.C_GetInfo();
      const v = info.libraryVersion;
      return `${info.manufacturerID.trimEnd()} ${info.libraryDescription.trimEnd()} ${v.major}.${v.minor}`;
    });
  }

  tokenFlags(): Promise<number> {
    return this.run('reading token information', (p11) => p11.C_GetTokenInfo(this.#slot).flags);
  }

  async #reconnect(): Promise<void> {
    const p11 = this.#p11;
    try {
      p11.C_CloseSession(this.#session);
    } catch {
      // Already gone: that is why we are here.
    }
    if (this.#ownsInit) finalize(p11);
    this.#ownsInit = initialize(p11, this.#config.module);
    const found = findToken(p11, this.#selector, this.#config.token);
    if (found.identity.serial !== this.identity.serial) {
      // Same URI, other token (e.g. another token with the same label was plugged in).
      throw new VaultError(
        VaultCode.ForeignOrTampered,
        `after reconnecting, the URI names a different token (serial ${found.identity.serial}, expected ${this.identity.serial}); reopen the vault`,
      );
    }
    this.#slot = found.slot;
    this.#session = await openAndLogin(p11, found.slot, this.#config);
  }

  /** Logs out, closes the session and finalises the module (when this connection initialised it). */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    const p11 = this.#p11;
    try {
      p11.C_Logout(this.#session);
    } catch {
      // Best effort: a session that is already gone needs no logout.
    }
    try {
      p11.C_CloseSession(this.#session);
    } catch {
      // Likewise.
    }
    if (this.#ownsInit) finalize(p11);
    // No p11.close() (dlclose): unloading SoftHSM can unload the libcrypto it pulled in while
    // that library's exit handlers are still registered.
  }
}

/** The steps of opening, in order; doctor reports the first one that failed. */
export const OPEN_STAGES = ['module loads', 'token found', 'login works'] as const;
export type OpenStage = (typeof OPEN_STAGES)[number];

/** CK_STATE for a read/write session logged in as the user (not named by pkcs11js). */
const CKS_RW_USER_FUNCTIONS = 3;

interface FoundToken {
  slot: Handle;
  slotId: number;
  identity: TokenIdentity;
}

/** Runs a module call, mapping failures to VaultErrors naming `what`. */
function guard<T>(what: string, fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    throw toVaultError(e, what);
  }
}

async function loadModule(path: string): Promise<PKCS11> {
  try {
    await access(path, constants.R_OK);
  } catch {
    throw new VaultError(
      VaultCode.Unreachable,
      `PKCS#11 module ${path} does not exist or is not readable; check config.module`,
    );
  }
  const p11 = new pkcs11js.PKCS11();
  try {
    p11.load(path);
  } catch (e) {
    // The loader's reason (e.g. "invalid ELF header") helps and holds nothing secret.
    const reason = e instanceof Error ? (e.message.split('\n')[0] ?? '').slice(0, 200) : '';
    throw new VaultError(
      VaultCode.Unreachable,
      `could not load PKCS#11 module ${path}${reason ? `: ${reason}` : ''}`,
    );
  }
  return p11;
}

/** Codes that already say what happened, or that the token's presence cannot change. */
const CONCLUSIVE = new Set<string>([
  VaultCode.TokenNotFound,
  VaultCode.Unreachable,
  VaultCode.WrongPin,
  VaultCode.PinLocked,
  VaultCode.BadRequest,
  VaultCode.MechanismMissing,
  VaultCode.Config,
  VaultCode.NotSupported,
]);

/** C_Initialize; returns false when someone else in this process already had. */
function initialize(p11: PKCS11, modulePath: string): boolean {
  try {
    p11.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
    return true;
  } catch (e) {
    const code = ckrOf(e);
    if (code === pkcs11js.CKR_CRYPTOKI_ALREADY_INITIALIZED) return false;
    if (code === pkcs11js.CKR_GENERAL_ERROR) {
      throw (
        softHsmDiagnosis(modulePath) ??
        new VaultError(
          VaultCode.Unreachable,
          `the PKCS#11 module ${modulePath} failed to initialise (CKR_GENERAL_ERROR): its configuration or its token storage is unusable`,
        )
      );
    }
    const reason = toVaultError(e, 'initialising the PKCS#11 module').message;
    throw new VaultError(VaultCode.Unreachable, reason);
  }
}

/**
 * SoftHSM2 fails C_Initialize with a bare CKR_GENERAL_ERROR when its configuration file or its
 * token directory is missing; say which. Best effort: under Node's permission model the files
 * may not be ours to read, and then the generic sentence stands.
 */
function softHsmDiagnosis(modulePath: string): VaultError | undefined {
  if (!/softhsm/i.test(basename(modulePath))) return undefined;
  const conf = process.env.SOFTHSM2_CONF ?? '/etc/softhsm/softhsm2.conf';
  let text: string;
  try {
    text = readFileSync(conf, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') return undefined;
    return new VaultError(
      VaultCode.Unreachable,
      `SoftHSM2 cannot start: its configuration file ${conf} (SOFTHSM2_CONF) does not exist`,
    );
  }
  const tokenDir = /^\s*directories\.tokendir\s*=\s*(.*?)\s*$/m.exec(text)?.[1];
  if (!tokenDir) return undefined;
  try {
    statSync(tokenDir);
    return undefined;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') return undefined;
  }
  return new VaultError(
    VaultCode.TokenNotFound,
    `the token is gone: SoftHSM2's token directory ${tokenDir} (directories.tokendir in ${conf}) does not exist; restore it, or point SOFTHSM2_CONF at the configuration that names the right one`,
  );
}

function finalize(p11: PKCS11): void {
  try {
    p11.C_Finalize();
  } catch {
    // Not initialised any more: nothing to end.
  }
}

function slotNumber(slot: Handle): number {
  return slot.length >= 8 ? Number(slot.readBigUInt64LE()) : slot.readUInt32LE();
}

function findToken(p11: PKCS11, selector: TokenSelector, uri: string): FoundToken {
  const present = guard('listing tokens', () =>
    p11.C_GetSlotList(true).map((slot) => ({ slot, info: p11.C_GetTokenInfo(slot) })),
  );
  // Uninitialised tokens (SoftHSM's spare slot) have no identity to match yet.
  const tokens = present
    .filter(({ info }) => (info.flags & pkcs11js.CKF_TOKEN_INITIALIZED) !== 0)
    .map(({ slot, info }) => ({
      slot,
      slotId: slotNumber(slot),
      identity: {
        label: info.label.trimEnd(),
        manufacturer: info.manufacturerID.trimEnd(),
        model: info.model.trimEnd(),
        serial: info.serialNumber.trimEnd(),
      },
    }));
  const matches = tokens.filter((t) => tokenMatches(selector, t.identity, t.slotId));
  const listed =
    tokens.map((t) => `"${t.identity.label}" (serial ${t.identity.serial})`).join(', ') || 'none';
  const [first, ...others] = matches;
  if (!first) {
    throw new VaultError(
      VaultCode.TokenNotFound,
      `no token matches ${uri}; tokens present: ${listed}`,
    );
  }
  if (others.length > 0) {
    throw new VaultError(
      VaultCode.Config,
      `${matches.length} tokens match ${uri}; name one by token= and serial= (tokens present: ${listed})`,
    );
  }
  return first;
}

async function openAndLogin(p11: PKCS11, slot: Handle, config: Pkcs11Config): Promise<Handle> {
  const flags = guard('reading token information', () => p11.C_GetTokenInfo(slot).flags);
  if ((flags & pkcs11js.CKF_USER_PIN_LOCKED) !== 0) {
    throw new VaultError(
      VaultCode.PinLocked,
      'the user PIN is locked; the security officer must reset it',
    );
  }
  if ((flags & pkcs11js.CKF_USER_PIN_FINAL_TRY) !== 0) {
    // A service that retries a wrong configured PIN on every restart is how tokens get locked.
    throw new VaultError(
      VaultCode.PinLocked,
      'the token allows one more PIN attempt; the vault will not spend it automatically: check the PIN, then log in once by hand (e.g. pkcs11-tool --login) to reset the counter',
    );
  }
  const pin = await readSecret(
    config.pin,
    'PKCS#11 user PIN',
    (m) => new VaultError(VaultCode.Config, m),
  );
  try {
    const session = guard('opening a session', () =>
      p11.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION),
    );
    try {
      // pkcs11js takes the PIN only as a JS string, which cannot be wiped and lives until it is
      // garbage-collected; the buffer we own is wiped below.
      p11.C_Login(session, pkcs11js.CKU_USER, pin.toString('utf8'));
    } catch (e) {
      if (ckrOf(e) !== pkcs11js.CKR_USER_ALREADY_LOGGED_IN) {
        try {
          p11.C_CloseSession(session);
        } catch {
          // The login failure is what matters.
        }
        throw toVaultError(e, 'logging in to the token');
      }
    }
    return session;
  } finally {
    pin.fill(0);
  }
}
