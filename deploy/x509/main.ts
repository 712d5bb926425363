/**
 * The certificate tool: `node deploy/x509/main.ts <command>`. Makes a root CA, an intermediate,
 * leaves for Matrix users (for a new key or a given public key, e.g. the vault's), and checks
 * a chain against the rules peers apply. Errors are one line on stderr; exit 0 ok, 1 failure
 * (or a rejected chain), 2 usage. Private keys are written 0600 and never replaced.
 */
import { X509Certificate } from 'node:crypto';
import {
  UsageError,
  parseCommandLine,
  pickCommand,
  runMain,
} from '../../keyvault/common/cli-main.ts';
import {
  type CheckReport,
  KEY_TYPES,
  type KeyType,
  checkChain,
  createIntermediateCa,
  createRootCa,
  isKeyType,
  issueLeaf,
  loadSigningKey,
  readText,
  splitPem,
  writePrivateKey,
  writePublicFile,
} from './index.ts';

const COMMANDS = {
  ca: 'create a self-signed root CA (RSA-3072 or ECDSA P-256)',
  intermediate: 'create an intermediate CA signed by a CA',
  issue: "issue a leaf for a Matrix user (new RSA key, a given public key, or the vault's)",
  check: 'check a chain against a user id and CAs, with the rules peers apply',
} as const;
type Command = keyof typeof COMMANDS;

const HELP = `Usage: node deploy/x509/main.ts <command> [options] [--json]

X.509 identities for Matrix users (what the Rust crypto core in Element and matrix-js-sdk accepts).

Commands:
${Object.entries(COMMANDS)
  .map(([n, w]) => `  ${n.padEnd(14)}${w}`)
  .join('\n')}

"<command> --help" for one command. Exit status: 0 ok, 1 failure or rejected chain, 2 usage error.
`;

const COMMAND_HELP: Record<Command, string> = {
  ca: `Usage: node deploy/x509/main.ts ca --out PREFIX [--name CN] [--org O] [--key-type TYPE] [--days N] [--json]

Writes PREFIX.pem (the certificate) and PREFIX.key (PKCS#8, mode 0600; never replaced).
--key-type: ${KEY_TYPES.join(', ')} (default rsa-3072). --days: default 3650.
`,
  intermediate: `Usage: node deploy/x509/main.ts intermediate --ca CA.pem --ca-key CA.key --out PREFIX [--name CN] [--org O] [--key-type TYPE] [--days N] [--json]

Writes PREFIX.pem and PREFIX.key (0600). Default key type rsa-3072, 1825 days, path length 0.
Known bug in peers: the leaf's certificate must sort before the intermediate's in DER order;
"check" reports when it does not (see deploy/x509/README.md).
`,
  issue: `Usage: node deploy/x509/main.ts issue --user @LOCAL:SERVER --ca ISSUER.pem --ca-key ISSUER.key --out PREFIX
       [--public-key FILE | --vault-config VAULT.json] [--chain INTERMEDIATES.pem] [--root ROOT.pem] [--days N] [--json]

Issues a leaf with SAN URI matrix:u/LOCAL:SERVER, SKI, AKI, EKU clientAuth and an RSA key:
  --public-key FILE       the leaf's public key (SubjectPublicKeyInfo, DER or PEM)
  --vault-config FILE     the vault's x509-identity key (opens the vault briefly; the endpoint
                          must not be running on a TPM simulator that takes one client)
  (neither)               a new RSA-2048 key, written to PREFIX.key (0600)
When ISSUER is an intermediate, --chain names the certificates above it except the root
(often none) and --root the root, so the result is checked end to end.
Writes PREFIX.pem (the leaf) and PREFIX.chain.pem (leaf, then intermediates; the root left
out): the file the endpoint's x509.chain names. Refuses a leaf peers would reject.
`,
  check: `Usage: node deploy/x509/main.ts check --user @LOCAL:SERVER --chain CHAIN.pem [--ca ROOT.pem ...] [--json]

Checks the chain (leaf first, root left out) the way peers do: RSA leaf, SKI, SAN naming the
user, EKU with clientAuth if present, AKI on the last certificate, CA keys RSA or P-256 (no
brainpool), validity now, signatures up to a given root, and the CMS ordering bug.
Exit 0 when peers would accept it, 1 when not (each problem on its own line).
`,
};

interface Ctx {
  values: Record<string, string | boolean | string[] | undefined>;
  json: boolean;
}

