import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadEndpointConfig } from '../../endpoint/config.ts';

const base = {
  homeserver: 'https://matrix.example.org',
  user: 'alice',
  password: { file: 'password' },
  dataDir: 'data',
  vaultConfig: 'vault.json',
  policy: 'policy.json',
};

describe("the endpoint config's x509 section", () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'mte-x509-config-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });
  const load = async (config: object) => {
    const path = join(dir, 'endpoint.json');
    await writeFile(path, JSON.stringify(config));
    return loadEndpointConfig(path);
  };

  it('is optional, and its paths are taken relative to the config file', async () => {
    expect((await load(base)).x509).toBeUndefined();
    const c = await load({ ...base, x509: { caCerts: ['ca/root.pem'], chain: 'me.chain.pem' } });
    expect(c.x509).toEqual({
      caCerts: [join(dir, 'ca/root.pem')],
      chain: join(dir, 'me.chain.pem'),
    });
    const verifyOnly = await load({ ...base, x509: { caCerts: ['/etc/ca.pem'] } });
    expect(verifyOnly.x509).toEqual({ caCerts: ['/etc/ca.pem'] });
  });

  it('names the field of a mistake', async () => {
    await expect(load({ ...base, x509: { caCerts: 'root.pem' } })).rejects.toThrow(/x509\.caCerts/);
    await expect(load({ ...base, x509: { caCerts: [], key: 'k.pem' } })).rejects.toThrow(/x509/);
  });
});
