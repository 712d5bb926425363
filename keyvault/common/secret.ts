import { open } from 'node:fs/promises';

/** Where a PIN, auth value or password comes from: a file or an environment variable. */
export type SecretSource = { file: string } | { env: string };

/** A secret that cannot be read; the message names where it was looked for, never a value. */
export class SecretError extends Error {
  override name = 'SecretError';
  readonly code = 'SECRET';
}

/**
 * Reads a PIN or auth value from a file (which must not be readable by group or others) or an
 * environment variable. Errors name where it was looked for, never what was found.
 * The caller owns the returned buffer and should zeroise it (`buf.fill(0)`) when done.
 */
export async function readSecret(
  source: SecretSource,
  what: string,
  fail: (message: string) => Error = (message) => new SecretError(message),
): Promise<Buffer> {
  if ('env' in source) {
    const value = process.env[source.env];
    if (value === undefined || value === '') {
      throw fail(`${what}: environment variable ${source.env} is not set`);
    }
    return Buffer.from(value.replace(/\r?\n$/, ''), 'utf8');
  }
  // One open file handle for the checks and the read, so the file cannot be swapped between.
  let handle;
  try {
    handle = await open(source.file, 'r');
  } catch {
    throw fail(`${what}: cannot read ${source.file}`);
  }
  let raw: Buffer;
  try {
    const info = await handle.stat();
    if (typeof process.getuid === 'function' && info.uid !== process.getuid()) {
      throw fail(`${what}: ${source.file} belongs to another user`);
    }
    if ((info.mode & 0o077) !== 0) {
      throw fail(
        `${what}: ${source.file} is readable by other users (mode ${(info.mode & 0o777).toString(8)}); chmod 600 it`,
      );
    }
    raw = await handle.readFile();
  } finally {
    await handle.close();
  }
  // A trailing newline from `echo pin > file` is not part of the PIN.
  let end = raw.length;
  while (end > 0 && (raw[end - 1] === 0x0a || raw[end - 1] === 0x0d)) end--;
  const secret = Buffer.from(raw.subarray(0, end));
  raw.fill(0);
  if (secret.length === 0) throw fail(`${what}: ${source.file} is empty`);
  return secret;
}
