import { execFile } from 'node:child_process';
import { createHash, createPublicKey, randomBytes, verify } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  COUNTER_ATTRIBUTES,
  RC,
  TPMA_NV,
  TPM_RH,
  TpmClient,
  TpmError,
  type TpmTransport,
  akTemplate,
  commands,
  passwordSession,
  pcrPolicyDigest,
  rsaPssTemplate,
  parsePublic,
  sealTemplate,
} from '../../keyvault/tpm/index.ts';
import { startSwtpm } from '../fixtures/index.ts';
import { useFixture } from '../fixtures/lifecycle.ts';
import { opensslVerifyRsaPss } from '../fixtures/openssl.ts';

const run = promisify(execFile);
const tpmA = useFixture(() => startSwtpm());
const tpmB = useFixture(() => startSwtpm());
const POLICY_PCR = 16; // resettable, extendable: stands in for the boot measurements

/** Records every byte that crosses the "bus", to show what an observer would see. */
function recording(inner: TpmTransport): TpmTransport & { wire: Buffer[] } {
  const wire: Buffer[] = [];
  return {
    wire,
    description: inner.description,
    async send(command) {
      wire.push(Buffer.from(command));
      const rsp = await inner.send(command);
      wire.push(Buffer.from(rsp));
      return rsp;
    },
    close: () => inner.close(),
  };
}

let dir: string;
let a: TpmClient;
let wire: Buffer[];
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'mte-tpm-'));
  const t = recording(await tpmA().connect());
  wire = t.wire;
  a = new TpmClient(t);
});
afterAll(async () => {
  await a.close();
  await rm(dir, { recursive: true, force: true });
});

async function sealToPcr(client: TpmClient, secret: Buffer) {
  const values = await client.pcrRead([POLICY_PCR]);
  const policy = pcrPolicyDigest(
    [POLICY_PCR],
    values.map((v) => v.digest),
  );
  return client.withSrk((srk) => client.seal(srk, secret, sealTemplate(policy)));
}

