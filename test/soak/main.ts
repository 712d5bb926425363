/**
 * The soak and fault run (test/soak/lib.ts) from the command line: on demand, nightly with the
 * defaults (1,000 kills, a 60 s homeserver outage), or `--short` as CI runs it. Progress goes
 * to stderr, the counts to stdout (a table, or with --json one object). Exit code 1 when an
 * invariant failed (one line on stderr says which), 2 for a usage error.
 *
 *   node test/soak/main.ts [--kills N] [--short] [--outage-seconds S] [--json]
 */
import { parseArgs } from 'node:util';
import { type SoakOptions, type SoakResult, longOptions, runSoak, shortOptions } from './lib.ts';

const usage = `Usage: node test/soak/main.ts [options]

Kills the endpoint compartment (SIGKILL) at random points under send and receive load, during
first start and during store compactions, against real Synapse, swtpm and a stock
matrix-js-sdk peer; stops the homeserver once mid-conversation; kills the vault under load.
After each kill: the same device and identity, every received message decrypts; in the end
every accepted message was delivered exactly once.

  --kills N              endpoint kills in all (default 1000; --short: 20)
  --short                the CI mode: 20 kills, a 12 s outage, 2 vault kills
  --outage-seconds S     how long the homeserver is down, once (default 60; 0: no outage)
  --kills-per-life N     a fresh account, vault and TPM, with a first start, every N kills
                         (default 100)
  --first-start-kills N  kills aimed at each first start (default 4)
  --vault-kills N        vault kills under load (default 10)
  --compact-every N      journal records between store compactions (default 250; the
                         store's own is 2000, which makes compactions under load rare)
  --seed N               the schedule's seed (default: random; printed)
  --log-dir DIR          append each life's endpoint stderr to DIR/life-N.log
  --json                 the counts as one JSON object on stdout
  -h, --help             this text

On 2 cores about 2.6 s per kill under load, plus each life's first start and final count,
the vault kills and the outage: the default run takes about an hour, --short about 90 s.`;

function fail(message: string): never {
  process.stderr.write(`soak: ${message}\n${usage}\n`);
  process.exit(2);
}

function integer(name: string, raw: string | undefined, min: number, max: number) {
  if (raw === undefined) return undefined;
  const value = Number(raw);
  if (!Number.isSafeInteger(value) || value < min || value > max) {
    fail(`--${name} must be a whole number from ${min} to ${max}`);
  }
  return value;
}

