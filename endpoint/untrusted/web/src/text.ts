/** Plain-text helpers for what the timeline shows. Pure. */

/** What is rendered of one message at most (UTF-16 code units). */
export const MAX_RENDERED_CHARS = 64 * 1024;

/** The first `max` code units of `text` (not splitting a surrogate pair), and whether cut. */
export function capText(
  text: string,
  max: number = MAX_RENDERED_CHARS,
): { text: string; truncated: boolean } {
  if (text.length <= max) return { text, truncated: false };
  let end = max;
  const last = text.charCodeAt(end - 1);
  if (last >= 0xd800 && last <= 0xdbff) end -= 1;
  return { text: text.slice(0, end), truncated: true };
}

/**
 * A reply's body without the plain-text reply fallback: the leading lines quoting the original
 * (`> ...`, or a bare `>`) and the blank line after them. The fallback is written by the
 * replier, who can make it say anything about whoever they quote, so it is never shown.
 */
export function stripReplyFallback(body: string): string {
  const lines = body.split('\n');
  let i = 0;
  while (i < lines.length) {
    const line = (lines[i] ?? '').replace(/\r$/, '');
    if (!(line.startsWith('> ') || line === '>')) break;
    i++;
  }
  if (i === 0) return body;
  if (i < lines.length && (lines[i] ?? '').replace(/\r$/, '') === '') i++;
  return lines.slice(i).join('\n');
}

/** `1.5 MiB`, `312 B`. */
export function formatSize(bytes: number): string {
  if (!Number.isFinite(bytes) || bytes < 0) return 'unknown size';
  if (bytes < 1024) return `${Math.round(bytes)} B`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes / 1024;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${value.toFixed(value < 10 ? 1 : 0)} ${units[unit] ?? 'TiB'}`;
}

/** A master key (base64) in groups of four, for comparing out of band. */
export function groupKey(key: string): string {
  return (key.match(/.{1,4}/g) ?? []).join(' ');
}

const EXCLUSION_REASONS: Readonly<Record<string, string>> = {
  'no-cross-signing': 'no cross-signing',
  'not-cross-signed': 'device not cross-signed',
  'not-verified': 'device not verified',
  'no-devices': 'no devices',
  'device-list-unavailable': 'their server did not answer for their devices',
};

export function exclusionReason(reason: string): string {
  return EXCLUSION_REASONS[reason] ?? reason;
}
