/**
 * The probe: run by the launcher in a compartment's exact sandbox instead of its program
 * (`node deploy/launch.ts probe --compartment NAME -- ACTION TARGET`), it tries one thing and
 * prints what happened as one JSON line. The sandbox tests assert each denial by an attempt
 * from inside, not by reading the configuration.
 *
 *   read PATH          read a file (or list a directory)
 *   write DIR          create and remove a file in DIR
 *   connect HOST:PORT  open a TCP connection
 *   spawn              start a child process
 *   whoami             the uid, gid and groups it runs as
 */
import { spawnSync } from 'node:child_process';
import { readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';

export interface ProbeResult {
  action: string;
  target: string;
  ok: boolean;
  /** The error code (EACCES, ENOENT, ERR_ACCESS_DENIED, ENETUNREACH, ...) when refused. */
  code?: string;
  detail?: string;
}

function codeOf(e: unknown): string {
  if (typeof e === 'object' && e !== null && 'code' in e) return String(e.code);
  return 'ERROR';
}

async function attempt(action: string, target: string): Promise<ProbeResult> {
  const base = { action, target };
  try {
    switch (action) {
      case 'read': {
        if (statSync(target).isDirectory()) readdirSync(target);
        else readFileSync(target);
        return { ...base, ok: true };
      }
      case 'write': {
        const file = join(target, `.probe-${process.pid}`);
        writeFileSync(file, 'probe');
        rmSync(file);
        return { ...base, ok: true };
      }
      case 'connect': {
        const [host, port] = [
          target.slice(0, target.lastIndexOf(':')),
          Number(target.slice(target.lastIndexOf(':') + 1)),
        ];
        await new Promise<void>((resolve, reject) => {
          const socket = connect({ host, port, timeout: 3000 });
          socket.once('connect', () => {
            socket.destroy();
            resolve();
          });
          socket.once('timeout', () => {
            socket.destroy();
            reject(Object.assign(new Error('timeout'), { code: 'ETIMEDOUT' }));
          });
          socket.once('error', reject);
        });
        return { ...base, ok: true };
      }
      case 'spawn': {
        const r = spawnSync('/bin/true');
        if (r.error) throw r.error;
        return { ...base, ok: r.status === 0 };
      }
      case 'whoami':
        return {
          ...base,
          ok: true,
          detail: JSON.stringify({
            uid: process.getuid?.(),
            gid: process.getgid?.(),
            groups: process.getgroups?.(),
          }),
        };
      default:
        return { ...base, ok: false, code: 'UNKNOWN_ACTION' };
    }
  } catch (e) {
    return { ...base, ok: false, code: codeOf(e) };
  }
}

const [action = '', target = ''] = process.argv.slice(2);
process.stdout.write(`${JSON.stringify(await attempt(action, target))}\n`);
