/**
 * The seL4 Microkit system description (.system XML) made from the compartment manifest, and
 * our own structural checker for it: no Microkit SDK can be installed here, so the checks the
 * Microkit tool would make on the elements we use are made by validateMicrokit (see
 * deploy/SEL4.md for the mapping itself and what it does not give yet).
 *
 * Layout, in short: the compartment that owns the TPM (the vault) is a native protection
 * domain with a TPM driver PD beside it; the others (Node.js programs) run in Linux guests, one
 * virtual_machine per VMM PD. Each socketpair channel becomes two shared memory regions (one per
 * direction, a byte ring carrying the same length-prefixed frames as the socket) and a Microkit
 * channel whose notifications say "data in the ring".
 */
import { ConfigError } from '../../keyvault/common/config-error.ts';
import type { Compartment, Manifest } from './manifest.ts';

export const MICROKIT_ARCHES = ['x86_64', 'aarch64'] as const;
export type MicrokitArch = (typeof MICROKIT_ARCHES)[number];

export interface MicrokitOptions {
  /** Which board family the placeholders are written for; default x86_64 (a PC's TPM). */
  arch?: MicrokitArch;
  /**
   * Bytes in each direction's ring; default 64 KiB. The RPC's frames may be up to 1 MiB
   * (DEFAULT_MAX_FRAME_BYTES): the ring is a byte stream like the socket, so a frame larger
   * than the ring passes in pieces, as it does through a socket buffer.
   */
  ringBytes?: number;
  /** Compartments built as native PDs; default those that own a device (the vault). */
  native?: readonly string[];
}

const PAGE = 0x1000;
const LARGE_PAGE = 0x200000;
const MAX_ID = 62;
/** The TPM driver sits above every compartment: the vault calls it (see the rule below). */
const DRIVER_PRIORITY = 250;
const TOP_COMPARTMENT_PRIORITY = 200;
const PRIORITY_STEP = 10;
/** Room for the guest's Linux kernel and userland besides the compartment's own memory. */
const GUEST_OVERHEAD_MIB = 256;

// ---------------------------------------------------------------- writing

interface XmlEl {
  tag: string;
  attrs: [string, string][];
  children: XmlNode[];
}
type XmlNode = XmlEl | { comment: string };

function el(
  tag: string,
  attrs: Record<string, string | undefined>,
  children: XmlNode[] = [],
): XmlEl {
  const list: [string, string][] = [];
  for (const [k, v] of Object.entries(attrs)) if (v !== undefined) list.push([k, v]);
  return { tag, attrs: list, children };
}

function note(text: string): XmlNode {
  return { comment: text };
}

export function escapeXmlAttribute(value: string): string {
  return value
    .replace(/&/g, '&amp;')
    .replace(/</g, '&lt;')
    .replace(/>/g, '&gt;')
    .replace(/"/g, '&quot;')
    .replace(/'/g, '&apos;');
}

/** A comment may not hold "--" nor end in "-"; control characters but tab and newline go. */
function escapeComment(text: string): string {
  let clean = '';
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 9 || c === 10 || (c >= 0x20 && c !== 0x7f)) clean += text.charAt(i);
  }
  return clean.replace(/-(?=-)/g, '- ').replace(/-$/, '- ');
}

function render(node: XmlNode, depth: number): string[] {
  const pad = '    '.repeat(depth);
  if ('comment' in node) {
    const lines = escapeComment(node.comment).split('\n');
    if (lines.length === 1) return [`${pad}<!-- ${lines[0] ?? ''} -->`];
    return [`${pad}<!--`, ...lines.map((l) => (l === '' ? '' : `${pad}     ${l}`)), `${pad}-->`];
  }
  const attrs = node.attrs.map(([k, v]) => ` ${k}="${escapeXmlAttribute(v)}"`).join('');
  if (node.children.length === 0) return [`${pad}<${node.tag}${attrs} />`];
  return [
    `${pad}<${node.tag}${attrs}>`,
    ...node.children.flatMap((c) => render(c, depth + 1)),
    `${pad}</${node.tag}>`,
  ];
}

const hex = (n: number) => `0x${n.toString(16)}`;
/** A Microkit name and a C symbol alike. */
const ident = (name: string) => name.replace(/-/g, '_');

// ---------------------------------------------------------------- the mapping

/**
 * Priorities from the channels. Microkit's rule: a protected procedure call is only possible
 * to a PD of strictly higher priority ("Protected procedures" in the Microkit manual), so a
 * callee sits above its callers. A socketpair's first end is the caller (the endpoint calls the
 * vault, the gateway the endpoint), so: vault above endpoint above gateway, the TPM driver
 * above the vault. The RPC channels use notifications, which go either way whatever the
 * priorities; the order keeps a PPC possible there, and lets the more trusted side preempt.
 */
