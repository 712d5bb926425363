import { createHash, randomBytes } from 'node:crypto';
import { stat } from 'node:fs/promises';
import { writeFileAtomic } from '../keyvault/common/atomic-file.ts';
import {
  type ParseResult,
  PolicyError,
  parsePolicy,
  readPolicyText,
  validatePolicy,
} from './load.ts';
import { acquireLock } from '../keyvault/common/lock.ts';
import {
  type Capability,
  type Policy,
  CAPABILITIES,
  CLIENT_NAME,
  ROOM_ID,
  isCapability,
} from './schema.ts';

/**
 * Capability tokens: 32 random bytes, base64url (43 characters), shown once when created.
 * The policy file keeps only the SHA-256 of each; the token itself is stored nowhere.
 */
export function generateToken(): string {
  return randomBytes(32).toString('base64url');
}

export function tokenSha256(token: string): string {
  return createHash('sha256').update(token, 'utf8').digest('hex');
}

export type TokenErrorCode =
  | 'TOKEN_BAD_NAME'
  | 'TOKEN_DUPLICATE_NAME'
  | 'TOKEN_UNKNOWN_CAPABILITY'
  | 'TOKEN_BAD_ROOM'
  | 'TOKEN_BAD_RATE'
  | 'TOKEN_NO_SUCH_CLIENT';

export class TokenError extends Error {
  readonly code: TokenErrorCode;
  constructor(code: TokenErrorCode, message: string) {
    super(message);
    this.name = 'TokenError';
    this.code = code;
  }
}

export interface CreateClientOptions {
  name: string;
  capabilities: readonly string[];
  rooms?: readonly string[] | undefined;
  requestsPerMinute?: number | undefined;
  /** For tests. */
  now?: Date;
}

export interface CreatedClient {
  name: string;
  /** Shown once; only its hash is stored. */
  token: string;
  capabilities: Capability[];
  rooms: string[] | null;
  created: string;
  /** True when the policy file did not exist and was created (mode 0600). */
  createdFile: boolean;
}

export interface ClientSummary {
  name: string;
  capabilities: Capability[];
  rooms: string[] | null;
  requestsPerMinute: number;
  burst: number;
  created: string;
}

/**
 * Adds a client with a fresh token to the policy file (creating the file when it does not
 * exist). The file is rewritten atomically with its mode kept, under a lock so that two runs
 * cannot lose each other's change; a running endpoint picks it up on its next reload.
 */
export async function createClient(
  policyPath: string,
  options: CreateClientOptions,
): Promise<CreatedClient> {
  const { name } = options;
  if (!CLIENT_NAME.test(name)) {
    throw new TokenError(
      'TOKEN_BAD_NAME',
      'a client name is 1-64 characters of a-z 0-9 . _ -, starting with a letter or digit',
    );
  }
  if (options.capabilities.length === 0) {
    throw new TokenError(
      'TOKEN_UNKNOWN_CAPABILITY',
      `give at least one capability (valid: ${CAPABILITIES.join(', ')})`,
    );
  }
  const capabilities: Capability[] = [];
  for (const cap of options.capabilities) {
    if (!isCapability(cap)) {
      // Echo only what looks like a capability name: a mistyped secret must not reach a log.
      const shown = /^[a-z][a-z.]{0,29}$/.test(cap) ? ` "${cap}"` : '';
      throw new TokenError(
        'TOKEN_UNKNOWN_CAPABILITY',
        `unknown capability${shown} (valid: ${CAPABILITIES.join(', ')})`,
      );
    }
    if (!capabilities.includes(cap)) capabilities.push(cap);
  }
  const rooms = options.rooms === undefined ? [] : [...new Set(options.rooms)];
  for (const room of rooms) {
    if (!ROOM_ID.test(room)) {
      throw new TokenError('TOKEN_BAD_ROOM', 'a room is a room id such as "!abc:example.org"');
    }
  }
  const rate = options.requestsPerMinute;
  if (rate !== undefined && (!Number.isInteger(rate) || rate < 1 || rate > 60_000)) {
    throw new TokenError(
      'TOKEN_BAD_RATE',
      'the rate is a whole number of requests per minute, 1-60000',
    );
  }

  const token = generateToken();
  const created = (options.now ?? new Date()).toISOString();
  let createdFile = false;
  await editPolicy(policyPath, (raw, policy, isNew) => {
    createdFile = isNew;
    if (policy.clients.some((c) => c.name === name)) {
      throw new TokenError(
        'TOKEN_DUPLICATE_NAME',
        `a client named "${name}" exists already (revoke it first, or choose another name)`,
      );
    }
    const entry: Record<string, unknown> = {
      name,
      tokenSha256: tokenSha256(token),
      created,
      capabilities,
    };
    if (rooms.length > 0) entry.rooms = rooms;
    if (rate !== undefined) entry.rateLimit = { requestsPerMinute: rate };
    clientsOf(raw).push(entry);
  });
  return {
    name,
    token,
    capabilities,
    rooms: rooms.length > 0 ? rooms : null,
    created,
    createdFile,
  };
}

