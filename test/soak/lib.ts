/**
 * The soak and fault run behind `node test/soak/main.ts` and the short CI test
 * (test/integration/soak-short.test.ts). Against real Synapse, swtpm and a stock matrix-js-sdk
 * peer (bob), it kills the endpoint compartment with SIGKILL again and again:
 *
 * - during first start (store creation, login, device keys, the cross-signing bootstrap in the
 *   vault), on a fresh account, vault and TPM for every "life", until a start completes;
 * - under send and receive load, at random points;
 * - during store compactions, which it sees begin in the store directory (a snapshot.next being
 *   written) and proves afterwards from the files the kill left behind.
 *
 * After every kill the endpoint is started again and must come up with the same device, device
 * key and cross-signing identity, and every message bob sent before the kill must decrypt. At
 * the end of each life every accepted message must have reached bob exactly once. Once per run
 * the homeserver is stopped (not frozen) mid-conversation and started again on the same port
 * and data, and the vault compartment is killed under load (half of those kills timed to a
 * compaction, whose counter increment the dead vault may swallow): nothing accepted may be
 * lost, the endpoint must recover by itself, and the UI's status must say what is going on.
 *
 * Counts come back as a SoakResult; `failures` lists every broken invariant in one line each.
 */
import { type FSWatcher, appendFileSync, readFileSync, readdirSync, watch } from 'node:fs';
import { readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { type IEvent, MatrixEvent } from 'matrix-js-sdk';
import type { EndpointContract, StreamEvent } from '../../endpoint/contract.ts';
import { endpointContract } from '../../endpoint/contract.ts';
import { type RpcClient, createClient, socketChannel } from '../../keyvault/common/rpc/index.ts';
import { runnableEntry } from '../../keyvault/common/entries.ts';
import { type SpawnedProcess, spawnProcess } from '../../keyvault/common/spawn.ts';
import { verifyAuditLog } from '../../policy/index.ts';
import {
  type Swtpm,
  type Synapse,
  type SynapseUser,
  StockPeer,
  makeTempDir,
  prepareCompartments,
  readTimeline,
  startSwtpm,
  startSynapse,
  waitUntil,
} from '../fixtures/index.ts';

export interface SoakOptions {
  /** Kills of the endpoint compartment in all (first start, load and compaction rounds). */
  kills: number;
  /** A new account, vault and TPM after this many kills: each life begins with a first start. */
  killsPerLife: number;
  /** Kills aimed at each life's first start (fewer when a start completes before its kill). */
  firstStartKills: number;
  /** Load rounds are aimed at compactions until at least one kill in this many landed in one. */
  compactionRoundEvery: number;
  /** MTE_TEST_STORE_COMPACT_EVERY for the endpoint: journal records between compactions. */
  compactEvery: number;
  /** How long the homeserver stays down, once, in the middle of the first life; 0: never. */
  outageSeconds: number;
  /** Kills of the vault compartment under load, spread over the lives. */
  vaultKills: number;
  /** Seeds the schedule (kill times, round kinds); timing still varies from run to run. */
  seed: number;
  /** A progress line every this many kills (and one per phase). */
  progressEvery: number;
  /** Where to append each life's endpoint stderr (life-N.log), with times; none by default. */
  logDir?: string;
  log: (line: string) => void;
}

export function longOptions(): Omit<SoakOptions, 'log' | 'seed'> {
  return {
    kills: 1000,
    killsPerLife: 100,
    firstStartKills: 4,
    compactionRoundEvery: 4,
    compactEvery: 250,
    outageSeconds: 60,
    vaultKills: 10,
    progressEvery: 10,
  };
}

/** For CI: about as long as the 20-kill crash test it replaces, plus a short outage. */
export function shortOptions(): Omit<SoakOptions, 'log' | 'seed'> {
  return {
    kills: 20,
    killsPerLife: 20,
    firstStartKills: 3,
    compactionRoundEvery: 4,
    compactEvery: 250,
    outageSeconds: 12,
    vaultKills: 2,
    progressEvery: 1,
  };
}

export interface SoakResult {
  options: Omit<SoakOptions, 'log'>;
  lives: number;
  kills: {
    total: number;
    firstStart: number;
    /** What the first-start kills interrupted, by the last step the account shows done. */
    firstStartPhases: Record<string, number>;
    /** Proved by the files the kill left: a snapshot.next or a compaction's temp file. */
    compaction: number;
    /** Aimed at a compaction that had finished by the time the kill landed. */
    compactionMissed: number;
    /** A send of ours or of bob's was in flight when the kill landed. */
    underLoad: number;
  };
  /** Compactions seen starting in the store directories (by the watcher). */
  compactionsSeen: number;
  /** Starts after a kill that dropped a torn journal tail (an unacknowledged write). */
  tornTails: number;
  /** Compactions the store gave up on and carried on without (the vault down, mostly). */
  compactionsAbandoned: number;
  messages: {
    /** Sends the endpoint acknowledged (durably queued). */
    accepted: number;
    deliveredOnce: number;
    /** Extra copies bob received, of any message (acknowledged or cut by a kill). */
    duplicates: number;
    lost: number;
    /** Sends cut by a kill before their answer: each may arrive (at most once) or not. */
    unacknowledged: number;
    unacknowledgedDelivered: number;
    /** Sends the outbox set aside as refused for good (listed by failedSends). */
    setAside: number;
  };
  received: {
    /** Messages bob sent to the endpoint. */
    sent: number;
    decrypted: number;
    undecryptable: number;
  };
  identity: {
    /** Restarts after which device id, device key and master key were compared. */
    checks: number;
    deviceChanges: number;
    identityChanges: number;
    /** Devices a kill left on the account before the session was sealed (first start only). */
    orphanDevices: number;
  };
  outage: {
    seconds: number;
    /** Sends accepted while the homeserver was down. */
    accepted: number;
    /** The most pending sends the status call showed during the outage. */
    pendingShown: number;
    /** What it showed at the end of the outage: at least every send accepted during it. */
    pendingAtEnd: number;
    deliveredAfter: number;
    lost: number;
    duplicates: number;
    /** From the homeserver's return to an empty outbox, without any restart. */
    drainSeconds: number | null;
    /** A message bob sent after the return, decrypted by the endpoint: its sync came back. */
    syncRecovered: boolean;
    /** Status calls answered during the outage, and the slowest answer. */
    statusAnswers: number;
    statusMaxMs: number;
    /**
     * Whether status (or a health event) said the homeserver was unreachable: 'yes', 'no', or
     * 'not-reported' (the status has no homeserver field).
     */
    homeserverShown: 'yes' | 'no' | 'not-reported' | 'not-run';
    /** Health events on the stream during the outage. */
    healthEvents: number;
    /** Once the outbox had drained after the return, the status said reachable again. */
    reachableAgain: boolean;
  };
  vault: {
    kills: number;
    /** Of those, timed to a compaction in progress. */
    duringCompaction: number;
    /** A new vault was started and accepted by itself. */
    recovered: number;
    /** The status showed the vault unavailable before it came back. */
    shown: number;
    /** A health event on the stream said so. */
    streamShown: number;
    /** The slowest status answer from a kill until the new vault was accepted. */
    statusMaxMs: number;
    accepted: number;
    lost: number;
  };
  seconds: number;
  failures: string[];
}

/** Lines that must never appear: a store refused, an identity that moved, tampering. */
const ALARMING = /STORE_|TAMPER|ROLLED|SECURITY|not the vault's|OWN_IDENTITY/;
/** Compaction writes snapshot.next (via a temp file) and the next journal under a temp name. */
const COMPACTION_FILE = /^(snapshot\.next(\.[0-9a-f]{12}\.tmp)?|journal\.[0-9a-f]{12}\.tmp)$/;
/** What the store says when it drops a torn journal tail at open (an unacknowledged write). */
const TORN = /dropped \d+ bytes of an unacknowledged write/;
const ABANDONED = /compaction abandoned/;
/** First-start steps a kill can aim at, in the order attempts take them ('time': anywhere). */
const FIRST_START_STEPS = [
  'login',
  'device keys',
  'cross-signing',
  'store creation',
  'time',
] as const;
type FirstStartStep = (typeof FIRST_START_STEPS)[number];
/** How long after the homeserver shows a first-start step done a kill aimed at it lands. */
const MILESTONE_KILL_WINDOW_MS = 20;
/** Pending sends a round may leave for the next (the outbox works through them under the kills). */
const MAX_BACKLOG = 40;
/** How long after a compaction starts a kill aimed at it lands (compactions take 10-50 ms). */
const COMPACTION_KILL_WINDOW_MS = 15;

/** mulberry32: a small seeded generator, so a schedule can be replayed with --seed. */
function seeded(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function emptyResult(options: Omit<SoakOptions, 'log'>): SoakResult {
  return {
    options,
    lives: 0,
    kills: {
      total: 0,
      firstStart: 0,
      firstStartPhases: {},
      compaction: 0,
      compactionMissed: 0,
      underLoad: 0,
    },
    compactionsSeen: 0,
    tornTails: 0,
    compactionsAbandoned: 0,
    messages: {
      accepted: 0,
      deliveredOnce: 0,
      duplicates: 0,
      lost: 0,
      unacknowledged: 0,
      unacknowledgedDelivered: 0,
      setAside: 0,
    },
    received: { sent: 0, decrypted: 0, undecryptable: 0 },
    identity: { checks: 0, deviceChanges: 0, identityChanges: 0, orphanDevices: 0 },
    outage: {
      seconds: options.outageSeconds,
      accepted: 0,
      pendingShown: 0,
      pendingAtEnd: 0,
      deliveredAfter: 0,
      lost: 0,
      duplicates: 0,
      drainSeconds: null,
      syncRecovered: false,
      statusAnswers: 0,
      statusMaxMs: 0,
      homeserverShown: 'not-run',
      healthEvents: 0,
      reachableAgain: false,
    },
    vault: {
      kills: 0,
      duringCompaction: 0,
      recovered: 0,
      shown: 0,
      streamShown: 0,
      statusMaxMs: 0,
      accepted: 0,
      lost: 0,
    },
    seconds: 0,
    failures: [],
  };
}

/** A started endpoint process, before or after it answered `ready`. */
interface Running {
  client: RpcClient<EndpointContract>;
  child: SpawnedProcess;
  pid: number;
  /** true once it answered ready; false if it exited first. */
  ready: Promise<boolean>;
}

/** What the homeserver shows of the account: its devices, their keys, its identity. */
interface AccountView {
  devices: string[];
  /** Device id to its ed25519 key, for devices that uploaded keys. */
  deviceKeys: Map<string, string>;
  master: string | undefined;
  selfSigning: string | undefined;
}

interface Identity {
  deviceId: string;
  deviceKey: string;
  master: string;
  selfSigning: string | undefined;
  devices: number;
}

type Tag = 'kill' | 'outage' | 'vault';

interface Life {
  index: number;
  name: string;
  dir: string;
  tpm: Swtpm;
  alice: SynapseUser;
  configPath: string;
  storeDir: string;
  auditLog: string;
  token: string;
  endpoint: Running | undefined;
  identity: Identity | undefined;
  /** The master key as first seen on the homeserver: it must never change within a life. */
  firstMaster: string | undefined;
  dm: string;
  accepted: { body: string; tag: Tag }[];
  unacknowledged: string[];
  fromBob: string[];
  /** Every body sent in this life, by either side. */
  bodies: Set<string>;
  stderr: string[];
  watcher: FSWatcher | undefined;
  onCompaction: (() => void) | undefined;
}

class SoakError extends Error {}

export async function runSoak(options: SoakOptions): Promise<SoakResult> {
  const { log, ...recorded } = options;
  const result = emptyResult(recorded);
  const started = performance.now();
  let synapse: Synapse | undefined;
  let bob: StockPeer | undefined;
  let soak: Soak | undefined;
  try {
    synapse = await startSynapse();
    const bobUser = await synapse.registerUser('bob');
    bob = await StockPeer.start(synapse.baseUrl, bobUser);
    await bob.bootstrapCrossSigning(bobUser.password);
    soak = new Soak(options, synapse, bob, result, started);
    await soak.run();
  } catch (e) {
    const message = e instanceof Error ? e.message : String(e);
    result.failures.push(`the run stopped: ${message.split('\n')[0] ?? ''}`);
    log(`soak: stopped: ${message}`);
  } finally {
    await soak?.abandon();
    await bob?.stop().catch(() => undefined);
    await synapse?.stop().catch(() => undefined);
    result.seconds = Math.round((performance.now() - started) / 100) / 10;
  }
  judge(result);
  return result;
}

/** Turns the counts into failures: every invariant of the issue, one line each. */
function judge(r: SoakResult): void {
  const f = r.failures;
  const m = r.messages;
  if (m.lost > 0) f.push(`${m.lost} accepted messages never reached the peer`);
  if (m.duplicates > 0) f.push(`${m.duplicates} messages reached the peer more than once`);
  if (r.received.undecryptable > 0) {
    f.push(`${r.received.undecryptable} messages from the peer did not decrypt`);
  }
  if (r.identity.deviceChanges > 0) f.push(`the device changed ${r.identity.deviceChanges} times`);
  if (r.identity.identityChanges > 0) {
    f.push(`the cross-signing identity changed ${r.identity.identityChanges} times`);
  }
  if (r.options.outageSeconds > 0 && r.outage.homeserverShown !== 'not-run') {
    if (r.outage.accepted === 0) f.push('no send was accepted while the homeserver was down');
    if (r.outage.lost > 0) f.push(`${r.outage.lost} messages sent during the outage were lost`);
    if (r.outage.drainSeconds === null) f.push('the outbox did not drain after the outage');
    if (!r.outage.syncRecovered) f.push('the endpoint did not receive again after the outage');
    if (r.outage.pendingAtEnd < r.outage.accepted) {
      f.push(
        `the status showed ${r.outage.pendingAtEnd} pending sends at the end of the outage, not the ${r.outage.accepted} accepted during it`,
      );
    }
    if (r.outage.homeserverShown !== 'yes') {
      f.push(
        r.outage.homeserverShown === 'no'
          ? 'neither the status nor a health event said the homeserver was unreachable'
          : 'the status has no homeserver state to show the outage',
      );
    }
    if (!r.outage.reachableAgain) {
      f.push('the status still said the homeserver was unreachable after it came back');
    }
  }
  if (r.vault.kills > r.vault.recovered) {
    f.push(`the vault did not come back by itself ${r.vault.kills - r.vault.recovered} times`);
  }
  if (r.vault.lost > 0) f.push(`${r.vault.lost} messages sent around vault kills were lost`);
}

class Soak {
  readonly #o: SoakOptions;
  readonly #synapse: Synapse;
  readonly #bob: StockPeer;
  readonly #r: SoakResult;
  readonly #random: () => number;
  readonly #started: number;
  #life: Life | undefined;
  /** How long a first start takes, from launch to ready: where its kills are aimed. */
  #firstStartMs = 1200;

  constructor(o: SoakOptions, synapse: Synapse, bob: StockPeer, r: SoakResult, started: number) {
    this.#o = o;
    this.#synapse = synapse;
    this.#bob = bob;
    this.#r = r;
    this.#random = seeded(o.seed);
    this.#started = started;
  }

  #say(message: string): void {
    const s = ((performance.now() - this.#started) / 1000).toFixed(1).padStart(7);
    this.#o.log(`[${s}s] ${message}`);
  }

  async run(): Promise<void> {
    const lives = Math.ceil(this.#o.kills / this.#o.killsPerLife);
    let vaultKillsLeft = this.#o.vaultKills;
    for (let index = 1; this.#r.kills.total < this.#o.kills; index++) {
      const kills = Math.min(this.#o.killsPerLife, this.#o.kills - this.#r.kills.total);
      const vaultKills = Math.ceil(vaultKillsLeft / (lives - index + 1));
      vaultKillsLeft -= vaultKills;
      await this.#runLife(index, kills, vaultKills, index === 1 && this.#o.outageSeconds > 0);
    }
  }

  /** Stops what a failed run left running (the endpoint, the TPM) and keeps its files. */
  async abandon(): Promise<void> {
    const life = this.#life;
    if (!life) return;
    life.watcher?.close();
    if (life.endpoint) await this.#kill(life.endpoint);
    await life.tpm.stop().catch(() => undefined);
    this.#o.log(`soak: the failed life's files are kept in ${life.dir}`);
  }

  async #runLife(index: number, kills: number, vaultKills: number, outage: boolean) {
    const r = this.#r;
    r.lives = index;
    const tpm = await startSwtpm();
    const dir = await makeTempDir('soak');
    const alice = await this.#synapse.registerUser(`alice${index}`);
    const prepared = await prepareCompartments(dir, {
      homeserver: this.#synapse.baseUrl,
      tpm,
      user: alice,
    });
    const life: Life = {
      index,
      name: `L${index}`,
      dir,
      tpm,
      alice,
      configPath: prepared.endpointConfig,
      storeDir: join(dir, 'data', 'store'),
      auditLog: prepared.auditLog,
      token: prepared.tokens.test ?? '',
      endpoint: undefined,
      identity: undefined,
      firstMaster: undefined,
      dm: '',
      accepted: [],
      unacknowledged: [],
      fromBob: [],
      bodies: new Set(),
      stderr: [],
      watcher: undefined,
      onCompaction: undefined,
    };
    this.#life = life;
    this.#say(`life ${index}: ${alice.userId}, ${kills} kills, fresh vault on a fresh TPM`);

    const firstStartKills = await this.#firstStart(life, Math.min(this.#o.firstStartKills, kills));
    this.#watchStore(life);
    const endpoint = this.#need(life);
    const auth = { token: life.token };
    const { roomId } = await endpoint.client.call('createRoom', {
      auth,
      invite: [this.#bob.userId],
      isDirect: true,
    });
    life.dm = roomId;
    await this.#bob.acceptInvite(roomId);
    await this.#bob.waitForMember(roomId, alice.userId);

    const rounds = kills - firstStartKills;
    const vaultAt = Array.from({ length: vaultKills }, (_, i) =>
      Math.floor(((i + 0.5) * rounds) / vaultKills),
    );
    const outageAt = outage ? Math.floor(rounds / 2) : -1;
    let aimed = 0;
    // Every other vault kill of the run is timed to a compaction.
    const vaultKill = () => this.#vaultKill(life, r.vault.kills % 2 === 1);
    for (let round = 0; round < rounds; round++) {
      if (round === outageAt) await this.#outage(life);
      for (const at of vaultAt) if (at === round) await vaultKill();
      // Aimed at a compaction whenever the kills proven in one fall behind the share asked for.
      const aim =
        r.kills.compaction < Math.floor((r.kills.total + 1) / this.#o.compactionRoundEvery);
      if (aim) aimed++;
      await this.#loadRound(life, round, aim);
      if (r.kills.total % this.#o.progressEvery === 0 || round === rounds - 1) {
        this.#say(
          `life ${index} kill ${r.kills.total}/${this.#o.kills}: accepted ${r.messages.accepted + life.accepted.length}, ` +
            `from bob ${life.fromBob.length}, first-start kills ${r.kills.firstStart}, ` +
            `compaction kills ${r.kills.compaction} (${aimed} rounds aimed, ${r.compactionsSeen} compactions seen), ` +
            `under load ${r.kills.underLoad}`,
        );
      }
    }
    for (const at of vaultAt) if (at >= rounds) await vaultKill(); // no rounds left for it
    if (outageAt >= rounds) await this.#outage(life);
    await this.#finishLife(life);
  }

  /**
   * Starts the endpoint of a new life, killing it at a random point of its first start up to
   * `attempts` times, then lets it finish. Returns how many kills landed before `ready`.
   */
  async #firstStart(life: Life, attempts: number): Promise<number> {
    const r = this.#r;
    let landed = 0;
    const devicesBefore = new Set((await this.#account(life)).devices);
    for (let attempt = 0; attempt < attempts; attempt++) {
      const baseline = await this.#account(life);
      const target = this.#firstStartTarget(life, attempt, baseline, await this.#storeFiles(life));
      const t0 = performance.now();
      const run = this.#launch(life);
      const delay = Math.floor((0.05 + 0.95 * this.#random()) * this.#firstStartMs);
      const outcome = await Promise.race([
        run.ready.then((ok) => (ok ? 'ready' : 'exited')),
        target === 'time'
          ? sleep(delay).then(() => 'hit' as const)
          : this.#reached(life, target, baseline, run).then((hit) => (hit ? 'hit' : 'ready')),
      ]);
      if (outcome === 'exited' || (outcome === 'ready' && !(await run.ready))) {
        throw this.#fatal(life, 'the endpoint exited during first start');
      }
      if (outcome === 'ready') {
        life.endpoint = run;
        this.#firstStartMs = performance.now() - t0;
        this.#say(`life ${life.index} first start: ready before the kill aimed at ${target}`);
        break;
      }
      if (target !== 'time') await sleep(Math.floor(this.#random() * MILESTONE_KILL_WINDOW_MS));
      const at = Math.round(performance.now() - t0);
      const evidence = await this.#kill(run);
      landed++;
      this.#countKill({ firstStart: true, compaction: evidence, underLoad: false });
      const account = await this.#account(life);
      const phase = this.#firstStartPhase(life, account, await this.#storeFiles(life));
      r.kills.firstStartPhases[phase] = (r.kills.firstStartPhases[phase] ?? 0) + 1;
      this.#checkMaster(life, account, 'during first start');
      this.#say(
        `life ${life.index} first start: killed at ${at} ms, aimed at ${target} (${phase}${evidence ? ', in a compaction' : ''})`,
      );
    }
    if (!life.endpoint) {
      // A start after a kill redoes nearly all of it (vault, store, keys): as long as a first.
      const t0 = performance.now();
      const run = this.#launch(life);
      if (!(await run.ready)) throw this.#fatal(life, 'the first start did not complete');
      this.#firstStartMs = performance.now() - t0;
      life.endpoint = run;
    }
    // The first start is complete: this is the device and the identity from now on.
    const status = await life.endpoint.client.call('status', { auth: { token: life.token } });
    const account = await this.#account(life);
    const deviceKey = account.deviceKeys.get(status.deviceId);
    if (deviceKey === undefined || account.master === undefined) {
      throw this.#fatal(life, 'first start completed without device keys or a master key');
    }
    this.#checkMaster(life, account, 'at the end of first start');
    life.identity = {
      deviceId: status.deviceId,
      deviceKey,
      master: account.master,
      selfSigning: account.selfSigning,
      devices: account.devices.length,
    };
    const orphans = account.devices.filter(
      (d) => !devicesBefore.has(d) && d !== status.deviceId,
    ).length;
    r.identity.orphanDevices += orphans;
    this.#say(
      `life ${life.index} first start complete after ${landed} kills: device ${status.deviceId}, ` +
        `master ${account.master.slice(0, 12)}..., ${orphans} orphan devices`,
    );
    return landed;
  }

  /**
   * What a first-start kill aims at: the attempt's turn in FIRST_START_STEPS (each life starts
   * one further on), or the next step still to come; 'time' when none is.
   */
  #firstStartTarget(
    life: Life,
    attempt: number,
    account: AccountView,
    files: string[],
  ): FirstStartStep {
    const ours = account.devices.filter((d) => d !== life.alice.deviceId);
    const open: Record<FirstStartStep, boolean> = {
      // A login after the first is only a kill's leftover (the session was not sealed yet).
      login: ours.length === 0,
      'device keys': !ours.some((d) => account.deviceKeys.has(d)),
      'cross-signing': account.master === undefined,
      'store creation': !files.includes('snapshot'),
      time: true,
    };
    const first = (life.index - 1 + attempt) % FIRST_START_STEPS.length;
    for (let i = 0; i < FIRST_START_STEPS.length; i++) {
      const step = FIRST_START_STEPS[(first + i) % FIRST_START_STEPS.length] ?? 'time';
      if (open[step]) return step;
    }
    return 'time';
  }

  /**
   * Resolves true as soon as the homeserver (or the store directory) shows `step` done by this
   * start, false if the start completes first.
   */
  async #reached(
    life: Life,
    step: Exclude<FirstStartStep, 'time'>,
    baseline: AccountView,
    run: Running,
  ): Promise<boolean> {
    const state = { ready: false };
    void run.ready.then(() => (state.ready = true));
    while (!state.ready) {
      if (step === 'store creation') {
        if ((await this.#storeFiles(life)).some((f) => COMPACTION_FILE.test(f))) return true;
        await sleep(5);
        continue;
      }
      const now = await this.#account(life, step === 'login' ? 'devices' : 'keys');
      if (step === 'login' && now.devices.some((d) => !baseline.devices.includes(d))) return true;
      if (
        step === 'device keys' &&
        [...now.deviceKeys.keys()].some((d) => !baseline.deviceKeys.has(d))
      ) {
        return true;
      }
      if (step === 'cross-signing' && now.master !== undefined) return true;
      await sleep(20);
    }
    return false;
  }

  /** The step of first start a kill interrupted: the first one the account does not show done. */
  #firstStartPhase(life: Life, account: AccountView, files: string[]): string {
    const ours = account.devices.filter((d) => d !== life.alice.deviceId);
    if (!files.includes('snapshot')) return 'store creation';
    if (ours.length === 0) return 'login';
    if (!ours.some((d) => account.deviceKeys.has(d))) return 'device keys';
    if (account.master === undefined) return 'cross-signing';
    return 'after the cross-signing upload';
  }

  #checkMaster(life: Life, account: AccountView, when: string): void {
    if (account.master === undefined) return;
    life.firstMaster ??= account.master;
    if (account.master !== life.firstMaster) {
      this.#r.identity.identityChanges++;
      this.#r.failures.push(`${life.name}: the master key changed ${when}`);
      life.firstMaster = account.master;
    }
  }

  /** One kill under load: at a random time, or just after a compaction begins. */
  async #loadRound(life: Life, round: number, aim: boolean): Promise<void> {
    const endpoint = this.#need(life);
    const auth = { token: life.token };
    const state = { killed: false, aliceInFlight: 0, bobInFlight: 0, underLoad: false };
    let killed!: () => void;
    const whenKilled = new Promise<void>((resolve) => (killed = resolve));
    const kill = (): void => {
      if (state.killed) return;
      state.killed = true;
      endpoint.child.process.kill('SIGKILL');
      // Under load: a send of ours or bob's in flight, or the outbox still sending.
      state.underLoad =
        state.aliceInFlight > 0 || state.bobInFlight > 0 || this.#undelivered(life) > 0;
      killed();
    };
    let timer: NodeJS.Timeout;
    if (aim) {
      life.onCompaction = () => {
        life.onCompaction = undefined;
        setTimeout(kill, Math.floor(this.#random() * COMPACTION_KILL_WINDOW_MS));
      };
      // A compaction comes every compactEvery records; past this the round kills anyway.
      timer = setTimeout(kill, 30_000);
    } else {
      // Up to 1.5 s: on a loaded 2-core machine fewer sends fit in each round. If nothing is
      // in flight just then (between two sends), the kill waits for the next send, up to 2 s
      // more: a round meant to kill under load should, rather than count on the timing.
      const inFlight = (): boolean =>
        state.aliceInFlight > 0 || state.bobInFlight > 0 || this.#undelivered(life) > 0;
      const fire = (deadline: number): void => {
        if (inFlight() || Date.now() >= deadline) kill();
        else
          timer = setTimeout(() => {
            fire(deadline);
          }, 5);
      };
      timer = setTimeout(
        () => {
          fire(Date.now() + 2000);
        },
        100 + Math.floor(this.#random() * 1400),
      );
    }
    const roundBob: string[] = [];
    const alice = (async () => {
      // On until the kill, paced so that the outbox about keeps up.
      for (let i = 0; i < 1000 && !state.killed; i++) {
        if (i > 0) await sleep(aim ? 100 : 50);
        // eslint-disable-next-line @typescript-eslint/no-unnecessary-condition -- the kill sets it during the sleep
        if (state.killed) break;
        const body = this.#unique(life, `${life.name} r${round} m${i}`);
        state.aliceInFlight++;
        try {
          await endpoint.client.call('send', { auth, roomId: life.dm, body });
          life.accepted.push({ body, tag: 'kill' });
        } catch {
          life.unacknowledged.push(body); // cut by the kill: may arrive, never twice
          break;
        } finally {
          state.aliceInFlight--;
        }
      }
    })();
    const bob = (async () => {
      for (let i = 0; i < 1000 && !state.killed; i++) {
        const body = this.#unique(life, `bob ${life.name} r${round} m${i}`);
        state.bobInFlight++;
        try {
          await this.#bob.sendText(life.dm, body);
        } finally {
          state.bobInFlight--;
        }
        life.fromBob.push(body);
        roundBob.push(body);
        await sleep(250);
      }
    })();
    await whenKilled;
    clearTimeout(timer);
    life.onCompaction = undefined;
    await alice;
    await bob;
    const compaction = await this.#afterKill(endpoint);
    if (aim && !compaction) this.#r.kills.compactionMissed++;
    this.#countKill({ firstStart: false, compaction, underLoad: state.underLoad });
    await this.#restart(life, `kill ${this.#r.kills.total}`);
    await this.#expectDecrypted(life, roundBob, `round ${round}`);
    // Sends are accepted faster than the outbox delivers them; an unbounded backlog would
    // make every later round (and the final count) wait on it.
    await waitUntil(
      'the outbox backlog to shrink',
      async () =>
        (await this.#need(life).client.call('status', { auth })).pendingSends <= MAX_BACKLOG,
      { timeoutMs: 120_000, intervalMs: 250 },
    ).catch(() => undefined);
  }

  /** Accepted sends bob has not received yet: what the outbox still has to deliver. */
  #undelivered(life: Life): number {
    const counts = this.#delivered(life);
    return life.accepted.filter((a) => !counts.has(a.body)).length;
  }

  #countKill(kill: { firstStart: boolean; compaction: boolean; underLoad: boolean }): void {
    const k = this.#r.kills;
    k.total++;
    if (kill.firstStart) k.firstStart++;
    if (kill.compaction) k.compaction++;
    if (kill.underLoad) k.underLoad++;
  }

  /** Starts the endpoint after a kill and checks it is the same device with the same identity. */
  async #restart(life: Life, after: string): Promise<void> {
    const run = this.#launch(life);
    if (!(await run.ready))
      throw this.#fatal(life, `the endpoint did not start again after ${after}`);
    life.endpoint = run;
    await this.#checkIdentity(life, after);
  }

  async #checkIdentity(life: Life, after: string): Promise<void> {
    const expected = life.identity;
    if (!expected) return;
    const r = this.#r;
    r.identity.checks++;
    const status = await this.#need(life).client.call('status', { auth: { token: life.token } });
    const account = await this.#account(life);
    const problems: string[] = [];
    if (status.deviceId !== expected.deviceId) {
      r.identity.deviceChanges++;
      problems.push(`device ${expected.deviceId} is now ${status.deviceId}`);
    } else if (account.deviceKeys.get(status.deviceId) !== expected.deviceKey) {
      r.identity.deviceChanges++;
      problems.push(`device ${status.deviceId} has another key`);
    } else if (account.devices.length !== expected.devices) {
      r.identity.deviceChanges++;
      problems.push(`the account has ${account.devices.length} devices, not ${expected.devices}`);
    }
    if (account.master !== expected.master || account.selfSigning !== expected.selfSigning) {
      r.identity.identityChanges++;
      problems.push(
        account.master !== expected.master
          ? 'the master key changed'
          : 'the self-signing key changed (the store lost its subkeys)',
      );
    }
    if (problems.length > 0) {
      r.failures.push(`${life.name} after ${after}: ${problems.join('; ')}`);
      // The new values are the reference from here, so one change is counted once.
      life.identity = {
        deviceId: status.deviceId,
        deviceKey: account.deviceKeys.get(status.deviceId) ?? '',
        master: account.master ?? '',
        selfSigning: account.selfSigning,
        devices: account.devices.length,
      };
    }
  }

  /** Waits until every one of `bodies` (bob's) shows decrypted in the endpoint's timeline. */
  async #expectDecrypted(life: Life, bodies: string[], what: string): Promise<boolean> {
    if (bodies.length === 0) return true;
    const endpoint = this.#need(life);
    let missing = bodies;
    let lastError = '';
    try {
      await waitUntil(
        `every message from bob to decrypt (${life.name} ${what})`,
        async () => {
          const readable = await recentDecrypted(endpoint.client, life, bodies, 500).catch(
            (e: unknown) => {
              lastError = e instanceof Error ? e.message : String(e);
              return new Set<string>();
            },
          );
          missing = bodies.filter((b) => !readable.has(b));
          return missing.length === 0;
        },
        { timeoutMs: 60_000, intervalMs: 250 },
      );
      return true;
    } catch {
      const page = await endpoint.client
        .call('timeline', { auth: { token: life.token }, roomId: life.dm, limit: 100 })
        .catch(() => ({ items: [] }));
      const unreadable = page.items.filter((i) => i.kind === 'undecryptable');
      this.#r.failures.push(
        `${life.name} ${what}: ${missing.length} of bob's messages did not decrypt within 60 s ` +
          `(first: "${missing[0] ?? ''}"; ${unreadable.length} undecryptable among the last 100, ` +
          `${unreadable[0]?.reason ?? 'none'}${lastError ? `; the last timeline call failed: ${lastError}` : ''})`,
      );
      return false;
    }
  }

  /**
   * The homeserver stopped for outageSeconds mid-conversation and started again on the same
   * port and data. Meanwhile sends go on (each must be accepted and show as pending) and the
   * UI's status is polled; afterwards the outbox must drain and sync resume by themselves.
   */
  async #outage(life: Life): Promise<void> {
    const o = this.#r.outage;
    const endpoint = this.#need(life);
    const auth = { token: life.token };
    const seconds = this.#o.outageSeconds;
    // Mid-conversation: both sides have just talked.
    for (let i = 0; i < 3; i++) {
      const body = this.#unique(life, `bob ${life.name} before the outage ${i}`);
      await this.#bob.sendText(life.dm, body);
      life.fromBob.push(body);
      const ours = this.#unique(life, `${life.name} before the outage ${i}`);
      await endpoint.client.call('send', { auth, roomId: life.dm, body: ours });
      life.accepted.push({ body: ours, tag: 'kill' });
    }
    const { subscription, cursor } = await endpoint.client.call('subscribe', { auth });
    const events: StreamEvent[] = [];
    const stream = { open: true, after: cursor };
    const reading = (async () => {
      while (stream.open) {
        const page = await endpoint.client
          .call('events', { auth, subscription, after: stream.after, waitMs: 500 })
          .catch(() => undefined);
        if (!page) {
          await sleep(200);
          continue;
        }
        events.push(...page.events);
        stream.after = page.cursor;
      }
    })();

    this.#say(`outage: stopping the homeserver for ${seconds} s`);
    await this.#synapse.down();
    const downAt = performance.now();
    const statuses: Record<string, unknown>[] = [];
    const sending = (async () => {
      for (let i = 0; performance.now() - downAt < seconds * 1000; i++) {
        const body = this.#unique(life, `${life.name} during the outage ${i}`);
        try {
          await endpoint.client.call(
            'send',
            { auth, roomId: life.dm, body },
            { timeoutMs: 10_000 },
          );
          life.accepted.push({ body, tag: 'outage' });
          o.accepted++;
        } catch {
          life.unacknowledged.push(body);
        }
        await sleep(500);
      }
    })();
    const polling = (async () => {
      while (performance.now() - downAt < seconds * 1000) {
        const t0 = performance.now();
        const status = await endpoint.client
          .call('status', { auth }, { timeoutMs: 10_000 })
          .catch(() => undefined);
        if (status) {
          o.statusAnswers++;
          o.statusMaxMs = Math.max(o.statusMaxMs, Math.round(performance.now() - t0));
          o.pendingShown = Math.max(o.pendingShown, status.pendingSends);
          statuses.push(status.health);
        }
        await sleep(1000);
      }
    })();
    await Promise.all([sending, polling]);
    // Nothing can have gone out while the homeserver was down: all of those are still pending.
    const last = await endpoint.client.call('status', { auth });
    o.pendingAtEnd = last.pendingSends;
    o.pendingShown = Math.max(o.pendingShown, last.pendingSends);
    const healthDuring = events.flatMap((e) => (e.type === 'health' ? [e.health] : []));
    o.healthEvents = healthDuring.length;
    o.homeserverShown = homeserverShown([
      ...statuses,
      ...healthDuring.map((h) => h as Record<string, unknown>),
    ]);
    this.#say(
      `outage: ${o.accepted} sends accepted, status answered ${o.statusAnswers} times ` +
        `(slowest ${o.statusMaxMs} ms), showing up to ${o.pendingShown} pending; homeserver state ${o.homeserverShown}; starting it again`,
    );
    await this.#synapse.up();
    const upAt = performance.now();
    try {
      await waitUntil(
        'the outbox to drain after the outage',
        async () => (await endpoint.client.call('status', { auth })).pendingSends === 0,
        { timeoutMs: 180_000, intervalMs: 250 },
      );
      o.drainSeconds = Math.round((performance.now() - upAt) / 100) / 10;
    } catch {
      o.drainSeconds = null;
    }
    const after = this.#unique(life, `bob ${life.name} after the outage`);
    await this.#bob.sendText(life.dm, after);
    life.fromBob.push(after);
    o.syncRecovered = await this.#expectDecrypted(life, [after], 'after the outage');
    // A sync answered since (the message above came by it): the status must say so.
    const health: Record<string, unknown> = (await endpoint.client.call('status', { auth })).health;
    o.reachableAgain = !('homeserver' in health) || health.homeserver === 'reachable';
    stream.open = false;
    await reading;
    await endpoint.client.call('unsubscribe', { auth, subscription }).catch(() => undefined);
    this.#say(
      `outage: back; outbox drained in ${o.drainSeconds ?? 'never'} s (what reached bob is counted ` +
        `at the end of the life), sync ${o.syncRecovered ? 'resumed' : 'did not resume'}`,
    );
  }

  /**
   * The vault compartment killed under load; with `atCompaction`, just after a compaction
   * began, so its counter increment may be lost with the vault.
   */
  async #vaultKill(life: Life, atCompaction: boolean): Promise<void> {
    const v = this.#r.vault;
    const endpoint = this.#need(life);
    const auth = { token: life.token };
    const firstPid = vaultPid(endpoint.pid);
    if (firstPid === 0) {
      const children = childrenOf(endpoint.pid)
        .map((c) => readProc(`/proc/${c}/cmdline`).split('\0').join(' ').trim())
        .join('; ');
      this.#r.failures.push(
        `${life.name}: no vault process under the endpoint to kill (its children: ${children || 'none'})`,
      );
      return;
    }
    const load = { on: true };
    const n = v.kills + 1; // this kill's number, fixed before the counter moves
    let i = 0;
    const talking = (async () => {
      while (load.on) {
        const body = this.#unique(life, `${life.name} vault ${n} m${i}`);
        await endpoint.client.call('send', { auth, roomId: life.dm, body });
        life.accepted.push({ body, tag: 'vault' });
        v.accepted++;
        const reply = this.#unique(life, `bob ${life.name} vault ${n} m${i++}`);
        await this.#bob.sendText(life.dm, reply);
        life.fromBob.push(reply);
        await sleep(50);
      }
    })();
    let aimed = false;
    if (atCompaction) {
      aimed = await new Promise<boolean>((resolve) => {
        const timer = setTimeout(() => {
          life.onCompaction = undefined;
          resolve(false);
        }, 30_000);
        life.onCompaction = () => {
          life.onCompaction = undefined;
          clearTimeout(timer);
          resolve(true);
        };
      });
      await sleep(Math.floor(this.#random() * COMPACTION_KILL_WINDOW_MS));
    } else {
      await sleep(500);
    }
    // The UI's view while the vault is down: the status call, and health events on the stream.
    const { subscription, cursor } = await endpoint.client.call('subscribe', { auth });
    process.kill(firstPid, 'SIGKILL');
    const killedAt = performance.now();
    v.kills++;
    if (aimed) v.duringCompaction++;
    const seen = { status: false, stream: false, back: false };
    const reading = (async () => {
      let after = cursor;
      while (!seen.back && performance.now() - killedAt < 60_000) {
        const page = await endpoint.client
          .call('events', { auth, subscription, after, waitMs: 500 })
          .catch(() => undefined);
        if (!page) continue;
        after = page.cursor;
        for (const e of page.events) {
          if (e.type === 'health' && e.health.vault === 'unavailable') seen.stream = true;
        }
      }
    })();
    let slowest = 0;
    while (performance.now() - killedAt < 60_000) {
      const t0 = performance.now();
      const status = await endpoint.client.call('status', { auth }).catch(() => undefined);
      slowest = Math.max(slowest, performance.now() - t0);
      if (status?.health.vault === 'unavailable') seen.status = true;
      if (status?.health.vault === 'available' && vaultPid(endpoint.pid) !== firstPid) {
        seen.back = true;
        break;
      }
      await sleep(50);
    }
    await reading;
    await endpoint.client.call('unsubscribe', { auth, subscription }).catch(() => undefined);
    const { back } = seen;
    const shown = seen.status;
    if (shown) v.shown++;
    if (seen.stream) v.streamShown++;
    v.statusMaxMs = Math.max(v.statusMaxMs, Math.round(slowest));
    if (back) v.recovered++;
    await sleep(500); // messaging goes on with the new vault too
    load.on = false;
    await talking;
    this.#say(
      `vault kill ${v.kills}${aimed ? ' (in a compaction)' : ''}: unavailable ${shown ? 'shown' : 'not shown'} by status ` +
        `(slowest answer ${Math.round(slowest)} ms), ${seen.stream ? 'and' : 'not'} on the event stream; ` +
        (back ? 'a new vault took over' : 'NO NEW VAULT'),
    );
  }

  /** The end of a life: outbox drained, every message counted, the audit log checked. */
  async #finishLife(life: Life): Promise<void> {
    const r = this.#r;
    const endpoint = this.#need(life);
    const auth = { token: life.token };
    await waitUntil(
      'the outbox to drain',
      async () => (await endpoint.client.call('status', { auth })).pendingSends === 0,
      { timeoutMs: 180_000, intervalMs: 250 },
    ).catch(() => {
      r.failures.push(`${life.name}: the outbox did not drain at the end`);
    });
    // Sends the outbox gave up on are lost unless a UI retries them: each is named here.
    const { failed } = await endpoint.client.call('failedSends', { auth });
    r.messages.setAside += failed.length;
    if (failed.length > 0) {
      const first = failed[0];
      r.failures.push(
        `${life.name}: the outbox set ${failed.length} sends aside as refused for good (first: "${first?.preview ?? ''}": ${first?.code ?? ''} ${first?.reason ?? ''})`,
      );
    }
    // Every message bob sent in this life, from the whole history, after all those kills.
    const size = life.accepted.length + life.unacknowledged.length + life.fromBob.length + 100;
    const items = await readTimeline(endpoint.client, life.token, life.dm, size);
    const readable = new Set(items.filter((i) => i.decrypted).map((i) => i.body));
    const unreadable = life.fromBob.filter((b) => !readable.has(b));
    r.received.sent += life.fromBob.length;
    r.received.decrypted += life.fromBob.length - unreadable.length;
    r.received.undecryptable += unreadable.length;
    if (unreadable.length > 0) {
      r.failures.push(
        `${life.name}: ${unreadable.length} of bob's messages do not decrypt at the end (first: "${unreadable[0] ?? ''}")`,
      );
    }
    // A clean stop compacts, which needs the counter: the store must close consistent.
    endpoint.client.close();
    await endpoint.child.stop({ graceMs: 30_000, first: 'close' });
    life.endpoint = undefined;
    life.watcher?.close();

    const counts = await this.#historyAtBob(life);
    const m = r.messages;
    let lost = 0;
    for (const { body, tag } of life.accepted) {
      const n = counts.get(body) ?? 0;
      if (n === 1) m.deliveredOnce++;
      if (n === 0) {
        lost++;
        m.lost++;
        if (tag === 'outage') r.outage.lost++;
        if (tag === 'vault') r.vault.lost++;
      }
      if (n === 1 && tag === 'outage') r.outage.deliveredAfter++;
      if (n > 1 && tag === 'outage') r.outage.duplicates += n - 1;
    }
    m.accepted += life.accepted.length;
    m.unacknowledged += life.unacknowledged.length;
    for (const body of life.unacknowledged)
      if ((counts.get(body) ?? 0) > 0) m.unacknowledgedDelivered++;
    for (const n of counts.values()) if (n > 1) m.duplicates += n - 1;
    const twice = [...counts].filter(([, n]) => n > 1).map(([body]) => body);
    if (twice.length > 0) {
      const tagOf = (body: string): string =>
        life.accepted.find((a) => a.body === body)?.tag ??
        (life.unacknowledged.includes(body) ? 'unacknowledged' : 'never sent');
      r.failures.push(
        `${life.name}: delivered more than once: ${twice
          .slice(0, 5)
          .map((body) => `"${body}" (${tagOf(body)}, ${counts.get(body) ?? 0} times)`)
          .join(', ')}`,
      );
    }
    if (lost > 0) {
      const first = life.accepted.find((a) => !counts.has(a.body));
      r.failures.push(
        `${life.name}: first lost message "${first?.body ?? ''}" (${counts.undecryptable} of alice's events in the room do not decrypt for bob)`,
      );
    }

    const verified = await verifyAuditLog(life.auditLog);
    if (!verified.ok) {
      r.failures.push(
        `${life.name}: the audit log does not verify (${verified.broken.problem} at entry ${verified.broken.seq}: ${verified.broken.detail})`,
      );
    }
    const alarming = life.stderr.filter((l) => ALARMING.test(l));
    if (alarming.length > 0) {
      r.failures.push(
        `${life.name}: the endpoint said: ${alarming[0] ?? ''} (${alarming.length} such lines)`,
      );
    }
    this.#say(
      `life ${life.index} done: ${life.accepted.length} accepted, ${life.fromBob.length} from bob, ` +
        `${unreadable.length} undecryptable, lost so far ${m.lost}, duplicates so far ${m.duplicates}`,
    );
    await life.tpm.stop();
    await rm(life.dir, { recursive: true, force: true });
    this.#life = undefined;
  }

  /** Every body is sent once: the exactly-once count tells messages apart by their body. */
  #unique(life: Life, body: string): string {
    if (life.bodies.has(body)) throw new SoakError(`the soak made the body "${body}" twice`);
    life.bodies.add(body);
    return body;
  }

  /**
   * How many times each of alice's bodies is in the room, as bob reads its history (/messages)
   * and decrypts it, once every accepted one is there (or two minutes passed). Not bob's live
   * timeline: a sync that brings more than its timeline limit skips the rest (limited), and
   * after an outage the outbox delivers dozens at once.
   */
  async #historyAtBob(life: Life): Promise<Map<string, number> & { undecryptable: number }> {
    const deadline = Date.now() + 120_000;
    for (;;) {
      const counts = await roomHistory(this.#bob, life.dm, life.alice.userId);
      const complete = life.accepted.every((a) => counts.has(a.body));
      if ((complete && counts.undecryptable === 0) || Date.now() > deadline) return counts;
      await sleep(2000);
    }
  }

  /** How many times bob's live timeline showed each of alice's bodies (an estimate: see above). */
  #delivered(life: Life): Map<string, number> {
    const counts = new Map<string, number>();
    for (const m of this.#bob.messages) {
      if (m.roomId !== life.dm || m.sender !== life.alice.userId) continue;
      counts.set(m.body, (counts.get(m.body) ?? 0) + 1);
    }
    return counts;
  }

  #launch(life: Life): Running {
    const child = spawnProcess({
      // As spawnEndpoint runs it: its bundle while that is fresh, else the source.
      argv: [runnableEntry('endpoint/main.ts'), 'serve', '--config', life.configPath],
      fds: ['pipe'],
      env: { ...process.env, MTE_TEST_STORE_COMPACT_EVERY: String(this.#o.compactEvery) },
      onStderr: (line) => {
        if (TORN.test(line)) this.#r.tornTails++;
        if (ABANDONED.test(line)) this.#r.compactionsAbandoned++;
        if (this.#o.logDir !== undefined) {
          const s = ((performance.now() - this.#started) / 1000).toFixed(3);
          appendFileSync(join(this.#o.logDir, `life-${life.index}.log`), `[${s}] ${line}\n`);
        }
        life.stderr.push(line);
        if (life.stderr.length > 5000) life.stderr.splice(0, 1000);
      },
    });
    const [fd3] = child.channels;
    if (!fd3) throw new SoakError('the endpoint has no channel');
    const client = createClient(socketChannel(fd3), endpointContract, { timeoutMs: 60_000 });
    const ready = Promise.race([
      client.call('ready', {}, { timeoutMs: 180_000 }).then(
        () => true,
        () => false,
      ),
      child.exited.then(() => false),
    ]);
    return { client, child, pid: child.process.pid ?? 0, ready };
  }

  /** SIGKILL, then whether the kill caught a compaction (its files are still there). */
  async #kill(run: Running): Promise<boolean> {
    run.child.process.kill('SIGKILL');
    return this.#afterKill(run);
  }

  async #afterKill(run: Running): Promise<boolean> {
    await run.child.exited;
    run.client.close();
    const life = this.#life;
    if (!life) return false;
    return (await this.#storeFiles(life)).some((f) => COMPACTION_FILE.test(f));
  }

  async #storeFiles(life: Life): Promise<string[]> {
    return readdir(life.storeDir).catch(() => []);
  }

  /** Tells `life.onCompaction` whenever a compaction begins writing its next snapshot. */
  #watchStore(life: Life): void {
    let lastTemp = '';
    life.watcher = watch(life.storeDir, (event, name) => {
      if (
        event !== 'rename' ||
        name === null ||
        !/^snapshot\.next\.[0-9a-f]{12}\.tmp$/.test(name)
      ) {
        return;
      }
      // Each temp file shows twice (created, renamed away); a compaction is its creation.
      if (name === lastTemp) return;
      lastTemp = name;
      this.#r.compactionsSeen++;
      life.onCompaction?.();
    });
  }

  #need(life: Life): Running {
    if (!life.endpoint) throw new SoakError(`${life.name}: no endpoint running`);
    return life.endpoint;
  }

  #fatal(life: Life, what: string): SoakError {
    const last = life.stderr.slice(-5).join(' | ');
    return new SoakError(`${life.name}: ${what}; its last lines: ${last || '(none)'}`);
  }

  /** The account as the homeserver serves it to the account's own registration device. */
  async #account(life: Life, only?: 'devices' | 'keys'): Promise<AccountView> {
    const base = this.#synapse.baseUrl;
    const headers = {
      authorization: `Bearer ${life.alice.accessToken}`,
      'content-type': 'application/json',
    };
    const view: AccountView = {
      devices: [],
      deviceKeys: new Map(),
      master: undefined,
      selfSigning: undefined,
    };
    if (only !== 'keys') {
      const res = await fetch(`${base}/_matrix/client/v3/devices`, {
        headers,
        signal: AbortSignal.timeout(30_000),
      });
      if (!res.ok) throw new SoakError(`GET /devices: ${res.status}`);
      const body = (await res.json()) as { devices: { device_id: string }[] };
      view.devices = body.devices.map((d) => d.device_id);
    }
    if (only === 'devices') return view;
    const userId = life.alice.userId;
    const res = await fetch(`${base}/_matrix/client/v3/keys/query`, {
      method: 'POST',
      headers,
      body: JSON.stringify({ device_keys: { [userId]: [] } }),
      signal: AbortSignal.timeout(30_000),
    });
    if (!res.ok) throw new SoakError(`POST /keys/query: ${res.status}`);
    const keys = (await res.json()) as {
      device_keys?: Record<string, Record<string, { keys?: Record<string, string> }>>;
      master_keys?: Record<string, { keys?: Record<string, string> }>;
      self_signing_keys?: Record<string, { keys?: Record<string, string> }>;
    };
    for (const [deviceId, device] of Object.entries(keys.device_keys?.[userId] ?? {})) {
      const key = device.keys?.[`ed25519:${deviceId}`];
      if (key !== undefined) view.deviceKeys.set(deviceId, key);
    }
    const first = (k: { keys?: Record<string, string> } | undefined): string | undefined =>
      k?.keys ? Object.values(k.keys)[0] : undefined;
    view.master = first(keys.master_keys?.[userId]);
    view.selfSigning = first(keys.self_signing_keys?.[userId]);
    return view;
  }
}