function priorities(m: Manifest): Map<string, number> {
  const callees = new Map<string, string[]>(m.compartments.map((c) => [c.name, []]));
  for (const ch of m.channels) {
    if (ch.kind === 'socketpair') callees.get(ch.ends[0].compartment)?.push(ch.ends[1].compartment);
  }
  const depth = new Map<string, number>();
  const visiting = new Set<string>();
  const visit = (name: string): number => {
    const known = depth.get(name);
    if (known !== undefined) return known;
    if (visiting.has(name)) {
      throw new ConfigError(
        `the socketpair channels form a cycle through "${name}": no priority order lets every call go upwards`,
      );
    }
    visiting.add(name);
    const d = Math.max(-1, ...(callees.get(name) ?? []).map(visit)) + 1;
    visiting.delete(name);
    depth.set(name, d);
    return d;
  };
  const out = new Map<string, number>();
  for (const c of m.compartments) {
    const p = TOP_COMPARTMENT_PRIORITY - PRIORITY_STEP * visit(c.name);
    if (p < 1) throw new ConfigError('too many levels of channels for the priority range');
    out.set(c.name, p);
  }
  return out;
}

/** Hands out page-aligned virtual addresses in one address space. */
function allocator(start: number) {
  let next = start;
  return (size: number): string => {
    const align = size % LARGE_PAGE === 0 ? LARGE_PAGE : PAGE;
    next = Math.ceil(next / align) * align;
    const at = next;
    next += size;
    return hex(at);
  };
}

interface PdPlan {
  name: string;
  el: XmlEl;
  /** Where maps for this compartment's rings go: the PD, and its guest if it has one. */
  vm?: XmlEl;
  pdAddr: (size: number) => string;
  vmAddr: (size: number) => string;
  nextId: number;
}

function takeId(pd: PdPlan): string {
  if (pd.nextId > MAX_ID) throw new ConfigError(`${pd.name}: more than 63 channels and irqs`);
  return String(pd.nextId++);
}

const TPM_DEVICE = /^\/dev\/tpm(rm)?[0-9]+$/;

/** Board-specific placeholders for the TPM's registers and interrupt. */
function tpmPlaceholders(arch: MicrokitArch): {
  physAddr: number;
  irq: Record<string, string>;
  text: string;
} {
  if (arch === 'x86_64') {
    return {
      physAddr: 0xfed40000,
      irq: { pin: '13', vector: '40' },
      text:
        'TPM registers: 0xfed40000 is locality 0 of the TCG PC Client PTP layout (TIS or CRB; each\n' +
        'locality a 4 KiB page up to 0xfed44fff). Only locality 0 is mapped, so not even the driver\n' +
        'can use localities 1-3 (which policies may trust more).\n' +
        'irq: a PLACEHOLDER (IOAPIC pin 13, vector 40). Many PC TPMs have no interrupt wired (ACPI\n' +
        '_CRS): the driver then polls the CRB/TIS status and this irq element goes.',
    };
  }
  return {
    physAddr: 0x0c000000,
    irq: { irq: '112', trigger: 'level' },
    text:
      'TPM registers: 0x0c000000 is a PLACEHOLDER, QEMU virt with -device tpm-tis-device (the\n' +
      'platform bus). A board TPM is usually on SPI (TIS over SPI): the driver then maps the SPI\n' +
      "controller's registers instead. Only locality 0's page is mapped.\n" +
      'irq: a PLACEHOLDER (SPI 112); the TPM interrupt line of the board, or none (polling).',
  };
}

/**
 * The .system XML for the manifest. Throws a ConfigError when the manifest asks for something
 * this mapping does not make: a device other than a TPM, a device in a guest, a network in a
 * native PD, or channels that call in a cycle.
 */