function parse(argv: string[]): { command: 'help'; text: string } | { command: Command; ctx: Ctx } {
  const { values, positionals } = parseCommandLine(argv, {
    out: { type: 'string' },
    name: { type: 'string' },
    org: { type: 'string' },
    'key-type': { type: 'string' },
    days: { type: 'string' },
    ca: { type: 'string', multiple: true },
    'ca-key': { type: 'string' },
    user: { type: 'string' },
    'public-key': { type: 'string' },
    'vault-config': { type: 'string' },
    chain: { type: 'string' },
    root: { type: 'string' },
    json: { type: 'boolean', default: false },
    help: { type: 'boolean', short: 'h', default: false },
  });
  const picked = pickCommand(positionals, values.help, { main: HELP, commands: COMMAND_HELP });
  if ('help' in picked) return { command: 'help', text: picked.help };
  const name = picked.command;
  return { command: name, ctx: { values, json: values.json } };
}

/** A new CA's key (0600, never overwritten) and certificate, and what to tell the user. */
async function writeCa(
  ctx: Ctx,
  ca: { keyPem?: string; certPem: string; skiBase64: string; notAfter: Date },
  out: string,
): Promise<number> {
  await writePrivateKey(`${out}.key`, ca.keyPem ?? '');
  await writePublicFile(`${out}.pem`, ca.certPem);
  return done(ctx, {
    cert: `${out}.pem`,
    key: `${out}.key`,
    ski: ca.skiBase64,
    notAfter: ca.notAfter.toISOString(),
  });
}

function str(ctx: Ctx, key: string, command: string): string {
  const v = ctx.values[key];
  if (typeof v !== 'string' || v === '') throw new UsageError(`${command}: --${key} is required`);
  return v;
}

function opt(ctx: Ctx, key: string): string | undefined {
  const v = ctx.values[key];
  return typeof v === 'string' ? v : undefined;
}

function days(ctx: Ctx, command: string): { days?: number } {
  const v = opt(ctx, 'days');
  if (v === undefined) return {};
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1 || n > 36500) {
    throw new UsageError(`${command}: --days must be a whole number from 1 to 36500`);
  }
  return { days: n };
}

function keyType(ctx: Ctx, command: string): { keyType?: KeyType } {
  const v = opt(ctx, 'key-type');
  if (v === undefined) return {};
  if (!isKeyType(v))
    throw new UsageError(`${command}: --key-type must be one of ${KEY_TYPES.join(', ')}`);
  return { keyType: v };
}

function allowOnly(ctx: Ctx, command: string, allowed: string[]): void {
  for (const [k, v] of Object.entries(ctx.values)) {
    if (v === undefined || k === 'json' || k === 'help' || allowed.includes(k)) continue;
    throw new UsageError(`${command}: --${k} is not an option here`);
  }
}

function print(line: string): void {
  process.stdout.write(`${line}\n`);
}

async function run(argv: string[]): Promise<number> {
  const p = parse(argv);
  if (p.command === 'help') {
    process.stdout.write(p.text);
    return 0;
  }
  const { ctx } = p;
  switch (p.command) {
    case 'ca': {
      allowOnly(ctx, 'ca', ['out', 'name', 'org', 'key-type', 'days']);
      const out = str(ctx, 'out', 'ca');
      const org = opt(ctx, 'org');
      const ca = await createRootCa({
        commonName: opt(ctx, 'name') ?? 'Matrix identity root CA',
        ...(org ? { organisation: org } : {}),
        ...keyType(ctx, 'ca'),
        ...days(ctx, 'ca'),
      });
      return writeCa(ctx, ca, out);
    }
    case 'intermediate': {
      allowOnly(ctx, 'intermediate', ['ca', 'ca-key', 'out', 'name', 'org', 'key-type', 'days']);
      const issuer = await loadIssuer(ctx, 'intermediate');
      const out = str(ctx, 'out', 'intermediate');
      const org = opt(ctx, 'org');
      const ca = await createIntermediateCa(issuer, {
        commonName: opt(ctx, 'name') ?? 'Matrix identity intermediate CA',
        ...(org ? { organisation: org } : {}),
        ...keyType(ctx, 'intermediate'),
        ...days(ctx, 'intermediate'),
      });
      return writeCa(ctx, ca, out);
    }
    case 'issue': {
      allowOnly(ctx, 'issue', [
        'user',
        'ca',
        'ca-key',
        'out',
        'public-key',
        'vault-config',
        'chain',
        'root',
        'days',
      ]);
      const user = str(ctx, 'user', 'issue');
      const out = str(ctx, 'out', 'issue');
      const issuer = await loadIssuer(ctx, 'issue');
      const publicKeyFile = opt(ctx, 'public-key');
      const vaultConfig = opt(ctx, 'vault-config');
      if (publicKeyFile && vaultConfig) {
        throw new UsageError('issue: give --public-key or --vault-config, not both');
      }
      let publicKey: Uint8Array | undefined;
      if (publicKeyFile) publicKey = await readBytes(publicKeyFile);
      if (vaultConfig) publicKey = await vaultPublicKey(vaultConfig);
      const selfSigned = isSelfSigned(issuer.certPem);
      const above = opt(ctx, 'chain') ? splitPem(await readText(str(ctx, 'chain', 'issue'))) : [];
      const intermediates = selfSigned ? [] : [issuer.certPem, ...above];
      const rootFile = opt(ctx, 'root');
      const roots = selfSigned ? [issuer.certPem] : rootFile ? [await readText(rootFile)] : [];
      const leaf = await issueLeaf(issuer, {
        userId: user,
        ...(publicKey ? { publicKey } : {}),
        intermediatesPem: intermediates,
        rootsPem: roots,
        ...days(ctx, 'issue'),
      });
      if (leaf.keyPem) await writePrivateKey(`${out}.key`, leaf.keyPem);
      await writePublicFile(`${out}.pem`, leaf.certPem);
      await writePublicFile(
        `${out}.chain.pem`,
        [leaf.certPem, ...intermediates.map(normalise)].join(''),
      );
      return done(ctx, {
        cert: `${out}.pem`,
        chain: `${out}.chain.pem`,
        ...(leaf.keyPem ? { key: `${out}.key` } : {}),
        user,
        ski: leaf.skiBase64,
        notAfter: leaf.notAfter.toISOString(),
        ...(roots.length === 0
          ? { warning: 'no --root given: the chain was not checked up to a root' }
          : {}),
      });
    }
    case 'check': {
      allowOnly(ctx, 'check', ['user', 'chain', 'ca']);
      const user = str(ctx, 'user', 'check');
      const chainPem = await readText(str(ctx, 'chain', 'check'));
      const cas = (ctx.values.ca as string[] | undefined) ?? [];
      const roots = await Promise.all(cas.map((f) => readText(f)));
      const report = checkChain({ chainPem, userId: user, rootsPem: roots });
      printReport(report, ctx.json);
      return report.ok ? 0 : 1;
    }
  }
}

