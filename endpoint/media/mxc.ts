import { z } from 'zod';
import { AttachmentCode, AttachmentError } from './errors.ts';

/**
 * mxc:// content URIs (spec, "Matrix Content (mxc://) URIs"): `mxc://<server-name>/<media-id>`.
 * They arrive from peers inside events and from the homeserver after an upload, and become
 * path segments of download requests, so both parts are held to their grammar: the server
 * name as in the spec's identifier grammar (a DNS name, IPv4 or [IPv6], optional port), the
 * media id to [A-Za-z0-9_-]. Nothing else (no "/", "%", "." segments, spaces or controls) can
 * reach a URL.
 */
export interface MxcParts {
  server: string;
  mediaId: string;
}

// The lookahead refuses "." and ".." as server names: URL parsers resolve them as segments.
const mxcPattern =
  /^mxc:\/\/((?!\.\.?[:/])(?:\[[0-9A-Fa-f:.]{2,45}\]|[A-Za-z0-9.-]{1,255})(?::[0-9]{1,5})?)\/([A-Za-z0-9_-]{1,255})$/;

export const mxcUri = z
  .string()
  .max(512)
  .regex(mxcPattern, 'must be mxc://<server-name>/<media-id> (media id [A-Za-z0-9_-])');

/** Splits an mxc:// URI, or throws ATTACHMENT_INVALID (naming the rule, not the value). */
export function parseMxc(url: string): MxcParts {
  const match = url.length <= 512 ? mxcPattern.exec(url) : null;
  const server = match?.[1];
  const mediaId = match?.[2];
  if (server === undefined || mediaId === undefined) {
    throw new AttachmentError(
      AttachmentCode.Invalid,
      'not an mxc:// URI (mxc://<server-name>/<media-id>, media id [A-Za-z0-9_-])',
    );
  }
  return { server, mediaId };
}
