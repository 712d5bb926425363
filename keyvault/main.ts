/**
 * The vault command: local admin operations (init, status, doctor) and the vault compartment
 * process itself (serve). Run as `node keyvault/main.ts <command>`.
 *
 * Output rules: errors are one line `vault: <message>` on stderr, exit 1 (2 for usage), never a
 * stack trace; secrets are never printed and never accepted in argv.
 */
import { fstatSync } from 'node:fs';
import { Socket } from 'node:net';
import { loadVaultConfig, openVault } from './open.ts';
import { socketChannel } from './common/rpc/index.ts';
import { refuseInspector } from './common/spawn.ts';
import { serveVault } from './server.ts';
import {
  type BackendName,
  type DoctorCheck,
  type Vault,
  type VaultBackend,
  VaultError,
  type VaultErrorCode,
  type VaultStatus,
} from './vault.ts';
import { UsageError, oneLine, parseCommandLine, pickCommand, runMain } from './common/cli-main.ts';
import {
  BACKUP_KEY_ACTIONS,
  BACKUP_KEY_HELP,
  type BackupKeyAction,
  type BackupKeyArgs,
  backupKeyCommand,
} from './backup/cli.ts';

const COMMANDS = {
  init: 'provision what is missing (store key, counter, signing keys); never replaces a key',
  status: 'show the backend, what is provisioned, and any warnings',
  doctor: 'check the hardware can do what the config needs; exit 1 if a check fails',
  serve: 'run the vault compartment: serve the vault RPC on file descriptor 3',
  'backup-key': "show, create or import the key backup's key (show|create|import)",
} as const;
type Command = keyof typeof COMMANDS;

const NO_SECRETS = `There is no --pin option, on purpose: argv is visible to every user on the machine.
PINs and auth values come from a file or an environment variable named in the config.`;

const HELP = `Usage: node keyvault/main.ts <command> --config FILE [--json]

The keyvault compartment: the only process that touches the TPM or HSM.

Commands:
${Object.entries(COMMANDS)
  .map(([name, what]) => `  ${name.padEnd(12)}${what}`)
  .join('\n')}

Options:
  --config FILE  the vault config (JSON; see keyvault/config.ts)
  --json         machine-readable output (init, status, doctor)
  -h, --help     this help; "<command> --help" for one command

${NO_SECRETS}

Exit status: 0 ok, 1 failure, 2 usage error.
`;

const COMMAND_HELP: Record<Command, string> = {
  init: `Usage: node keyvault/main.ts init --config FILE [--json]

Creates whatever is missing: the store key, the anti-rollback counter, the signing keys
(cross-signing-master: Ed25519; x509-identity: RSA-PSS SHA-512). Existing keys are kept,
never replaced, so running it again is safe. Prints what was created and what was kept.

${NO_SECRETS}
`,
  status: `Usage: node keyvault/main.ts status --config FILE [--json]

Shows the backend, its identity (TPM vendor, token, or "software"), what is provisioned,
how strong the counter is, and any warnings. --json prints the status object.
`,
  doctor: `Usage: node keyvault/main.ts doctor --config FILE [--json]

Checks that the hardware and the state directory can do everything the config needs.
Exits 1 if any check fails; each failure says what to fix.
`,
  serve: `Usage: node keyvault/main.ts serve --config FILE

Runs the vault compartment. It listens on nothing: it serves the vault RPC on file
descriptor 3, a socketpair its launcher (keyvault/spawn.ts, deploy/) passes in, so the
endpoint holding the other end is its only client. When that channel closes, the vault
closes and exits 0. A vault that cannot open (a wrong or locked PIN, a missing token, a bad
config) still answers every call on the channel with that error and its code (e.g.
VAULT_WRONG_PIN), so its peer learns why, and exits 1 when the channel closes.

${NO_SECRETS}
`,
  'backup-key': BACKUP_KEY_HELP,
};

type Invocation =
  | { command: 'help'; text: string }
  | { command: Exclude<Command, 'backup-key'>; config: string; json: boolean }
  | { command: 'backup-key'; config: string; args: BackupKeyArgs };

