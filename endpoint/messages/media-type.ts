import type { OutgoingAttachment } from './outgoing.ts';

/**
 * Which image types are shown inline, by their first bytes. A UI may render an image, so an
 * image is one only when its bytes say so: a declared image/png that is really HTML (or an
 * SVG, which can carry script) goes out and comes back as a plain file.
 */
const SIGNATURES: Record<string, (b: Uint8Array) => boolean> = {
  'image/png': (b) => starts(b, [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
  'image/jpeg': (b) => starts(b, [0xff, 0xd8, 0xff]),
  'image/gif': (b) => starts(b, [0x47, 0x49, 0x46, 0x38]),
  'image/webp': (b) =>
    starts(b, [0x52, 0x49, 0x46, 0x46]) && starts(b.subarray(8), [0x57, 0x45, 0x42, 0x50]),
};

function starts(bytes: Uint8Array, prefix: readonly number[]): boolean {
  return bytes.length >= prefix.length && prefix.every((v, i) => bytes[i] === v);
}

/** The image type the bytes are, among those shown inline; undefined for anything else. */
export function sniffImage(bytes: Uint8Array): string | undefined {
  for (const [type, matches] of Object.entries(SIGNATURES)) if (matches(bytes)) return type;
  return undefined;
}

/**
 * The msgtype to send a file as. `mismatch`: the declared type is an inline image type the
 * bytes are not (refused at the API: a UI that says PNG should send a PNG).
 */
export function msgtypeFor(
  contentType: string,
  bytes: Uint8Array,
): { msgtype: OutgoingAttachment['msgtype']; mismatch: boolean } {
  if (Object.hasOwn(SIGNATURES, contentType)) {
    return sniffImage(bytes) === contentType
      ? { msgtype: 'm.image', mismatch: false }
      : { msgtype: 'm.file', mismatch: true };
  }
  if (contentType.startsWith('video/')) return { msgtype: 'm.video', mismatch: false };
  if (contentType.startsWith('audio/')) return { msgtype: 'm.audio', mismatch: false };
  return { msgtype: 'm.file', mismatch: false };
}
