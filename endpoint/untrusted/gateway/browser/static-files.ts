import { lstat, open, readdir } from 'node:fs/promises';
import { extname, join } from 'node:path';
import { constants } from 'node:fs';

/**
 * The web UI's built files, read once at start into memory: the listener then serves a fixed
 * set of names, so no request path ever reaches the filesystem (no traversal, no symlink, no
 * file appearing later). The directory is the build's output, never written by the gateway.
 */
export interface StaticFile {
  body: Buffer;
  type: string;
}

export class StaticFilesError extends Error {
  override name = 'StaticFilesError';
}

const TYPES: Readonly<Record<string, string>> = Object.freeze({
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.png': 'image/png',
  '.ico': 'image/x-icon',
  '.txt': 'text/plain; charset=utf-8',
});

/** Names a URL may ask for: one path segment, nothing hidden. */
export const FILE_NAME = /^[a-z0-9][a-z0-9._-]{0,63}$/;
const MAX_TOTAL_BYTES = 16 * 1024 * 1024;

/** Reads every regular file of `dir` (not recursive); refuses a directory without index.html. */
export async function loadStaticFiles(dir: string): Promise<Map<string, StaticFile>> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch (e) {
    throw new StaticFilesError(
      `cannot read the web UI's directory ${dir} (${(e as NodeJS.ErrnoException).code ?? 'error'}): build it with node endpoint/untrusted/web/build.ts`,
    );
  }
  const files = new Map<string, StaticFile>();
  let total = 0;
  for (const name of names.sort()) {
    const type = TYPES[extname(name)];
    if (!FILE_NAME.test(name) || type === undefined) continue;
    const path = join(dir, name);
    const info = await lstat(path);
    if (!info.isFile()) continue;
    const handle = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW);
    try {
      const body = await handle.readFile();
      total += body.length;
      if (total > MAX_TOTAL_BYTES) {
        throw new StaticFilesError(`the web UI's directory ${dir} holds more than 16 MiB`);
      }
      files.set(name, { body, type });
    } finally {
      await handle.close();
    }
  }
  if (!files.has('index.html')) {
    throw new StaticFilesError(
      `the web UI's directory ${dir} has no index.html: build it with node endpoint/untrusted/web/build.ts`,
    );
  }
  return files;
}