function parse(argv: string[]): Invocation {
  const parsed = parseCommandLine(argv, {
    config: { type: 'string' },
    json: { type: 'boolean', default: false },
    help: { type: 'boolean', short: 'h', default: false },
    mode: { type: 'string' },
    'escrow-cert': { type: 'string' },
    out: { type: 'string' },
    replace: { type: 'boolean', default: false },
  });
  const { values } = parsed;
  // backup-key takes an action word after it; every other command takes none.
  const positionals = [...parsed.positionals];
  const action = positionals[0] === 'backup-key' ? positionals.splice(1, 1)[0] : undefined;
  const picked = pickCommand(positionals, values.help, { main: HELP, commands: COMMAND_HELP });
  if ('help' in picked) return { command: 'help', text: picked.help };
  const name = picked.command;
  if (values.config === undefined) throw new UsageError(`${name}: --config FILE is required`);
  if (name === 'serve' && values.json) throw new UsageError('serve: --json is not an option here');
  const backupOptions = [values.mode, values['escrow-cert'], values.out];
  if (name === 'backup-key') {
    if (action === undefined || !(BACKUP_KEY_ACTIONS as readonly string[]).includes(action)) {
      throw new UsageError(`backup-key: expected one of ${BACKUP_KEY_ACTIONS.join(', ')}`);
    }
    return {
      command: name,
      config: values.config,
      args: {
        action: action as BackupKeyAction,
        json: values.json,
        mode: values.mode,
        escrowCert: values['escrow-cert'],
        out: values.out,
        replace: values.replace,
      },
    };
  }
  if (backupOptions.some((v) => v !== undefined) || values.replace) {
    throw new UsageError(`${name}: --mode, --escrow-cert, --out and --replace are for backup-key`);
  }
  return { command: name, config: values.config, json: values.json };
}

async function run(argv: string[]): Promise<number> {
  const invocation = parse(argv);
  if (invocation.command === 'help') {
    process.stdout.write(invocation.text);
    return 0;
  }
  if (invocation.command === 'serve') return serve(invocation.config);
  const config = await loadVaultConfig(invocation.config);
  if (invocation.command === 'doctor') {
    // A vault that will not even open is exactly when doctor matters: report, do not just fail.
    let opened: VaultBackend;
    try {
      opened = await openVault(config);
    } catch (e) {
      const detail = e instanceof Error ? e.message : 'failed';
      const checks: DoctorCheck[] =
        config.backend === 'pkcs11'
          ? await (await import('./pkcs11/index.ts')).diagnosePkcs11(config)
          : [{ check: 'open the vault', ok: false, detail }];
      return report(checks, invocation.json);
    }
    try {
      return report(await opened.doctor(), invocation.json);
    } finally {
      await opened.close();
    }
  }
  const vault = await openVault(config);
  try {
    switch (invocation.command) {
      case 'init':
        return await init(vault, invocation.json);
      case 'status':
        return await status(vault, invocation.json);
      case 'backup-key':
        return await backupKeyCommand(vault, config.stateDir, invocation.args);
    }
  } finally {
    await vault.close();
  }
}

async function init(vault: VaultBackend, json: boolean): Promise<number> {
  const report = await vault.provision();
  if (json) {
    print(JSON.stringify({ backend: vault.backend, ...report }));
    return 0;
  }
  for (const what of report.created) print(`created  ${what}`);
  for (const what of report.kept) print(`kept     ${what}`);
  if (report.created.length === 0) print('nothing to do: everything was already provisioned');
  return 0;
}

async function status(vault: VaultBackend, json: boolean): Promise<number> {
  const s = await vault.status();
  if (json) {
    print(JSON.stringify(s));
    return 0;
  }
  printTable(statusRows(s));
  return 0;
}

