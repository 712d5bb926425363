/**
 * The endpoint compartment: `node endpoint/main.ts serve --config FILE`. It launches its vault
 * compartment (keyvault/main.ts serve, over a socketpair), opens the sealed store with the
 * vault's key, runs the Matrix device, and serves the endpoint contract on file descriptor 3
 * for its launcher (the gateway, or a test). It listens on nothing but, with --gateway-socket,
 * a private Unix socket where a restarted gateway is connected. Every call is authorised
 * against the policy file and recorded in the audit log.
 */
import { unwatchFile, watchFile } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { fstatSync } from 'node:fs';
import { Socket } from 'node:net';
import { isAbsolute } from 'node:path';
import { parseArgs } from 'node:util';
import { z } from 'zod';
import { readSecret } from '../keyvault/common/secret.ts';
import { vaultClient } from '../keyvault/client.ts';
import { spawnVault } from '../keyvault/spawn.ts';
import { serve, serveOneAtATime, socketChannel } from '../keyvault/common/rpc/index.ts';
import { onParentExit, refuseInspector } from '../keyvault/common/spawn.ts';
import {
  AuditLog,
  Authorizer,
  PolicyHolder,
  auditLogOptions,
  mayBackUpRoom,
  roomTrust,
} from '../policy/index.ts';
import { MAX_EVENT_LOG_BYTES, loadVerifierPolicy } from '../attestation/index.ts';
import {
  EventHub,
  apiHandlers,
  attestationWire,
  failedSendWire,
  streamInput,
} from './api/index.ts';
import { liveStreamOwners } from './api/events.ts';
import { Transfers } from './messages/index.ts';
import { AttestationService } from './attestation/service.ts';
import { BackupService } from './backup/service.ts';
import { endpointContract } from './contract.ts';
import { loadEndpointConfig } from './config.ts';
import { loadX509Material } from './crypto/x509.ts';
import { HealthState } from './health.ts';
import { RESET_STORE_USAGE, resetStoreCommand } from './reset-store.ts';
import { EndpointService } from './service.ts';
import { type VaultConnection, VaultLink } from './vault-link.ts';

const usage = `Usage: node endpoint/main.ts serve --config FILE [--vault-fd N] [--gateway-socket PATH]
                                         [--replace-identity]
       node endpoint/main.ts reset-store --config FILE --reason TEXT [--json] [--vault-fd N]

Runs the endpoint compartment: launches the vault (or, with --vault-fd, uses the vault channel
the launcher passed on that descriptor), opens the sealed store, syncs with the
homeserver, and serves the endpoint contract to its gateway on file descriptor 3. The password
comes from the file or environment variable the config names, never from argv. The policy file
is reloaded when it changes (or on SIGHUP); an invalid edit is refused and the last valid policy
stays.

A bad frame from the gateway (oversize, torn, not JSON) or a hang-up ends that channel only.
Without --gateway-socket the endpoint then stops cleanly. With it, it keeps running and serves
the next gateway that connects on PATH (a Unix socket, mode 0600, in a 0700 directory: for the
launcher or the gateway's parent), one at a time; it stops on SIGTERM, SIGINT, or when the
process that started it exits.

reset-store starts a new device on purpose (see reset-store --help).

--replace-identity, for one start after a recovery onto new hardware (the old vault's
cross-signing master key is gone with it): publishes this vault's master key as the
account's identity in place of the old one. Peers see the identity change and must verify
again (or accept the new key through an institution's X.509 certificate). Without it, an
account whose identity is not the vault's is never replaced.`;

/** Long polls of the event stream hold a slot each; the gateway bounds them (64) below this. */
const MAX_IN_FLIGHT = 256;

