import type { z } from 'zod';
import { invalidRequest } from './errors.ts';

/** A key name that is safe to show back to the client (it cannot carry a secret of any size). */
const SAFE_KEY = /^[A-Za-z][A-Za-z0-9_-]{0,31}$/;

/**
 * One sentence naming the offending field and what was expected, never the value: zod's own
 * messages say what was expected; unknown keys are named only when they look like field names.
 */
export function describeIssues(where: string, error: z.ZodError): string {
  const issue = error.issues[0];
  if (issue === undefined) return `${where} is invalid.`;
  const path = [where, ...issue.path.map((p) => (typeof p === 'number' ? `[${p}]` : String(p)))]
    .join('.')
    .replace(/\.\[/g, '[');
  let what: string;
  if (issue.code === 'unrecognized_keys') {
    const shown = issue.keys.filter((k) => SAFE_KEY.test(k)).slice(0, 5);
    what =
      shown.length === issue.keys.length
        ? `unexpected field${shown.length > 1 ? 's' : ''} ${shown.map((k) => `"${k}"`).join(', ')}`
        : 'unexpected fields';
  } else {
    what = issue.message.replace(/\s*\n\s*/g, ' ').slice(0, 200);
  }
  const more = error.issues.length > 1 ? ` (and ${error.issues.length - 1} more problems)` : '';
  return `${path}: ${what}${more}.`;
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
