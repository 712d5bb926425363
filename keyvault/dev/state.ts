import {
  createHmac,
  createPrivateKey,
  randomBytes,
  timingSafeEqual,
  type KeyObject,
} from 'node:crypto';
import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import { writeFileAtomic } from '../common/atomic-file.ts';
import { describeIssues } from '../common/rpc/envelope.ts';
import { type SigningPurpose, VaultCode, VaultError } from '../vault.ts';

/**
 * The dev backend's state: every key in software, in one JSON file, and beside it the vault's
 * identity (a random vault id and a MAC key, chosen at init), so the dev backend behaves like
 * the hardware ones: the state file records the vault id and carries an HMAC-SHA256 over its
 * whole content under this vault's MAC key, so another vault's state file swapped in here is
 * refused (VAULT_FOREIGN_OR_TAMPERED, "belongs to another vault"), and so is an edited one.
 * Nothing here is protected by anything but the files' modes (whoever can write the directory
 * can write both files); that is why the backend must be allowed explicitly.
 */
export const STATE_FILE = 'dev-vault.json';
export const ID_FILE = 'dev-vault-id.json';
const FORMAT = 'mte-dev-vault/2';
const ID_FORMAT = 'mte-dev-vault-id/1';
export const COUNTER_MAX = 2n ** 64n - 1n;

const counterCodec = z.codec(
  z.string().regex(/^(0|[1-9][0-9]{0,19})$/, 'expected a decimal counter'),
  z.bigint().min(0n).max(COUNTER_MAX),
  { decode: (s) => BigInt(s), encode: (n) => n.toString() },
);

const keyBytes = (exactly?: number) =>
  z.codec(
    z.base64(),
    z.instanceof(Uint8Array).refine((b) => exactly === undefined || b.length === exactly, {
      message: `expected ${exactly ?? 'any number of'} bytes`,
    }),
    {
      decode: (b64) => new Uint8Array(Buffer.from(b64, 'base64')),
      encode: (b) => Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('base64'),
    },
  );

const vaultIdSchema = z.string().regex(/^[0-9a-f]{32}$/, 'expected 32 lower-case hex digits');

const stateSchema = z
  .object({
    format: z.literal(FORMAT),
    vaultId: vaultIdSchema,
    storeKey: keyBytes(32).optional(),
    counter: counterCodec.optional(),
    /** PKCS#8 DER private keys by purpose. */
    keys: z
      .object({
        'cross-signing-master': keyBytes().optional(),
        'x509-identity': keyBytes().optional(),
      })
      .strict(),
  })
  .strict();
export type DevState = z.output<typeof stateSchema>;

const identitySchema = z
  .object({
    format: z.literal(ID_FORMAT),
    vaultId: vaultIdSchema,
    macKey: keyBytes(32),
  })
  .strict();
export type DevIdentity = z.output<typeof identitySchema>;

/** A state with nothing provisioned yet, for the vault `vaultId` ('' when there is none). */
export function emptyState(vaultId = ''): DevState {
  return { format: FORMAT, vaultId, keys: {} };
}

export function identityPath(stateDir: string): string {
  return join(stateDir, ID_FILE);
}

export function statePath(stateDir: string): string {
  return join(stateDir, STATE_FILE);
}

/** Zeroises the key material in a decoded state; the caller is done with it. */
export function wipeState(state: DevState): void {
  state.storeKey?.fill(0);
  for (const der of Object.values(state.keys)) der?.fill(0);
}

/** What each purpose's key must be, checked on every load so a swapped key is caught. */
const EXPECTED_KEY: Record<SigningPurpose, (k: KeyObject) => boolean> = {
  'cross-signing-master': (k) => k.asymmetricKeyType === 'ed25519',
  'x509-identity': (k) =>
    k.asymmetricKeyType === 'rsa' && k.asymmetricKeyDetails?.modulusLength === 3072,
};

