import { open } from 'node:fs/promises';
import { z } from 'zod';
import { type Policy, policySchema } from './schema.ts';

/** The largest policy file we read (256 clients with 10,000 rooms each would not fit; fine). */
export const MAX_POLICY_BYTES = 4 * 1024 * 1024;

/** One problem with a policy: where (a JSON path such as `clients[1].capabilities[0]`), what. */
export interface PolicyProblem {
  path: string;
  message: string;
}

export class PolicyError extends Error {
  readonly code = 'POLICY_INVALID';
  readonly problems: PolicyProblem[];
  constructor(file: string, problems: PolicyProblem[]) {
    const shown = problems.slice(0, 5).map((p) => `${p.path}: ${p.message}`);
    if (problems.length > 5) shown.push(`and ${problems.length - 5} more`);
    super(`${file}: ${shown.join('; ')}`);
    this.name = 'PolicyError';
    this.problems = problems;
  }
}

export type ParseResult = { ok: true; policy: Policy } | { ok: false; problems: PolicyProblem[] };

/**
 * Validates policy JSON text. Problems name the JSON path and the rule, never the value found
 * there: an operator who pastes a token into the wrong field must not see it in a log.
 */
export function parsePolicy(text: string): ParseResult {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    // JSON.parse's message quotes the text around the error; keep only where it is.
    const where = /line \d+ column \d+/.exec((e as Error).message)?.[0];
    return {
      ok: false,
      problems: [{ path: '(file)', message: `not valid JSON${where ? ` (at ${where})` : ''}` }],
    };
  }
  return validatePolicy(json);
}

export function validatePolicy(json: unknown): ParseResult {
  const parsed = policySchema.safeParse(json);
  if (parsed.success) return { ok: true, policy: parsed.data };
  return { ok: false, problems: parsed.error.issues.map((i) => describeIssue(i, json)) };
}

/** `clients[0].capabilities[1]`, `rooms.overrides["!a:b"].roomKeyRecipients`. */
export function formatPath(path: readonly PropertyKey[]): string {
  let out = '';
  for (const seg of path) {
    if (typeof seg === 'number') out += `[${seg}]`;
    else if (typeof seg === 'string' && /^[A-Za-z_][A-Za-z0-9_]*$/.test(seg))
      out += out ? `.${seg}` : seg;
    else out += `[${JSON.stringify(String(seg)).slice(0, 300)}]`;
  }
  return out || '(top level)';
}

/** Whether the input has anything at `path` (so "required" is said only when it has not). */
function present(input: unknown, path: readonly PropertyKey[]): boolean {
  let at: unknown = input;
  for (const seg of path) {
    if (at === null || typeof at !== 'object') return false;
    if (!Object.hasOwn(at, seg)) return false;
    at = (at as Record<PropertyKey, unknown>)[seg];
  }
  return at !== undefined;
}

function describeIssue(issue: z.core.$ZodIssue, input: unknown): PolicyProblem {
  const path = formatPath(issue.path);
  switch (issue.code) {
    case 'unrecognized_keys': {
      // Key names are the operator's own field names, not values; bounded all the same.
      const keys = issue.keys.map((k) => JSON.stringify(k.slice(0, 40))).join(', ');
      return { path, message: `unknown field${issue.keys.length > 1 ? 's' : ''} ${keys}` };
    }
    case 'invalid_type':
      return {
        path,
        message: present(input, issue.path) ? `expected ${issue.expected}` : 'required',
      };
    case 'invalid_key':
      // A record key that is not a room id: say which key, as the path does for others.
      return { path, message: 'keys must be room ids such as "!abc:example.org"' };
    default:
      return { path, message: issue.message };
  }
}

/**
 * Reads and validates a policy file. Refuses a file that other users could write (they could
 * grant themselves any capability) or that is not a regular file.
 */
export async function loadPolicyFile(path: string): Promise<Policy> {
  const text = await readPolicyText(path);
  const result = parsePolicy(text);
  if (!result.ok) throw new PolicyError(path, result.problems);
  return result.policy;
}

export async function readPolicyText(path: string): Promise<string> {
  let handle;
  try {
    handle = await open(path, 'r');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code ?? 'error';
    throw new PolicyError(path, [{ path: '(file)', message: `cannot read it (${code})` }]);
  }
  try {
    const info = await handle.stat();
    if (!info.isFile()) {
      throw new PolicyError(path, [{ path: '(file)', message: 'not a regular file' }]);
    }
    const uid = typeof process.getuid === 'function' ? process.getuid() : undefined;
    if (uid !== undefined && info.uid !== uid && info.uid !== 0) {
      throw new PolicyError(path, [{ path: '(file)', message: 'belongs to another user' }]);
    }
    if ((info.mode & 0o022) !== 0) {
      throw new PolicyError(path, [
        {
          path: '(file)',
          message: `writable by other users (mode ${(info.mode & 0o777).toString(8)}); chmod 600 it`,
        },
      ]);
    }
    if (info.size > MAX_POLICY_BYTES) {
      throw new PolicyError(path, [
        { path: '(file)', message: `larger than ${MAX_POLICY_BYTES} bytes` },
      ]);
    }
    return await handle.readFile('utf8');
  } finally {
    await handle.close();
  }
}

export type ReloadResult = { ok: true; changed: boolean } | { ok: false; error: string };

/**
 * The endpoint's current policy. `open()` refuses to start without a valid policy; `reload()`
 * swaps in a new one only when it is valid, and otherwise keeps the last valid policy and says
 * what is wrong with the file. Reloads are serialised: the last one to finish wins in order.
 */
export class PolicyHolder {
  readonly path: string;
  #policy: Policy;
  #text: string;
  #generation = 1;
  #reloading: Promise<ReloadResult> = Promise.resolve({ ok: true, changed: false });
  readonly #listeners = new Set<(policy: Policy) => void>();

  private constructor(path: string, policy: Policy, text: string) {
    this.path = path;
    this.#policy = policy;
    this.#text = text;
  }

  /** Throws a PolicyError (naming the path and problem) when the file is missing or invalid. */
  static async open(path: string): Promise<PolicyHolder> {
    const text = await readPolicyText(path);
    const result = parsePolicy(text);
    if (!result.ok) throw new PolicyError(path, result.problems);
    return new PolicyHolder(path, result.policy, text);
  }

  get current(): Policy {
    return this.#policy;
  }

  /** Increases by one each time a different valid policy is swapped in. */
  get generation(): number {
    return this.#generation;
  }

  /**
   * Called with each newly swapped-in policy (not on a failed or unchanged reload). A listener
   * that throws does not undo the swap.
   */
  onChange(listener: (policy: Policy) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  reload(): Promise<ReloadResult> {
    const next = this.#reloading.then(
      () => this.#reloadNow(),
      () => this.#reloadNow(),
    );
    this.#reloading = next;
    return next;
  }

  async #reloadNow(): Promise<ReloadResult> {
    let text: string;
    try {
      text = await readPolicyText(this.path);
    } catch (e) {
      return { ok: false, error: errorText(e) };
    }
    if (text === this.#text) return { ok: true, changed: false };
    const result = parsePolicy(text);
    if (!result.ok)
      return { ok: false, error: new PolicyError(this.path, result.problems).message };
    this.#policy = result.policy;
    this.#text = text;
    this.#generation++;
    for (const listener of this.#listeners) {
      try {
        listener(result.policy);
      } catch {
        // A listener's failure is its own; the new policy is in force either way.
      }
    }
    return { ok: true, changed: true };
  }
}

function errorText(e: unknown): string {
  return e instanceof Error ? e.message : 'cannot read the policy';
}
