import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { describe, expect, it } from 'vitest';
import { isAlive, repoRoot, startSoftHsm, startSwtpm } from '../fixtures/index.ts';
import { sweepStaleTempDirs } from '../fixtures/process.ts';

// "Always stopped and cleaned up, also when a test fails or is interrupted": shown for the
// normal path and for a test process killed with SIGKILL, where no hook of ours can run.
describe('fixture cleanup', () => {
  it('stop() ends the service and removes its temp dir', async () => {
    const tpm = await startSwtpm();
    expect(existsSync(tpm.stateDir)).toBe(true);
    expect(isAlive(tpm.pid)).toBe(true);
    await tpm.stop();
    expect(existsSync(tpm.stateDir)).toBe(false);
    expect(isAlive(tpm.pid)).toBe(false);
    await tpm.stop(); // idempotent

    const hsm = await startSoftHsm();
    await hsm.stop();
    expect(existsSync(hsm.dir)).toBe(false);
  });

  it('a test process killed with SIGKILL takes its services with it; the next run sweeps its dirs', async () => {
    const script = `
      import { startSwtpm } from './test/fixtures/index.ts';
      const tpm = await startSwtpm();
      console.log(JSON.stringify({ stateDir: tpm.stateDir, pid: tpm.pid }));
      setInterval(() => {}, 1000);`;
    const child = spawn(process.execPath, ['--input-type=module', '-e', script], {
      cwd: repoRoot,
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    const line = await new Promise<string>((resolve, reject) => {
      const rl = createInterface({ input: child.stdout });
      rl.once('line', resolve);
      child.once('exit', (code) => {
        reject(new Error(`helper exited early (${code})`));
      });
    });
    const { stateDir, pid: swtpmPid } = JSON.parse(line) as { stateDir: string; pid: number };
    expect(swtpmPid).toBeGreaterThan(0);
    expect(isAlive(swtpmPid)).toBe(true);

    child.kill('SIGKILL');
    await expect.poll(() => isAlive(swtpmPid), { timeout: 5000 }).toBe(false);

    const dir = join(stateDir, '..');
    expect(existsSync(dir)).toBe(true);
    await expect.poll(() => isAlive(child.pid ?? 0), { timeout: 5000 }).toBe(false);
    await sweepStaleTempDirs();
    expect(existsSync(dir)).toBe(false);
  });
});
