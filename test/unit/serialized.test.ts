import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { serialized } from '../../keyvault/serialized.ts';
import type { VaultBackend } from '../../keyvault/vault.ts';

/** A backend whose storeKey is slow and can be told to fail: what racing callers meet. */
function fakeBackend(failFirst: boolean): VaultBackend {
  let fail = failFirst;
  const self = {
    backend: 'dev',
    async storeKey() {
      await sleep(20);
      if (fail) {
        fail = false;
        throw new Error('unseal failed');
      }
      return new Uint8Array(32).fill(7);
    },
  };
  const notUsed = () => Promise.reject(new Error('not used'));
  return Object.assign(self, {
    counterRead: notUsed,
    counterIncrement: notUsed,
    publicKey: notUsed,
    sign: notUsed,
    quote: notUsed,
    attestationIdentity: notUsed,
    random: notUsed,
    status: notUsed,
    provision: notUsed,
    doctor: notUsed,
    close: () => Promise.resolve(),
  }) as unknown as VaultBackend;
}

describe('the vault rules every backend gets', () => {
  it('releases the store key to exactly one of many racing callers', async () => {
    const inner = fakeBackend(false);
    const vault = serialized(inner);
    const results = await Promise.allSettled(Array.from({ length: 8 }, () => vault.storeKey()));
    expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(1);
    for (const r of results.filter((x) => x.status === 'rejected')) {
      expect(r.reason).toMatchObject({ code: 'VAULT_STORE_KEY_ALREADY_RELEASED' });
    }
    await expect(vault.storeKey()).rejects.toMatchObject({
      code: 'VAULT_STORE_KEY_ALREADY_RELEASED',
    });
  });

  it('a release that failed can be tried again', async () => {
    const vault = serialized(fakeBackend(true));
    await expect(vault.storeKey()).rejects.toThrow(/unseal failed/);
    await expect(vault.storeKey()).resolves.toHaveLength(32);
  });
});
