/**
 * The policy command: client tokens, policy checks, audit log verification.
 * Run as `node policy/main.ts <command> [<subcommand>] ...`.
 *
 * Output rules: errors are one line `policy: <message>` on stderr, exit 1 (2 for usage), never a
 * stack trace. A token is printed once, when it is created, and is never accepted in argv.
 */
import { describeBroken, verifyAuditLog } from './audit.ts';
import { readPolicyText, parsePolicy } from './load.ts';
import { CAPABILITIES } from './schema.ts';
import { createClient, listClients, revokeClient } from './tokens.ts';
import { UsageError, parseCommandLine, runMain } from '../keyvault/common/cli-main.ts';

const NO_SECRETS = `Tokens are printed once, by "token create", and never taken as arguments: argv is
visible to every user on the machine. The policy file holds only their SHA-256.`;

const HELP = `Usage: node policy/main.ts <command> [options]

The local API's policy: which UI clients may do what, and the audit log of what they did.

Commands:
  token create --policy FILE --name NAME --cap CAP [--cap CAP ...] [--room ID ...] [--rate N]
                 add a client; print its new token once (stdout)
  token list   --policy FILE           the clients, their capabilities and rooms (no tokens)
  token revoke --policy FILE --name NAME
                 remove a client; its token fails from the endpoint's next policy reload
  check        --policy FILE           validate a policy file; print every problem
  audit verify --log FILE              verify the audit log's hash chain, every segment

Options:
  --json         machine-readable output
  -h, --help     this help; "<command> --help" for one command

Capabilities: ${CAPABILITIES.join(', ')}

${NO_SECRETS}

Exit status: 0 ok, 1 failure (an invalid policy, a broken log), 2 usage error.
`;

const COMMAND_HELP = {
  'token create': `Usage: node policy/main.ts token create --policy FILE --name NAME --cap CAP [--cap CAP ...]
                                    [--room ID ...] [--rate N] [--json]

Adds a client to the policy file (created, mode 0600, if missing) with a new token: 32 random
bytes, base64url. The token goes to stdout, once; only its SHA-256 is stored. The file is
rewritten atomically under a lock, keeping its mode. A running endpoint uses the new client
after its next policy reload.

  --name NAME   1-64 characters of a-z 0-9 . _ -; must not exist already
  --cap CAP     a capability (repeat for more): ${CAPABILITIES.join(', ')}
  --room ID     limit the client to this room (repeat for more); default: every room
  --rate N      requests per minute (default 300)
  --json        print {"name", "token", "capabilities", "rooms", "created"}

${NO_SECRETS}
`,
  'token list': `Usage: node policy/main.ts token list --policy FILE [--json]

Lists the clients: name, capabilities, rooms, rate limit, when created. No tokens or hashes.
`,
  'token revoke': `Usage: node policy/main.ts token revoke --policy FILE --name NAME [--json]

Removes the client. The endpoint refuses its token (UNAUTHENTICATED) from its next policy
reload on.
`,
  check: `Usage: node policy/main.ts check --policy FILE [--json]

Validates the policy file and prints every problem with its JSON path. Exit 1 if any.
`,
  'audit verify': `Usage: node policy/main.ts audit verify --log FILE [--json]

Verifies the audit log FILE with its sealed segments (FILE.000001, FILE.000002, ...), oldest
first, as one chain: every entry's hash, its seq (one more than the last) and its prevHash (the
last entry's hash), across segments too. Prints OK with the number of entries and segments, and
how many older entries were pruned (deleted for the size bound, as an audit.prune entry
records), or the first problem (file, line, seq, and why: unparsable, invalid entry, hash
mismatch, seq gap, prevHash mismatch, torn tail; segment missing, truncated or reordered; prune
mismatch) and exits 1. Entries cut off the end leave no trace in the files themselves: compare
the head printed here with one recorded elsewhere.
`,
} as const;
type Command = keyof typeof COMMAND_HELP;

interface Values {
  policy?: string | undefined;
  log?: string | undefined;
  name?: string | undefined;
  cap?: string[] | undefined;
  room?: string[] | undefined;
  rate?: string | undefined;
  json: boolean;
  help: boolean;
}

const ALLOWED: Record<Command, (keyof Values)[]> = {
  'token create': ['policy', 'name', 'cap', 'room', 'rate'],
  'token list': ['policy'],
  'token revoke': ['policy', 'name'],
  check: ['policy'],
  'audit verify': ['log'],
};

type Invocation = { command: 'help'; text: string } | { command: Command; values: Values };

