import { readFile } from 'node:fs/promises';
import { UsageError } from '../common/cli-main.ts';
import { writeFileAtomic } from '../common/atomic-file.ts';
import {
  BACKUP_KEY_MODES,
  type BackupKeyMode,
  type VaultBackend,
  VaultCode,
  VaultError,
} from '../vault.ts';
import { backupKeyInfo } from './decrypt.ts';
import { checkEscrowCertificate } from './escrow.ts';
import { createBackupKey, importBackupKey } from './keys.ts';
import { decodeRecoveryKey } from './recovery-key.ts';

/**
 * `vault backup-key show|create|import`: the admin's side of key backup (keys.ts says why it
 * is not on the RPC). Secrets never come from argv: an imported recovery key is read from
 * stdin, and the one printed at creation goes to stdout once, never to a file or log of ours.
 */

export const BACKUP_KEY_ACTIONS = ['show', 'create', 'import'] as const;
export type BackupKeyAction = (typeof BACKUP_KEY_ACTIONS)[number];

export const BACKUP_KEY_HELP = `Usage: node keyvault/main.ts backup-key show|create|import --config FILE [options]

The key backup's key. The endpoint uploads room keys encrypted to its public half; where the
private half lives is the mode:

  vault         sealed in this vault (TPM: to its PCRs; PKCS#11: under the token's KEK).
                Survives a lost disk or endpoint state, NOT a dead or cleared TPM.
  recovery-key  printed once, here, as a Matrix recovery key (the format Element uses);
                this vault keeps only the public half. Write it down: without it a dead
                machine's history is gone.
  escrow        encrypted to an institution's recovery certificate (CMS, RSA-OAEP) and
                written to --out; this vault keeps only the public half.

  show                     the key's mode, public key and whether this vault can decrypt
  create --mode MODE       make a key (default mode: vault)
         [--escrow-cert FILE --out FILE]   escrow: the certificate, and where the CMS goes
         [--replace]       replace an existing key (backups for the old one then cannot be
                           restored through this vault: rotate the server backup next)
  import [--mode MODE]     read a recovery key from stdin and seal it here, to restore on a
         [--replace]       new machine (default mode: recovery-key)

Options: --json for machine-readable output.
`;

export interface BackupKeyArgs {
  action: BackupKeyAction;
  json: boolean;
  mode?: string | undefined;
  escrowCert?: string | undefined;
  out?: string | undefined;
  replace: boolean;
}

function mode(value: string | undefined, fallback: BackupKeyMode): BackupKeyMode {
  if (value === undefined) return fallback;
  if (!(BACKUP_KEY_MODES as readonly string[]).includes(value)) {
    throw new UsageError(`--mode: expected one of ${BACKUP_KEY_MODES.join(', ')}`);
  }
  return value as BackupKeyMode;
}

async function readStdin(): Promise<string> {
  if (process.stdin.isTTY) process.stderr.write('recovery key: ');
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of process.stdin as AsyncIterable<Buffer>) {
    chunks.push(chunk);
    size += chunk.length;
    if (size > 4096) throw new UsageError('import: stdin holds more than a recovery key');
  }
  const text = Buffer.concat(chunks);
  const line = text.toString('utf8').trim();
  text.fill(0);
  return line;
}

function print(line: string): void {
  process.stdout.write(`${line}\n`);
}

export async function backupKeyCommand(
  vault: VaultBackend,
  stateDir: string,
  args: BackupKeyArgs,
): Promise<number> {
  switch (args.action) {
    case 'show': {
      const info = await backupKeyInfo(stateDir);
      if (args.json) print(JSON.stringify(info));
      else if (!info) print('no backup key yet: "backup-key create" makes one');
      else {
        print(`mode         ${info.mode}`);
        print(`public key   ${info.publicKey}`);
        print(`created      ${info.createdAt}`);
        print(
          `can decrypt  ${info.canDecrypt ? 'yes (the private key is sealed here)' : 'no (public half only)'}`,
        );
      }
      return 0;
    }
    case 'create': {
      const chosen = mode(args.mode, 'vault');
      if (chosen === 'escrow' && (args.escrowCert === undefined || args.out === undefined)) {
        throw new UsageError('create --mode escrow needs --escrow-cert FILE and --out FILE');
      }
      if (chosen !== 'escrow' && (args.escrowCert !== undefined || args.out !== undefined)) {
        throw new UsageError('--escrow-cert and --out are only for --mode escrow');
      }
      let pem: string | undefined;
      if (args.escrowCert !== undefined) {
        try {
          pem = await readFile(args.escrowCert, 'utf8');
        } catch {
          throw new VaultError(
            VaultCode.Config,
            `cannot read the escrow certificate ${args.escrowCert}`,
          );
        }
        checkEscrowCertificate(pem);
      }
      const created = await createBackupKey(vault, stateDir, {
        mode: chosen,
        escrowCertificatePem: pem,
        replace: args.replace,
      });
      if (created.escrow && args.out !== undefined) {
        await writeFileAtomic(args.out, created.escrow, { replace: args.replace });
      }
      if (args.json) {
        print(
          JSON.stringify({
            ...created.info,
            ...(created.recoveryKey ? { recoveryKey: created.recoveryKey } : {}),
            ...(args.out ? { escrowFile: args.out } : {}),
          }),
        );
        return 0;
      }
      print(`created a backup key (${created.info.mode} mode)`);
      print(`public key   ${created.info.publicKey}`);
      if (created.recoveryKey) {
        print('');
        print('Recovery key (shown once, not stored anywhere; write it down and keep it safe):');
        print('');
        print(`    ${created.recoveryKey}`);
        print('');
      }
      if (args.out) print(`escrow       written to ${args.out} (for the institution; CMS, DER)`);
      print('next: "mte backup create" makes the server-side backup with this key');
      return 0;
    }
    case 'import': {
      const text = await readStdin();
      const decoded = decodeRecoveryKey(text);
      if (!decoded.ok) throw new UsageError(`import: ${decoded.error.message}`);
      try {
        const info = await importBackupKey(vault, stateDir, decoded.key, {
          mode: mode(args.mode, 'recovery-key'),
          replace: args.replace,
        });
        if (args.json) print(JSON.stringify(info));
        else {
          print(`imported the backup key; it is sealed in this vault now`);
          print(`public key   ${info.publicKey}`);
          print('next: "mte backup recover" restores the room keys from the server-side backup');
        }
        return 0;
      } finally {
        decoded.key.fill(0);
      }
    }
  }
}
