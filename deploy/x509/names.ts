/**
 * How a certificate names a Matrix user, as the shipped X.509 identity code matches it: a SAN
 * URI `matrix:u/<localpart>:<server>` equal to the MXID (preferred), or an rfc822Name
 * `<localpart>@<server>` (fallback; the tool never issues it).
 */
import { X509Error } from './errors.ts';

export interface Mxid {
  /** `@alice:example.org` */
  userId: string;
  localpart: string;
  server: string;
}

// Historical user ids allow more than the current grammar; the server part may carry a port.
const MXID = /^@([\x21-\x39\x3b-\x7e]+):([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(:\d{1,5})?$/;

export function parseMxid(userId: string): Mxid {
  const m = MXID.exec(userId);
  if (!m || userId.length > 255) {
    throw new X509Error(
      'X509_BAD_MXID',
      `not a Matrix user id: ${JSON.stringify(userId.slice(0, 80))}`,
    );
  }
  return { userId, localpart: m[1] ?? '', server: `${m[2] ?? ''}${m[3] ?? ''}` };
}

/** The SAN URI the identity code matches: `matrix:u/alice:example.org`. */
export function matrixUri(mxid: Mxid): string {
  return `matrix:u/${mxid.localpart}:${mxid.server}`;
}

/** The fallback rfc822Name form: `alice@example.org`. */
export function emailForm(mxid: Mxid): string {
  return `${mxid.localpart}@${mxid.server}`;
}
