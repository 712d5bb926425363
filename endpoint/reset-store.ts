/**
 * `node endpoint/main.ts reset-store --config FILE --reason TEXT [--json]`: starts a new
 * device on purpose. A store that went missing is refused (STORE_MISSING) rather than silently
 * replaced, because a new device is visible to every peer and loses what this one knew; this
 * is the operator's way past that refusal (and out of a store refused for good: tampered,
 * rolled back). It writes the reason to the audit log first, moves the old store directory
 * aside (kept, sealed), creates an empty store at the vault counter's epoch, and says what
 * peers will see. Run it with the endpoint stopped (the store's and the log's locks refuse it
 * otherwise).
 */
import { fstatSync } from 'node:fs';
import { Socket } from 'node:net';
import { join } from 'node:path';
import { vaultClient } from '../keyvault/client.ts';
import { socketChannel } from '../keyvault/common/rpc/index.ts';
import { oneLine, parseCommandLine } from '../keyvault/common/cli-main.ts';
import { spawnVault } from '../keyvault/spawn.ts';
import { AuditLog } from '../policy/index.ts';
import { loadEndpointConfig } from './config.ts';
import { resetDurableStore } from './store/index.ts';

export const RESET_STORE_USAGE = `Usage: node endpoint/main.ts reset-store --config FILE --reason TEXT [--json] [--vault-fd N]

Starts a new device for the account in the endpoint's config, with an empty sealed store. The
endpoint refuses to start when its store is missing though the vault shows one existed
(STORE_MISSING), instead of quietly becoming a new device; this is how to do that on purpose,
or to leave a store that is refused for good (STORE_TAMPERED, STORE_ROLLED_BACK).

  --config FILE   the endpoint's config (its dataDir, vaultConfig, auditLog and user)
  --reason TEXT   why, for the audit log: letters, digits and spaces, such as "disk replaced"
                  (recorded as the code DISK_REPLACED; the log holds codes, not sentences)
  --json          print the result as JSON
  --vault-fd N    use the vault channel a launcher passed on that descriptor (as serve does)
                  instead of starting the vault from the config's vaultConfig

It launches the vault (the store key is needed to create the new store), writes a store.reset
entry with the reason to the audit log, moves the old store directory, if any, to
<dataDir>/store.reset-<time> (sealed; refused if put back, since the counter moved on; delete
it once it is no longer needed), and creates the new store. Stop the endpoint first.

At the next start the endpoint logs in as a new device. Peers see a new device id with new
device keys; the cross-signing identity stays the same if the vault is the same (its master
key is the vault's), and the new device is signed under it anew (new self-signing and
user-signing keys). What the old device held is gone: its room keys, and the users it had
verified (verify them again).`;

/** "disk replaced" -> DISK_REPLACED; undefined when it cannot be a code. */
export function reasonCode(text: string): string | undefined {
  const code = text
    .trim()
    .toUpperCase()
    .replace(/[\s-]+/g, '_');
  return /^[A-Z][A-Z0-9_]{0,63}$/.test(code) ? code : undefined;
}

const USER_ID = /^@[\x21-\x39\x3b-\x7e]{1,255}:[\x21-\x7e]{1,255}$/;

export function peersWillSee(user: string): string[] {
  return [
    `a new device of ${user}, with a new device id (the homeserver assigns it at the next start) and new device keys; the old device stays listed on the account until it is removed from another session or by the homeserver's admin`,
    "the same cross-signing identity, if the vault is the same: the master key is the vault's and does not change, so peers who verified this account keep trusting it",
    'the new device cross-signed under that master key anew (new self-signing and user-signing keys are published); the old device is no longer signed by the current self-signing key',
    'nothing of what the old device held: its room keys (history only it could decrypt stays unreadable) and the users it had verified (verify them again)',
  ];
}

export async function resetStoreCommand(argv: string[]): Promise<number> {
  let values;
  try {
    ({ values } = parseCommandLine(argv, {
      config: { type: 'string' },
      reason: { type: 'string' },
      json: { type: 'boolean' },
      'vault-fd': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    }));
  } catch (e) {
    return usageError(oneLine(e));
  }
  if (values.help) {
    process.stdout.write(`${RESET_STORE_USAGE}\n`);
    return 0;
  }
  if (values.config === undefined) return usageError('reset-store: --config FILE is required');
  if (values.reason === undefined) return usageError('reset-store: --reason TEXT is required');
  const reason = reasonCode(values.reason);
  if (reason === undefined) {
    return usageError(
      'reset-store: --reason: letters, digits and spaces, starting with a letter, at most 64 (it is written to the audit log as a code, e.g. DISK_REPLACED)',
    );
  }

  const vaultFd = values['vault-fd'] === undefined ? undefined : Number(values['vault-fd']);
  if (vaultFd !== undefined && !(Number.isInteger(vaultFd) && vaultFd > 2 && isSocketFd(vaultFd))) {
    return usageError('reset-store: --vault-fd: not a socket passed by the launcher');
  }

  const config = await loadEndpointConfig(values.config);
  const dir = join(config.dataDir, 'store');
  // The log first: it is locked while the endpoint runs, and a reset must not go unaudited.
  const audit = await AuditLog.open(config.auditLog);
  let seq = 0;
  let result;
  try {
    const vault =
      vaultFd === undefined ? await spawnVault(config.vaultConfig) : await launchedVault(vaultFd);
    try {
      const storeKey = await vault.vault.storeKey();
      try {
        result = await resetDurableStore({
          dir,
          storeKey,
          counter: {
            read: () => vault.vault.counterRead(),
            increment: () => vault.vault.counterIncrement(),
          },
          identity: { userId: config.user },
          counterStart: vault.vault.backend === 'tpm' ? null : 0n,
          beforeChange: async () => {
            const entry = await audit.append({
              client: null,
              action: 'store.reset',
              target: USER_ID.test(config.user) ? config.user : null,
              decision: 'info',
              reason,
            });
            seq = entry.seq;
          },
        });
      } finally {
        storeKey.fill(0);
      }
    } finally {
      await vault.stop();
    }
  } finally {
    await audit.close();
  }

  const peers = peersWillSee(config.user);
  if (values.json) {
    const out = {
      ok: true,
      user: config.user,
      reason,
      auditSeq: seq,
      storeDir: dir,
      epoch: String(result.epoch),
      movedTo: result.movedTo,
      peersWillSee: peers,
    };
    process.stdout.write(`${JSON.stringify(out, null, 2)}\n`);
    return 0;
  }
  const lines = [
    `reset-store: a new device will start for ${config.user} (reason ${reason}, audit log entry ${seq})`,
    result.movedTo === null
      ? '  old store: none was there'
      : `  old store: moved to ${result.movedTo} (sealed; refused if put back; delete it when no longer needed)`,
    `  new store: ${dir}, empty, at epoch ${result.epoch}`,
    'At the next start (node endpoint/main.ts serve), peers will see:',
    ...peers.map((p) => `  - ${p}`),
  ];
  process.stdout.write(`${lines.join('\n')}\n`);
  return 0;
}

function isSocketFd(fd: number): boolean {
  try {
    return fstatSync(fd).isSocket();
  } catch {
    return false;
  }
}

async function launchedVault(fd: number) {
  const vault = await vaultClient(
    socketChannel(new Socket({ fd, readable: true, writable: true })),
  );
  return { vault, stop: () => vault.close() };
}

function usageError(message: string): number {
  process.stderr.write(`endpoint: ${message} (see reset-store --help)\n`);
  return 2;
}
