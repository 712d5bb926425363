/**
 * `node endpoint/untrusted/cli/backup.ts`: the server-side key backup, through the local API
 * (a token with the `backup` capability). It never sees a backup key: those are the vault's
 * (`node keyvault/main.ts backup-key`), on the vault's machine.
 */
import { UsageError, runMain } from '../../../keyvault/common/cli-main.ts';
import { type BackupStatusWire, endpointContract } from '../../contract.ts';
import { call, clean, commandLine, gatewayContext, print } from './common.ts';

const usage = `Usage: node endpoint/untrusted/cli/backup.ts COMMAND [OPTIONS]

The endpoint's server-side key backup (m.megolm_backup.v1.curve25519-aes-sha2).

Commands:
  status    the backup's state, the vault key's mode, and how many room keys are backed up
  create    make a backup version with the vault's backup key and upload every room key
  rotate    a new version (with the vault's current key), every key uploaded, old one deleted
  recover   restore room keys from the homeserver's backup (the vault decrypts them); on a
            new machine, import the recovery key into the vault first:
              node keyvault/main.ts backup-key import --config vault.json < recovery-key.txt

The backup key itself is made in the vault: node keyvault/main.ts backup-key create.

Options:
  --socket PATH       the gateway's Unix socket (default: api.sock)
  --token-file FILE   a file holding the client's bearer token (or set MTE_TOKEN)
  --json              print the result as JSON on stdout
  -h, --help          this text

Exit status: 0 ok, 1 failure (status: also when uploads are refused), 2 usage error.`;

function statusLines(s: BackupStatusWire): string[] {
  const lines = [`state        ${s.state}${stateNote(s)}`];
  if (s.key) {
    lines.push(
      `key          ${s.key.mode} mode${s.key.canDecrypt ? ', the vault can decrypt' : ', public half only in the vault'}`,
    );
  }
  if (s.version !== undefined) lines.push(`version      ${clean(s.version)}`);
  lines.push(`room keys    ${s.counts.backedUp} of ${s.counts.total} backed up`);
  if (s.skipped > 0) lines.push(`skipped      ${s.skipped} (the policy keeps their rooms out)`);
  if (s.serverCount !== undefined) lines.push(`on server    ${s.serverCount}`);
  if (s.refusal) lines.push(`REFUSED      ${s.refusal.code}: ${clean(s.refusal.message)}`);
  if (s.lastError !== undefined) lines.push(`last error   ${clean(s.lastError)}`);
  if (s.rotateNeeded === true) {
    lines.push(
      'ROTATE       the vault has a new backup key: backup.ts rotate moves the backup to it',
    );
  }
  return lines;
}

function stateNote(s: BackupStatusWire): string {
  switch (s.state) {
    case 'no-key':
      return ' (the vault has no backup key: node keyvault/main.ts backup-key create)';
    case 'off':
      return ' (no backup yet: backup.ts create)';
    case 'refused':
      return ' (the homeserver swapped the backup: nothing is uploaded)';
    case 'active':
      return '';
  }
}

async function main(argv: string[]): Promise<number> {
  const line = commandLine(argv, usage, {});
  if (line === undefined) return 0;
  const { values, command, args } = line;
  if (args.length > 0) throw new UsageError(`${command} takes no arguments`);
  const ctx = await gatewayContext(values, 1024 * 1024);
  const show = (status: BackupStatusWire, extra: string[] = []): number => {
    if (ctx.json) print(status);
    else for (const l of [...statusLines(status), ...extra]) process.stdout.write(`${l}\n`);
    return status.state === 'refused' ? 1 : 0;
  };
  switch (command) {
    case 'status':
      return show(endpointContract.backupStatus.result.parse(await call(ctx, 'GET', '/v1/backup')));
    case 'create':
      return show(
        endpointContract.backupCreate.result.parse(await call(ctx, 'POST', '/v1/backup', {})),
      );
    case 'rotate': {
      const result = endpointContract.backupRotate.result.parse(
        await call(ctx, 'POST', '/v1/backup/rotate', {}),
      );
      return show(
        result,
        result.deletedVersion === undefined
          ? []
          : [`deleted      version ${clean(result.deletedVersion)}`],
      );
    }
    case 'recover': {
      process.stderr.write('restoring room keys from the backup...\n');
      const result = endpointContract.backupRecover.result.parse(
        await call(ctx, 'POST', '/v1/backup/recover', {}),
      );
      if (ctx.json) print(result);
      else {
        process.stdout.write(`version      ${clean(result.version)}\n`);
        process.stdout.write(`in backup    ${result.total}\n`);
        process.stdout.write(`imported     ${result.imported}\n`);
        for (const [code, n] of Object.entries(result.failed)) {
          process.stdout.write(`refused      ${n} (${clean(code)})\n`);
        }
      }
      return 0;
    }
    default:
      throw new UsageError('unknown command (status, create, rotate, recover)');
  }
}

runMain('backup', main);
