/**
 * Key backup benchmark: backing up and restoring N room keys (default 10,000), ours against a
 * stock matrix-js-sdk client doing the same on the same Synapse in the same run.
 *
 * Ours: the endpoint's BackupService over the crypto core, uploading to Synapse, with the
 * backup key sealed in a swtpm vault; the restore decrypts through the vault (a TPM unseal per
 * batch of 128) and imports into a fresh device. Stock: matrix-js-sdk's own backup
 * (`resetKeyBackup`, then its upload loop) and `restoreKeyBackup` with the key. Both start
 * from the same exported sessions; "backup" ends when the server counts all N.
 *
 *   node test/bench/backup.ts [--sessions N] [--json]
 */
import { execFile } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parseArgs, promisify } from 'node:util';
import {
  DeviceId,
  EncryptionSettings,
  OlmMachine,
  RoomId,
  UserId,
  initAsync,
} from '@matrix-org/matrix-sdk-crypto-wasm';
import { decodeRecoveryKey as sdkDecodeRecoveryKey } from 'matrix-js-sdk/lib/crypto-api/recovery-key.js';
import type { z } from 'zod';
import { BackupService } from '../../endpoint/backup/index.ts';
import { HomeserverClient } from '../../endpoint/matrix/index.ts';
import { createBackupKey } from '../../keyvault/backup/index.ts';
import type { TpmConfig } from '../../keyvault/config.ts';
import { openVault } from '../../keyvault/open.ts';
import {
  type HomeserverUser,
  StockPeer,
  makeTempDir,
  startSwtpm,
  startSynapse,
} from '../fixtures/index.ts';

const exec = promisify(execFile);
const { values: args } = parseArgs({
  options: { sessions: { type: 'string' }, json: { type: 'boolean' } },
});
const N = Number(args.sessions ?? 10_000);
if (!Number.isInteger(N) || N < 10 || N > 100_000) {
  process.stderr.write('bench: --sessions must be an integer from 10 to 100000\n');
  process.exit(2);
}
const progress = (line: string): void => {
  process.stderr.write(`bench: ${line}\n`);
};

await initAsync();
const synapse = await startSynapse();
const tpm = await startSwtpm();
const dir = await makeTempDir('bench-backup');

try {
  // The sessions both sides start from: N rooms' worth of Megolm sessions, exported.
  progress(`making ${N} Megolm sessions`);
  const maker = await OlmMachine.initialize(new UserId('@maker:bench'), new DeviceId('MAKER'));
  for (let i = 0; i < N; i++) {
    await maker.shareRoomKey(new RoomId(`!room${i}:bench`), [], new EncryptionSettings());
  }
  const exported = await maker.exportRoomKeys(() => true);
  maker.free();

  const seconds = async (run: () => Promise<unknown>): Promise<number> => {
    const t0 = process.hrtime.bigint();
    await run();
    return Number(process.hrtime.bigint() - t0) / 1e9;
  };
  const serverCount = async (user: HomeserverUser): Promise<number> => {
    const res = await fetch(`${synapse.baseUrl}/_matrix/client/v3/room_keys/version`, {
      headers: { authorization: `Bearer ${user.accessToken}` },
    });
    return res.status === 200 ? ((await res.json()) as { count: number }).count : 0;
  };
  const until = async (ok: () => Promise<boolean>): Promise<void> => {
    while (!(await ok())) await new Promise((r) => setTimeout(r, 100));
  };

  // Ours.
  const config: TpmConfig = {
    backend: 'tpm',
    stateDir: join(dir, 'vault'),
    transport: { swtpm: { host: tpm.host, port: tpm.port, ctrlPort: tpm.ctrlPort } },
    pcrs: [16],
    owner: { userId: '@ours:bench' },
  };
  await writeFile(join(dir, 'vault.json'), JSON.stringify(config));
  await exec(process.execPath, [
    join(import.meta.dirname, '../../keyvault/main.ts'),
    'init',
    '--config',
    join(dir, 'vault.json'),
  ]);
  const vault = await openVault(config);
  await createBackupKey(vault, config.stateDir, { mode: 'vault' });
  const oursUser = await synapse.registerUser('ours');
  const memoryState = () => {
    const values = new Map<string, unknown>();
    return {
      get: <T>(key: string, schema: z.ZodType<T>) =>
        Promise.resolve(values.has(key) ? schema.parse(values.get(key)) : undefined),
      put: (key: string, value: unknown) => {
        values.set(key, structuredClone(value));
        return Promise.resolve();
      },
    };
  };
  const ourDevice = async (deviceName: string) => {
    const api = new HomeserverClient({ baseUrl: synapse.baseUrl });
    await api.login(oursUser.localpart, oursUser.password);
    const machine = await OlmMachine.initialize(
      new UserId(api.userId ?? ''),
      new DeviceId(api.deviceId ?? deviceName),
    );
    const service = await BackupService.start({
      machine,
      api,
      vault,
      state: memoryState(),
      settings: () => ({ mode: undefined, mayBackUp: () => true }),
    });
    return { machine, service };
  };
  const first = await ourDevice('FIRST');
  await first.machine.importExportedRoomKeys(exported, () => undefined);
  progress('ours: backing up');
  const oursBackup = await seconds(async () => {
    await first.service.create();
    await until(async () => (await serverCount(oursUser)) >= N);
  });
  await first.service.stop();
  const second = await ourDevice('SECOND');
  progress('ours: restoring');
  let oursImported = 0;
  const oursRestore = await seconds(async () => {
    oursImported = (await second.service.recover()).imported;
  });
  await second.service.stop();
  await vault.close();

  // Stock.
  const stockUser = await synapse.registerUser('stock');
  const stock = await StockPeer.start(synapse.baseUrl, stockUser);
  await stock.crypto.importRoomKeysAsJson(exported);
  progress('stock: backing up');
  const stockBackup = await seconds(async () => {
    await stock.crypto.resetKeyBackup();
    await until(async () => (await serverCount(stockUser)) >= N);
  });
  const key = await stock.crypto.getSessionBackupPrivateKey();
  const version = (await stock.crypto.getActiveSessionBackupVersion()) ?? '';
  await stock.stop();
  const restorer = await StockPeer.start(
    synapse.baseUrl,
    await synapse.login(stockUser.localpart, stockUser.password),
  );
  await restorer.crypto.storeSessionBackupPrivateKey(key ?? sdkDecodeRecoveryKey(''), version);
  progress('stock: restoring');
  let stockImported = 0;
  const stockRestore = await seconds(async () => {
    stockImported = (await restorer.crypto.restoreKeyBackup()).imported;
  });
  await restorer.stop();

  const rows = [
    { operation: `back up ${N} sessions`, ours: oursBackup, stock: stockBackup },
    { operation: `restore ${N} sessions`, ours: oursRestore, stock: stockRestore },
  ];
  if (oursImported !== N || stockImported !== N) {
    throw new Error(`imported ${oursImported} (ours) and ${stockImported} (stock), not ${N}`);
  }
  if (args.json) {
    process.stdout.write(`${JSON.stringify({ sessions: N, rows })}\n`);
  } else {
    process.stdout.write(
      `| operation | ours s | stock s | ours / stock |\n| --- | --- | --- | --- |\n${rows
        .map(
          (r) =>
            `| ${r.operation} | ${r.ours.toFixed(2)} | ${r.stock.toFixed(2)} | ${(r.ours / r.stock).toFixed(2)} |`,
        )
        .join('\n')}\n`,
    );
  }
} finally {
  await tpm.stop();
  await synapse.stop();
}
process.exit(0);
