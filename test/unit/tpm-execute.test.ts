import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { type Session, type TpmTransport, commands, execute } from '../../keyvault/tpm/index.ts';
import { Writer } from '../../keyvault/tpm/marshal.ts';

// A man in the middle on the TPM bus (or a fake TPM) answering an unseal. Our execute path
// must refuse any answer that does not carry a valid HMAC from the real session.
function hmacSession(): Session {
  return {
    kind: 'policy',
    handle: 0x03000000,
    attributes: 0x01,
    sessionKey: randomBytes(32),
    nonceCaller: randomBytes(32),
    nonceTPM: randomBytes(32),
    includeAuth: false,
  };
}

function fakeTpm(response: Buffer): TpmTransport & { sent: Buffer[] } {
  const sent: Buffer[] = [];
  return {
    sent,
    description: 'fake',
    send(command) {
      sent.push(Buffer.from(command));
      return Promise.resolve(response);
    },
    close: () => Promise.resolve(),
  };
}

function response(tag: number, body: Buffer): Buffer {
  return new Writer()
    .u16(tag)
    .u32(10 + body.length)
    .u32(0)
    .bytes(body)
    .done();
}

describe('forged TPM responses', () => {
  const unseal = commands.unseal({ handle: 0x80000001, name: Buffer.alloc(34) });
  const planted = new Writer().tpm2b(Buffer.from('attacker-chosen store key')).done();

  it('refuses an answer without sessions to a command that had one', async () => {
    const tpm = fakeTpm(response(0x8001, planted));
    await expect(execute(tpm, unseal, [{ session: hmacSession() }])).rejects.toMatchObject({
      code: 'TPM_BAD_RESPONSE',
      message: expect.stringMatching(/tag 0x8001/) as unknown,
    });
  });

  it('refuses an answer whose HMAC was not made with the session key', async () => {
    const body = new Writer()
      .u32(planted.length)
      .bytes(planted)
      .tpm2b(randomBytes(32)) // nonceTPM
      .u8(0x01)
      .tpm2b(randomBytes(32)) // a guessed HMAC
      .done();
    const tpm = fakeTpm(response(0x8002, body));
    await expect(execute(tpm, unseal, [{ session: hmacSession() }])).rejects.toMatchObject({
      code: 'TPM_BAD_RESPONSE',
      message: expect.stringMatching(/HMAC does not verify/) as unknown,
    });
  });

  it('flushes an object the TPM created when its answer is refused', async () => {
    // CreatePrimary answered with a handle but a public area whose Name does not match.
    const pub = new Writer()
      .u16(0x23)
      .u16(0x0b)
      .u32(0)
      .tpm2b(Buffer.alloc(0))
      .u16(0x10)
      .u16(0x10)
      .u16(3)
      .u16(0x10)
      .tpm2b(Buffer.alloc(32, 1))
      .tpm2b(Buffer.alloc(32, 2))
      .done();
    const params = new Writer()
      .tpm2b(pub)
      .tpm2b(Buffer.alloc(0))
      .tpm2b(Buffer.alloc(0))
      .u16(0x8021)
      .u32(0x40000001)
      .tpm2b(Buffer.alloc(0))
      .tpm2b(Buffer.alloc(34, 9))
      .done();
    const body = new Writer()
      .u32(0x80000007)
      .u32(params.length)
      .bytes(params)
      .tpm2b(Buffer.alloc(0))
      .u8(0)
      .tpm2b(Buffer.alloc(0))
      .done();
    const tpm = fakeTpm(response(0x8002, body));
    const { passwordSession } = await import('../../keyvault/tpm/index.ts');
    await expect(
      execute(tpm, commands.createPrimary(0x40000001, Buffer.alloc(0)), [
        { session: passwordSession() },
      ]),
    ).rejects.toThrow(/Name does not match/);
    const flush = tpm.sent[1];
    expect(flush?.readUInt32BE(6)).toBe(0x165);
    expect(flush?.readUInt32BE(10)).toBe(0x80000007);
  });
});