function done(ctx: Ctx, result: Record<string, string>): number {
  if (ctx.json) print(JSON.stringify({ ok: true, ...result }));
  else for (const [k, v] of Object.entries(result)) print(`${k.padEnd(10)}${v}`);
  return 0;
}

function printReport(r: CheckReport, json: boolean): void {
  if (json) {
    print(JSON.stringify(r));
    return;
  }
  print(r.ok ? `accepted  ${r.userId}` : `REJECTED  ${r.userId}`);
  for (const p of r.problems) print(`problem   ${p.code}: ${p.message}`);
  for (const w of r.warnings) print(`warning   ${w}`);
  if (r.signatureKeyId) print(`key id    ${r.signatureKeyId}`);
  if (r.notAfterMs !== undefined) print(`valid to  ${new Date(r.notAfterMs).toISOString()}`);
}

async function loadIssuer(ctx: Ctx, command: string) {
  const cas = ctx.values.ca as string[] | undefined;
  if (!cas || cas.length !== 1)
    throw new UsageError(`${command}: --ca ISSUER.pem is required, once`);
  const certPem = await readText(cas[0] ?? '');
  if (splitPem(certPem).length !== 1) {
    throw new UsageError(`${command}: --ca must hold exactly one certificate`);
  }
  const key = await loadSigningKey(await readText(str(ctx, 'ca-key', command)));
  const cert = new X509Certificate(certPem);
  if (!cert.ca) throw new UsageError(`${command}: --ca is not a CA certificate`);
  if (!cert.checkPrivateKey(await nodePrivateKey(str(ctx, 'ca-key', command)))) {
    throw new UsageError(`${command}: --ca-key does not belong to --ca`);
  }
  return { certPem, key };
}

async function nodePrivateKey(path: string) {
  const { createPrivateKey } = await import('node:crypto');
  return createPrivateKey(await readText(path));
}

function isSelfSigned(pem: string): boolean {
  const c = new X509Certificate(pem);
  return c.checkIssued(c) && c.verify(c.publicKey);
}

function normalise(pem: string): string {
  return pem.trim() + '\n';
}

async function readBytes(path: string): Promise<Uint8Array> {
  const { readFile } = await import('node:fs/promises');
  try {
    return new Uint8Array(await readFile(path));
  } catch (e) {
    throw new Error(`cannot read ${path} (${(e as NodeJS.ErrnoException).code ?? 'error'})`, {
      cause: e,
    });
  }
}

/** The vault's x509-identity public key (the vault command itself has no subcommand for it). */
async function vaultPublicKey(configPath: string): Promise<Uint8Array> {
  const { loadVaultConfig, openVault } = await import('../../keyvault/open.ts');
  const vault = await openVault(await loadVaultConfig(configPath));
  try {
    return (await vault.publicKey('x509-identity')).spki;
  } finally {
    await vault.close();
  }
}

runMain('x509', run);