/**
 * The bodies among `wanted` that the endpoint's timeline shows decrypted, reading back from
 * the newest page by page only until each of them has been seen (decrypted or not).
 */
async function recentDecrypted(
  client: RpcClient<EndpointContract>,
  life: Life,
  wanted: string[],
  maxItems: number,
): Promise<Set<string>> {
  const readable = new Set<string>();
  const seen = new Set<string>();
  let from: string | undefined;
  for (let read = 0; read < maxItems;) {
    const page = await client.call('timeline', {
      auth: { token: life.token },
      roomId: life.dm,
      limit: 100,
      ...(from === undefined ? {} : { from }),
    });
    read += page.items.length;
    for (const item of page.items) {
      // An undecryptable item has no body: then every page up to maxItems is read.
      if (item.body === undefined) continue;
      seen.add(item.body);
      if (item.decrypted) readable.add(item.body);
    }
    if (wanted.every((b) => seen.has(b)) || page.next === undefined || page.next === from) break;
    from = page.next;
  }
  return readable;
}

/** Each of `sender`'s bodies in the room's whole history, counted, as bob decrypts them. */
async function roomHistory(
  bob: StockPeer,
  roomId: string,
  sender: string,
): Promise<Map<string, number> & { undecryptable: number }> {
  const counts = Object.assign(new Map<string, number>(), { undecryptable: 0 });
  const token = bob.client.getAccessToken() ?? '';
  let from: string | undefined;
  for (;;) {
    const url = new URL(
      `${bob.client.baseUrl}/_matrix/client/v3/rooms/${encodeURIComponent(roomId)}/messages`,
    );
    url.searchParams.set('dir', 'b');
    url.searchParams.set('limit', '500');
    if (from !== undefined) url.searchParams.set('from', from);
    const res = await fetch(url, {
      headers: { authorization: `Bearer ${token}` },
      signal: AbortSignal.timeout(60_000),
    });
    if (!res.ok) throw new SoakError(`bob's /messages: ${res.status}`);
    const page = (await res.json()) as { chunk: Partial<IEvent>[]; end?: string };
    for (const raw of page.chunk) {
      if (raw.sender !== sender || raw.type !== 'm.room.encrypted') continue;
      const event = new MatrixEvent({ ...raw, room_id: roomId });
      await bob.client.decryptEventIfNeeded(event);
      if (event.isDecryptionFailure()) {
        counts.undecryptable++;
        continue;
      }
      const body: unknown = event.getContent().body;
      if (typeof body === 'string') counts.set(body, (counts.get(body) ?? 0) + 1);
    }
    if (page.end === undefined || page.chunk.length === 0) return counts;
    from = page.end;
  }
}