async function main(argv: string[]): Promise<number> {
  if (argv[0] === 'reset-store') return resetStoreCommand(argv.slice(1));
  if (argv[0] === 'help' && argv[1] === 'reset-store') {
    process.stdout.write(`${RESET_STORE_USAGE}\n`);
    return 0;
  }
  const { values, positionals } = parseArgs({
    args: argv,
    options: {
      config: { type: 'string' },
      'vault-fd': { type: 'string' },
      'gateway-socket': { type: 'string' },
      'replace-identity': { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
    allowPositionals: true,
  });
  if (values.help) {
    process.stdout.write(`${usage}\n`);
    return 0;
  }
  if (positionals[0] !== 'serve' || values.config === undefined) {
    process.stderr.write(`${usage}\n`);
    return 2;
  }
  refuseInspector();
  if (!isSocketFd(3)) throw new Error('serve needs its first gateway channel on file descriptor 3');
  const gatewaySocket = values['gateway-socket'];
  if (gatewaySocket !== undefined && !isAbsolute(gatewaySocket)) {
    throw new Error('--gateway-socket: give an absolute path (inside a directory of mode 0700)');
  }
  const vaultFd = values['vault-fd'] === undefined ? undefined : Number(values['vault-fd']);
  if (vaultFd !== undefined && !(Number.isInteger(vaultFd) && vaultFd > 3 && isSocketFd(vaultFd))) {
    throw new Error(`--vault-fd ${values['vault-fd'] ?? ''}: not a socket passed by the launcher`);
  }

  const config = await loadEndpointConfig(values.config);
  const log = {
    warn: (m: string) => process.stderr.write(`endpoint: ${m}\n`),
    info: () => undefined,
  };
  // Policy and audit log first: no point starting a device nobody may use, or unaudited.
  const policy = await PolicyHolder.open(config.policy);
  // Its segments, size bound and refusal counting are the policy's, as it was at start-up.
  const audit = await AuditLog.open(config.auditLog, auditLogOptions(policy.current.audit));
  try {
    await audit.append({
      client: null,
      action: 'policy.load',
      target: null,
      decision: 'info',
      reason: 'OK',
    });
  } catch (e) {
    await audit.close();
    throw e;
  }
  // Read before the vault starts: a missing or unusable certificate or policy fails in one line.
  const x509 = config.x509 && (await loadX509Material(config.x509));
  const verifierPolicy =
    config.attestation && (await loadVerifierPolicy(config.attestation.policy));
  const eventLog = config.attestation?.eventLog
    ? await readEventLog(config.attestation.eventLog)
    : undefined;
  const akCertificate = config.attestation?.akCertificate
    ? await readCertificate(config.attestation.akCertificate)
    : undefined;
  const password = await readSecret(config.password, 'password');
  // Launched (deploy/launch.ts): the vault runs in its own sandbox and its channel is ours on
  // vaultFd. Otherwise we start it as our child (development, tests).
  const vault = await VaultLink.open(
    vaultFd === undefined ? await childVault(config.vaultConfig) : await launchedVault(vaultFd),
    {
      logger: { warn: log.warn, info: (m) => process.stderr.write(`endpoint: ${m}\n`) },
      // Unlaunched, the vault is our child: start another when it dies. Launched, the
      // launcher restarts the stack; until then we report the vault down.
      ...(vaultFd === undefined ? { reconnect: () => childVault(config.vaultConfig) } : {}),
    },
  );
  const health = new HealthState();
  const offVault = vault.onHealth((h) => {
    health.setVault(h.state, h.state === 'unavailable' ? h.reason : undefined);
  });
  let service: EndpointService;
  try {
    service = await EndpointService.start({
      vault,
      counter: vault.storeCounter,
      onStoreHealth: (h) => {
        if (h.failed) health.setStorage('failed', `the store stopped (${h.failed})`);
        else if (h.full)
          health.setStorage('full', 'the disk is full; sends are refused until space is freed');
        else health.setStorage('ok');
      },
      onHomeserver: (reachable) => {
        health.setHomeserver(
          reachable ? 'reachable' : 'unreachable',
          'the homeserver does not answer; sends wait in the outbox and go out when it does',
        );
      },
      dataDir: config.dataDir,
      homeserver: config.homeserver,
      user: config.user,
      password: password.toString('utf8'),
      trustFor: (roomId) => roomTrust(policy.current, roomId).trust,
      logger: log,
      ...(x509 ? { x509 } : {}),
      ...(values['replace-identity'] === true ? { replaceIdentity: true } : {}),
    });
  } catch (e) {
    offVault();
    await vault.close();
    await audit.close();
    throw e;
  } finally {
    password.fill(0);
  }
  const { endpoint, outbox } = service;
  // A send the homeserver took says it answers, though sync may still be in its backoff.
  const offDelivered = outbox.onSent(() => {
    health.setHomeserver('reachable');
  });
  const attestation = new AttestationService({
    engine: endpoint.engine,
    vault,
    state: service.store.appState,
    self: { userId: endpoint.userId, deviceId: endpoint.deviceId },
    ...(verifierPolicy ? { policy: verifierPolicy } : {}),
    ...(config.attestation?.pcrs ? { pcrs: config.attestation.pcrs } : {}),
    ...(eventLog ? { eventLog } : {}),
    ...(akCertificate ? { akCertificate } : {}),
    logger: log,
  });
  endpoint.engine.privateTypes = AttestationService.types;
  endpoint.privateMessages = (messages) => attestation.handle(messages);
  endpoint.isAttested = (userId, deviceId) => attestation.isAttested(userId, deviceId);
  endpoint.attestMissing = (devices) => {
    attestation.attestMissing(devices);
  };
  const stopCheckpoints = await checkpointAuditHead(service, audit, log);
  const hub = new EventHub();
  const offChanges = endpoint.onChange((event) => {
    hub.push(streamInput(event));
  });
  const offFailed = outbox.onFailed((failed) => {
    hub.push({ type: 'send-failed', failed: failedSendWire(failed) });
  });
  const transfers = new Transfers();
  const offAttestation = attestation.onResult((view) => {
    hub.push({ type: 'attestation', result: attestationWire(view) });
    // Messages held for an attested-only room may go out now.
    if (view.state === 'passed') void outbox.pump();
  });
  const offHealth = health.onChange((now) => {
    hub.push({ type: 'health', health: now });
  });
  const backup = await BackupService.start({
    machine: endpoint.engine.machine,
    api: endpoint.api,
    vault,
    state: service.store.appState,
    settings: () => ({
      mode: policy.current.backup.mode,
      mayBackUp: (roomId) => mayBackUpRoom(policy.current, roomId),
    }),
    onEvent: (event) => {
      hub.push(
        event.kind === 'state'
          ? { type: 'backup', status: event.status }
          : {
              type: 'backup',
              progress: { phase: event.phase, done: event.done, total: event.total },
            },
      );
    },
    audit: (code) =>
      audit.append({
        client: null,
        action: 'backup.refused',
        target: null,
        decision: 'deny',
        reason: code,
      }),
    logger: log,
  });
  const reload = async (): Promise<void> => {
    const result = await policy.reload();
    if (result.ok && !result.changed) return;
    if (result.ok) {
      // Streams of revoked clients, replaced tokens and lost events.stream end now; the rest
      // are woken to be authorised against the new policy (rooms may have narrowed).
      hub.dropClientsExcept(liveStreamOwners(policy.current.clients));
    } else {
      log.warn(`policy reload refused, keeping the last valid policy: ${result.error}`);
    }
    await audit
      .append({
        client: null,
        action: 'policy.reload',
        target: null,
        decision: result.ok ? 'info' : 'deny',
        reason: result.ok ? 'OK' : 'POLICY_INVALID',
      })
      .catch(() => {
        log.warn('cannot write the audit log; every request is refused until it can be');
      });
  };
  watchFile(config.policy, { interval: 1000 }, () => void reload());
  const onHup = (): void => void reload();
  process.on('SIGHUP', onHup);

  const handlers = apiHandlers({
    endpoint,
    outbox,
    authorizer: new Authorizer(policy),
    audit,
    policy: () => policy.current,
    hub,
    health,
    attestation,
    transfers,
    backup,
  });
  // The gateway parses untrusted input and may be compromised: what it sends can end its own
  // channel (an oversize or torn frame, a hang-up mid-request), never this process. With
  // --gateway-socket a restarted gateway is connected there (by the launcher, or the
  // gateway's parent) while the vault, the store, the sync loop and the outbox run on.
  const first = new Socket({ fd: 3, readable: true, writable: true });
  const serving = serveOneAtATime({
    first,
    ...(gatewaySocket === undefined ? {} : { listenPath: gatewaySocket }),
    serve: (channel) => {
      let malformed = false;
      return serve(channel, endpointContract, handlers, {
        maxInFlight: MAX_IN_FLIGHT,
        onError: (e, { method }) =>
          log.warn(
            `internal error in ${method ?? 'a request'}: ${e instanceof Error ? e.message : 'error'}`,
          ),
        onProtocolError: (e, { fatal }) => {
          // The fatal one is told with the channel's end; of the others, the first per channel
          // (each was answered), so a flood of them cannot fill the log.
          if (fatal || malformed) return;
          malformed = true;
          log.warn(
            `a malformed frame from the gateway, answered ${e.code} (${e.message}); further ones on this channel are answered unlogged`,
          );
        },
      });
    },
    onEnd: ({ reason, replaced, stopping }) => {
      if (stopping) return;
      const why = replaced
        ? 'a new gateway connection took its place'
        : reason
          ? `${reason.code}: ${reason.message}`
          : 'the gateway hung up';
      log.warn(
        `the gateway channel closed (${why}); ${gatewaySocket === undefined ? 'no other can connect: stopping' : `the next gateway may connect on ${gatewaySocket}`}`,
      );
    },
  });
  let exitCode = 0;
  const gateways = await serving.catch((e: unknown) => {
    // Stopped like any other stop below, so the store and the outbox are closed cleanly.
    log.warn(
      `cannot listen for the gateway on ${gatewaySocket ?? ''}: ${e instanceof Error ? e.message : 'error'}`,
    );
    first.destroy();
    exitCode = 1;
    return undefined;
  });
  if (gateways) {
    if (gatewaySocket !== undefined) {
      process.stderr.write(`endpoint: accepting a restarted gateway on ${gatewaySocket}\n`);
    }
    const stop = (): void => {
      void gateways.close();
    };
    process.once('SIGTERM', stop);
    process.once('SIGINT', stop);
    // Its channel no longer ends it when it listens: a parent that died must still stop it.
    const offParent = onParentExit(() => {
      log.warn('the process that started the endpoint exited; stopping');
      stop();
    });
    await gateways.done;
    offParent();
  }
  unwatchFile(config.policy);
  process.off('SIGHUP', onHup);
  offChanges();
  offFailed();
  offDelivered();
  transfers.close();
  offHealth();
  offAttestation();
  await backup.stop();
  endpoint.privateMessages = undefined;
  endpoint.isAttested = undefined;
  endpoint.attestMissing = undefined;
  offVault();
  // The open windows' refusal counts first, so the last checkpoint of the head covers them.
  await audit.flushRefusals().catch(() => undefined);
  await stopCheckpoints();
  await service.stop();
  await vault.close();
  await audit.close();
  return exitCode;
}

/** The firmware's event log, bounded as evidence v1 carries it (attestation/evidence.ts). */
async function readEventLog(path: string): Promise<Buffer> {
  let bytes: Buffer;
  try {
    bytes = await readFile(path);
  } catch (e) {
    throw new Error(
      `attestation.eventLog: cannot read ${path} (${(e as NodeJS.ErrnoException).code ?? 'error'})`,
      { cause: e },
    );
  }
  if (bytes.length > MAX_EVENT_LOG_BYTES) {
    throw new Error(
      `attestation.eventLog: ${path} is ${bytes.length} bytes; evidence v1 carries at most ${MAX_EVENT_LOG_BYTES}`,
    );
  }
  return bytes;
}

/** Our AK certificate, PEM or DER, as DER. */
async function readCertificate(path: string): Promise<Buffer> {
  let bytes: Buffer;
  try {
    bytes = await readFile(path);
  } catch (e) {
    throw new Error(
      `attestation.akCertificate: cannot read ${path} (${(e as NodeJS.ErrnoException).code ?? 'error'})`,
      { cause: e },
    );
  }
  const pem = /-----BEGIN CERTIFICATE-----([A-Za-z0-9+/=\s]+)-----END CERTIFICATE-----/.exec(
    bytes.toString('latin1'),
  );
  const der = pem?.[1] ? Buffer.from(pem[1].replace(/\s+/g, ''), 'base64') : bytes;
  if (der.length === 0 || der.length > 4096 || der[0] !== 0x30) {
    throw new Error(
      `attestation.akCertificate: ${path} is not a certificate (PEM or DER, at most 4 KiB)`,
    );
  }
  return der;
}

function isSocketFd(fd: number): boolean {
  try {
    return fstatSync(fd).isSocket();
  } catch {
    return false;
  }
}

async function launchedVault(fd: number): Promise<VaultConnection> {
  const socket = new Socket({ fd, readable: true, writable: true });
  const closed = new Promise<void>((resolve) =>
    socket.once('close', () => {
      resolve();
    }),
  );
  const vault = await vaultClient(socketChannel(socket));
  return { vault, stop: () => vault.close(), exited: closed };
}

async function childVault(configPath: string): Promise<VaultConnection> {
  const child = await spawnVault(configPath);
  return { vault: child.vault, stop: () => child.stop(), exited: child.exited };
}

const auditHead = z.object({ seq: z.number().int().min(0), hash: z.string() });
const CHECKPOINT_MS = 5000;

/**
 * Cutting entries off the end of the audit log leaves a valid chain. So the log's head is
 * also kept in the sealed store (which the vault's counter guards against rollback), and a
 * log that ends before the recorded head is reported, on stderr and in the log itself.
 * Entries written since the last checkpoint (at most CHECKPOINT_MS before a crash) are not
 * covered.
 */
async function checkpointAuditHead(
  service: EndpointService,
  audit: AuditLog,
  log: { warn(m: string): void },
): Promise<() => Promise<void>> {
  const state = service.store.appState;
  const recorded = await state.get('audit/head', auditHead);
  if (recorded && recorded.seq > audit.head.seq) {
    log.warn(
      `SECURITY: the audit log ends at entry ${audit.head.seq} but reached ${recorded.seq} before: entries were cut off`,
    );
    await audit.append({
      client: null,
      action: 'audit.recover',
      target: null,
      decision: 'info',
      reason: 'AUDIT_TRUNCATED',
    });
  }
  let saved = recorded?.seq ?? -1;
  const save = async (): Promise<void> => {
    const head = audit.head;
    if (head.seq === saved) return;
    await state.put('audit/head', head);
    saved = head.seq;
  };
  await save();
  const timer = setInterval(() => {
    save().catch(() => undefined);
  }, CHECKPOINT_MS);
  return async () => {
    clearInterval(timer);
    await save().catch(() => undefined);
  };
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (e: unknown) => {
    const message = e instanceof Error ? e.message : String(e);
    const code = typeof e === 'object' && e !== null && 'code' in e ? ` [${String(e.code)}]` : '';
    process.stderr.write(`endpoint: ${message.split('\n')[0] ?? ''}${code}\n`);
    process.exit(1);
  },
);
