/**
 * Which links in a sender's HTML stay links. Pure: sanitize.ts applies it.
 *
 * Only absolute `https:` URLs (matrix.to included) with a host and no user name or password are
 * kept, normalised by the URL parser (so an internationalised host shows as its punycode).
 * `mxc:` URIs are shown as text. Anything else (javascript:, data:, vbscript:, http:, file:,
 * blob:, relative, protocol-relative, a backslash or white space inside) is unwrapped to its
 * text.
 */

/** Longer hrefs are not kept as links (their text still shows). */
export const MAX_HREF_CHARS = 2048;

export type LinkTarget =
  { kind: 'https'; href: string } | { kind: 'mxc'; uri: string } | { kind: 'none' };

const NONE: LinkTarget = { kind: 'none' };

export function linkTarget(raw: string | null | undefined): LinkTarget {
  if (raw === null || raw === undefined) return NONE;
  // The URL parser strips leading and trailing C0 controls and spaces: so do we, then refuse
  // any that remain inside (the "java\tscript:" family).
  // eslint-disable-next-line no-control-regex -- control characters are what is stripped
  const value = raw.replace(/^[\u0000-\u0020]+|[\u0000-\u0020]+$/g, '');
  if (value === '' || value.length > MAX_HREF_CHARS) return NONE;
  // eslint-disable-next-line no-control-regex -- control characters are what is refused
  if (/[\u0000-\u0020\u007f-\u009f\\]|\s/u.test(value)) return NONE;
  if (/^mxc:\/\/[^/]+\/./i.test(value)) return { kind: 'mxc', uri: value };
  if (!/^https:\/\/[^/?#]/i.test(value)) return NONE;
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    return NONE;
  }
  if (url.protocol !== 'https:' || url.hostname === '') return NONE;
  if (url.username !== '' || url.password !== '') return NONE;
  if (url.href.length > MAX_HREF_CHARS) return NONE;
  return { kind: 'https', href: url.href };
}

/**
 * Whether a link's text says something other than where it goes, so the real target must be
 * shown beside it. Text equal to the normalised href (or to it without the root path's "/")
 * needs nothing more.
 */
export function hrefDiffersFromText(text: string, href: string): boolean {
  const t = text.trim();
  if (t === href) return false;
  let url: URL;
  try {
    url = new URL(href);
  } catch {
    return true;
  }
  const bareRoot = url.pathname === '/' && url.search === '' && url.hash === '';
  return !(bareRoot && t === href.slice(0, -1));
}