/** Removes a client: its token stops working at the endpoint's next policy reload. */
export async function revokeClient(policyPath: string, name: string): Promise<void> {
  await editPolicy(
    policyPath,
    (raw, policy) => {
      const index = policy.clients.findIndex((c) => c.name === name);
      if (index < 0) {
        const shown = CLIENT_NAME.test(name) ? ` named "${name}"` : ' with that name';
        throw new TokenError('TOKEN_NO_SUCH_CLIENT', `there is no client${shown}`);
      }
      clientsOf(raw).splice(index, 1);
    },
    { create: false },
  );
}

/** Every client with what it may do; never a token or a token hash. */
export async function listClients(policyPath: string): Promise<ClientSummary[]> {
  return summarize(checked(policyPath, parsePolicy(await readPolicyText(policyPath))));
}

export function summarize(policy: Policy): ClientSummary[] {
  return policy.clients.map((c) => ({
    name: c.name,
    capabilities: [...c.capabilities],
    rooms: c.rooms ? [...c.rooms] : null,
    requestsPerMinute: c.rateLimit.requestsPerMinute,
    burst: c.rateLimit.burst ?? c.rateLimit.requestsPerMinute,
    created: c.created,
  }));
}

type Edit = (raw: Record<string, unknown>, policy: Policy, isNew: boolean) => void;

/**
 * Read, check, change, check again, write atomically. The change is made to the file's own
 * JSON, not to the parsed policy, so defaults the operator left out are not written in.
 */
async function editPolicy(
  path: string,
  edit: Edit,
  options: { create: boolean } = { create: true },
): Promise<void> {
  const lock = await acquireLock(path, { waitMs: 5_000 });
  try {
    const isNew = options.create && !(await exists(path));
    let raw: Record<string, unknown>;
    let policy: Policy;
    let mode = 0o600;
    if (isNew) {
      raw = { version: 1, clients: [] };
      policy = checked(path, validatePolicy(raw));
    } else {
      const text = await readPolicyText(path); // says clearly what is wrong with the file
      mode = (await stat(path)).mode & 0o777;
      policy = checked(path, parsePolicy(text), 'fix the file first (policy check)');
      raw = JSON.parse(text) as Record<string, unknown>;
    }
    edit(raw, policy, isNew);
    checked(path, validatePolicy(raw));
    await writeFileAtomic(path, `${JSON.stringify(raw, null, 2)}\n`, { mode, replace: true });
  } finally {
    await lock.release();
  }
}

function checked(path: string, result: ParseResult, hint?: string): Policy {
  if (result.ok) return result.policy;
  if (hint) result.problems.push({ path: '(file)', message: hint });
  throw new PolicyError(path, result.problems);
}

function clientsOf(raw: Record<string, unknown>): unknown[] {
  if (!Array.isArray(raw.clients)) raw.clients = [];
  return raw.clients as unknown[];
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}
