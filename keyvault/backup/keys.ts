import { type BackupKeyMode, type VaultBackend, VaultCode, VaultError } from '../vault.ts';
import { encryptForEscrow } from './escrow.ts';
import { infoOf, readBackupKeyFile, writeBackupKeyFile, type BackupKeyFile } from './key-file.ts';
import { generateBackupKey, publicKeyOf } from './megolm-v1.ts';
import { encodeRecoveryKey } from './recovery-key.ts';
import type { BackupKeyInfo } from '../vault.ts';

/**
 * Making and importing the key backup's key: local admin operations of the vault command, like
 * `init`, never reachable over the endpoint's RPC. A compromised endpoint can therefore neither
 * replace the key (and so cut the user off from their backup) nor plant one it knows.
 */

export interface CreateOptions {
  mode: BackupKeyMode;
  /** PEM of the institution's recovery certificate; required for, and only for, escrow. */
  escrowCertificatePem?: string | undefined;
  /** Make a new key even though one exists (rotation). The old key is gone afterwards. */
  replace?: boolean;
}

export interface Created {
  info: BackupKeyInfo;
  /** recovery-key mode: the key to print once. */
  recoveryKey?: string;
  /** escrow mode: DER CMS EnvelopedData for the institution. */
  escrow?: Uint8Array;
}

async function refuseExisting(stateDir: string, replace: boolean | undefined): Promise<void> {
  const existing = await readBackupKeyFile(stateDir);
  if (existing && !replace) {
    throw new VaultError(
      VaultCode.BackupKey,
      `this vault already has a backup key (${existing.mode} mode, made ${existing.createdAt}); --replace makes a new one, after which backups made for the old one cannot be restored through this vault`,
    );
  }
}

export async function createBackupKey(
  vault: Pick<VaultBackend, 'sealSecret'>,
  stateDir: string,
  options: CreateOptions,
): Promise<Created> {
  if ((options.mode === 'escrow') !== (options.escrowCertificatePem !== undefined)) {
    throw new VaultError(
      VaultCode.Config,
      options.mode === 'escrow'
        ? 'escrow mode needs the institution recovery certificate (--escrow-cert FILE)'
        : '--escrow-cert is only for escrow mode',
    );
  }
  await refuseExisting(stateDir, options.replace);
  const { privateKey, publicKey } = generateBackupKey();
  try {
    const base = {
      version: 1,
      kind: 'mte-backup-key',
      mode: options.mode,
      publicKey,
      createdAt: new Date().toISOString(),
      origin: 'created',
    } as const;
    let file: BackupKeyFile;
    const created: Omit<Created, 'info'> = {};
    switch (options.mode) {
      case 'vault':
        file = { ...base, sealed: await vault.sealSecret(privateKey) };
        break;
      case 'recovery-key':
        file = base;
        created.recoveryKey = encodeRecoveryKey(privateKey);
        break;
      case 'escrow': {
        file = base;
        const text = Buffer.from(`${encodeRecoveryKey(privateKey)}\n`, 'utf8');
        try {
          created.escrow = encryptForEscrow(options.escrowCertificatePem as string, text);
        } finally {
          text.fill(0);
        }
        break;
      }
    }
    await writeBackupKeyFile(stateDir, file);
    return { info: infoOf(file), ...created };
  } finally {
    privateKey.fill(0);
  }
}

/**
 * Seals a backup key given back by its holder (the recovery key, or what the institution
 * decrypted from the escrow), so this vault can decrypt the backup on a new machine. Keeps the
 * mode the key was made in: the vault now holds it sealed too, as in vault mode.
 */
export async function importBackupKey(
  vault: Pick<VaultBackend, 'sealSecret'>,
  stateDir: string,
  privateKey: Uint8Array,
  options: { mode: BackupKeyMode; replace?: boolean },
): Promise<BackupKeyInfo> {
  await refuseExisting(stateDir, options.replace);
  const file: BackupKeyFile = {
    version: 1,
    kind: 'mte-backup-key',
    mode: options.mode,
    publicKey: publicKeyOf(privateKey),
    createdAt: new Date().toISOString(),
    origin: 'imported',
    sealed: await vault.sealSecret(privateKey),
  };
  await writeBackupKeyFile(stateDir, file);
  return infoOf(file);
}