function parse(argv: string[]): Invocation {
  const parsed = parseCommandLine(argv, {
    policy: { type: 'string' },
    log: { type: 'string' },
    name: { type: 'string' },
    cap: { type: 'string', multiple: true },
    room: { type: 'string', multiple: true },
    rate: { type: 'string' },
    json: { type: 'boolean', default: false },
    help: { type: 'boolean', short: 'h', default: false },
  });
  const { values, positionals } = parsed;
  if (positionals.length === 0) {
    if (values.help) return { command: 'help', text: HELP };
    throw new UsageError('no command given (try --help)');
  }
  if (positionals[0] === 'help') {
    const topic = positionals.slice(1).join(' ');
    if (topic === '') return { command: 'help', text: HELP };
    if (!isCommand(topic)) throw new UsageError('help: unknown command');
    return { command: 'help', text: COMMAND_HELP[topic] };
  }
  const [first = '', second] = positionals;
  if (first === 'token' && second === undefined && values.help) {
    const all = [
      COMMAND_HELP['token create'],
      COMMAND_HELP['token list'],
      COMMAND_HELP['token revoke'],
    ];
    return { command: 'help', text: all.join('\n') };
  }
  if (first === 'audit' && second === undefined && values.help) {
    return { command: 'help', text: COMMAND_HELP['audit verify'] };
  }
  const name = first === 'check' ? first : `${first} ${second ?? ''}`.trim();
  if (!isCommand(name)) {
    // Echo only what looks like a command name: a mistyped secret must not reach a log.
    const shown = /^[a-z][a-z -]{0,29}$/.test(name) ? ` "${name}"` : '';
    throw new UsageError(
      `unknown command${shown} (commands: ${Object.keys(COMMAND_HELP).join(', ')})`,
    );
  }
  if (values.help) return { command: 'help', text: COMMAND_HELP[name] };
  const used = name.split(' ').length;
  if (positionals.length > used) throw new UsageError(`${name}: unexpected extra arguments`);
  const allowed = new Set<string>([...ALLOWED[name], 'json', 'help']);
  // parseArgs leaves out options that were not given (json and help have defaults: allowed).
  for (const option of Object.keys(values)) {
    if (!allowed.has(option)) {
      throw new UsageError(`${name}: --${option} is not an option here`);
    }
  }
  const file = name === 'audit verify' ? 'log' : 'policy';
  if (values[file] === undefined) throw new UsageError(`${name}: --${file} FILE is required`);
  if ((name === 'token create' || name === 'token revoke') && values.name === undefined) {
    throw new UsageError(`${name}: --name NAME is required`);
  }
  if (name === 'token create' && (values.cap ?? []).length === 0) {
    throw new UsageError(
      `token create: give at least one --cap (capabilities: ${CAPABILITIES.join(', ')})`,
    );
  }
  return { command: name, values };
}

function isCommand(name: string): name is Command {
  return Object.hasOwn(COMMAND_HELP, name);
}

async function run(argv: string[]): Promise<number> {
  const invocation = parse(argv);
  if (invocation.command === 'help') {
    process.stdout.write(invocation.text);
    return 0;
  }
  const { values } = invocation;
  const json = values.json;
  const policy = values.policy ?? '';
  switch (invocation.command) {
    case 'token create': {
      let rate: number | undefined;
      if (values.rate !== undefined) {
        rate = /^\d{1,6}$/.test(values.rate) ? Number(values.rate) : Number.NaN;
      }
      const created = await createClient(policy, {
        name: values.name ?? '',
        capabilities: values.cap ?? [],
        rooms: values.room,
        requestsPerMinute: rate,
      });
      if (json) {
        const { name, token, capabilities, rooms } = created;
        print(JSON.stringify({ name, token, capabilities, rooms, created: created.created }));
      } else {
        print(created.token);
        note(
          `client "${created.name}" added to ${policy}${created.createdFile ? ' (new file)' : ''} ` +
            `with ${created.capabilities.join(', ')}` +
            (created.rooms ? ` in ${created.rooms.length} room(s)` : '') +
            '. The token above is shown only this once; the endpoint uses it after its next policy reload.',
        );
      }
      return 0;
    }
    case 'token list': {
      const clients = await listClients(policy);
      if (json) {
        print(JSON.stringify({ clients }));
        return 0;
      }
      if (clients.length === 0) {
        print('no clients');
        return 0;
      }
      printTable([
        ['NAME', 'CREATED', 'RATE/MIN', 'ROOMS', 'CAPABILITIES'],
        ...clients.map((c) => [
          c.name,
          c.created,
          String(c.requestsPerMinute),
          c.rooms ? c.rooms.join(',') : 'all',
          c.capabilities.join(','),
        ]),
      ]);
      return 0;
    }
    case 'token revoke': {
      const name = values.name ?? '';
      await revokeClient(policy, name);
      if (json) print(JSON.stringify({ revoked: name }));
      else print(`revoked "${name}"; its token fails from the endpoint's next policy reload`);
      return 0;
    }
    case 'check': {
      const result = parsePolicy(await readPolicyText(policy));
      if (json) {
        print(
          JSON.stringify(
            result.ok
              ? { ok: true, clients: result.policy.clients.length }
              : { ok: false, problems: result.problems },
          ),
        );
      } else if (result.ok) {
        print(`ok: ${policy} is a valid policy (${result.policy.clients.length} clients)`);
      } else {
        for (const p of result.problems) print(`${policy}: ${p.path}: ${p.message}`);
      }
      return result.ok ? 0 : 1;
    }
    case 'audit verify': {
      const log = values.log ?? '';
      let result;
      try {
        result = await verifyAuditLog(log);
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code ?? 'error';
        throw new Error(`cannot read the audit log ${log} (${code})`, { cause: e });
      }
      if (json) print(JSON.stringify(result));
      else if (result.ok) {
        const segments = result.segments > 1 ? ` across ${result.segments} segments` : '';
        const pruned =
          result.pruned > 0
            ? `; it starts after ${result.pruned} earlier entries were pruned, as recorded`
            : '';
        print(
          `OK: ${result.count} entries, chain intact${segments}` +
            (result.count > 0 ? ` (head seq ${result.head.seq}, hash ${result.head.hash})` : '') +
            pruned,
        );
      } else {
        print(
          `${log}: ${describeBroken(result.broken)} (${result.count} entries before it verify)`,
        );
      }
      return result.ok ? 0 : 1;
    }
  }
}

function printTable(rows: string[][]): void {
  const widths = rows[0]?.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length))) ?? [];
  for (const row of rows) {
    print(
      row
        .map((cell, i) => (i === row.length - 1 ? cell : cell.padEnd((widths[i] ?? 0) + 2)))
        .join(''),
    );
  }
}

function print(line: string): void {
  process.stdout.write(`${line}\n`);
}

function note(line: string): void {
  process.stderr.write(`${line}\n`);
}

runMain('policy', run);
