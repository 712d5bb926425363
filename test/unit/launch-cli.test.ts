import { execFile } from 'node:child_process';
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';

const run = promisify(execFile);
const LAUNCH = join(import.meta.dirname, '..', '..', 'deploy', 'launch.ts');

async function launch(
  ...args: string[]
): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run(process.execPath, [LAUNCH, ...args]);
    return { code: 0, stdout, stderr };
  } catch (e) {
    const err = e as { code: number; stdout: string; stderr: string };
    return { code: err.code, stdout: err.stdout, stderr: err.stderr };
  }
}

describe('node deploy/launch.ts: errors are one line', () => {
  it('--help lists the commands', async () => {
    const r = await launch('--help');
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/serve .*\n.*check .*\n.*probe /);
  });

  it('an unknown command or option is a usage error (exit 2)', async () => {
    for (const args of [
      ['bogus'],
      ['serve', '--bogus'],
      ['probe', '--compartment', 'nope', '--', 'whoami'],
    ]) {
      const r = await launch(...args);
      expect(r.code, args.join(' ')).toBe(2);
      expect(r.stderr.trim().split('\n'), args.join(' ')).toHaveLength(1);
      expect(r.stderr).toMatch(/^launch: /);
    }
  });

  it('a bad manifest is refused naming the field, without a stack trace (exit 1)', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'launch-cli-'));
    const bad = join(dir, 'm.json');
    await writeFile(bad, JSON.stringify({ version: 1, compartments: [], channels: [], extra: 1 }));
    const r = await launch('check', '--manifest', bad);
    expect(r.code).toBe(1);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/launch: .*m\.json: /);
    expect(r.stderr).not.toMatch(/\bat .*\.ts:\d+/);
  });

  it('serve refuses paths the manifest lists that do not exist, before starting anything', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'launch-cli-'));
    const r = await launch(
      'serve',
      '--allow-weaker',
      '--config',
      join(dir, 'none'),
      '--state',
      join(dir, 'state'),
      '--run',
      join(dir, 'run'),
    );
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^launch: vault: .*none\/vault does not exist/m);
  });
});
