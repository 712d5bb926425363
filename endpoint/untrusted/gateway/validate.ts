import { formatZodIssues } from '../../../keyvault/common/zod-issues.ts';
import type { z } from 'zod';
import { invalidRequest } from './errors.ts';

/** A key name that is safe to show back to the client (it cannot carry a secret of any size). */
const SAFE_KEY = /^[A-Za-z][A-Za-z0-9_-]{0,31}$/;

/** One sentence naming the offending field and what was expected, never the value. */
export function describeIssues(where: string, error: z.ZodError): string {
  return `${formatZodIssues(error, where)}.`;
}

/** Parses `value` with `schema`, or throws 400 INVALID_REQUEST naming the field. */
export function parseInput<S extends z.ZodType>(schema: S, value: unknown, where: string) {
  const parsed = schema.safeParse(value);
  if (!parsed.success) throw invalidRequest(describeIssues(where, parsed.error));
  return parsed.data;
}

/**
 * Query strings: a key given twice arrives as an array; every query field here takes one
 * value, so a repeated key is refused rather than silently resolved.
 */
export function singleValuedQuery(query: unknown): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  if (query === null || typeof query !== 'object') return out;
  for (const [key, value] of Object.entries(query as Record<string, unknown>)) {
    if (Array.isArray(value)) {
      const name = SAFE_KEY.test(key) ? `query.${key}` : 'a query parameter';
      throw invalidRequest(`${name}: give it once.`);
    }
    out[key] = value;
  }
  return out;
}
