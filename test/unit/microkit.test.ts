import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  microkitSystem,
  parseManifest,
  validateMicrokit,
} from '../../deploy/compartments/index.ts';

const SHIPPED = join(import.meta.dirname, '..', '..', 'deploy', 'compartments.json');

/** A small valid system: a client PD calling a server PD over one channel and one region. */
function system(parts: { pds?: string; regions?: string; channels?: string } = {}): string {
  return `<?xml version="1.0" encoding="UTF-8"?>
<system>
  ${parts.regions ?? '<memory_region name="ring" size="0x1000" />'}
  ${
    parts.pds ??
    `<protection_domain name="server" priority="200">
    <program_image path="server.elf" />
    <map mr="ring" vaddr="0x20000000" perms="rw" setvar_vaddr="ring" />
  </protection_domain>
  <protection_domain name="client" priority="100">
    <program_image path="client.elf" />
    <map mr="ring" vaddr="0x20000000" perms="rw" setvar_vaddr="ring" />
  </protection_domain>`
  }
  ${parts.channels ?? '<channel><end pd="client" id="0" pp="true" /><end pd="server" id="0" /></channel>'}
</system>`;
}

describe('the seL4 Microkit description', () => {
  it('made from the shipped manifest, it passes the checker: a PD or VMM per compartment, a TPM driver, a channel per socketpair', async () => {
    const m = parseManifest(JSON.parse(await readFile(SHIPPED, 'utf8')));
    const xml = microkitSystem(m);
    expect(validateMicrokit(xml)).toEqual({ ok: true, problems: [] });
    expect(xml).toMatch(/<protection_domain name="vault"/);
    expect(xml).toMatch(/<protection_domain name="tpm_driver"/);
    expect(xml).toMatch(/<protection_domain name="endpoint_vmm"/);
    expect(xml).toMatch(/<protection_domain name="gateway_vmm"/);
    // The gateway's VMM shares no memory with the vault: its maps name only its own channel.
    const gateway =
      /<protection_domain name="gateway_vmm"[\s\S]*?<\/protection_domain>/.exec(xml)?.[0] ?? '';
    expect(gateway).not.toMatch(/vault_rpc|tpm_/);
    const vault =
      /<protection_domain name="vault"[\s\S]*?<\/protection_domain>/.exec(xml)?.[0] ?? '';
    expect(vault).not.toMatch(/endpoint_rpc|gateway/);
  });

  it('the aarch64 variant passes too; XML-hostile text in a description stays inside its comment', async () => {
    const m = parseManifest(JSON.parse(await readFile(SHIPPED, 'utf8')));
    expect(validateMicrokit(microkitSystem(m, { arch: 'aarch64' }))).toEqual({
      ok: true,
      problems: [],
    });
    const hostile = structuredClone(m);
    const first = hostile.compartments[0];
    if (first) first.description = 'a --> <b attr="x"> & -';
    const xml = microkitSystem(hostile);
    expect(validateMicrokit(xml)).toEqual({ ok: true, problems: [] });
    expect(xml).not.toContain('a -->');
  });

  it('refuses a manifest whose channels call in a cycle (no priority order exists)', async () => {
    const m = parseManifest(JSON.parse(await readFile(SHIPPED, 'utf8')));
    m.channels.push({
      name: 'back',
      kind: 'socketpair',
      ends: [
        { compartment: 'vault', fd: 5 },
        { compartment: 'gateway', fd: 5 },
      ],
    });
    expect(() => microkitSystem(m)).toThrow(/cycle/);
  });

  it('the checker accepts the small valid system (control)', () => {
    expect(validateMicrokit(system())).toEqual({ ok: true, problems: [] });
  });

  it.each([
    [
      'a PD name used twice',
      system({
        pds: `<protection_domain name="server" priority="200"><program_image path="a.elf" /></protection_domain>
              <protection_domain name="server" priority="100"><program_image path="b.elf" /></protection_domain>
              <protection_domain name="client" priority="100"><program_image path="c.elf" /></protection_domain>`,
      }),
      /protection domain "server" is defined twice/,
    ],
    [
      'a map of an unknown region',
      system({
        pds: `<protection_domain name="server" priority="200"><program_image path="a.elf" /><map mr="nope" vaddr="0x20000000" perms="rw" /></protection_domain>
              <protection_domain name="client" priority="100"><program_image path="c.elf" /></protection_domain>`,
      }),
      /map of an unknown memory region "nope"/,
    ],
    [
      'a channel id used twice in one PD',
      system({
        channels: `<channel><end pd="client" id="0" pp="true" /><end pd="server" id="0" /></channel>
                   <channel><end pd="client" id="0" /><end pd="server" id="1" /></channel>`,
      }),
      /id 0 is used twice in "client"/,
    ],
    [
      'a protected procedure call to a lower-priority PD',
      system({
        channels:
          '<channel><end pd="server" id="0" pp="true" /><end pd="client" id="0" /></channel>',
      }),
      /the callee must have a strictly higher priority/,
    ],
    [
      'an unaligned region size',
      system({ regions: '<memory_region name="ring" size="0x1234" />' }),
      /size=0x1234 is not aligned to 0x1000/,
    ],
    [
      'a channel to an unknown PD',
      system({
        channels: '<channel><end pd="client" id="0" /><end pd="ghost" id="0" /></channel>',
      }),
      /unknown PD "ghost"/,
    ],
    [
      'an attribute outside the subset',
      system({ regions: '<memory_region name="ring" size="0x1000" colour="red" />' }),
      /has no attribute colour/,
    ],
    [
      'two maps overlapping in one address space',
      system({
        regions:
          '<memory_region name="ring" size="0x1000" /><memory_region name="big" size="0x2000" />',
        pds: `<protection_domain name="server" priority="200"><program_image path="a.elf" />
                <map mr="big" vaddr="0x20000000" /><map mr="ring" vaddr="0x20001000" /></protection_domain>
              <protection_domain name="client" priority="100"><program_image path="c.elf" /></protection_domain>`,
      }),
      /"ring" overlaps "big"/,
    ],
    [
      'text that is not XML',
      '<system><protection_domain name="x"></system>',
      /closes <protection_domain>/,
    ],
  ])('refuses %s', (_what, xml, message) => {
    const report = validateMicrokit(xml);
    expect(report.ok).toBe(false);
    expect(report.problems.join('\n')).toMatch(message);
  });
});
