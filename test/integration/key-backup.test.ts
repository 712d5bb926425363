import { readFile, readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import {
  decodeRecoveryKey as sdkDecodeRecoveryKey,
  encodeRecoveryKey as sdkEncodeRecoveryKey,
} from 'matrix-js-sdk/lib/crypto-api/recovery-key.js';
import { afterAll, describe, expect, it } from 'vitest';
import type { StreamEvent } from '../../endpoint/contract.ts';
import { type SpawnedEndpoint, spawnEndpoint } from '../../endpoint/spawn.ts';
import {
  decodeRecoveryKey,
  encodeRecoveryKey,
  generateBackupKey,
} from '../../keyvault/backup/index.ts';
import { isRpcError } from '../../keyvault/common/rpc/index.ts';
import {
  type HomeserverUser,
  StockPeer,
  type Swtpm,
  makeTempDir,
  prepareCompartments,
  readTimeline,
  startSwtpm,
  startSynapse,
  vaultCommand,
} from '../fixtures/index.ts';
import { useFixture } from '../fixtures/lifecycle.ts';
import { waitUntil } from '../fixtures/process.ts';

// Key backup end to end: our endpoint (a process, keys in a swtpm vault) backs up the room keys
// of 200 messages in 3 rooms; its machine is then destroyed (vault state, store, the TPM
// itself), and a new machine on another TPM recovers from the backup with the recovery key.
// Along the way: a homeserver that swaps the backup gets nothing, a stock matrix-js-sdk client
// restores our backup with the recovery key, and we restore one the stock client made.
const synapse = useFixture(() => startSynapse());
const tpm1 = useFixture(() => startSwtpm());
const tpm2 = useFixture(() => startSwtpm());

const poll = { timeoutMs: 90_000, intervalMs: 250 };
const stops: (() => Promise<unknown>)[] = [];
afterAll(async () => {
  for (const stop of stops.reverse()) await stop().catch(() => undefined);
});

interface Machine {
  dir: string;
  vaultConfig: string;
  endpointConfig: string;
  /** Stopped, then started again on the same state (after an admin step on its vault). */
  restart(): Promise<Machine>;
  endpoint: SpawnedEndpoint;
  token: string;
  stream: StreamEvent[];
  call: SpawnedEndpoint['client']['call'];
  stop(): Promise<void>;
}

async function startMachine(
  name: string,
  user: HomeserverUser,
  tpm: Swtpm,
  options: { before?: (vaultConfig: string) => Promise<void>; replaceIdentity?: boolean } = {},
): Promise<Machine> {
  const dir = await makeTempDir(`key-backup-${name}`);
  const prepared = await prepareCompartments(dir, {
    homeserver: synapse().baseUrl,
    tpm,
    user,
  });
  await options.before?.(prepared.vaultConfig);
  return launch(dir, prepared.vaultConfig, prepared.endpointConfig, prepared.tokens.test ?? '', {
    replaceIdentity: options.replaceIdentity === true,
  });
}

/** The endpoint of a prepared machine (again, after a stop), with its event stream read. */
async function launch(
  dir: string,
  vaultConfig: string,
  endpointConfig: string,
  token: string,
  options: { replaceIdentity: boolean },
): Promise<Machine> {
  const endpoint = await spawnEndpoint(endpointConfig, {
    onStderr: (line) => {
      if (process.env.MTE_DEBUG) process.stderr.write(`[endpoint] ${line}\n`);
    },
    ...(options.replaceIdentity ? { replaceIdentity: true } : {}),
  });
  const stream: StreamEvent[] = [];
  const streaming = { on: true };
  const call: Machine['call'] = (method, params) => endpoint.client.call(method, params);
  const { subscription, cursor } = await call('subscribe', { auth: { token } });
  const streamDone = (async () => {
    let after = cursor;
    while (streaming.on) {
      try {
        const page = await call('events', { auth: { token }, subscription, after, waitMs: 2000 });
        stream.push(...page.events);
        after = page.cursor;
      } catch {
        await new Promise((r) => setTimeout(r, 200));
      }
    }
  })();
  let stopped = false;
  const stop = async () => {
    if (stopped) return;
    stopped = true;
    streaming.on = false;
    await streamDone;
    await endpoint.stop();
  };
  stops.push(stop);
  return {
    dir,
    vaultConfig,
    endpointConfig,
    endpoint,
    token,
    stream,
    call,
    stop,
    restart: async () => {
      await stop();
      return launch(dir, vaultConfig, endpointConfig, token, { replaceIdentity: false });
    },
  };
}

/** The homeserver's own view of the user's backup, asked directly (as any of their clients). */
async function serverBackup(
  user: HomeserverUser,
): Promise<{ version: string; count: number; publicKey: string } | undefined> {
  const res = await fetch(`${synapse().baseUrl}/_matrix/client/v3/room_keys/version`, {
    headers: { authorization: `Bearer ${user.accessToken}` },
  });
  if (res.status === 404) return undefined;
  const body = (await res.json()) as {
    version: string;
    count: number;
    auth_data: { public_key: string };
  };
  return { version: body.version, count: body.count, publicKey: body.auth_data.public_key };
}

async function sessionsInServerBackup(user: HomeserverUser, version: string): Promise<number> {
  const res = await fetch(
    `${synapse().baseUrl}/_matrix/client/v3/room_keys/keys?version=${encodeURIComponent(version)}`,
    { headers: { authorization: `Bearer ${user.accessToken}` } },
  );
  expect(res.status, await res.clone().text()).toBe(200);
  const body = (await res.json()) as { rooms?: Record<string, { sessions: object }> };
  return Object.values(body.rooms ?? {}).reduce((n, r) => n + Object.keys(r.sessions).length, 0);
}

/** Every segment of a machine's audit log, in order. */
async function auditText(dir: string): Promise<string> {
  const names = (await readdir(dir)).filter((n) => n.startsWith('audit.log')).sort();
  return (await Promise.all(names.map((n) => readFile(join(dir, n), 'utf8')))).join('');
}

async function rpcError(promise: Promise<unknown>): Promise<{ code: string; message: string }> {
  try {
    await promise;
  } catch (e) {
    if (isRpcError(e)) return { code: e.code, message: e.message };
    throw e;
  }
  throw new Error('expected the call to fail');
}

describe('key backup and recovery', () => {
  let alice: HomeserverUser;
  let bob: StockPeer;
  let a: Machine;
  let recoveryKey = '';
  const rooms: string[] = [];
  const bodies = new Map<string, string[]>();

  it('machine A: a recovery-key backup key, shown once; the endpoint backs up with it', async () => {
    alice = await synapse().registerUser('alice');
    const bobUser = await synapse().registerUser('bob');
    bob = await StockPeer.start(synapse().baseUrl, bobUser);
    stops.push(() => bob.stop());
    await bob.bootstrapCrossSigning(bobUser.password);

    a = await startMachine('a', alice, tpm1(), {
      before: async (vaultConfig) => {
        const made = await vaultCommand([
          'backup-key',
          'create',
          '--mode',
          'recovery-key',
          '--config',
          vaultConfig,
          '--json',
        ]);
        expect(made.code, made.stderr).toBe(0);
        const json = JSON.parse(made.stdout) as {
          mode: string;
          recoveryKey: string;
          canDecrypt: boolean;
        };
        expect(json).toMatchObject({ mode: 'recovery-key', canDecrypt: false });
        recoveryKey = json.recoveryKey;
        // Shown once: the vault keeps only the public half, and `show` never prints the key.
        const shown = await vaultCommand(['backup-key', 'show', '--config', vaultConfig]);
        expect(shown.stdout).not.toContain(recoveryKey.slice(0, 14));
        const files = await readFile(join(vaultConfig, '..', 'vault', 'backup-key.json'), 'utf8');
        expect(files).not.toContain('sealed');
      },
    });
    const auth = { token: a.token };
    expect((await a.call('backupStatus', { auth })).state).toBe('off');
    const created = await a.call('backupCreate', { auth });
    expect(created).toMatchObject({ state: 'active', key: { mode: 'recovery-key' } });
    const onServer = await serverBackup(alice);
    expect(onServer?.version).toBe(created.version);
    // The public key on the server is the vault's, never one the server chose.
    const key = decodeRecoveryKey(recoveryKey);
    expect(key.ok).toBe(true);
    expect(onServer?.publicKey).toBe(created.key?.publicKey);
    expect(await rpcError(a.call('backupCreate', { auth }))).toMatchObject({
      code: 'BACKUP_EXISTS',
    });
  }, 120_000);

  it('200 messages in 3 rooms, in many Megolm sessions: every session reaches the backup', async () => {
    const auth = { token: a.token };
    for (let r = 0; r < 3; r++) {
      const roomId = await bob.createEncryptedRoom({ invite: [alice.userId], name: `room ${r}` });
      await waitUntil(
        'the invitation',
        async () =>
          (await a.call('rooms', { auth })).rooms.some(
            (x) => x.roomId === roomId && x.membership === 'invite',
          ),
        poll,
      );
      await a.call('join', { auth, roomId });
      await bob.waitForMember(roomId, alice.userId);
      rooms.push(roomId);
      bodies.set(roomId, []);
    }
    for (let i = 0; i < 200; i++) {
      const roomId = rooms[i % 3] as string;
      // A new session every 8 messages in a room, as rotation (time, count, members) makes.
      if (i > 0 && i % 24 < 3) await bob.crypto.forceDiscardSession(roomId);
      const body = `history ${i}`;
      await bob.sendText(roomId, body);
      bodies.get(roomId)?.push(body);
    }
    for (const roomId of rooms) {
      const last = bodies.get(roomId)?.at(-1) ?? '';
      await waitUntil(
        `"${last}" decrypted on A`,
        async () =>
          (await readTimeline(a.endpoint.client, a.token, roomId, 100)).some(
            (i) => i.body === last,
          ),
        poll,
      );
    }
    const status = await waitUntil(
      'every room key backed up',
      async () => {
        const s = await a.call('backupStatus', { auth });
        return s.counts.total >= 9 && s.counts.backedUp === s.counts.total ? s : undefined;
      },
      poll,
    );
    const onServer = await serverBackup(alice);
    expect(onServer?.count).toBe(status.counts.total);
    expect(await sessionsInServerBackup(alice, onServer?.version ?? '')).toBe(status.counts.total);
  }, 300_000);

  it('a homeserver that swaps in a backup of its own gets no upload, and the UI and audit log are told', async () => {
    const auth = { token: a.token };
    const ours = await serverBackup(alice);
    // What a malicious homeserver (or anyone with the account's token) does: a new current
    // version, with a key it holds.
    const rogueKey = generateBackupKey();
    const res = await fetch(`${synapse().baseUrl}/_matrix/client/v3/room_keys/version`, {
      method: 'POST',
      headers: {
        authorization: `Bearer ${alice.accessToken}`,
        'content-type': 'application/json',
      },
      body: JSON.stringify({
        algorithm: 'm.megolm_backup.v1.curve25519-aes-sha2',
        auth_data: { public_key: rogueKey.publicKey },
      }),
    });
    const rogueText = await res.text();
    const rogue = (JSON.parse(rogueText) as { version: string }).version;
    expect(res.status, rogueText).toBe(200);
    // New room keys arrive: the endpoint tries to upload, finds the swap, and stops.
    const roomId = rooms[0] as string;
    await bob.crypto.forceDiscardSession(roomId);
    await bob.sendText(roomId, 'after the swap');
    const refused = await waitUntil(
      'the backup refused',
      async () => {
        const s = await a.call('backupStatus', { auth });
        return s.state === 'refused' ? s : undefined;
      },
      poll,
    );
    expect(refused.refusal?.code).toBe('BACKUP_VERSION_CHANGED');
    // The event and the audit line follow the state change (the stream is polled).
    await waitUntil(
      'a backup event saying uploads are refused',
      () =>
        a.stream.some(
          (e) => e.type === 'backup' && e.status?.refusal?.code === 'BACKUP_VERSION_CHANGED',
        ),
      poll,
    );
    await waitUntil(
      'the refusal in the audit log',
      async () =>
        /"action":"backup.refused".*"reason":"BACKUP_VERSION_CHANGED"/.test(await auditText(a.dir)),
      poll,
    );
    expect(await sessionsInServerBackup(alice, rogue)).toBe(0);
    expect((await serverBackup(alice))?.count).toBe(0);

    // The swap undone (the rogue version deleted): ours is current again, uploads resume.
    await fetch(`${synapse().baseUrl}/_matrix/client/v3/room_keys/version/${rogue}`, {
      method: 'DELETE',
      headers: { authorization: `Bearer ${alice.accessToken}` },
    });
    expect((await serverBackup(alice))?.version).toBe(ours?.version);
    const resumed = await waitUntil(
      'uploads resumed',
      async () => {
        const s = await a.call('backupStatus', { auth });
        return s.state === 'active' && s.counts.backedUp === s.counts.total ? s : undefined;
      },
      poll,
    );
    expect((await serverBackup(alice))?.count).toBe(resumed.counts.total);
  }, 180_000);

  it('rotation to a new key: a new version holds every key before the old one is deleted', async () => {
    const old = await serverBackup(alice);
    // The admin makes a new key (with the endpoint stopped: swtpm takes one client at a time).
    await a.stop();
    const made = await vaultCommand([
      'backup-key',
      'create',
      '--mode',
      'recovery-key',
      '--replace',
      '--config',
      a.vaultConfig,
      '--json',
    ]);
    expect(made.code, made.stderr).toBe(0);
    const fresh = JSON.parse(made.stdout) as { recoveryKey: string; publicKey: string };
    expect(fresh.recoveryKey).not.toBe(recoveryKey);
    a = await a.restart();
    expect(await a.call('backupStatus', { auth: { token: a.token } })).toMatchObject({
      rotateNeeded: true,
      version: old?.version,
    });
    const rotated = await a.call('backupRotate', { auth: { token: a.token } });
    expect(rotated.rotateNeeded).toBeUndefined();
    expect(rotated).toMatchObject({ state: 'active', deletedVersion: old?.version });
    expect(rotated.version).not.toBe(old?.version);
    expect(rotated.counts.backedUp).toBe(rotated.counts.total);
    const now = await serverBackup(alice);
    expect(now).toEqual({
      version: rotated.version,
      count: rotated.counts.total,
      publicKey: fresh.publicKey,
    });
    // The old version is gone only now, with every key in the new one.
    const gone = await fetch(
      `${synapse().baseUrl}/_matrix/client/v3/room_keys/version/${old?.version ?? ''}`,
      { headers: { authorization: `Bearer ${alice.accessToken}` } },
    );
    expect(gone.status).toBe(404);
    // From here on the new recovery key is the one to keep.
    recoveryKey = fresh.recoveryKey;
  }, 120_000);

  it('a stock matrix-js-sdk client of the same user restores our backup with the recovery key', async () => {
    const stock = await StockPeer.start(
      synapse().baseUrl,
      await synapse().login(alice.localpart, alice.password),
    );
    stops.push(() => stock.stop());
    const onServer = await serverBackup(alice);
    const key = sdkDecodeRecoveryKey(recoveryKey);
    await stock.crypto.storeSessionBackupPrivateKey(key, onServer?.version ?? '');
    const restored = await stock.crypto.restoreKeyBackup();
    expect(restored.total).toBe(onServer?.count);
    expect(restored.imported).toBe(onServer?.count);
    // And it reads the history with them.
    const roomId = rooms[1] as string;
    const exported = JSON.parse(await stock.crypto.exportRoomKeysAsJson()) as {
      room_id: string;
    }[];
    expect(exported.filter((k) => k.room_id === roomId).length).toBeGreaterThan(1);
    await stock.stop();
  }, 120_000);

  let b: Machine;

  it('machine A is destroyed; a wrong recovery key is refused and imports nothing on machine B', async () => {
    await a.stop();
    await rm(a.dir, { recursive: true, force: true });
    await tpm1().stop();

    b = await startMachine('b', alice, tpm2(), {
      replaceIdentity: true,
      before: async (vaultConfig) => {
        // A typo: refused by the vault command in one line, nothing stored.
        const chars = recoveryKey.split('');
        const i = chars.findIndex((c, n) => n > 4 && c !== ' ');
        chars[i] = chars[i] === 'a' ? 'b' : 'a';
        const typo = await vaultCommand(['backup-key', 'import', '--config', vaultConfig], {
          stdin: chars.join(''),
        });
        expect(typo.code).not.toBe(0);
        expect(typo.stderr.trim().split('\n')).toHaveLength(1);
        expect(typo.stderr).toMatch(/recovery key/);
        expect(typo.stderr).not.toContain(recoveryKey.slice(5, 19));
        // A valid key, but not this backup's: the vault takes it, the restore will refuse.
        const other = await vaultCommand(['backup-key', 'import', '--config', vaultConfig], {
          stdin: encodeRecoveryKey(generateBackupKey().privateKey),
        });
        expect(other.code, other.stderr).toBe(0);
      },
    });
    const auth = { token: b.token };
    const wrong = await rpcError(b.call('backupRecover', { auth }));
    expect(wrong.code).toBe('BACKUP_WRONG_KEY');
    const status = await b.call('backupStatus', { auth });
    expect(status.counts.total).toBe(0);
  }, 180_000);

  it('machine B recovers with the right recovery key: all 200 messages decrypt', async () => {
    // The admin imports the key with the endpoint (so its vault) stopped: the TPM takes one
    // client at a time.
    await b.stop();
    const right = await vaultCommand(
      ['backup-key', 'import', '--replace', '--config', b.vaultConfig, '--json'],
      { stdin: recoveryKey },
    );
    expect(right.code, right.stderr).toBe(0);
    b = await b.restart();
    const auth = { token: b.token };
    const onServer = await serverBackup(alice);
    const result = await b.call('backupRecover', { auth });
    expect(result).toEqual({
      version: onServer?.version,
      total: onServer?.count,
      imported: onServer?.count,
      failed: {},
    });
    expect(b.stream.some((e) => e.type === 'backup' && e.progress?.phase === 'import')).toBe(true);
    for (const roomId of rooms) {
      const items = await readTimeline(b.endpoint.client, b.token, roomId, 200);
      const shown = new Set(items.filter((i) => i.encrypted === true).map((i) => i.body));
      const missing = (bodies.get(roomId) ?? []).filter((body) => !shown.has(body));
      expect(missing, `undecrypted on B in ${roomId}`).toEqual([]);
    }
  }, 180_000);

  it('our endpoint restores a backup a stock client made (its recovery key, imported into our vault)', async () => {
    const stock = await StockPeer.start(
      synapse().baseUrl,
      await synapse().login(alice.localpart, alice.password),
    );
    stops.push(() => stock.stop());
    // The stock device reads our backup, then replaces it with its own (a new key it made).
    const ours = await serverBackup(alice);
    await stock.crypto.storeSessionBackupPrivateKey(
      sdkDecodeRecoveryKey(recoveryKey),
      ours?.version ?? '',
    );
    await stock.crypto.restoreKeyBackup();
    await stock.crypto.resetKeyBackup();
    const theirs = await waitUntil(
      "the stock client's backup holds its keys",
      async () => {
        const info = await serverBackup(alice);
        return info && info.version !== ours?.version && info.count >= (ours?.count ?? 1)
          ? info
          : undefined;
      },
      poll,
    );
    const theirKey = await stock.crypto.getSessionBackupPrivateKey();
    const stockRecoveryKey = sdkEncodeRecoveryKey(theirKey ?? new Uint8Array()) ?? '';
    await stock.stop();

    await b.stop();
    const imported = await vaultCommand(
      ['backup-key', 'import', '--replace', '--config', b.vaultConfig],
      { stdin: stockRecoveryKey },
    );
    expect(imported.code, imported.stderr).toBe(0);
    b = await b.restart();
    const result = await b.call('backupRecover', { auth: { token: b.token } });
    expect(result).toMatchObject({
      version: theirs.version,
      total: theirs.count,
      imported: expect.any(Number) as number,
      failed: {},
    });
    // Every session is one B already had from our backup, or a new one: all taken, none refused.
    expect(result.total).toBe(theirs.count);
  }, 180_000);
});