export function microkitSystem(manifest: Manifest, options: MicrokitOptions = {}): string {
  const arch = options.arch ?? 'x86_64';
  const ring = options.ringBytes ?? 0x10000;
  if (!Number.isInteger(ring) || ring < PAGE || ring % PAGE !== 0 || ring > 0x1000000) {
    throw new ConfigError('ringBytes: a multiple of 4 KiB, at most 16 MiB');
  }
  const byName = new Map(manifest.compartments.map((c) => [c.name, c]));
  const nativeNames =
    options.native ?? manifest.compartments.filter((c) => c.devices.length > 0).map((c) => c.name);
  for (const n of nativeNames) {
    if (!byName.has(n)) throw new ConfigError(`native: unknown compartment "${n}"`);
  }
  const isNative = (c: Compartment) => nativeNames.includes(c.name);
  const prio = priorities(manifest);

  const regions: XmlNode[] = [];
  const pds: PdPlan[] = [];
  const channels: XmlNode[] = [];
  const plan = new Map<string, PdPlan>();

  for (const c of manifest.compartments) {
    for (const d of c.devices) {
      if (!TPM_DEVICE.test(d))
        throw new ConfigError(`${c.name}: no Microkit driver is known for ${d}`);
    }
    if (isNative(c) && c.network !== 'none') {
      throw new ConfigError(
        `${c.name}: a native PD with a network needs an sDDF stack, not generated`,
      );
    }
    if (!isNative(c) && c.devices.length > 0) {
      throw new ConfigError(`${c.name}: passing a device into a Linux guest is not generated`);
    }
    const priority = String(prio.get(c.name) ?? 0);
    const pdAddr = allocator(0x20000000);
    if (isNative(c)) {
      const name = ident(c.name);
      const pd = el('protection_domain', { name, priority, stack_size: hex(0x10000) }, [
        note(`${c.name}: ${c.description}`),
        el('program_image', { path: `${name}.elf` }),
      ]);
      const p: PdPlan = { name, el: pd, pdAddr, vmAddr: pdAddr, nextId: 0 };
      plan.set(c.name, p);
      pds.push(p);
      continue;
    }
    const name = `${ident(c.name)}_vmm`;
    const ram = Math.ceil((c.limits.memoryMiB + GUEST_OVERHEAD_MIB) / 2) * 2 * 1024 * 1024;
    const ramName = `${ident(c.name)}_guest_ram`;
    regions.push(
      el('memory_region', { name: ramName, size: hex(ram), page_size: hex(LARGE_PAGE) }),
    );
    const vm = el('virtual_machine', { name: `${ident(c.name)}_linux` }, [
      el('vcpu', { id: '0' }),
      el('map', { mr: ramName, vaddr: hex(0x40000000), perms: 'rwx' }),
    ]);
    const guestNotes: XmlNode[] = [];
    if (c.network !== 'none') {
      guestNotes.push(
        note(
          'Network (not generated, board-specific): NIC -> sDDF ethernet driver PD (native: the\n' +
            "NIC's registers and irq) -> sDDF rx/tx virtualisers -> this VMM's virtio-net device ->\n" +
            "the guest's virtio-net -> Node's TCP and TLS. Limiting it to the homeserver needs a\n" +
            'filter PD between the virtualisers and this VMM; inside the guest it would be weaker.',
        ),
      );
    }
    for (const ch of manifest.channels) {
      if (ch.kind === 'unix-socket' && ch.compartment === c.name) {
        guestNotes.push(
          note(
            `Channel ${ch.name}: the Unix socket ${ch.path} stays inside this guest; the UIs run\n` +
              'there too (or in a further guest with a channel of its own, not generated).',
          ),
        );
      }
    }
    const pd = el('protection_domain', { name, priority }, [
      note(`${c.name} (a Linux guest: Node.js cannot run as a native PD): ${c.description}`),
      ...guestNotes,
      el('program_image', { path: `${name}.elf` }),
      el('map', {
        mr: ramName,
        vaddr: hex(0x40000000),
        perms: 'rw',
        setvar_vaddr: 'guest_ram_vaddr',
      }),
      vm,
    ]);
    const p: PdPlan = { name, el: pd, vm, pdAddr, vmAddr: allocator(0x30000000), nextId: 0 };
    plan.set(c.name, p);
    pds.push(p);
  }

  const mapInto = (p: PdPlan, mr: string, size: number, symbol: string) => {
    p.el.children.splice(
      p.vm ? p.el.children.indexOf(p.vm) : p.el.children.length,
      0,
      el('map', { mr, vaddr: p.pdAddr(size), perms: 'rw', setvar_vaddr: symbol }),
    );
    p.vm?.children.push(el('map', { mr, vaddr: p.vmAddr(size), perms: 'rw' }));
  };

  for (const ch of manifest.channels) {
    if (ch.kind !== 'socketpair') continue;
    const [a, b] = ch.ends.map((e) => plan.get(e.compartment));
    if (!a || !b) throw new ConfigError(`channel ${ch.name}: unknown compartment`);
    const [ca, cb] = ch.ends.map((e) => ident(e.compartment));
    const aToB = `${ident(ch.name)}_${ca ?? ''}_to_${cb ?? ''}`;
    const bToA = `${ident(ch.name)}_${cb ?? ''}_to_${ca ?? ''}`;
    regions.push(
      note(
        `Channel ${ch.name}: ${ch.ends[0].compartment} (fd ${ch.ends[0].fd}) calls ${ch.ends[1].compartment} (fd ${ch.ends[1].fd}); one ring each way.`,
      ),
      el('memory_region', { name: aToB, size: hex(ring) }),
      el('memory_region', { name: bToA, size: hex(ring) }),
    );
    mapInto(a, aToB, ring, `${ident(ch.name)}_tx`);
    mapInto(a, bToA, ring, `${ident(ch.name)}_rx`);
    mapInto(b, bToA, ring, `${ident(ch.name)}_tx`);
    mapInto(b, aToB, ring, `${ident(ch.name)}_rx`);
    channels.push(
      note(`${ch.name}: notifications both ways ("data in your ring"), no PPC.`),
      el('channel', {}, [
        el('end', { pd: a.name, id: takeId(a), setvar_id: `${ident(ch.name)}_channel` }),
        el('end', { pd: b.name, id: takeId(b), setvar_id: `${ident(ch.name)}_channel` }),
      ]),
    );
  }

  const tpmUsers = manifest.compartments.filter((c) => c.devices.some((d) => TPM_DEVICE.test(d)));
  if (tpmUsers.length > 1) throw new ConfigError('more than one compartment opens the TPM');
  const tpmUser = tpmUsers[0];
  if (tpmUser) {
    const user = plan.get(tpmUser.name);
    if (!user) throw new ConfigError(`${tpmUser.name}: no PD`);
    const t = tpmPlaceholders(arch);
    regions.push(
      note(t.text),
      el('memory_region', { name: 'tpm_regs', size: hex(PAGE), phys_addr: hex(t.physAddr) }),
      note(
        'One TPM command or response at a time (TPM2_PT_MAX_COMMAND_SIZE is 4096 on common TPMs).',
      ),
      el('memory_region', { name: 'tpm_buffer', size: hex(PAGE) }),
    );
    const driver: PdPlan = {
      name: 'tpm_driver',
      el: el('protection_domain', { name: 'tpm_driver', priority: String(DRIVER_PRIORITY) }, [
        note(`The TPM driver (native, small): CRB/TIS at locality 0, for ${tpmUser.name} only.`),
        el('program_image', { path: 'tpm_driver.elf' }),
        el('map', {
          mr: 'tpm_regs',
          vaddr: hex(0x30000000),
          perms: 'rw',
          cached: 'false',
          setvar_vaddr: 'tpm_regs',
        }),
      ]),
      pdAddr: allocator(0x20000000),
      vmAddr: allocator(0x20000000),
      nextId: 0,
    };
    mapInto(driver, 'tpm_buffer', PAGE, 'tpm_buffer');
    mapInto(user, 'tpm_buffer', PAGE, 'tpm_buffer');
    pds.unshift(driver);
    channels.push(
      note(
        `tpm: ${tpmUser.name} calls the driver (pp) for short control steps (request locality 0,\n` +
          'cancel, go idle); a command goes through tpm_buffer and its completion is notified,\n' +
          'since a TPM command may take seconds (RSA key creation) and a PPC must be bounded.',
      ),
      el('channel', {}, [
        el('end', { pd: user.name, id: takeId(user), pp: 'true', setvar_id: 'tpm_channel' }),
        el('end', { pd: driver.name, id: takeId(driver), setvar_id: 'tpm_channel' }),
      ]),
    );
    driver.el.children.push(el('irq', { ...t.irq, id: takeId(driver), setvar_id: 'tpm_irq' }));
  }

  const header = note(
    'Generated from the compartment manifest by\n' +
      '`node deploy/compartments/main.ts microkit` (deploy/SEL4.md): change the manifest,\n' +
      `not this file. Board family: ${arch}. Program images (*.elf) are not built yet.\n` +
      '\n' +
      'Priorities: a protected procedure call (pp) only goes to a PD of strictly higher\n' +
      'priority, so each callee sits above its callers: tpm_driver > native compartments\n' +
      "and VMMs in the order of the manifest's channels (a socketpair's first end calls the\n" +
      "second). The guests keep the default VM priority (0 on ARM; on x86 the VMM's).",
  );
  const system = el('system', {}, [...regions, ...pds.map((p) => p.el), ...channels]);
  return [
    '<?xml version="1.0" encoding="UTF-8"?>',
    ...render(header, 0),
    ...render(system, 0),
    '',
  ].join('\n');
}

