import { execFile } from 'node:child_process';
import { createDecipheriv, randomBytes } from 'node:crypto';
import { open, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { ContentInfo, EnvelopedData } from '@peculiar/asn1-cms';
import { AsnConvert, OctetString } from '@peculiar/asn1-schema';
import { afterAll, describe, expect, it } from 'vitest';
import { type SpawnedEndpoint, spawnEndpoint } from '../../endpoint/spawn.ts';
import { decodeRecoveryKey, encodeRecoveryKey } from '../../keyvault/backup/index.ts';
import { loadVaultConfig, openVault } from '../../keyvault/open.ts';
import type { SealedSecret } from '../../keyvault/vault.ts';
import {
  type HomeserverUser,
  type SoftHsm,
  StockPeer,
  type Swtpm,
  makeTempDir,
  prepareCompartments,
  readTimeline,
  startSoftHsm,
  startSwtpm,
  startSynapse,
  vaultCommand,
} from '../fixtures/index.ts';
import { useFixture } from '../fixtures/lifecycle.ts';
import { waitUntil } from '../fixtures/process.ts';
import { openssl } from '../fixtures/x509.ts';

const run = promisify(execFile);

// Where the backup's private key is, and where it is not. Vault mode: sealed in the TPM vault,
// used only by the vault's decrypt; kill -9 during a burst of new sessions loses no upload.
// Escrow mode, with each machine's vault on a SoftHSM2 token: the key is encrypted to an
// institution's recovery certificate whose key lives in the institution's own HSM (another
// SoftHSM2 token); a new machine restores only after the institution opens the escrow there.
// In both, the running endpoint's memory and its files never hold the private key.
const synapse = useFixture(() => startSynapse());
const tpmV = useFixture(() => startSwtpm());
// The escrow machines' vaults are SoftHSM2 tokens of their own (the pkcs11 backend).
const hsmE1 = useFixture(() => startSoftHsm({ label: 'machine-1' }));
const hsmE2 = useFixture(() => startSoftHsm({ label: 'machine-2' }));
const hsm = useFixture(() => startSoftHsm({ label: 'institution' }));

const poll = { timeoutMs: 90_000, intervalMs: 250 };
const stops: (() => Promise<unknown>)[] = [];
afterAll(async () => {
  for (const stop of stops.reverse()) await stop().catch(() => undefined);
});

interface Machine {
  /** The vault's environment (SoftHSM2's config), where it needs one. */
  env?: NodeJS.ProcessEnv;
  dir: string;
  vaultConfig: string;
  endpointConfig: string;
  token: string;
  endpoint: SpawnedEndpoint;
  call: SpawnedEndpoint['client']['call'];
}

async function prepare(
  name: string,
  user: HomeserverUser,
  vault: { tpm: Swtpm } | { pkcs11: SoftHsm },
): Promise<Omit<Machine, 'endpoint' | 'call'>> {
  const dir = await makeTempDir(`key-backup-custody-${name}`);
  const p = await prepareCompartments(dir, { homeserver: synapse().baseUrl, ...vault, user });
  stops.push(() => rm(dir, { recursive: true, force: true }));
  return {
    ...('pkcs11' in vault ? { env: vault.pkcs11.env } : {}),
    dir,
    vaultConfig: p.vaultConfig,
    endpointConfig: p.endpointConfig,
    token: p.tokens.test ?? '',
  };
}

async function launch(
  m: Omit<Machine, 'endpoint' | 'call'>,
  replaceIdentity = false,
): Promise<Machine> {
  const endpoint = await spawnEndpoint(m.endpointConfig, {
    ...(m.env ? { env: m.env } : {}),
    onStderr: () => undefined,
    ...(replaceIdentity ? { replaceIdentity: true } : {}),
  });
  stops.push(() => endpoint.stop());
  return { ...m, endpoint, call: (method, params) => endpoint.client.call(method, params) };
}

async function serverCount(user: HomeserverUser): Promise<number> {
  const res = await fetch(`${synapse().baseUrl}/_matrix/client/v3/room_keys/version`, {
    headers: { authorization: `Bearer ${user.accessToken}` },
  });
  return ((await res.json()) as { count: number }).count;
}

/**
 * Whether any of `needles` is in a running process's memory, as a core dump would show it: every
 * readable mapping that has pages in memory (smaps Rss > 0), read through /proc/PID/mem by root.
 * (gcore writes the same bytes, but Node's reserved wasm address space makes that a 27 GB file.)
 * Returns also how many bytes were searched, so a test can show the search covered the heap.
 */
async function memoryContains(
  pid: number,
  needles: Buffer[],
): Promise<{ found: boolean; searched: number }> {
  const smaps = await readFile(`/proc/${pid}/smaps`, 'utf8');
  const regions: { start: number; end: number }[] = [];
  let current: { start: number; end: number; readable: boolean } | undefined;
  for (const line of smaps.split('\n')) {
    const header = /^([0-9a-f]+)-([0-9a-f]+) (\S{4})/.exec(line);
    if (header) {
      current = {
        start: Number.parseInt(header[1] ?? '0', 16),
        end: Number.parseInt(header[2] ?? '0', 16),
        readable: (header[3] ?? '').startsWith('r'),
      };
      continue;
    }
    const rss = /^Rss:\s+(\d+) kB/.exec(line);
    if (rss && current?.readable && Number(rss[1]) > 0) regions.push(current);
  }
  const longest = Math.max(...needles.map((n) => n.length));
  const handle = await open(`/proc/${pid}/mem`, 'r');
  let searched = 0;
  try {
    for (const region of regions) {
      let carry = Buffer.alloc(0);
      for (let at = region.start; at < region.end; at += 8 * 1024 * 1024) {
        const length = Math.min(8 * 1024 * 1024, region.end - at);
        const chunk = Buffer.alloc(length);
        let bytesRead = 0;
        try {
          ({ bytesRead } = await handle.read(chunk, 0, length, at));
        } catch {
          break; // a guard page or a mapping that went away: nothing to read there
        }
        searched += bytesRead;
        const window = Buffer.concat([carry, chunk.subarray(0, bytesRead)]);
        if (needles.some((n) => window.includes(n))) return { found: true, searched };
        carry = Buffer.from(window.subarray(Math.max(0, window.length - longest + 1)));
      }
    }
    return { found: false, searched };
  } finally {
    await handle.close();
  }
}

/** Whether any of `needles` occurs in the file (the store's files are small). */
async function fileContains(path: string, needles: Buffer[]): Promise<boolean> {
  const bytes = await readFile(path);
  return needles.some((n) => bytes.includes(n));
}

async function filesUnder(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const entry of await readdir(dir, { withFileTypes: true, recursive: true })) {
    if (entry.isFile()) out.push(join(entry.parentPath, entry.name));
  }
  return out;
}

