import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import pkcs11js from 'pkcs11js';
import { describe, expect, it } from 'vitest';
import { startSoftHsm } from '../fixtures/index.ts';
import { useFixture } from '../fixtures/lifecycle.ts';

const run = promisify(execFile);
const hsm = useFixture(() => startSoftHsm());

describe('the SoftHSM2 fixture', () => {
  it('has a token that pkcs11-tool lists under its label', async () => {
    const { stdout } = await run(
      'pkcs11-tool',
      ['--module', hsm().modulePath, '--list-token-slots'],
      {
        env: hsm().env,
      },
    );
    expect(stdout).toContain(hsm().label);
    expect(stdout).toMatch(/token initialized, PIN initialized/);
  });

  it('is reachable from pkcs11js (the native build works) and accepts only its own PIN', async () => {
    // SoftHSM reads SOFTHSM2_CONF at C_Initialize; a child process keeps this worker's env clean.
    const script = `
      import pkcs11js from 'pkcs11js';
      const p = new pkcs11js.PKCS11();
      p.load(process.env.MODULE);
      p.C_Initialize();
      try {
        const labels = p.C_GetSlotList(true).map((s) => p.C_GetTokenInfo(s).label.trim());
        const slot = p.C_GetSlotList(true)[0];
        const session = p.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION);
        let wrong = 'accepted';
        try { p.C_Login(session, pkcs11js.CKU_USER, 'not-the-pin'); } catch (e) { wrong = String(e.code); }
        p.C_Login(session, pkcs11js.CKU_USER, process.env.PIN);
        p.C_Logout(session);
        p.C_CloseSession(session);
        console.log(JSON.stringify({ labels, wrong }));
      } finally { p.C_Finalize(); }`;
    const { stdout } = await run(process.execPath, ['--input-type=module', '-e', script], {
      env: { ...hsm().env, MODULE: hsm().modulePath, PIN: hsm().pin },
      cwd: process.cwd(),
    });
    const result = JSON.parse(stdout) as { labels: string[]; wrong: string };
    expect(result.labels).toContain(hsm().label);
    expect(Number(result.wrong)).toBe(pkcs11js.CKR_PIN_INCORRECT);
  });

  it('keeps PINs in 0600 files', async () => {
    const { stat } = await import('node:fs/promises');
    expect((await stat(hsm().pinFile)).mode & 0o777).toBe(0o600);
    expect((await stat(hsm().soPinFile)).mode & 0o777).toBe(0o600);
  });
});