function statusRows(s: VaultStatus): [string, string][] {
  const yesNo = (b: boolean) => (b ? 'provisioned' : 'missing');
  const list = (items: string[]) => (items.length > 0 ? items.join(', ') : 'none');
  return [
    ['backend', s.backend],
    ['identity', s.identity],
    ['store key', yesNo(s.provisioned.storeKey)],
    ['counter', yesNo(s.provisioned.counter)],
    ['signing keys', list(s.provisioned.purposes)],
    ['attestation key', yesNo(s.provisioned.attestationKey)],
    ['capabilities', list(s.capabilities.found)],
    ['missing', list(s.capabilities.missing)],
    ['counter guarantee', s.counterGuarantee],
    ...s.warnings.map((w): [string, string] => ['WARNING', w]),
  ];
}

function report(checks: DoctorCheck[], json: boolean): number {
  const ok = checks.every((c) => c.ok);
  if (json) {
    print(JSON.stringify({ ok, checks }));
  } else {
    printTable(
      checks.map((c) => [c.ok ? 'ok' : 'FAIL', c.ok ? c.check : `${c.check}: ${c.detail}`]),
    );
  }
  return ok ? 0 : 1;
}

/**
 * The compartment process: one channel (fd 3), one vault, exit when the channel closes.
 *
 * A vault that cannot open (a wrong or locked PIN, a missing token, a bad config) still
 * serves its channel, answering every call with that VaultError, and exits 1 once the channel
 * closes. Dying at once would leave its peer only the RPC's DISCONNECTED; this way the endpoint
 * (spawned or launched) learns the typed reason, e.g. VAULT_WRONG_PIN, from its first call.
 */
async function serve(configPath: string): Promise<number> {
  refuseInspector();
  let isSocket = false;
  try {
    isSocket = fstatSync(3).isSocket();
  } catch {
    // fd 3 not open: reported below.
  }
  if (!isSocket) {
    throw new Error(
      'serve needs its channel on file descriptor 3 (a socketpair from its launcher); it listens on nothing itself',
    );
  }
  let vault: VaultBackend;
  let refusal: VaultError | undefined;
  let backend: BackendName | undefined;
  try {
    const config = await loadVaultConfig(configPath);
    backend = config.backend;
    vault = await openVault(config);
  } catch (e) {
    if (!(e instanceof VaultError)) throw e;
    warn(`cannot open the vault: ${oneLine(e)} [${e.code}]; answering every call with it`);
    refusal = e;
    vault = refusingVault(e, backend);
  }
  const socket = new Socket({ fd: 3, readable: true, writable: true });
  const connection = serveVault(socketChannel(socket), vault, {
    // Local diagnostics only; the peer sees INTERNAL. No stack: it may hold values.
    onError: (e, { method }) => {
      warn(`internal error in ${method ?? 'a request'}: ${oneLine(e)}`);
    },
  });
  const stop = () => {
    connection.close();
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
  await connection.closed;
  await vault.close();
  return refusal ? 1 : 0;
}

/**
 * A vault that failed to open: every call is refused with the reason, as a fresh VaultError.
 * Its `backend` is never sent (status is refused too); 'dev' stands in when the config itself
 * did not load.
 */
function refusingVault(reason: VaultError, backend: BackendName = 'dev'): VaultBackend {
  const refuse = (): Promise<never> =>
    Promise.reject(new VaultError(reason.code as VaultErrorCode, reason.message));
  const calls: Omit<Vault, 'backend' | 'close'> = {
    storeKey: refuse,
    counterRead: refuse,
    counterIncrement: refuse,
    publicKey: refuse,
    sign: refuse,
    quote: refuse,
    attestationIdentity: refuse,
    activateCredential: refuse,
    random: refuse,
    status: refuse,
    backupKey: refuse,
    backupDecrypt: refuse,
  };
  return {
    backend,
    ...calls,
    provision: refuse,
    doctor: refuse,
    sealSecret: refuse,
    unsealSecret: refuse,
    close: () => Promise.resolve(),
  };
}

function printTable(rows: [string, string][]): void {
  const width = Math.max(...rows.map(([k]) => k.length)) + 2;
  for (const [k, v] of rows) print(`${k.padEnd(width)}${v}`);
}

function print(line: string): void {
  process.stdout.write(`${line}\n`);
}

function warn(line: string): void {
  process.stderr.write(`vault: ${line}\n`);
}

runMain('vault', run);
