/**
 * The demo, the README's main command. It starts a local Synapse and an swtpm TPM, provisions
 * the keyvault on the TPM, launches the endpoint compartment (which launches its vault
 * compartment) behind the gateway (the local API, on a Unix socket), and a stock matrix-js-sdk
 * client; then the two hold an end-to-end encrypted conversation through the local API, each
 * message shown with its verification state, and the policy refuses what a client may not do.
 * Later issues add verification and attestation.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import {
  type SpawnedGateway,
  type SseEvent,
  openEventStream,
  spawnGateway,
} from '../../endpoint/gateway/index.ts';
import { verifyAuditLog } from '../../policy/index.ts';
import {
  StockPeer,
  type Swtpm,
  type Synapse,
  prepareCompartments,
  startSwtpm,
  startSynapse,
} from '../../test/fixtures/index.ts';

const usage = `Usage: bash deploy/demo.sh [--json] [--keep]

Starts a local Synapse homeserver and an swtpm TPM 2.0, provisions the keyvault on the TPM,
launches the gateway (the local API on a Unix socket), the endpoint and its vault (separate
processes), and a stock Matrix client (matrix-js-sdk with its Rust crypto). The two exchange
end-to-end encrypted messages both ways through the local API; each is shown with its
verification state; the policy refuses what a client may not do, and the audit log shows it.
Then everything is stopped again.

  --json   print one JSON object with the results instead of progress lines
  --keep   leave everything running until Ctrl-C, to look around
  --help   this text`;

interface Check {
  step: string;
  ok: boolean;
  detail: string;
  ms: number;
}

interface Line {
  from: string;
  body: string;
  seenBy: string;
  state: string;
}

async function main(): Promise<number> {
  let args;
  try {
    args = parseArgs({
      options: {
        json: { type: 'boolean' },
        keep: { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
      },
      strict: true,
    }).values;
  } catch (e) {
    process.stderr.write(`demo: ${(e as Error).message}\n${usage}\n`);
    return 2;
  }
  if (args.help) {
    process.stdout.write(`${usage}\n`);
    return 0;
  }
  const json = args.json ?? false;
  const say = (line: string): void => {
    if (!json) process.stdout.write(`${line}\n`);
  };
  const checks: Check[] = [];
  const conversation: Line[] = [];
  const stops: (() => Promise<void>)[] = [];
  let stopping: Promise<void> | undefined;
  const stopAll = (): Promise<void> =>
    (stopping ??= (async () => {
      for (const stop of stops.reverse()) await stop().catch(() => undefined);
    })());
  process.once('SIGINT', () => {
    say('\nstopping…');
    void stopAll().then(() => process.exit(130));
  });

  const step = async <T>(name: string, work: () => Promise<[T, string]>): Promise<T> => {
    const started = Date.now();
    say(`• ${name}…`);
    try {
      const [value, detail] = await work();
      const ms = Date.now() - started;
      checks.push({ step: name, ok: true, detail, ms });
      say(`  ✓ ${detail} (${(ms / 1000).toFixed(1)} s)`);
      return value;
    } catch (e) {
      const detail = e instanceof Error ? (e.message.split('\n')[0] ?? 'failed') : String(e);
      checks.push({ step: name, ok: false, detail, ms: Date.now() - started });
      throw new DemoError(`${name}: ${detail}`);
    }
  };

  try {
    const dir = await mkdtemp(join(tmpdir(), 'mte-demo-'));
    stops.push(() => rm(dir, { recursive: true, force: true }));

    const synapse = await step<Synapse>('Synapse homeserver', async () => {
      const hs = await startSynapse();
      stops.push(() => hs.stop());
      return [hs, `client-server API at ${hs.baseUrl}`];
    });

    const alice = await synapse.registerUser('alice');
    let token = '';
    let botToken = '';
    let auditLog = '';
    const tpm = await step<Swtpm>('TPM 2.0 (swtpm) and the keyvault on it', async () => {
      const t = await startSwtpm();
      stops.push(() => t.stop());
      const prepared = await prepareCompartments(dir, {
        homeserver: synapse.baseUrl,
        tpm: t,
        user: alice,
        clients: [
          {
            name: 'demo-ui',
            capabilities: [
              'rooms.read',
              'messages.read',
              'messages.send',
              'rooms.create',
              'contacts.read',
              'events.stream',
            ],
          },
          { name: 'alert-bot', capabilities: ['messages.send'], requestsPerMinute: 30 },
        ],
      });
      const { provisioned } = prepared;
      token = prepared.tokens['demo-ui'] ?? '';
      botToken = prepared.tokens['alert-bot'] ?? '';
      auditLog = prepared.auditLog;
      return [
        t,
        `provisioned ${provisioned.created.length} items: store key and Ed25519 seed sealed to PCR 16, X.509 RSA key, attestation key, NV counter`,
      ];
    });

    const gateway = await step<SpawnedGateway>(
      'Gateway, endpoint and vault compartments (three processes)',
      async () => {
        const config = join(dir, 'gateway.json');
        await writeFile(
          config,
          JSON.stringify({ socket: 'api.sock', endpointConfig: 'endpoint.json' }),
        );
        const g = await spawnGateway(config);
        stops.push(() => g.stop());
        const res = await g.request('/v1/status', { token });
        const status = res.json() as { userId: string; deviceId: string };
        return [
          g,
          `GET /v1/status on ${g.socketPath ?? 'the socket'} (mode 0600): ${status.userId}, device ${status.deviceId}; its crypto store is sealed by the TPM's store key`,
        ];
      },
    );
    const api = async (path: string, options: { method?: string; body?: unknown } = {}) => {
      const res = await gateway.request(path, { token, ...options });
      if (res.status >= 300) throw new Error(`${options.method ?? 'GET'} ${path}: ${res.text}`);
      return res.json() as Record<string, unknown>;
    };

    const bob = await step<StockPeer>(
      'Stock Matrix client (matrix-js-sdk, Rust crypto)',
      async () => {
        const user = await synapse.registerUser('bob');
        const peer = await StockPeer.start(synapse.baseUrl, user);
        stops.push(() => peer.stop());
        await peer.bootstrapCrossSigning(user.password);
        return [
          peer,
          `${peer.userId}, device ${peer.deviceId}, cross-signing set up as Element does`,
        ];
      },
    );

    await step('An encrypted conversation through the local API, both ways', async () => {
      const { roomId } = (await api('/v1/rooms', {
        method: 'POST',
        body: { invite: [bob.userId], isDirect: true },
      })) as { roomId: string };
      await bob.acceptInvite(roomId);
      await bob.waitForMember(roomId, alice.userId);
      const room = encodeURIComponent(roomId);
      const stream = await openEventStream(gateway.target, { token });

      const first = 'Hello Bob. My keys live in a TPM.';
      await api(`/v1/rooms/${room}/messages`, { method: 'POST', body: { body: first } });
      const atBob = await bob.waitForMessage(roomId, first);
      conversation.push({
        from: alice.userId,
        body: atBob.body,
        seenBy: bob.userId,
        state: atBob.encrypted ? 'decrypted (Megolm)' : 'NOT ENCRYPTED',
      });

      const reply = 'Hi! Decrypted here by a stock matrix-js-sdk.';
      await bob.sendText(roomId, reply);
      // The reply arrives on the event stream (server-sent events), decrypted by the endpoint.
      type Item = { sender: string; body?: string; verification?: string };
      let seen: Item | undefined;
      const deadline = Date.now() + 30_000;
      while (!seen && Date.now() < deadline) {
        const event: SseEvent | undefined = await stream.next(deadline - Date.now());
        if (event?.event !== 'message') continue;
        const data = JSON.parse(event.data) as { item: Item };
        if (data.item.body === reply) seen = data.item;
      }
      stream.close();
      if (!seen) throw new Error('the reply did not arrive on the event stream');
      conversation.push({
        from: bob.userId,
        body: seen.body ?? '',
        seenBy: alice.userId,
        state: `decrypted, on GET /v1/events; sender ${seen.verification ?? 'unknown'} (verification comes with issue 6)`,
      });
      for (const l of conversation) say(`    ${l.from} → ${l.seenBy}: "${l.body}"  [${l.state}]`);
      // What the homeserver stored: ciphertext only.
      const stored = await fetch(
        `${synapse.baseUrl}/_matrix/client/v3/rooms/${encodeURIComponent(roomId)}/messages?dir=b&limit=20`,
        { headers: { authorization: `Bearer ${bob.client.getAccessToken() ?? ''}` } },
      );
      const text = await stored.text();
      if (text.includes(first) || text.includes(reply) || !text.includes('m.megolm.v1.aes-sha2')) {
        throw new Error('the homeserver holds plaintext');
      }
      return [undefined, `room ${roomId}; the homeserver stored only Megolm ciphertext`];
    });

    await step('The policy decides, the audit log records', async () => {
      const noToken = await gateway.request('/v1/rooms');
      const bot = await gateway.request('/v1/rooms', { token: botToken });
      const botError = (bot.json() as { error: { code: string; message: string } }).error;
      const verified = await verifyAuditLog(auditLog);
      if (noToken.status !== 401 || bot.status !== 403 || !verified.ok) {
        throw new Error('the policy or the audit log did not behave');
      }
      say(
        `    no token → ${noToken.status}; alert-bot (messages.send only) lists rooms → ${bot.status} ${botError.code}: ${botError.message}`,
      );
      return [
        undefined,
        `${verified.count} audit entries, hash chain intact (node policy/main.ts audit verify ${auditLog})`,
      ];
    });

    if (args.keep && !json) {
      say(
        `\nEverything is running. Synapse: ${synapse.baseUrl}  swtpm: TPM2TOOLS_TCTI=${tpm.tcti}`,
      );
      say(
        `The local API: curl --unix-socket ${gateway.socketPath ?? ''} -H 'Authorization: Bearer ${token}' http://localhost/v1/rooms`,
      );
      say('Press Ctrl-C to stop.');
      await new Promise(() => undefined);
    }
    await stopAll();
    say('\nStopped everything again.');
    if (json) process.stdout.write(`${JSON.stringify({ ok: true, checks, conversation })}\n`);
    return 0;
  } catch (e) {
    await stopAll();
    const message = e instanceof DemoError ? e.message : `unexpected failure: ${String(e)}`;
    if (json) process.stdout.write(`${JSON.stringify({ ok: false, error: message, checks })}\n`);
    else process.stderr.write(`demo: ${message}\n`);
    return 1;
  }
}

class DemoError extends Error {}

// The demo prints through process.stdout only; the SDK's debug chatter (some of its child
// loggers are pinned to DEBUG) goes nowhere.
console.log = console.info = console.debug = console.warn = () => undefined;

// Exit explicitly: the SDK leaves timers behind after stopClient(), which would keep the
// process alive long after everything was stopped.
process.exit(await main());