// ---------------------------------------------------------------- reading

export interface XmlElement {
  name: string;
  attrs: Map<string, string>;
  children: XmlElement[];
  line: number;
}

export class XmlSyntaxError extends Error {
  override name = 'XmlSyntaxError';
}

const NAME_START = /[A-Za-z_]/;
const NAME_CHAR = /[A-Za-z0-9_.-]/;
const ENTITIES: Record<string, string> = { amp: '&', lt: '<', gt: '>', quot: '"', apos: "'" };
const MAX_XML = 1024 * 1024;

/**
 * A strict parser for the subset a .system file uses: an optional XML declaration, comments,
 * elements and attributes (with the five named entities and character references). Text other
 * than white space, CDATA, DOCTYPE, processing instructions and namespaces are refused.
 */
export function parseXml(text: string): XmlElement {
  if (text.length > MAX_XML) throw new XmlSyntaxError('larger than 1 MiB');
  let pos = text.startsWith('\ufeff') ? 1 : 0;
  const lineAt = (p: number) => {
    let n = 1;
    for (let i = 0; i < p; i++) if (text.charCodeAt(i) === 10) n++;
    return n;
  };
  const fail = (message: string, at = pos): never => {
    throw new XmlSyntaxError(`line ${lineAt(at)}: ${message}`);
  };
  const ws = () => {
    while (pos < text.length && /[ \t\r\n]/.test(text.charAt(pos))) pos++;
  };
  const name = (): string => {
    const start = pos;
    if (!NAME_START.test(text.charAt(pos))) fail('a name expected');
    while (pos < text.length && NAME_CHAR.test(text.charAt(pos))) pos++;
    return text.slice(start, pos);
  };
  const comment = () => {
    const end = text.indexOf('-->', pos + 4);
    if (end < 0) fail('unterminated comment');
    if (text.slice(pos + 4, end).includes('--')) fail('"--" inside a comment');
    pos = end + 3;
  };
  /** Comments and white space; anything else starting with "<!" or "<?" is outside the subset. */
  const misc = () => {
    for (;;) {
      ws();
      if (text.startsWith('<!--', pos)) comment();
      else if (text.startsWith('<!', pos) || text.startsWith('<?', pos)) {
        fail('DOCTYPE, CDATA and processing instructions are not in the subset');
      } else return;
    }
  };
  const decode = (raw: string, at: number): string =>
    raw.replace(/&([^;]*);?/g, (whole, ref: string) => {
      if (!whole.endsWith(';')) fail('"&" must start an entity', at);
      const named = ENTITIES[ref];
      if (named !== undefined) return named;
      const m = /^#(x[0-9A-Fa-f]{1,6}|[0-9]{1,7})$/.exec(ref);
      const code = m?.[1]
        ? m[1].startsWith('x')
          ? parseInt(m[1].slice(1), 16)
          : Number(m[1])
        : NaN;
      if (!Number.isInteger(code) || code > 0x10ffff || code === 0)
        fail(`unknown entity &${ref};`, at);
      return String.fromCodePoint(code);
    });
  const element = (): XmlElement => {
    const start = pos;
    if (text.charAt(pos) !== '<') fail('an element expected');
    pos++;
    const tag = name();
    const node: XmlElement = { name: tag, attrs: new Map(), children: [], line: lineAt(start) };
    for (;;) {
      const before = pos;
      ws();
      if (text.startsWith('/>', pos)) {
        pos += 2;
        return node;
      }
      if (text.charAt(pos) === '>') {
        pos++;
        break;
      }
      if (pos === before) fail(`white space or the end of <${tag}> expected`);
      const attrAt = pos;
      const attr = name();
      ws();
      if (text.charAt(pos) !== '=') fail(`attribute ${attr} has no value`);
      pos++;
      ws();
      const quote = text.charAt(pos);
      if (quote !== '"' && quote !== "'") fail(`the value of ${attr} must be quoted`);
      const end = text.indexOf(quote, pos + 1);
      if (end < 0) fail(`unterminated value of ${attr}`);
      const raw = text.slice(pos + 1, end);
      if (raw.includes('<')) fail(`"<" in the value of ${attr}`);
      if (node.attrs.has(attr)) fail(`attribute ${attr} given twice`, attrAt);
      node.attrs.set(attr, decode(raw, attrAt));
      pos = end + 1;
    }
    for (;;) {
      const textStart = pos;
      while (pos < text.length && text.charAt(pos) !== '<') pos++;
      if (/[^ \t\r\n]/.test(text.slice(textStart, pos))) {
        fail(`text inside <${tag}>: a system description holds elements only`, textStart);
      }
      if (pos >= text.length) fail(`<${tag}> (line ${node.line}) is not closed`);
      if (text.startsWith('</', pos)) {
        pos += 2;
        const closing = name();
        if (closing !== tag) fail(`</${closing}> closes <${tag}> of line ${node.line}`);
        ws();
        if (text.charAt(pos) !== '>') fail(`">" expected after </${closing}`);
        pos++;
        return node;
      }
      if (text.startsWith('<!--', pos)) comment();
      else if (text.startsWith('<!', pos) || text.startsWith('<?', pos)) {
        fail('DOCTYPE, CDATA and processing instructions are not in the subset');
      } else node.children.push(element());
    }
  };
  if (text.startsWith('<?xml', pos)) {
    const end = text.indexOf('?>', pos);
    if (end < 0) fail('unterminated XML declaration');
    pos = end + 2;
  }
  misc();
  const root = element();
  misc();
  if (pos < text.length) fail('content after the root element');
  return root;
}