let parsed;
try {
  parsed = parseArgs({
    options: {
      kills: { type: 'string' },
      short: { type: 'boolean' },
      'outage-seconds': { type: 'string' },
      'kills-per-life': { type: 'string' },
      'first-start-kills': { type: 'string' },
      'vault-kills': { type: 'string' },
      'compact-every': { type: 'string' },
      seed: { type: 'string' },
      'log-dir': { type: 'string' },
      json: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
  });
} catch (e) {
  fail(e instanceof Error ? e.message : String(e));
}
const { values: args } = parsed;
if (args.help) {
  process.stdout.write(`${usage}\n`);
  process.exit(0);
}
const base = args.short ? shortOptions() : longOptions();
const kills = integer('kills', args.kills, 1, 1_000_000) ?? base.kills;
const options: SoakOptions = {
  ...base,
  kills,
  killsPerLife:
    integer('kills-per-life', args['kills-per-life'], 1, 1_000_000) ?? base.killsPerLife,
  firstStartKills:
    integer('first-start-kills', args['first-start-kills'], 0, 100) ?? base.firstStartKills,
  vaultKills: integer('vault-kills', args['vault-kills'], 0, 10_000) ?? base.vaultKills,
  compactEvery: integer('compact-every', args['compact-every'], 1, 2000) ?? base.compactEvery,
  outageSeconds: integer('outage-seconds', args['outage-seconds'], 0, 3600) ?? base.outageSeconds,
  seed: integer('seed', args.seed, 0, 2 ** 32 - 1) ?? Math.floor(Math.random() * 2 ** 32),
  // Every round for short runs, every 10th for long ones.
  progressEvery: kills <= 50 ? 1 : base.progressEvery,
  ...(args['log-dir'] === undefined ? {} : { logDir: args['log-dir'] }),
  log: (line) => process.stderr.write(`${line}\n`),
};

// matrix-js-sdk (the stock peer, in this process) logs through console, loudest while the
// homeserver is down; stdout is for the counts, and progress has its own lines on stderr.
for (const method of ['log', 'info', 'debug', 'trace', 'warn', 'error'] as const) {
  console[method] = () => undefined;
}

process.stderr.write(
  `soak: ${options.kills} kills, ${options.killsPerLife} per life, outage ${options.outageSeconds} s, ` +
    `${options.vaultKills} vault kills, compaction every ${options.compactEvery} records, seed ${options.seed}\n`,
);
const result = await runSoak(options);
process.stdout.write(args.json ? `${JSON.stringify(result, null, 2)}\n` : table(result));
if (result.failures.length > 0) {
  for (const failure of result.failures.slice(1, 20)) process.stderr.write(`soak:   ${failure}\n`);
  process.stderr.write(
    `soak: FAILED: ${result.failures[0] ?? ''}${result.failures.length > 1 ? ` (and ${result.failures.length - 1} more, above)` : ''}\n`,
  );
  process.exit(1);
}
process.stderr.write('soak: every invariant held\n');
// The stock peer's SDK leaves timers behind; everything is stopped, so leave now.
process.exit(0);

function table(r: SoakResult): string {
  const k = r.kills;
  const m = r.messages;
  const o = r.outage;
  const v = r.vault;
  const phases = Object.entries(k.firstStartPhases)
    .map(([phase, n]) => `${n} ${phase}`)
    .join(', ');
  const rows: [string, string | number][] = [
    ['kills done', k.total],
    ['  during first start', `${k.firstStart}${phases ? ` (${phases})` : ''}`],
    ['  during a compaction', `${k.compaction} (${r.compactionsSeen} compactions seen)`],
    ['  aimed at a compaction, landed after it', k.compactionMissed],
    ['  under load', k.underLoad],
    ['lives (fresh account, vault, TPM)', r.lives],
    ['torn journal tails dropped at restart', r.tornTails],
    ['compactions abandoned (journal went on)', r.compactionsAbandoned],
    ['messages accepted', m.accepted],
    ['  delivered exactly once', m.deliveredOnce],
    ['  duplicates', m.duplicates],
    ['  lost', m.lost],
    ['  set aside by the outbox as refused', m.setAside],
    [
      'sends cut by a kill (at most once)',
      `${m.unacknowledged} (${m.unacknowledgedDelivered} arrived)`,
    ],
    ['messages received (from the peer)', r.received.sent],
    ['  decrypted', r.received.decrypted],
    ['  undecryptable', r.received.undecryptable],
    ['identity checks after restarts', r.identity.checks],
    ['  device changes (must be 0)', r.identity.deviceChanges],
    ['  identity changes (must be 0)', r.identity.identityChanges],
    ['  devices left by first-start kills', r.identity.orphanDevices],
    ['homeserver outage', o.homeserverShown === 'not-run' ? 'not run' : `${o.seconds} s`],
    ['  accepted during it', o.accepted],
    ['  pending shown by status (at its end)', `${o.pendingShown} (${o.pendingAtEnd})`],
    ['  delivered after', o.deliveredAfter],
    ['  lost', o.lost],
    ['  outbox drained after return', o.drainSeconds === null ? 'no' : `${o.drainSeconds} s`],
    ['  sync resumed by itself', o.syncRecovered ? 'yes' : 'no'],
    ['  status answers (slowest)', `${o.statusAnswers} (${o.statusMaxMs} ms)`],
    ['  homeserver shown unreachable', `${o.homeserverShown} (${o.healthEvents} health events)`],
    ['  shown reachable again', o.reachableAgain ? 'yes' : 'no'],
    ['vault kills', `${v.kills} (${v.duringCompaction} in a compaction)`],
    ['  recovered by itself', v.recovered],
    ['  shown unavailable: status, event stream', `${v.shown}, ${v.streamShown}`],
    ['  slowest status answer meanwhile', `${v.statusMaxMs} ms`],
    ['  messages accepted around them', v.accepted],
    ['  lost', v.lost],
    [
      'total time',
      `${r.seconds} s (${k.total > 0 ? (r.seconds / k.total).toFixed(1) : '-'} s per kill)`,
    ],
    ['seed', r.options.seed],
  ];
  const width = Math.max(...rows.map(([name]) => name.length));
  return `${rows.map(([name, value]) => `${name.padEnd(width)}  ${String(value)}`).join('\n')}\n`;
}
