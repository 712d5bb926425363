import { createPrivateKey, type KeyObject } from 'node:crypto';
import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import { writeFileAtomic } from '../common/atomic-file.ts';
import { describeIssues } from '../common/rpc/envelope.ts';
import { type SigningPurpose, VaultCode, VaultError } from '../vault.ts';

/**
 * The dev backend's state file: every key in software, in one JSON file. Nothing here is
 * protected by anything but the file's mode; that is why the backend must be allowed explicitly.
 */
export const STATE_FILE = 'dev-vault.json';
const FORMAT = 'mte-dev-vault/1';
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

const stateSchema = z
  .object({
    format: z.literal(FORMAT),
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

export function emptyState(): DevState {
  return { format: FORMAT, keys: {} };
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

/** Reads and validates the state file; undefined when there is none yet (not provisioned). */
export async function readState(stateDir: string): Promise<DevState | undefined> {
  const path = statePath(stateDir);
  let raw: Buffer;
  try {
    const info = await stat(path);
    if ((info.mode & 0o077) !== 0) {
      throw new VaultError(
        VaultCode.Config,
        `${path} is accessible by other users (mode ${(info.mode & 0o777).toString(8)}); chmod 600 it`,
      );
    }
    raw = await readFile(path);
  } catch (e) {
    if (e instanceof VaultError) throw e;
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new VaultError(VaultCode.Config, `cannot read the dev vault state file ${path}`);
  }
  let json: unknown;
  try {
    json = JSON.parse(raw.toString('utf8'));
  } catch {
    // The parser's message quotes the text around the error, which may be key material.
    throw tampered(path, 'not valid JSON');
  } finally {
    raw.fill(0);
  }
  const parsed = stateSchema.safeParse(json);
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

/** Replaces the state file atomically: the counter must never tear or go backwards. */
export async function writeState(stateDir: string, state: DevState): Promise<void> {
  const path = statePath(stateDir);
  const text = Buffer.from(JSON.stringify(stateSchema.encode(state), null, 2) + '\n', 'utf8');
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
