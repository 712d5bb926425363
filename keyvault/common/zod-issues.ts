import type { z } from 'zod';

/** A key name that is safe to show back (it cannot carry a secret of any size). */
const SAFE_KEY = /^[A-Za-z][A-Za-z0-9_-]{0,31}$/;

/** `where.clients[0].capabilities[1]`; an empty path is the value itself. */
export function formatIssuePath(path: readonly PropertyKey[], where?: string): string {
  const parts = path.map((p) => (typeof p === 'number' ? `[${p}]` : String(p).slice(0, 64)));
  const joined = [...(where === undefined ? [] : [where]), ...parts]
    .join('.')
    .replace(/\.\[/g, '[');
  return joined === '' ? '(top level)' : joined;
}

/**
 * One line naming the first offending field and what was expected, never the value (values
 * may be secrets or hostile input): zod's own messages say what was expected, unknown keys are
 * named only when they look like field names, and the count of further problems is added.
 * Every compartment reports schema failures through this one function.
 */
export function formatZodIssues(error: z.ZodError, where?: string): string {
  const issue = error.issues[0];
  if (issue === undefined) return `${where ?? 'the value'} is invalid`;
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
  return `${formatIssuePath(issue.path, where)}: ${what}${more}`;
}
