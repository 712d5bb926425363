import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { connectSwtpm } from '../../keyvault/tpm/transport/index.ts';
import { startSwtpm } from '../fixtures/index.ts';
import { useFixture } from '../fixtures/lifecycle.ts';

const run = promisify(execFile);
const tpm = useFixture(() => startSwtpm());

// Hand-marshalled commands: this file checks the fixture and the transport, not a TPM client.
const TPM_ST_NO_SESSIONS = 0x8001;
function command(code: number, body: Buffer): Buffer {
  const header = Buffer.alloc(10);
  header.writeUInt16BE(TPM_ST_NO_SESSIONS, 0);
  header.writeUInt32BE(10 + body.length, 2);
  header.writeUInt32BE(code, 6);
  return Buffer.concat([header, body]);
}
function getRandom(n: number): Buffer {
  const body = Buffer.alloc(2);
  body.writeUInt16BE(n);
  return command(0x17b, body);
}
/** TPM2_PCR_Read of one SHA-256 PCR. */
function pcrRead(pcr: number): Buffer {
  const select = Buffer.alloc(3);
  select[pcr >> 3] = 1 << (pcr & 7);
  return command(0x17e, Buffer.concat([Buffer.from([0, 0, 0, 1, 0x00, 0x0b, 3]), select]));
}
function responseCode(rsp: Uint8Array): number {
  return Buffer.from(rsp).readUInt32BE(6);
}

describe('the swtpm fixture', () => {
  it('answers TPM2_GetRandom with raw bytes over its socket', async () => {
    const t = await tpm().connect();
    try {
      const rsp = Buffer.from(await t.send(getRandom(16)));
      expect(rsp.readUInt16BE(0)).toBe(TPM_ST_NO_SESSIONS);
      expect(rsp.readUInt32BE(2)).toBe(rsp.length);
      expect(responseCode(rsp)).toBe(0);
      expect(rsp.readUInt16BE(10)).toBe(16);
      const again = Buffer.from(await t.send(getRandom(16)));
      expect(again.subarray(12)).not.toEqual(rsp.subarray(12));
    } finally {
      await t.close();
    }
  });

  it('is the same TPM that tpm2-tools reaches: a PCR extended by tpm2-tools reads back raw', async () => {
    const env = { ...process.env, TPM2TOOLS_TCTI: tpm().tcti };
    const { stdout } = await run('tpm2_getrandom', ['--hex', '8'], { env });
    expect(stdout.trim()).toMatch(/^[0-9a-f]{16}$/);

    await run('tpm2_pcrextend', [`16:sha256=${'ab'.repeat(32)}`], { env });
    const { stdout: listed } = await run('tpm2_pcrread', ['sha256:16'], { env });
    const fromTools = /16\s*:\s*0x([0-9A-Fa-f]{64})/.exec(listed)?.[1]?.toLowerCase();

    const t = await tpm().connect();
    try {
      const rsp = Buffer.from(await t.send(pcrRead(16)));
      expect(responseCode(rsp)).toBe(0);
      // header(10) updateCounter(4) pcrSelectionOut(4+2+1+3) count(4) size(2) digest(32)
      const digest = rsp.subarray(10 + 4 + 10 + 4 + 2, 10 + 4 + 10 + 4 + 2 + 32).toString('hex');
      expect(digest).not.toBe('00'.repeat(32));
      expect(digest).toBe(fromTools);
    } finally {
      await t.close();
    }
  });

  it('reports a malformed command as a TPM error, not a dead connection', async () => {
    const t = await tpm().connect();
    try {
      const rsp = await t.send(command(0x17b, Buffer.alloc(0))); // GetRandom without its parameter
      expect(responseCode(rsp)).not.toBe(0);
      expect(responseCode(await t.send(getRandom(4)))).toBe(0);
    } finally {
      await t.close();
    }
  });

  it('resets PCRs on restart, like a reboot', async () => {
    const env = { ...process.env, TPM2TOOLS_TCTI: tpm().tcti };
    await run('tpm2_pcrextend', [`23:sha256=${'cd'.repeat(32)}`], { env });
    const read = async (): Promise<string> => {
      const t = await tpm().connect();
      try {
        return Buffer.from(await t.send(pcrRead(23)))
          .subarray(30, 62)
          .toString('hex');
      } finally {
        await t.close();
      }
    };
    expect(await read()).not.toBe('00'.repeat(32));
    await tpm().restart();
    expect(await read()).toBe('00'.repeat(32));
  });

  it('gives a typed error when nothing listens', async () => {
    const err = await connectSwtpm({ host: '127.0.0.1', port: 1, ctrlPort: 2 }).catch(
      (e: unknown) => e,
    );
    expect(err).toMatchObject({ code: 'TPM_UNREACHABLE' });
  });
});