describe('our TPM 2.0 client against swtpm', () => {
  it('seals and unseals under a PCR policy, and the secret never crosses the bus in clear', async () => {
    const secret = randomBytes(32);
    wire.length = 0;
    const blobs = await sealToPcr(a, secret);
    const back = await a.withSrk((srk) => a.unseal(srk, blobs, [POLICY_PCR]));
    expect(back.equals(secret)).toBe(true);
    expect(wire.length).toBeGreaterThan(10);
    for (const frame of wire) expect(frame.includes(secret)).toBe(false);
    expect(await a.transientHandles()).toEqual([]);
    expect(await a.loadedSessions()).toEqual([]);
  });

  it('refuses to unseal after the policy PCR is extended, with a readable error', async () => {
    const blobs = await sealToPcr(a, randomBytes(32));
    await a.pcrExtend(POLICY_PCR, createHash('sha256').update('a different boot').digest());
    const error = await a
      .withSrk((srk) => a.unseal(srk, blobs, [POLICY_PCR]))
      .catch((e: unknown) => e);
    expect(error).toBeInstanceOf(TpmError);
    expect((error as TpmError).message).toMatch(
      /TPM2_Unseal: POLICY_FAIL: a policy check failed \(session 1\)/,
    );
    expect(await a.transientHandles()).toEqual([]);
    expect(await a.loadedSessions()).toEqual([]);
  });

  it('a sealed blob copied to a second, fresh TPM does not load there', async () => {
    const blobs = await sealToPcr(a, randomBytes(32));
    const b = new TpmClient(await tpmB().connect());
    try {
      const error = await b
        .withSrk((srk) => b.unseal(srk, blobs, [POLICY_PCR]))
        .catch((e: unknown) => e);
      expect(error).toBeInstanceOf(TpmError);
      expect((error as TpmError).command).toBe('Load');
      expect(await b.transientHandles()).toEqual([]);
    } finally {
      await b.close();
    }
  });

  it('quotes PCRs with a restricted P-256 key, verified by tpm2_checkquote; a wrong nonce fails', async () => {
    const nonce = randomBytes(32);
    const { quote, akPublic } = await a.withPrimary(
      TPM_RH.ENDORSEMENT,
      akTemplate(),
      async (ak) => ({
        akPublic: ak.public.raw,
        quote: await a.run(
          commands.quote({ handle: ak.handle, name: ak.name }, nonce, [0, POLICY_PCR]),
          [{ session: passwordSession() }],
        ),
      }),
    );
    const size = Buffer.alloc(2);
    size.writeUInt16BE(akPublic.length);
    await writeFile(join(dir, 'ak.pub'), Buffer.concat([size, akPublic]));
    await writeFile(join(dir, 'quote.msg'), quote.attest);
    await writeFile(join(dir, 'quote.sig'), quote.signature);
    const args = [
      '-u',
      join(dir, 'ak.pub'),
      '-m',
      join(dir, 'quote.msg'),
      '-s',
      join(dir, 'quote.sig'),
      '-g',
      'sha256',
    ];
    await expect(
      run('tpm2_checkquote', [...args, '-q', nonce.toString('hex')]),
    ).resolves.toBeDefined();
    await expect(
      run('tpm2_checkquote', [...args, '-q', randomBytes(32).toString('hex')]),
    ).rejects.toThrow();
    expect(quote.attest.readUInt32BE(0)).toBe(0xff544347);
  });

  it('signs with RSASSA-PSS/SHA-512 (salt 64) in the TPM; openssl verifies it', async () => {
    const message = Buffer.from('{"canonical":"json of a master key"}');
    const { signature, pub } = await a.withSrk(async (srk) => {
      const blobs = await a.createKey(srk, rsaPssTemplate(2048));
      const digest = createHash('sha512').update(message).digest();
      return {
        pub: blobs.public,
        signature: await a.withLoaded(srk, blobs, (key) =>
          a.run(commands.signRsaPss(key, digest), [{ session: passwordSession() }]),
        ),
      };
    });
    const rsa = parsePublic(pub).rsa;
    expect(rsa?.bits).toBe(2048);
    const e = Buffer.alloc(3);
    e.writeUIntBE(rsa?.exponent ?? 0, 0, 3);
    const key = createPublicKey({
      key: { kty: 'RSA', n: rsa?.modulus.toString('base64url') ?? '', e: e.toString('base64url') },
      format: 'jwk',
    });
    expect(verify('sha512', message, { key, padding: 6, saltLength: 64 }, signature)).toBe(true);
    const spki = key.export({ type: 'spki', format: 'der' });
    expect(await opensslVerifyRsaPss(spki, message, signature)).toBe(true);
    expect(
      await opensslVerifyRsaPss(spki, Buffer.concat([message, Buffer.from(' ')]), signature),
    ).toBe(false);
  });

  it('keeps an NV counter only its authValue moves, the authValue never in clear on the bus; tpm2_nvread reads the same', async () => {
    // swtpm serves one connection at a time: tpm2-tools gets its turn when ours is closed.
    const index = 0x01a0cafe;
    // Ends in a zero octet: the TPM drops those from authValues, and so must our HMAC key.
    const authValue = Buffer.concat([randomBytes(31), Buffer.alloc(1)]);
    const t = recording(await tpmB().connect());
    const c = new TpmClient(t);
    let after = -1n;
    try {
      await c.withSrk(async (srk) => {
        const pub = await c.defineCounter(index, authValue, srk);
        expect(pub.attributes & TPMA_NV.WRITTEN).toBeTruthy();
        expect(pub.attributes & ~TPMA_NV.WRITTEN).toBe(COUNTER_ATTRIBUTES);
        const again = await c.defineCounter(index, authValue, srk).catch((e: unknown) => e);
        expect(again).toMatchObject({ base: RC.NV_DEFINED });
        const ref = { handle: index, name: pub.name };
        const before = await c.counterRead(ref, authValue, srk);
        await c.counterIncrement(ref, authValue, srk);
        after = await c.counterRead(ref, authValue, srk);
        expect(after).toBe(before + 1n);
        // The owner's (empty) authorization no longer moves it; a wrong authValue neither.
        const byOwner = await c
          .run(commands.nvIncrement({ handle: TPM_RH.OWNER }, ref), [
            { session: passwordSession() },
          ])
          .catch((e: unknown) => e);
        expect(byOwner).toBeInstanceOf(TpmError);
        const wrong = await c.counterIncrement(ref, randomBytes(32), srk).catch((e: unknown) => e);
        expect(wrong).toMatchObject({ base: RC.BAD_AUTH });
        expect(await c.counterRead(ref, authValue, srk)).toBe(after);
      });
      for (const frame of t.wire) expect(frame.includes(authValue.subarray(0, 31))).toBe(false);
      expect(await c.transientHandles()).toEqual([]);
      expect(await c.loadedSessions()).toEqual([]);
    } finally {
      await c.close();
    }
    const { stdout } = await run('tpm2_nvread', ['-C', 'o', '-s', '8', `0x${index.toString(16)}`], {
      env: { ...process.env, TPM2TOOLS_TCTI: tpmB().tcti },
      encoding: 'buffer',
    });
    expect(stdout.readBigUInt64BE(0)).toBe(after);
  });

  it('derives a different storage primary for each unique, and a blob of one does not load under another', async () => {
    const [u1, u2] = [randomBytes(32), randomBytes(32)];
    const name = (u?: Buffer) => a.withSrk((srk) => Promise.resolve(srk.name.toString('hex')), u);
    expect(await name(u1)).toBe(await name(u1));
    expect(await name(u1)).not.toBe(await name(u2));
    expect(await name(u1)).not.toBe(await name());
    const values = await a.pcrRead([POLICY_PCR]);
    const template = sealTemplate(
      pcrPolicyDigest(
        [POLICY_PCR],
        values.map((v) => v.digest),
      ),
    );
    const secret = randomBytes(32);
    const blobs = await a.withSrk((srk) => a.seal(srk, secret, template), u1);
    expect((await a.withSrk((srk) => a.unseal(srk, blobs, [POLICY_PCR]), u1)).equals(secret)).toBe(
      true,
    );
    for (const other of [u2, undefined]) {
      const error = await a
        .withSrk((srk) => a.unseal(srk, blobs, [POLICY_PCR]), other)
        .catch((e: unknown) => e);
      expect(error).toMatchObject({ command: 'Load', base: RC.INTEGRITY });
    }
    expect(await a.transientHandles()).toEqual([]);
  });
});