// ---------------------------------------------------------------- checking

export interface MicrokitReport {
  ok: boolean;
  problems: string[];
}

/** Allowed attributes and child elements of each element we check; anything else is refused. */
const SCHEMA: Record<string, { attrs: string[]; required: string[]; children: string[] }> = {
  system: { attrs: [], required: [], children: ['memory_region', 'protection_domain', 'channel'] },
  memory_region: {
    attrs: ['name', 'size', 'page_size', 'phys_addr'],
    required: ['name', 'size'],
    children: [],
  },
  protection_domain: {
    attrs: ['name', 'priority', 'budget', 'period', 'passive', 'stack_size', 'cpu', 'smc', 'fpu'],
    required: ['name'],
    children: ['program_image', 'map', 'irq', 'setvar', 'virtual_machine'],
  },
  program_image: { attrs: ['path', 'path_for_symbols'], required: ['path'], children: [] },
  map: {
    attrs: ['mr', 'vaddr', 'perms', 'cached', 'setvar_vaddr', 'setvar_size'],
    required: ['mr', 'vaddr'],
    children: [],
  },
  irq: {
    attrs: [
      'irq',
      'id',
      'trigger',
      'setvar_id',
      'pin',
      'vector',
      'ioapic',
      'polarity',
      'pcidev',
      'handle',
    ],
    required: ['id'],
    children: [],
  },
  setvar: { attrs: ['symbol', 'region_paddr'], required: ['symbol', 'region_paddr'], children: [] },
  virtual_machine: {
    attrs: ['name', 'priority', 'budget', 'period'],
    required: ['name'],
    children: ['vcpu', 'map'],
  },
  vcpu: { attrs: ['id', 'cpu', 'setvar_id'], required: ['id'], children: [] },
  channel: { attrs: [], required: [], children: ['end'] },
  end: { attrs: ['pd', 'id', 'pp', 'notify', 'setvar_id'], required: ['pd', 'id'], children: [] },
};