/** Every spelling of a 32-byte key a process might hold it in. */
function spellings(key: Uint8Array): Buffer[] {
  const raw = Buffer.from(key);
  const b64 = raw.toString('base64');
  return [
    raw,
    Buffer.from(b64),
    Buffer.from(b64.replace(/=+$/, '')),
    Buffer.from(encodeRecoveryKey(key)),
    Buffer.from(encodeRecoveryKey(key).replace(/ /g, '')),
  ];
}

async function sendInNewSessions(
  bob: StockPeer,
  roomId: string,
  prefix: string,
  sessions: number,
  perSession: number,
): Promise<string[]> {
  const sent: string[] = [];
  for (let s = 0; s < sessions; s++) {
    await bob.crypto.forceDiscardSession(roomId);
    for (let i = 0; i < perSession; i++) {
      const body = `${prefix} ${s}.${i}`;
      await bob.sendText(roomId, body);
      sent.push(body);
    }
  }
  return sent;
}

async function joinedRoom(bob: StockPeer, m: Machine, user: HomeserverUser): Promise<string> {
  const auth = { token: m.token };
  const roomId = await bob.createEncryptedRoom({ invite: [user.userId] });
  await waitUntil(
    'the invitation',
    async () => (await m.call('rooms', { auth })).rooms.some((r) => r.roomId === roomId),
    poll,
  );
  await m.call('join', { auth, roomId });
  await bob.waitForMember(roomId, user.userId);
  return roomId;
}

