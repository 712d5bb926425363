import { describe, expect, it } from 'vitest';
import { RpcCode, RpcError } from '../../keyvault/common/rpc/index.ts';
import { type Vault, VaultCode, VaultError } from '../../keyvault/vault.ts';
import { type VaultConnection, type VaultHealth, VaultLink } from '../../endpoint/vault-link.ts';

/**
 * A vault process as the link sees it: answers until it "dies", then every call fails with the
 * RPC's DISCONNECTED and `exited` settles, as a killed child's channel does.
 */
function fakeVault(master: number, counter: { value: bigint }) {
  let dead = false;
  let exit!: () => void;
  const exited = new Promise<void>((resolve) => (exit = resolve));
  const alive = <T>(run: () => T): Promise<T> =>
    dead
      ? Promise.reject(new RpcError(RpcCode.Disconnected, 'channel closed'))
      : Promise.resolve(run());
  const calls: string[] = [];
  const vault = {
    backend: 'dev',
    publicKey: (purpose: string) =>
      alive(() => ({ purpose, algorithm: 'ed25519', spki: new Uint8Array([master]) })),
    counterRead: () => alive(() => counter.value),
    counterIncrement: () =>
      alive(() => {
        calls.push('increment');
        return (counter.value += 1n);
      }),
    sign: () => alive(() => new Uint8Array(64)),
  } as unknown as Vault;
  const connection: VaultConnection = { vault, stop: () => Promise.resolve(), exited };
  return {
    connection,
    calls,
    kill: () => {
      dead = true;
      exit();
    },
    /** Dies while an increment is in flight: the TPM counted it, the answer is lost. */
    dieDuringIncrement: () => {
      (vault as { counterIncrement: () => Promise<bigint> }).counterIncrement = () => {
        counter.value += 1n;
        dead = true;
        exit();
        return Promise.reject(new RpcError(RpcCode.Disconnected, 'channel closed'));
      };
    },
  };
}

const quiet = { warn: () => undefined, info: () => undefined };

function healthLog(link: VaultLink): VaultHealth['state'][] {
  const states: VaultHealth['state'][] = [];
  link.onHealth((h) => states.push(h.state));
  return states;
}

const until = async (what: () => boolean): Promise<void> => {
  for (let i = 0; i < 200 && !what(); i++) await new Promise((r) => setTimeout(r, 10));
  expect(what()).toBe(true);
};

describe('the vault link', () => {
  it('answers VAULT_UNAVAILABLE while the vault is dead, and reconnects to a vault with the same master key', async () => {
    const counter = { value: 5n };
    const first = fakeVault(1, counter);
    let second: ReturnType<typeof fakeVault> | undefined;
    const link = await VaultLink.open(first.connection, {
      logger: quiet,
      retryMs: 20,
      reconnect: () => {
        second = fakeVault(1, counter);
        return Promise.resolve(second.connection);
      },
    });
    const states = healthLog(link);
    first.kill();
    await until(() => link.health().state === 'unavailable');
    await expect(link.sign('cross-signing-master', new Uint8Array(1))).rejects.toMatchObject({
      code: 'VAULT_UNAVAILABLE',
    });
    await until(() => link.health().state === 'available');
    await expect(link.counterRead()).resolves.toBe(5n);
    expect(states).toEqual(['unavailable', 'available']);
    await link.close();
  });

  it('refuses a restarted vault that holds a different master key, and stays unavailable', async () => {
    const counter = { value: 1n };
    const first = fakeVault(1, counter);
    const link = await VaultLink.open(first.connection, {
      logger: quiet,
      retryMs: 20,
      reconnect: () => Promise.resolve(fakeVault(2, counter).connection),
    });
    first.kill();
    await until(() => link.health().state === 'unavailable');
    await new Promise((r) => setTimeout(r, 200));
    const health = link.health();
    expect(health.state).toBe('unavailable');
    expect(health.state === 'unavailable' && health.reason).toMatch(/different identity/);
    await expect(link.counterRead()).rejects.toMatchObject({ code: 'VAULT_UNAVAILABLE' });
    await link.close();
  });

  it('stops restarting a vault that refuses its PIN (each try would spend one)', async () => {
    const counter = { value: 1n };
    const first = fakeVault(1, counter);
    let attempts = 0;
    const link = await VaultLink.open(first.connection, {
      logger: quiet,
      retryMs: 10,
      reconnect: () => {
        attempts++;
        return Promise.reject(new VaultError(VaultCode.WrongPin, 'the token rejected the PIN'));
      },
    });
    first.kill();
    await until(() => link.health().state === 'unavailable');
    await new Promise((r) => setTimeout(r, 200));
    expect(attempts).toBe(1);
    const health = link.health();
    expect(health.state === 'unavailable' && health.reason).toMatch(/VAULT_WRONG_PIN/);
    await link.close();
  });

  it('an increment refused before it was sent leaves the counter known; a lost answer makes reads wait for the vault', async () => {
    const counter = { value: 7n };
    const first = fakeVault(1, counter);
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const link = await VaultLink.open(first.connection, {
      logger: quiet,
      retryMs: 10,
      reconnect: async () => {
        await gate;
        return fakeVault(1, counter).connection;
      },
    });
    await expect(link.storeCounter.read()).resolves.toBe(7n);
    first.kill();
    await until(() => link.health().state === 'unavailable');
    // Down: the increment is refused without being sent, and the store learns the counter did
    // not move (so it discards its next snapshot and carries on in the same epoch).
    await expect(link.storeCounter.increment()).rejects.toMatchObject({
      code: 'VAULT_UNAVAILABLE',
    });
    expect(first.calls).toEqual([]);
    await expect(link.storeCounter.read()).resolves.toBe(7n);
    release();
    await until(() => link.health().state === 'available');

    // Now the vault dies with the increment counted but unanswered: a read must not guess.
    const counter2 = { value: 10n };
    const again = fakeVault(1, counter2);
    const link2 = await VaultLink.open(again.connection, {
      logger: quiet,
      retryMs: 10,
      reconnect: () => Promise.resolve(fakeVault(1, counter2).connection),
    });
    await link2.storeCounter.read();
    again.dieDuringIncrement();
    await expect(link2.storeCounter.increment()).rejects.toMatchObject({
      code: 'VAULT_UNAVAILABLE',
    });
    // Answered by the restarted vault, not from memory: the increment did happen.
    await expect(link2.storeCounter.read()).resolves.toBe(11n);
    await link.close();
    await link2.close();
  });
});
