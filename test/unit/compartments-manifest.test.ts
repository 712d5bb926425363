import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ConfigError } from '../../keyvault/common/config-error.ts';
import { channelEnds, expand, parseManifest } from '../../deploy/compartments/index.ts';

const SHIPPED = join(import.meta.dirname, '..', '..', 'deploy', 'compartments.json');
const shipped = async (): Promise<Record<string, unknown>> =>
  JSON.parse(await readFile(SHIPPED, 'utf8')) as Record<string, unknown>;

/** The shipped manifest with one change made by `edit`. */
async function edited(
  edit: (
    m: { compartments: Record<string, unknown>[]; channels: Record<string, unknown>[] } & Record<
      string,
      unknown
    >,
  ) => void,
) {
  const m = (await shipped()) as {
    compartments: Record<string, unknown>[];
    channels: Record<string, unknown>[];
  };
  edit(m);
  return m;
}

function refusal(json: unknown): string {
  try {
    parseManifest(json, 'm.json');
  } catch (e) {
    expect(e).toBeInstanceOf(ConfigError);
    return (e as Error).message;
  }
  throw new Error('the manifest was accepted');
}

describe('the compartment manifest', () => {
  it('the shipped manifest parses: three compartments, each its own user; the vault alone has the TPM', async () => {
    const m = parseManifest(await shipped());
    expect(m.compartments.map((c) => c.name)).toEqual(['vault', 'endpoint', 'gateway']);
    expect(new Set(m.compartments.map((c) => c.user)).size).toBe(3);
    const by = (n: string) => m.compartments.find((c) => c.name === n);
    expect(by('vault')?.devices).toEqual(['/dev/tpmrm0']);
    expect(by('endpoint')?.devices).toEqual([]);
    expect(by('gateway')?.devices).toEqual([]);
    expect(by('vault')?.network).toBe('none');
    expect(by('gateway')?.network).toBe('none');
    expect(by('endpoint')?.network).toBe('homeserver');
    // The gateway's channels: the endpoint only, never the vault.
    expect(channelEnds(m, 'gateway').map((e) => e.peer)).toEqual(['endpoint']);
    expect(channelEnds(m, 'vault').map((e) => e.peer)).toEqual(['endpoint']);
  });

  it("no compartment can write another one's directory", async () => {
    const m = parseManifest(await shipped());
    const where = { code: '/c', config: '/etc/mte', state: '/var/lib/mte', run: '/run/mte' };
    for (const c of m.compartments) {
      for (const w of c.write.map((p) => expand(p, where))) {
        for (const other of m.compartments.filter((o) => o !== c)) {
          const theirs = [...other.read, ...other.write].map((p) => expand(p, where));
          expect(
            theirs.some((t) => t === w || t.startsWith(`${w}/`) || w.startsWith(`${t}/`)),
            `${c.name} ${w}`,
          ).toBe(false);
        }
      }
    }
  });

  it.each([
    [
      'a user shared by two compartments',
      (m: { compartments: Record<string, unknown>[] }) => {
        (m.compartments[1] ?? {}).user = 'mte-vault';
      },
      /compartments\[1\]\.user: user "mte-vault" is shared/,
    ],
    [
      'a compartment named twice',
      (m: { compartments: Record<string, unknown>[] }) => {
        (m.compartments[2] ?? {}).name = 'vault';
      },
      /compartments\[2\]\.name: "vault" appears twice/,
    ],
    [
      'a channel to an unknown compartment',
      (m: { channels: Record<string, unknown>[] }) => {
        m.channels[0] = {
          name: 'x',
          kind: 'socketpair',
          ends: [
            { compartment: 'endpoint', fd: 5 },
            { compartment: 'ghost', fd: 3 },
          ],
        };
      },
      /channels\[0\]: unknown compartment "ghost"/,
    ],
    [
      'an fd used twice by one compartment',
      (m: { channels: Record<string, unknown>[] }) => {
        m.channels[1] = {
          name: 'x',
          kind: 'socketpair',
          ends: [
            { compartment: 'gateway', fd: 3 },
            { compartment: 'endpoint', fd: 4 },
          ],
        };
      },
      /fd 4 of "endpoint" used twice/,
    ],
    [
      'a path that climbs out with ".."',
      (m: { compartments: Record<string, unknown>[] }) => {
        (m.compartments[2] ?? {}).write = ['{run}/gateway/../../state/vault'];
      },
      /compartments\[2\]\.write\[0\]: no "\.\." segments/,
    ],
    [
      'a relative path',
      (m: { compartments: Record<string, unknown>[] }) => {
        (m.compartments[0] ?? {}).read = ['vault'];
      },
      /compartments\[0\]\.read\[0\]: absolute, or starting with/,
    ],
    [
      'an unknown field',
      (m: Record<string, unknown>) => {
        m.extra = true;
      },
      /unexpected field "extra"/,
    ],
    [
      'an unknown network kind',
      (m: { compartments: Record<string, unknown>[] }) => {
        (m.compartments[0] ?? {}).network = 'all';
      },
      /compartments\[0\]\.network: /,
    ],
    [
      'a device outside /dev',
      (m: { compartments: Record<string, unknown>[] }) => {
        (m.compartments[0] ?? {}).devices = ['/etc/shadow'];
      },
      /compartments\[0\]\.devices\[0\]/,
    ],
  ] as const)('refuses %s, naming the field', async (_what, edit, message) => {
    const m = await edited(edit);
    expect(refusal(m)).toMatch(message);
  });
});