/** Whether any of these health objects said the homeserver was down (see SoakResult). */
function homeserverShown(
  health: Record<string, unknown>[],
): SoakResult['outage']['homeserverShown'] {
  const values = health.flatMap((h) => ('homeserver' in h ? [h.homeserver] : []));
  if (values.length === 0) return 'not-reported';
  return values.some((v) => v !== 'reachable' && v !== 'available' && v !== 'ok') ? 'yes' : 'no';
}

/** The vault the endpoint started: its child running the vault command (0: none now). */
function vaultPid(endpointPid: number): number {
  for (const child of childrenOf(endpointPid)) {
    const argv = readProc(`/proc/${child}/cmdline`).split('\0');
    // Its source, or the bundle built from it (dist/compartments/keyvault-main.mjs).
    if (argv.some((a) => /keyvault[/-]main\.(ts|mjs)$/.test(a)) && argv.includes('serve')) {
      return child;
    }
  }
  return 0;
}

/** A process's children, from every one of its threads' /proc children lists. */
function childrenOf(pid: number): number[] {
  let tasks: string[];
  try {
    tasks = readdirSync(`/proc/${pid}/task`);
  } catch {
    return [];
  }
  return tasks.flatMap((task) =>
    readProc(`/proc/${pid}/task/${task}/children`)
      .split(' ')
      .filter((p) => p !== '')
      .map(Number),
  );
}

function readProc(path: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return '';
  }
}
