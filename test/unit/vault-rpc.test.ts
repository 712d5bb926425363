import { constants, createPublicKey, verify } from 'node:crypto';
import { readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { type RemoteVault, vaultClient } from '../../keyvault/client.ts';
import { openDevVault } from '../../keyvault/dev/index.ts';
import { STATE_FILE } from '../../keyvault/dev/state.ts';
import { type FrameChannel, RpcCode, inProcessPair } from '../../keyvault/common/rpc/index.ts';
import { serveVault } from '../../keyvault/server.ts';
import {
  type SigningPurpose,
  type Vault,
  type VaultBackend,
  VaultCode,
  VaultError,
} from '../../keyvault/vault.ts';
import { makeTempDir } from '../fixtures/process.ts';

let root: string;
let local: VaultBackend;
let remote: RemoteVault;

beforeAll(async () => {
  root = await makeTempDir('vault-rpc');
  const quiet = vi.spyOn(process.stderr, 'write').mockImplementation(() => true);
  local = await openDevVault({
    backend: 'dev',
    stateDir: join(root, 'state'),
    allowInsecureDevBackend: true,
  });
  quiet.mockRestore();
  await local.provision();
  const [clientEnd, serverEnd] = inProcessPair();
  serveVault(serverEnd, local);
  remote = await vaultClient(clientEnd);
});

afterAll(async () => {
  await remote.close();
  await local.close();
  await rm(root, { recursive: true, force: true });
});

/** A peer that sends raw frames, as a compromised endpoint could, and collects the answers. */
function rawPeer(channel: FrameChannel) {
  const answers: unknown[] = [];
  channel.attach({
    frame: (payload) => answers.push(JSON.parse(payload.toString('utf8'))),
    fatal: () => undefined,
    close: () => undefined,
  });
  return {
    async request(id: number, method: string, params: unknown): Promise<unknown> {
      channel.send(Buffer.from(JSON.stringify({ v: 1, kind: 'request', id, method, params })));
      await vi.waitFor(() => {
        expect(answers.length).toBeGreaterThan(0);
      });
      return answers.shift();
    },
  };
}

describe('the vault over RPC, with the dev backend', () => {
  it('learns the backend and reports the same status as the local vault', async () => {
    expect(remote.backend).toBe('dev');
    expect(await remote.status()).toEqual(await local.status());
  });

  it('round-trips counters as bigint', async () => {
    const start = await remote.counterRead();
    expect(typeof start).toBe('bigint');
    expect(await remote.counterIncrement()).toBe(start + 1n);
    expect(await local.counterRead()).toBe(start + 1n);
  });

  it('round-trips public keys and signatures as bytes', async () => {
    const message = new TextEncoder().encode('{"signed":"json"}');
    for (const purpose of ['cross-signing-master', 'x509-identity'] as const) {
      const info = await remote.publicKey(purpose);
      expect(info).toEqual(await local.publicKey(purpose));
      expect(info.spki).toBeInstanceOf(Uint8Array);
      const key = createPublicKey({ key: Buffer.from(info.spki), format: 'der', type: 'spki' });
      const signature = await remote.sign(purpose, message);
      const ok =
        purpose === 'cross-signing-master'
          ? verify(null, message, key, signature)
          : verify(
              'sha512',
              message,
              { key, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: 64 },
              signature,
            );
      expect(ok).toBe(true);
    }
    expect(await remote.sign('cross-signing-master', new Uint8Array(64 * 1024))).toHaveLength(64);
  });

  it('returns random bytes of the asked length', async () => {
    expect(await remote.random(1)).toHaveLength(1);
    expect(await remote.random(1024)).toHaveLength(1024);
  });

  it('passes vault error codes through as VaultError', async () => {
    const key = await remote.storeKey();
    const state = JSON.parse(await readFile(join(root, 'state', STATE_FILE), 'utf8')) as {
      storeKey: string;
    };
    expect(Buffer.from(key).toString('base64')).toBe(state.storeKey);
    const again = await remote.storeKey().catch((e: unknown) => e);
    expect(again).toBeInstanceOf(VaultError);
    expect(again).toMatchObject({ code: VaultCode.StoreKeyReleased });
    await expect(
      remote.quote(new Uint8Array(32), { hash: 'sha256', pcrs: [0, 7] }),
    ).rejects.toMatchObject({ code: VaultCode.NotSupported });
    await expect(remote.attestationIdentity()).rejects.toMatchObject({
      code: VaultCode.NotSupported,
    });
  });

  describe('schema violations are refused', () => {
    const violations: [string, (v: Vault) => Promise<unknown>][] = [
      ['random n=0', (v) => v.random(0)],
      ['random n=5000', (v) => v.random(5000)],
      ['random n=1.5', (v) => v.random(1.5)],
      ['an unknown purpose', (v) => v.sign('export-all' as SigningPurpose, new Uint8Array(1))],
      ['an oversize message', (v) => v.sign('x509-identity', new Uint8Array(64 * 1024 + 1))],
      ['duplicate PCRs', (v) => v.quote(new Uint8Array(32), { hash: 'sha256', pcrs: [1, 1] })],
      ['PCR 24', (v) => v.quote(new Uint8Array(32), { hash: 'sha256', pcrs: [24] })],
      ['no PCRs', (v) => v.quote(new Uint8Array(32), { hash: 'sha256', pcrs: [] })],
      [
        'qualifying data over 64 bytes',
        (v) => v.quote(new Uint8Array(65), { hash: 'sha256', pcrs: [0] }),
      ],
    ];

    it.each(violations)('by the client: %s', async (_name, call) => {
      await expect(call(remote)).rejects.toMatchObject({ code: RpcCode.InvalidParams });
    });

    const rawViolations: [string, string, unknown][] = [
      ['random n=0', 'random', { n: 0 }],
      ['random n=5000', 'random', { n: 5000 }],
      ['random n as a string', 'random', { n: '16' }],
      ['an unknown purpose', 'sign', { purpose: 'export-all', message: 'AA==' }],
      [
        'an oversize message',
        'sign',
        { purpose: 'x509-identity', message: Buffer.alloc(64 * 1024 + 1).toString('base64') },
      ],
      ['a message that is not base64', 'sign', { purpose: 'x509-identity', message: '%%%' }],
      ['an extra field', 'storeKey', { again: true }],
      ['PCR 24', 'quote', { qualifyingData: 'AA==', selection: { hash: 'sha256', pcrs: [24] } }],
      ['a sha1 bank', 'quote', { qualifyingData: 'AA==', selection: { hash: 'sha1', pcrs: [0] } }],
    ];

    it.each(rawViolations)('by the server: %s', async (_name, method, params) => {
      const [peerEnd, serverEnd] = inProcessPair();
      const served = serveVault(serverEnd, local);
      const answer = await rawPeer(peerEnd).request(5, method, params);
      expect(answer).toMatchObject({ id: 5, ok: false, error: { code: RpcCode.InvalidParams } });
      served.close();
    });

    it('by the server: provision and doctor are not methods', async () => {
      const [peerEnd, serverEnd] = inProcessPair();
      const served = serveVault(serverEnd, local);
      const peer = rawPeer(peerEnd);
      for (const method of ['provision', 'doctor', 'close']) {
        expect(await peer.request(1, method, {})).toMatchObject({
          ok: false,
          error: { code: RpcCode.UnknownMethod },
        });
      }
      served.close();
    });
  });

  it('sends counters as decimal strings on the wire', async () => {
    const [peerEnd, serverEnd] = inProcessPair();
    const served = serveVault(serverEnd, local);
    const answer = await rawPeer(peerEnd).request(1, 'counterRead', {});
    expect(answer).toMatchObject({ ok: true, result: String(await local.counterRead()) });
    served.close();
  });

  it('a backend bug reaches the peer as INTERNAL, without its message', async () => {
    // Only the methods this test calls.
    const broken = {
      backend: 'dev',
      storeKey: () => Promise.reject(new Error('pkcs8 bytes 0xdeadbeef leaked')),
      counterRead: () => Promise.resolve(-1n),
      status: () => local.status(),
    } as Partial<Vault> as Vault;
    const [clientEnd, serverEnd] = inProcessPair();
    const errors: unknown[] = [];
    serveVault(serverEnd, broken, { onError: (e) => errors.push(e) });
    const client = await vaultClient(clientEnd);
    const failure = await client.storeKey().catch((e: unknown) => e);
    expect(failure).toMatchObject({ code: RpcCode.Internal, message: 'internal error' });
    expect(JSON.stringify(failure)).not.toContain('deadbeef');
    // A result outside the contract is a bug on the vault side, not something to send.
    await expect(client.counterRead()).rejects.toMatchObject({ code: RpcCode.Internal });
    expect(errors).toHaveLength(2);
    await client.close();
  });
});