const tampered = (path: string, why: string) =>
  new VaultError(
    VaultCode.ForeignOrTampered,
    `the dev vault state file ${path} is corrupt or was altered (${why})`,
  );

/** Reads a file of ours, refusing one that other users can reach; undefined when absent. */
async function readPrivateFile(path: string, what: string): Promise<Buffer | undefined> {
  try {
    const info = await stat(path);
    if ((info.mode & 0o077) !== 0) {
      throw new VaultError(
        VaultCode.Config,
        `${path} is accessible by other users (mode ${(info.mode & 0o777).toString(8)}); chmod 600 it`,
      );
    }
    return await readFile(path);
  } catch (e) {
    if (e instanceof VaultError) throw e;
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new VaultError(VaultCode.Config, `cannot read the ${what} ${path}`);
  }
}

/** The JSON in `raw`, which is wiped; the parser's message (it quotes the text) is dropped. */
function parseJson(raw: Buffer, fail: () => VaultError): unknown {
  try {
    return JSON.parse(raw.toString('utf8'));
  } catch {
    throw fail();
  } finally {
    raw.fill(0);
  }
}

/** This vault's identity (its id and MAC key); undefined before init. */
export async function readIdentity(stateDir: string): Promise<DevIdentity | undefined> {
  const path = identityPath(stateDir);
  const raw = await readPrivateFile(path, 'dev vault identity file');
  if (!raw) return undefined;
  const bad = (why: string) =>
    new VaultError(
      VaultCode.ForeignOrTampered,
      `the dev vault identity file ${path} is corrupt or was altered (${why})`,
    );
  const parsed = identitySchema.safeParse(parseJson(raw, () => bad('not valid JSON')));
  if (!parsed.success) throw bad(describeIssues(parsed.error, 'identity'));
  return parsed.data;
}

/**
 * Makes this vault's identity: a random id and MAC key, written once and never replaced.
 * Returns the identity on disk afterwards, and whether this call made it.
 */
export async function createIdentity(
  stateDir: string,
): Promise<{ identity: DevIdentity; created: boolean }> {
  const path = identityPath(stateDir);
  const fresh: DevIdentity = {
    format: ID_FORMAT,
    vaultId: randomBytes(16).toString('hex'),
    macKey: new Uint8Array(randomBytes(32)),
  };
  const text = `${JSON.stringify(identitySchema.encode(fresh), null, 2)}\n`;
  let created: boolean;
  try {
    created = await writeFileAtomic(path, text, { mode: 0o600, replace: false });
  } catch (e) {
    throw new VaultError(
      VaultCode.HardwareError,
      `cannot write the dev vault identity file ${path}: ${(e as NodeJS.ErrnoException).code ?? 'error'}`,
    );
  }
  if (created) return { identity: fresh, created };
  const existing = await readIdentity(stateDir);
  if (!existing) throw new VaultError(VaultCode.Config, `cannot read ${path}`);
  return { identity: existing, created };
}