describe('the backup key in custody: vault mode', () => {
  let victor: HomeserverUser;
  let bob: StockPeer;
  let v: Machine;
  let roomId = '';

  it('kill -9 at random points during a burst of new sessions: the backup ends with every session', async () => {
    victor = await synapse().registerUser('victor');
    const bobUser = await synapse().registerUser('bob');
    bob = await StockPeer.start(synapse().baseUrl, bobUser);
    stops.push(() => bob.stop());
    await bob.bootstrapCrossSigning(bobUser.password);
    const prepared = await prepare('vault', victor, { tpm: tpmV() });
    const made = await vaultCommand(['backup-key', 'create', '--config', prepared.vaultConfig]);
    expect(made.code, made.stderr).toBe(0);
    expect(made.stdout).toContain('vault mode');
    v = await launch(prepared);
    expect(await v.call('backupCreate', { auth: { token: v.token } })).toMatchObject({
      state: 'active',
      key: { mode: 'vault', canDecrypt: true },
    });
    roomId = await joinedRoom(bob, v, victor);

    const seed = Number(process.env.MTE_SEED ?? Date.now() % 100_000);
    let rand = seed;
    const next = () => (rand = (rand * 48271) % 2147483647) / 2147483647;
    for (let round = 0; round < 4; round++) {
      const burst = sendInNewSessions(bob, roomId, `burst ${round}`, 4, 2);
      // Somewhere in the burst: while keys arrive, are stored, or are being uploaded.
      await new Promise((r) => setTimeout(r, 200 + next() * 1500));
      v.endpoint.process.kill('SIGKILL');
      await v.endpoint.exited;
      await burst;
      v = await launch(prepared);
    }
    const status = await waitUntil(
      `every session backed up after the kills (seed ${seed})`,
      async () => {
        const s = await v.call('backupStatus', { auth: { token: v.token } });
        return s.counts.total >= 16 && s.counts.backedUp === s.counts.total ? s : undefined;
      },
      poll,
    );
    // Both counted: what the endpoint holds, and what the homeserver holds.
    expect(await serverCount(victor)).toBe(status.counts.total);
  }, 300_000);

  it("the endpoint's memory and files never hold the private key; the vault alone decrypts", async () => {
    // The test learns the key first, through its own connection to the TPM (one client at a
    // time: the endpoint, so its vault, is stopped for it), to know what to look for.
    await v.endpoint.stop();
    const config = await loadVaultConfig(v.vaultConfig);
    const vault = await openVault(config);
    const file = JSON.parse(await readFile(join(config.stateDir, 'backup-key.json'), 'utf8')) as {
      sealed: SealedSecret;
    };
    const scalar = await vault.unsealSecret(file.sealed);
    await vault.close();
    v = await launch(v);
    const auth = { token: v.token };
    // A restore in vault mode: the vault decrypts, the endpoint imports the room keys.
    const restored = await v.call('backupRecover', { auth });
    expect(restored.total).toBe(await serverCount(victor));
    expect(restored.failed).toEqual({});
    // Something the endpoint does hold, to show the search finds what is there.
    const canary = `canary ${randomBytes(8).toString('hex')}`;
    await bob.sendText(roomId, canary);
    await waitUntil(
      'the canary decrypted',
      async () =>
        (await readTimeline(v.endpoint.client, v.token, roomId, 100)).some(
          (i) => i.body === canary,
        ),
      poll,
    );
    const pid = v.endpoint.process.pid ?? 0;
    const positive = await memoryContains(pid, [Buffer.from(canary)]);
    expect(positive.found).toBe(true);
    const negative = await memoryContains(pid, spellings(scalar));
    expect(negative.found).toBe(false);
    expect(negative.searched).toBeGreaterThan(20 * 1024 * 1024);
    for (const path of await filesUnder(v.dir)) {
      if (path.endsWith('backup-key.json')) continue; // the vault's sealed blob, not in clear
      expect(await fileContains(path, spellings(scalar)), path).toBe(false);
    }
  }, 300_000);
});