function parseNumber(v: string): number | undefined {
  if (!/^(0x[0-9A-Fa-f](_?[0-9A-Fa-f])*|[0-9](_?[0-9])*)$/.test(v)) return undefined;
  const n = Number(v.replace(/_/g, ''));
  return Number.isSafeInteger(n) ? n : undefined;
}

interface Space {
  owner: string;
  maps: { from: number; to: number; mr: string; line: number }[];
}

/**
 * Our structural check of a .system file, for the elements microkitSystem writes: the XML is
 * well formed in the subset; names are unique; every map names an existing region and is
 * aligned and apart from the other maps of its address space; channel ends name existing PDs
 * with ids 0-62 unique per PD (irqs share them); priorities are 0-254; a PPC (pp="true") goes
 * only to a PD of strictly higher priority; sizes and addresses are page-aligned.
 */
export function validateMicrokit(xml: string): MicrokitReport {
  let root: XmlElement;
  try {
    root = parseXml(xml);
  } catch (e) {
    return { ok: false, problems: [e instanceof Error ? e.message : 'not XML'] };
  }
  const problems: string[] = [];
  const bad = (node: XmlElement, message: string) => problems.push(`line ${node.line}: ${message}`);
  if (root.name !== 'system') bad(root, `the root element is <${root.name}>, not <system>`);

  // Shape: known elements, known and required attributes.
  const shape = (node: XmlElement) => {
    const s = SCHEMA[node.name];
    if (!s) return;
    for (const a of node.attrs.keys()) {
      if (!s.attrs.includes(a)) {
        bad(
          node,
          a === 'pp' && node.name === 'protection_domain'
            ? 'pp on <protection_domain> is the old form: put pp="true" on the calling channel <end>'
            : `<${node.name}> has no attribute ${a} (in the subset checked here)`,
        );
      }
    }
    for (const a of s.required) if (!node.attrs.has(a)) bad(node, `<${node.name}> needs ${a}`);
    for (const c of node.children) {
      if (!s.children.includes(c.name)) bad(c, `<${c.name}> is not allowed in <${node.name}>`);
      else shape(c);
    }
  };
  shape(root);

  const num = (node: XmlElement, attr: string, min: number, max: number): number | undefined => {
    const v = node.attrs.get(attr);
    if (v === undefined) return undefined;
    const n = parseNumber(v);
    if (n === undefined || n < min || n > max) {
      bad(node, `${attr}="${v.slice(0, 40)}" must be a whole number from ${min} to ${hex(max)}`);
      return undefined;
    }
    return n;
  };
  const bool = (node: XmlElement, attr: string) => {
    const v = node.attrs.get(attr);
    if (v !== undefined && v !== 'true' && v !== 'false')
      bad(node, `${attr} must be "true" or "false"`);
    return v === 'true';
  };
  const aligned = (node: XmlElement, attr: string, n: number | undefined, page: number) => {
    if (n !== undefined && n % page !== 0)
      bad(node, `${attr}=${hex(n)} is not aligned to ${hex(page)}`);
  };

  // Memory regions: unique names, page-aligned sizes and addresses, no two at one address.
  const regions = new Map<string, { size: number; page: number }>();
  const fixed: { from: number; to: number; name: string; node: XmlElement }[] = [];
  for (const mr of root.children.filter((c) => c.name === 'memory_region')) {
    const name = mr.attrs.get('name') ?? '';
    if (regions.has(name)) bad(mr, `memory region "${name}" is defined twice`);
    const size = num(mr, 'size', 1, Number.MAX_SAFE_INTEGER);
    const pageSize = num(mr, 'page_size', 1, Number.MAX_SAFE_INTEGER);
    if (pageSize !== undefined && pageSize !== PAGE && pageSize !== LARGE_PAGE) {
      bad(mr, `page_size ${hex(pageSize)} is neither 0x1000 nor 0x200000`);
    }
    const phys = num(mr, 'phys_addr', 0, Number.MAX_SAFE_INTEGER);
    const page =
      pageSize ??
      (size !== undefined && size % LARGE_PAGE === 0 && (phys ?? 0) % LARGE_PAGE === 0
        ? LARGE_PAGE
        : PAGE);
    aligned(mr, 'size', size, pageSize ?? PAGE);
    aligned(mr, 'phys_addr', phys, pageSize ?? PAGE);
    if (phys !== undefined && size !== undefined) {
      for (const f of fixed) {
        if (phys < f.to && f.from < phys + size)
          bad(mr, `"${name}" overlaps "${f.name}" in physical memory`);
      }
      fixed.push({ from: phys, to: phys + size, name, node: mr });
    }
    regions.set(name, { size: size ?? PAGE, page });
  }

  // Protection domains and their guests: unique names, priorities, maps, irqs.
  const pds = new Map<string, { priority: number; ids: Map<number, number>; line: number }>();
  const vmNames = new Set<string>();
  const irqs = new Map<string, number>();
  const checkMaps = (owner: XmlElement, space: Space, allowSetvar: boolean) => {
    const symbols = new Set<string>();
    for (const m of owner.children.filter((c) => c.name === 'map')) {
      const mrName = m.attrs.get('mr') ?? '';
      const mr = regions.get(mrName);
      if (!mr) bad(m, `map of an unknown memory region "${mrName}"`);
      const perms = m.attrs.get('perms') ?? 'rw';
      if (
        !/^(r|rw|rx|rwx|wx|x)$/.test(perms.split('').sort(permOrder).join('')) ||
        new Set(perms).size !== perms.length
      ) {
        bad(m, `perms="${perms.slice(0, 8)}" must combine r, w and x (not w alone)`);
      }
      bool(m, 'cached');
      if (!allowSetvar && m.attrs.has('setvar_vaddr'))
        bad(m, "a virtual machine's map has no setvar_vaddr");
      const symbol = m.attrs.get('setvar_vaddr');
      if (symbol !== undefined) {
        if (symbols.has(symbol)) bad(m, `symbol ${symbol} is set twice in ${space.owner}`);
        symbols.add(symbol);
      }
      const vaddr = num(m, 'vaddr', 0, Number.MAX_SAFE_INTEGER);
      if (vaddr === undefined || !mr) continue;
      aligned(m, 'vaddr', vaddr, mr.page);
      const to = vaddr + mr.size;
      for (const other of space.maps) {
        if (vaddr < other.to && other.from < to) {
          bad(m, `"${mrName}" overlaps "${other.mr}" (line ${other.line}) in ${space.owner}`);
        }
      }
      space.maps.push({ from: vaddr, to, mr: mrName, line: m.line });
    }
  };
  const pdNodes = root.children.filter((c) => c.name === 'protection_domain');
  if (pdNodes.length > 63) bad(root, `${pdNodes.length} protection domains; Microkit allows 63`);
  for (const pd of pdNodes) {
    const name = pd.attrs.get('name') ?? '';
    if (name.length > 64) bad(pd, 'a PD name longer than 64 characters');
    if (pds.has(name) || vmNames.has(name)) bad(pd, `protection domain "${name}" is defined twice`);
    const priority = num(pd, 'priority', 0, 254) ?? 0;
    const budget = num(pd, 'budget', 1, Number.MAX_SAFE_INTEGER);
    const period = num(pd, 'period', 1, Number.MAX_SAFE_INTEGER);
    if (budget !== undefined && period !== undefined && budget > period)
      bad(pd, 'budget exceeds period');
    const stack = num(pd, 'stack_size', PAGE, 16 * 1024 * 1024);
    aligned(pd, 'stack_size', stack, PAGE);
    for (const b of ['passive', 'smc', 'fpu']) bool(pd, b);
    const images = pd.children.filter((c) => c.name === 'program_image').length;
    if (images !== 1)
      bad(pd, `"${name}" has ${images} program_image elements; exactly one is needed`);
    const ids = new Map<number, number>();
    pds.set(name, { priority, ids, line: pd.line });
    checkMaps(pd, { owner: name, maps: [] }, true);
    for (const irq of pd.children.filter((c) => c.name === 'irq')) {
      const id = num(irq, 'id', 0, MAX_ID);
      if (id !== undefined) {
        if (ids.has(id))
          bad(irq, `id ${id} is used twice in "${name}" (channels and irqs share ids)`);
        ids.set(id, irq.line);
      }
      const arm = irq.attrs.has('irq');
      const ioapic = irq.attrs.has('pin');
      const msi = irq.attrs.has('pcidev');
      if (Number(arm) + Number(ioapic) + Number(msi) !== 1) {
        bad(
          irq,
          'an irq needs exactly one of irq= (ARM, RISC-V), pin= (x86 IOAPIC) or pcidev= (x86 MSI)',
        );
        continue;
      }
      if (ioapic || msi) num(irq, 'vector', 0, 107);
      const key = arm
        ? `irq ${num(irq, 'irq', 0, 0xffffff) ?? '?'}`
        : ioapic
          ? `ioapic ${num(irq, 'ioapic', 0, 255) ?? 0} pin ${num(irq, 'pin', 0, 255) ?? '?'}`
          : `msi ${irq.attrs.get('pcidev') ?? ''}`;
      const seen = irqs.get(key);
      if (seen !== undefined) bad(irq, `${key} is already delivered to a PD (line ${seen})`);
      irqs.set(key, irq.line);
    }
    const vms = pd.children.filter((c) => c.name === 'virtual_machine');
    if (vms.length > 1)
      bad(pd, `"${name}" has ${vms.length} virtual machines; a PD manages at most one`);
    for (const vm of vms) {
      const vmName = vm.attrs.get('name') ?? '';
      if (pds.has(vmName) || vmNames.has(vmName)) bad(vm, `the name "${vmName}" is used twice`);
      vmNames.add(vmName);
      num(vm, 'priority', 0, 254);
      const vcpus = vm.children.filter((c) => c.name === 'vcpu');
      if (vcpus.length === 0) bad(vm, `virtual machine "${vmName}" has no vcpu`);
      const vcpuIds = new Set<number>();
      for (const v of vcpus) {
        const id = num(v, 'id', 0, 61);
        if (id !== undefined && vcpuIds.has(id)) bad(v, `vcpu id ${id} is used twice`);
        if (id !== undefined) vcpuIds.add(id);
      }
      checkMaps(vm, { owner: vmName, maps: [] }, false);
    }
    for (const sv of pd.children.filter((c) => c.name === 'setvar')) {
      const mr = sv.attrs.get('region_paddr') ?? '';
      if (!regions.has(mr)) bad(sv, `setvar of an unknown memory region "${mr}"`);
    }
  }

  // Channels: two ends, existing and different PDs, ids free, PPCs upwards only.
  for (const ch of root.children.filter((c) => c.name === 'channel')) {
    const ends = ch.children.filter((c) => c.name === 'end');
    if (ends.length !== 2) {
      bad(ch, `a channel has exactly two ends, not ${ends.length}`);
      continue;
    }
    const names = ends.map((e) => e.attrs.get('pd') ?? '');
    if (names[0] === names[1]) bad(ch, `both ends of the channel are "${names[0] ?? ''}"`);
    for (const [i, end] of ends.entries()) {
      const pdName = names[i] ?? '';
      const pd = pds.get(pdName);
      bool(end, 'notify');
      const pp = bool(end, 'pp');
      if (!pd) {
        bad(
          end,
          vmNames.has(pdName)
            ? `"${pdName}" is a virtual machine: a channel ends at its VMM's PD`
            : `channel end names an unknown PD "${pdName}"`,
        );
        continue;
      }
      const id = num(end, 'id', 0, MAX_ID);
      if (id !== undefined) {
        const seen = pd.ids.get(id);
        if (seen !== undefined) bad(end, `id ${id} is used twice in "${pdName}" (line ${seen})`);
        pd.ids.set(id, end.line);
      }
      const other = pds.get(names[1 - i] ?? '');
      if (pp && other && other.priority <= pd.priority) {
        bad(
          end,
          `a PPC from "${pdName}" (priority ${pd.priority}) to "${names[1 - i] ?? ''}" (priority ${other.priority}): the callee must have a strictly higher priority`,
        );
      }
    }
  }
  return { ok: problems.length === 0, problems };
}

function permOrder(a: string, b: string): number {
  return 'rwx'.indexOf(a) - 'rwx'.indexOf(b);
}