/** JSON with every object's keys sorted: the bytes the MAC covers. */
function canonical(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonical).join(',')}]`;
  if (value !== null && typeof value === 'object') {
    const entries = Object.entries(value as Record<string, unknown>)
      .filter(([, v]) => v !== undefined)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonical(v)}`).join(',')}}`;
  }
  return JSON.stringify(value);
}

/** HMAC-SHA256 under the vault's MAC key over the format, the vault id and the content. */
function stateMac(identity: DevIdentity, content: Record<string, unknown>): Buffer {
  const hmac = createHmac('sha256', identity.macKey);
  hmac.update(`${FORMAT}\0${identity.vaultId}\0`);
  hmac.update(canonical(content));
  return hmac.digest();
}

/**
 * Reads and validates the state file; undefined when there is none yet (not provisioned). It
 * must have this vault's identity beside it, record the same vault id, and carry a MAC that
 * verifies under this vault's key.
 */
export async function readState(stateDir: string): Promise<DevState | undefined> {
  const path = statePath(stateDir);
  const raw = await readPrivateFile(path, 'dev vault state file');
  if (!raw) return undefined;
  const json = parseJson(raw, () => tampered(path, 'not valid JSON'));
  const identity = await readIdentity(stateDir);
  if (!identity) {
    throw new VaultError(
      VaultCode.ForeignOrTampered,
      `the dev vault state file ${path} has no vault identity beside it (${ID_FILE}): it belongs to another vault, or was written before vault ids; this vault will not use it`,
    );
  }
  if (json === null || typeof json !== 'object' || Array.isArray(json)) {
    throw tampered(path, 'not a JSON object');
  }
  const { mac, ...content } = json as Record<string, unknown>;
  if (content.format === 'mte-dev-vault/1') {
    throw tampered(
      path,
      'format mte-dev-vault/1, from before vault ids: move it away and run init',
    );
  }
  if (typeof content.vaultId === 'string' && content.vaultId !== identity.vaultId) {
    throw new VaultError(
      VaultCode.ForeignOrTampered,
      `the dev vault state file ${path} belongs to another vault (vault id ${content.vaultId.slice(0, 32)}; this vault is ${identity.vaultId}): it was copied or swapped into this state dir`,
    );
  }
  const expected = stateMac(identity, content);
  const given = typeof mac === 'string' ? Buffer.from(mac, 'base64') : Buffer.alloc(0);
  if (given.length !== expected.length || !timingSafeEqual(given, expected)) {
    throw tampered(path, "its MAC does not verify under this vault's key");
  }
  const parsed = stateSchema.safeParse(content);
  if (!parsed.success) throw tampered(path, describeIssues(parsed.error, 'state'));
  return parsed.data;
}

/** Loads the private key for `purpose`, or undefined if it was never provisioned. */
export function loadKey(
  stateDir: string,
  state: DevState,
  purpose: SigningPurpose,
): KeyObject | undefined {
  const der = state.keys[purpose];
  if (!der) return undefined;
  let key: KeyObject;
  try {
    // A view, not a copy, so wiping the state wipes the DER too.
    const view = Buffer.from(der.buffer, der.byteOffset, der.byteLength);
    key = createPrivateKey({ key: view, format: 'der', type: 'pkcs8' });
  } catch {
    throw tampered(statePath(stateDir), `state.keys.${purpose}: not a PKCS#8 private key`);
  }
  if (!EXPECTED_KEY[purpose](key)) {
    throw tampered(statePath(stateDir), `state.keys.${purpose}: wrong key type or size`);
  }
  return key;
}

/** Checks every key in the state parses and has the right type, so damage shows at open. */
export function checkKeys(stateDir: string, state: DevState): void {
  for (const purpose of Object.keys(EXPECTED_KEY) as SigningPurpose[]) {
    loadKey(stateDir, state, purpose);
  }
}

/**
 * Replaces the state file atomically: the counter must never tear or go backwards. The state
 * must be this vault's (its id), and is written with its MAC.
 */
export async function writeState(stateDir: string, state: DevState): Promise<void> {
  const path = statePath(stateDir);
  const identity = await readIdentity(stateDir);
  if (!identity || identity.vaultId !== state.vaultId) {
    throw new VaultError(
      VaultCode.ForeignOrTampered,
      `the dev vault identity in ${stateDir} changed or went away; the state file was not written`,
    );
  }
  const content = stateSchema.encode(state) as Record<string, unknown>;
  const mac = stateMac(identity, content).toString('base64');
  const text = Buffer.from(JSON.stringify({ ...content, mac }, null, 2) + '\n', 'utf8');
  try {
    await writeFileAtomic(path, text, { mode: 0o600, replace: true });
  } catch (e) {
    throw new VaultError(
      VaultCode.HardwareError,
      `cannot write the dev vault state file ${path}: ${(e as NodeJS.ErrnoException).code ?? 'error'}`,
    );
  } finally {
    text.fill(0);
  }
}