describe('the backup key in custody: escrow to an institution HSM', () => {
  it('only the institution, with its HSM, can restore: a new machine recovers after it opens the escrow', async () => {
    const token = hsm();
    const work = await makeTempDir('key-backup-escrow');
    stops.push(() => rm(work, { recursive: true, force: true }));
    // The institution's recovery key pair, made in its HSM; its CA certifies the public half.
    const p11 = (args: string[]) =>
      run('pkcs11-tool', ['--module', token.modulePath, '--token-label', token.label, '--pin', token.pin, ...args], {
        env: token.env,
        encoding: 'buffer',
        maxBuffer: 1024 * 1024,
      }); // prettier-ignore
    await p11([
      '--keypairgen',
      '--key-type',
      'rsa:3072',
      '--id',
      '42',
      '--label',
      'recovery',
      '--usage-decrypt',
    ]);
    await p11([
      '--read-object',
      '--type',
      'pubkey',
      '--id',
      '42',
      '--output-file',
      join(work, 'pub.der'),
    ]);
    const pub = join(work, 'pub.pem');
    expect(
      (
        await openssl([
          'pkey',
          '-pubin',
          '-inform',
          'DER',
          '-in',
          join(work, 'pub.der'),
          '-out',
          pub,
        ])
      ).code,
    ).toBe(0);
    const ca = join(work, 'ca');
    await openssl([
      'req',
      '-x509',
      '-newkey',
      'rsa:2048',
      '-nodes',
      '-keyout',
      `${ca}.key`,
      '-out',
      `${ca}.pem`,
      '-subj',
      '/CN=Institution CA',
      '-days',
      '30',
    ]);
    await openssl([
      'req',
      '-new',
      '-newkey',
      'rsa:2048',
      '-nodes',
      '-keyout',
      join(work, 'throwaway.key'),
      '-out',
      join(work, 'req.csr'),
      '-subj',
      '/CN=Institution recovery',
    ]);
    await writeFile(join(work, 'ext.cnf'), 'keyUsage=critical,keyEncipherment\n');
    const cert = join(work, 'recovery.pem');
    const issued = await openssl(['x509', '-req', '-in', join(work, 'req.csr'), '-force_pubkey', pub, '-CA', `${ca}.pem`, '-CAkey', `${ca}.key`, '-CAcreateserial', '-days', '30', '-extfile', join(work, 'ext.cnf'), '-out', cert]); // prettier-ignore
    expect(issued.code, issued.stderr).toBe(0);

    const erin = await synapse().registerUser('erin');
    const bobUser = await synapse().registerUser('bob2');
    const bob = await StockPeer.start(synapse().baseUrl, bobUser);
    stops.push(() => bob.stop());
    await bob.bootstrapCrossSigning(bobUser.password);

    const first = await prepare('escrow-1', erin, { pkcs11: hsmE1() });
    const escrowFile = join(work, 'erin.p7m');
    const made = await vaultCommand(['backup-key', 'create', '--mode', 'escrow', '--escrow-cert', cert, '--out', escrowFile, '--config', first.vaultConfig, '--json'], { env: first.env }); // prettier-ignore
    expect(made.code, made.stderr).toBe(0);
    expect(JSON.parse(made.stdout)).toMatchObject({ mode: 'escrow', canDecrypt: false });
    const e1 = await launch(first);
    await e1.call('backupCreate', { auth: { token: e1.token } });
    const roomId = await joinedRoom(bob, e1, erin);
    const sent = await sendInNewSessions(bob, roomId, 'escrowed', 3, 3);
    await waitUntil(
      'every session backed up',
      async () => {
        const s = await e1.call('backupStatus', { auth: { token: e1.token } });
        return s.counts.total >= 3 && s.counts.backedUp === s.counts.total ? s : undefined;
      },
      poll,
    );
    await waitUntil(
      'the last message decrypted',
      async () =>
        (await readTimeline(e1.endpoint.client, e1.token, roomId, 100)).some(
          (i) => i.body === sent.at(-1),
        ),
      poll,
    );

    // The institution opens the escrow: the content key is unwrapped by the HSM (pkcs11-tool,
    // RSA-OAEP), the recovery key decrypted with it. Without the HSM's key this cannot be done.
    const info = AsnConvert.parse(await readFile(escrowFile), ContentInfo);
    const enveloped = AsnConvert.parse(info.content, EnvelopedData);
    const ktri = enveloped.recipientInfos[0]?.ktri;
    await writeFile(
      join(work, 'cek.enc'),
      Buffer.from(ktri?.encryptedKey.buffer ?? new ArrayBuffer(0)),
    );
    await p11(['--decrypt', '-m', 'RSA-PKCS-OAEP', '--hash-algorithm', 'SHA-1', '--mgf', 'MGF1-SHA1', '--id', '42', '--input-file', join(work, 'cek.enc'), '--output-file', join(work, 'cek')]); // prettier-ignore
    const cek = await readFile(join(work, 'cek'));
    const eci = enveloped.encryptedContentInfo;
    const iv = AsnConvert.parse(
      eci.contentEncryptionAlgorithm.parameters ?? new ArrayBuffer(0),
      OctetString,
    );
    const decipher = createDecipheriv('aes-256-cbc', cek, Buffer.from(iv.buffer));
    const ciphertext = Buffer.from(eci.encryptedContent?.value?.buffer ?? new ArrayBuffer(0));
    const recoveryKey = Buffer.concat([decipher.update(ciphertext), decipher.final()]).toString(
      'utf8',
    );
    const decoded = decodeRecoveryKey(recoveryKey);
    expect(decoded.ok).toBe(true);
    if (!decoded.ok) return;
    // The endpoint that made the backup never held that key: not in its memory, not on disk.
    const searched = await memoryContains(e1.endpoint.process.pid ?? 0, spellings(decoded.key));
    expect(searched.found).toBe(false);
    await e1.endpoint.stop();
    await hsmE1().stop(); // machine 1's token is gone with it
    for (const path of await filesUnder(first.dir)) {
      expect(await fileContains(path, spellings(decoded.key)), path).toBe(false);
    }

    // The new machine, on another TPM: the institution's answer imported, the backup restored.
    const second = await prepare('escrow-2', erin, { pkcs11: hsmE2() });
    const imported = await vaultCommand(['backup-key', 'import', '--mode', 'escrow', '--config', second.vaultConfig], { stdin: recoveryKey, env: second.env }); // prettier-ignore
    expect(imported.code, imported.stderr).toBe(0);
    const e2 = await launch(second, true);
    await waitUntil(
      'the room known to the new device',
      async () =>
        (await e2.call('rooms', { auth: { token: e2.token } })).rooms.some(
          (r) => r.roomId === roomId && r.membership === 'join',
        ),
      poll,
    );
    const result = await e2.call('backupRecover', { auth: { token: e2.token } });
    expect(result.imported).toBe(result.total);
    expect(result.total).toBe(await serverCount(erin));
    const items = await readTimeline(e2.endpoint.client, e2.token, roomId, 100);
    const shown = new Set(items.filter((i) => i.encrypted === true).map((i) => i.body));
    expect(sent.filter((b) => !shown.has(b))).toEqual([]);
  }, 300_000);
});
