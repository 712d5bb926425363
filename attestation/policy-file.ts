import { readFile } from 'node:fs/promises';
import { formatZodIssues } from '../keyvault/common/zod-issues.ts';
import { type VerifierPolicy, verifierPolicySchema } from './policy.ts';

/** A verifier policy file that cannot be used: the message names the file and the rule. */
export class VerifierPolicyError extends Error {
  readonly code = 'POLICY_INVALID';
  constructor(message: string) {
    super(message);
    this.name = 'VerifierPolicyError';
  }
}

/**
 * Reads and validates a verifier policy file (policy.ts). The only I/O of the attestation
 * library: the verifier itself takes the parsed policy.
 */
export async function loadVerifierPolicy(path: string): Promise<VerifierPolicy> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    throw new VerifierPolicyError(
      `cannot read the verifier policy ${path} (${(e as NodeJS.ErrnoException).code ?? 'error'})`,
    );
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    throw new VerifierPolicyError(`${path}: not valid JSON`);
  }
  const parsed = verifierPolicySchema.safeParse(json);
  if (!parsed.success) {
    throw new VerifierPolicyError(`${path}: ${formatZodIssues(parsed.error)}`);
  }
  return parsed.data;
}
