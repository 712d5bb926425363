/**
 * File hygiene for a compartment's private state (the endpoint's sealed store, the vault's
 * state directory): the directory must be the directory itself (not a symlink to a copy
 * elsewhere), owned by the user the compartment runs as, mode 0700; what is in it must be
 * regular files (mode 0600) or directories (0700) owned by that user, never symlinks. Every
 * problem comes with the one-line command that fixes it. Compartment-neutral: callers map
 * UnsafeFilesError onto their own error codes.
 *
 * lstat throughout: a symlink is reported, never followed. Sockets are allowed (owner checked),
 * as their mode does not matter inside a 0700 directory.
 */
import { lstat, readdir } from 'node:fs/promises';
import { join } from 'node:path';

export interface FileProblem {
  path: string;
  /** What is wrong, e.g. "has mode 0777". */
  problem: string;
  /** The command or step that fixes it, e.g. "chmod 700 /var/lib/mte/store". */
  fix: string;
}

export class UnsafeFilesError extends Error {
  readonly code = 'UNSAFE_FILES';
  readonly problems: FileProblem[];
  constructor(message: string, problems: FileProblem[]) {
    super(message);
    this.name = 'UnsafeFilesError';
    this.problems = problems;
  }
}

export interface PrivateDirOptions {
  /** The owner required (default: the user this process runs as). */
  uid?: number;
  /**
   * As root, require the owner of `dir` itself instead of root (an admin tool, vault init or
   * the certificate tool, working on a compartment's files): mixed ownership is still refused.
   */
  rootAcceptsDirOwner?: boolean;
  /** How deep to look into subdirectories (default 4). */
  maxDepth?: number;
}

const octal = (mode: number): string => `0${(mode & 0o777).toString(8).padStart(3, '0')}`;

function currentUid(): number | undefined {
  return typeof process.getuid === 'function' ? process.getuid() : undefined;
}

async function lstatOrNull(path: string) {
  try {
    return await lstat(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw e;
  }
}

/**
 * Everything wrong with `dir` and what is in it. A directory that does not exist has no
 * problems (whoever creates it makes it 0700).
 */
export async function privateDirProblems(
  dir: string,
  options: PrivateDirOptions = {},
): Promise<FileProblem[]> {
  // Root (an admin tool: vault init, the certificate tool) works on a compartment's files,
  // owned by that compartment's user: then everything must be owned by whoever owns the
  // directory itself, so mixed ownership is still refused. Modes and symlinks are checked alike.
  const asRoot =
    options.rootAcceptsDirOwner === true && options.uid === undefined && currentUid() === 0;
  const uid = asRoot ? (await lstatOrNull(dir))?.uid : (options.uid ?? currentUid());
  const problems: FileProblem[] = [];
  const owner = (path: string, owned: number): void => {
    if (uid === undefined || owned === uid) return;
    problems.push({
      path,
      problem: asRoot
        ? `is owned by uid ${owned}, not by uid ${uid} (the owner of ${dir})`
        : `is owned by uid ${owned}, not by uid ${uid} (the user this runs as)`,
      fix: `chown ${uid} ${path}`,
    });
  };
  const visit = async (path: string, top: boolean, depth: number): Promise<void> => {
    const info = await lstatOrNull(path);
    if (!info) return;
    if (info.isSymbolicLink()) {
      problems.push({
        path,
        problem: 'is a symbolic link',
        fix: top
          ? `replace the symlink ${path} with the directory it points to (rm ${path}, then mv the target there)`
          : `remove the symlink ${path} (and put the file itself there)`,
      });
      return;
    }
    if (info.isDirectory()) {
      owner(path, info.uid);
      if ((info.mode & 0o077) !== 0) {
        problems.push({
          path,
          problem: `has mode ${octal(info.mode)}, open to other users`,
          fix: `chmod 700 ${path}`,
        });
      }
      if (depth >= (options.maxDepth ?? 4)) return;
      for (const name of (await readdir(path)).sort()) {
        await visit(join(path, name), false, depth + 1);
      }
      return;
    }
    if (top) {
      problems.push({ path, problem: 'is not a directory', fix: `move ${path} away` });
      return;
    }
    owner(path, info.uid);
    if (info.isSocket()) return;
    if (!info.isFile()) {
      problems.push({
        path,
        problem: 'is not a regular file (a device or a fifo)',
        fix: `remove ${path}`,
      });
      return;
    }
    if ((info.mode & 0o077) !== 0) {
      problems.push({
        path,
        problem: `has mode ${octal(info.mode)}, open to other users`,
        fix: `chmod 600 ${path}`,
      });
    }
  };
  await visit(dir, true, 0);
  return problems;
}

/** One line: the first problem and its fix, and how many more there are. */
export function describeProblems(what: string, problems: FileProblem[]): string {
  const [first] = problems;
  if (!first) return `${what}: no problems`;
  const more = problems.length > 1 ? ` (and ${problems.length - 1} more problems)` : '';
  return `${what}: ${first.path} ${first.problem}; fix: ${first.fix}${more}`;
}

/** Throws UnsafeFilesError when `dir` (which may not exist yet) is not private. */
export async function assertPrivateDir(
  dir: string,
  what: string,
  options: PrivateDirOptions = {},
): Promise<void> {
  const problems = await privateDirProblems(dir, options);
  if (problems.length > 0) throw new UnsafeFilesError(describeProblems(what, problems), problems);
}
