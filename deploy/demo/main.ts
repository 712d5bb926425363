/**
 * The demo, the README's main command. It starts a local Synapse and an swtpm TPM, provisions
 * the keyvault on the TPM, launches the endpoint compartment (which launches its vault
 * compartment) behind the gateway (the local API, on a Unix socket), and a stock matrix-js-sdk
 * client; then the two hold an end-to-end encrypted conversation through the local API, each
 * message shown with its verification state, and the policy refuses what a client may not do.
 * Then verification (issue 6): SAS with the stock peer (both screens' emoji), X.509 identities
 * from a demo CA (the vault's key for ours, a second stock peer with its own), and what happens
 * when the peer's identity changes (sending blocks until acknowledged). Everything goes through
 * the local API; the peers are driven through matrix-js-sdk's public API only.
 */
import { execFile } from 'node:child_process';
import { constants, createHash, createPrivateKey, sign } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs, promisify } from 'node:util';
import { Readable } from 'node:stream';
import {
  type SpawnedGateway,
  type SseEvent,
  gatewayStream,
  openEventStream,
} from '../../endpoint/untrusted/gateway/index.ts';
import { verifyAuditLog } from '../../policy/index.ts';
import { spawnEndpoint } from '../../endpoint/spawn.ts';
import { TpmClient } from '../../keyvault/tpm/index.ts';
import {
  type SasOutcome,
  StockPeer,
  type Swtpm,
  type Synapse,
  type SynapseUser,
  prepareCompartments,
  startSwtpm,
  startSynapse,
} from '../../test/fixtures/index.ts';
import {
  type PreparedStack,
  launchStack,
  prepareStack,
  vaultUser,
} from '../../test/fixtures/stack.ts';

const run = promisify(execFile);
const x509Tool = join(import.meta.dirname, '..', 'x509', 'main.ts');

const usage = `Usage: bash deploy/demo.sh [--json] [--keep] [--ui [--ui-port N]]

Starts a local Synapse homeserver and an swtpm TPM 2.0, provisions the keyvault on the TPM,
launches the gateway (the local API on a Unix socket), the endpoint and its vault (separate
processes), and a stock Matrix client (matrix-js-sdk with its Rust crypto). The two exchange
end-to-end encrypted messages both ways through the local API; each is shown with its
verification state; the policy refuses what a client may not do, and the audit log shows it.
Then verification: we verify the stock client by emoji (SAS; both screens are printed); a
demo CA (deploy/x509) vouches for our identity (signed by the vault's TPM key) and for a
second stock client's, so each sees the other verified without emoji; and the first client
resets its identity: the contact turns verification-violation, sending to it is refused
(409 IDENTITY_CHANGED) until we acknowledge the change through the API. A second endpoint
(dave's) and ours attest each other with TPM quotes. Then dave's machine dies: his endpoint
backed up its room keys (recovery-key mode), and a new machine on a fresh TPM recovers his
history with the recovery key.
Then everything is stopped again.

  --json   print one JSON object with the results instead of progress lines
  --keep   leave everything running until Ctrl-C, to look around
  --ui     also serve the web UI (endpoint/untrusted/web) on http://127.0.0.1:8008/ and keep
           everything running: open the printed URL in a browser and paste the printed token
  --ui-port N  the web UI's port (default 8008)
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

type Emoji = { symbol: string; name: string };
interface Flow {
  flowId: string;
  phase: string;
  sas?: { emoji: Emoji[]; decimals: [number, number, number] };
  cancelled?: { code: string; reason: string };
}
interface Identity {
  state: string;
  masterKey?: string;
  wasVerified: boolean;
}
interface Contact {
  identity: Identity;
  devices: { deviceId: string; crossSignedByOwner: boolean; verified: boolean }[];
}

/** What the verification steps found, for --json. */
interface Summary {
  attestation?: { first: unknown; back: unknown; refused: unknown };
  backup?: { backedUp: number; restored: unknown; decrypted: number };
  sas?: {
    flowId: string;
    ours: Emoji[];
    theirs: Emoji[];
    decimals: number[];
    match: boolean;
    contact: Identity;
  };
  x509?: {
    ca: string;
    keyId: string;
    ourLeaf: string;
    peer: string;
    weSeePeer: Identity;
    peerSeesUs: boolean;
  };
  identityChange?: {
    before: Identity;
    event: Identity;
    refused: { status: number; code: string };
    acknowledged: Identity;
    delivered: boolean;
  };
}

async function waitFor<T>(
  what: string,
  probe: () => Promise<T | undefined>,
  timeoutMs = 60_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    // A DemoError ends the wait (a cancelled flow); anything else is retried.
    const value = await probe().catch((e: unknown) => {
      if (e instanceof DemoError) throw e;
      return undefined;
    });
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(250);
  }
}

const emojiLine = (emoji: readonly Emoji[]): string =>
  emoji.map((e) => `${e.symbol} ${e.name}`).join('  ');

async function main(): Promise<number> {
  let args;
  try {
    args = parseArgs({
      options: {
        json: { type: 'boolean' },
        keep: { type: 'boolean' },
        ui: { type: 'boolean' },
        'ui-port': { type: 'string' },
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
  const uiPort = Number(args['ui-port'] ?? 8008);
  if (!Number.isInteger(uiPort) || uiPort < 1 || uiPort > 65535) {
    process.stderr.write('demo: --ui-port must be a port number (1 to 65535)\n');
    return 2;
  }
  if (args['ui-port'] !== undefined && !args.ui) {
    process.stderr.write('demo: --ui-port needs --ui\n');
    return 2;
  }
  const say = (line: string): void => {
    if (!json) process.stdout.write(`${line}\n`);
  };
  const checks: Check[] = [];
  const conversation: Line[] = [];
  const summary: Summary = {};
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
    let verifierPolicy: Record<string, unknown> = {};
    let token = '';
    let botToken = '';
    let auditLog = '';
    let prepared: PreparedStack | undefined;
    const stackOf = (): PreparedStack => {
      if (!prepared) throw new Error('the deployment tree is not prepared');
      return prepared;
    };
    // A second endpoint (dave's) on its own TPM, for mutual attestation at the end. Each TPM is
    // manufactured with an EK certificate by its own local CA, as a vendor would.
    let daveTpm: Swtpm | undefined;
    let daveMachine:
      | {
          dir: string;
          user: SynapseUser;
          vaultConfig: string;
          endpointConfig: string;
          token: string;
        }
      | undefined;
    const tpm = await step<Swtpm>('TPM 2.0 (swtpm) and the keyvault on it', async () => {
      const asRoot = process.getuid?.() === 0;
      const t = await startSwtpm({
        unix: true,
        ekCertificate: true,
        ...(asRoot ? { accessibleTo: await vaultUser() } : {}),
      });
      stops.push(() => t.stop());
      const second = await startSwtpm({ ekCertificate: true });
      daveTpm = second;
      stops.push(() => second.stop());
      verifierPolicy = {
        version: 1,
        ekRoots: [t.ekIssuer, second.ekIssuer],
        // A fresh TPM's PCR 7 (no firmware ran here): what a measured boot must show.
        pcrs: { required: [0, 7], golden: { 7: ['0'.repeat(64)] } },
      };
      prepared = await prepareStack({
        homeserver: synapse.baseUrl,
        tpm: t,
        user: alice,
        endpointConfig: { attestation: { policy: 'verifier.json', pcrs: [0, 7] } },
        endpointFiles: { 'verifier.json': JSON.stringify(verifierPolicy) },
        ...(args.ui ? { ui: { port: uiPort } } : {}),
        clients: [
          {
            name: 'demo-ui',
            capabilities: [
              'rooms.read',
              'rooms.join',
              'messages.read',
              'messages.send',
              'rooms.create',
              'contacts.read',
              'events.stream',
              'verification',
              'attestation',
            ],
          },
          { name: 'alert-bot', capabilities: ['messages.send'], requestsPerMinute: 30 },
        ],
      });
      const { provisioned, tokens } = prepared;
      token = tokens['demo-ui'] ?? '';
      botToken = tokens['alert-bot'] ?? '';
      auditLog = prepared.auditLog;
      return [
        t,
        `provisioned ${provisioned.created.length} items: store key and Ed25519 seed sealed to PCR 16, X.509 RSA key, attestation key, NV counter`,
      ];
    });

    // Before the endpoint starts: the certificate tool reads the vault's public key (a TPM
    // simulator takes one client at a time), and the endpoint reads its x509 config at start.
    const carolUser = await synapse.registerUser('carol');
    const certs = await step(
      'X.509: a demo CA and two leaves (deploy/x509 certificate tool)',
      async () => {
        const tool = async (...toolArgs: string[]) => {
          const { stdout } = await run(process.execPath, [x509Tool, ...toolArgs, '--json'], {
            cwd: dir,
          });
          return JSON.parse(stdout) as Record<string, string>;
        };
        const caName = 'Demo Institution Root';
        const ca = await tool('ca', '--out', 'ca', '--name', caName);
        const ours = await tool(
          'issue',
          '--user',
          alice.userId,
          '--ca',
          'ca.pem',
          '--ca-key',
          'ca.key',
          '--vault-config',
          stackOf().vaultConfig,
          '--out',
          'alice',
        );
        const theirs = await tool(
          'issue',
          '--user',
          carolUser.userId,
          '--ca',
          'ca.pem',
          '--ca-key',
          'ca.key',
          '--out',
          'carol',
        );
        // Into the endpoint's own config folder: the launched endpoint sees nothing else.
        const endpointDir = stackOf().configDir('endpoint');
        for (const name of ['ca.pem', 'alice.chain.pem']) {
          await writeFile(join(endpointDir, name), await readFile(join(dir, name)), {
            mode: 0o600,
          });
        }
        const endpointConfig = stackOf().endpointConfig;
        const config = JSON.parse(await readFile(endpointConfig, 'utf8')) as Record<
          string,
          unknown
        >;
        config.x509 = { caCerts: ['ca.pem'], chain: 'alice.chain.pem' };
        await writeFile(endpointConfig, JSON.stringify(config));
        say(`    CA "${caName}" (key id ${ca.ski ?? ''}), RSA-3072, key in ca.key`);
        say(
          `    ${alice.userId}: leaf for the vault's x509-identity key (its private key stays in the TPM)`,
        );
        say(`    ${carolUser.userId}: leaf for a new RSA-2048 key of her own (carol.key)`);
        return [
          {
            caName,
            keyId: ca.ski ?? '',
            ourLeaf: ours.ski ?? '',
            carolNotAfter: Date.parse(theirs.notAfter ?? ''),
          },
          'endpoint config: "x509": { "caCerts": ["ca.pem"], "chain": "alice.chain.pem" }',
        ];
      },
    );

    let ourDevice = '';
    const gateway = await step<SpawnedGateway>(
      'Gateway, endpoint and vault compartments, started by the launcher',
      async () => {
        const launched = await launchStack(stackOf());
        stops.push(() => launched.stop());
        const g = launched.gateway;
        const weaker = [...launched.stack.protections.values()]
          .flat()
          .filter((p) => !p.ok && p.name !== 'network limited to the homeserver');
        say(
          weaker.length === 0
            ? '    each as its own user, in its own namespaces (no network for vault and gateway), Node permissions on'
            : `    WEAKER isolation here: ${weaker.map((p) => p.name).join('; ')}`,
        );
        const res = await g.request('/v1/status', { token });
        const status = res.json() as { userId: string; deviceId: string };
        ourDevice = status.deviceId;
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

    let bobPassword = '';
    const bob = await step<StockPeer>(
      'Stock Matrix client (matrix-js-sdk, Rust crypto)',
      async () => {
        const user = await synapse.registerUser('bob');
        bobPassword = user.password;
        const peer = await StockPeer.start(synapse.baseUrl, user);
        stops.push(() => peer.stop());
        await peer.bootstrapCrossSigning(user.password);
        return [
          peer,
          `${peer.userId}, device ${peer.deviceId}, cross-signing set up as Element does`,
        ];
      },
    );

    const bobRoom = await step(
      'An encrypted conversation through the local API, both ways',
      async () => {
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
          state: `decrypted, on GET /v1/events; sender ${seen.verification ?? 'unknown'}`,
        });
        for (const l of conversation) say(`    ${l.from} → ${l.seenBy}: "${l.body}"  [${l.state}]`);
        // What the homeserver stored: ciphertext only.
        const stored = await fetch(
          `${synapse.baseUrl}/_matrix/client/v3/rooms/${encodeURIComponent(roomId)}/messages?dir=b&limit=20`,
          { headers: { authorization: `Bearer ${bob.client.getAccessToken() ?? ''}` } },
        );
        const text = await stored.text();
        if (
          text.includes(first) ||
          text.includes(reply) ||
          !text.includes('m.megolm.v1.aes-sha2')
        ) {
          throw new Error('the homeserver holds plaintext');
        }
        return [roomId, `room ${roomId}; the homeserver stored only Megolm ciphertext`];
      },
    );

    await step('An edit, a reaction and an encrypted attachment, both ways', async () => {
      const room = encodeURIComponent(bobRoom);
      const draft = 'The review is at 10:00.';
      await api(`/v1/rooms/${room}/messages`, { method: 'POST', body: { body: draft } });
      const original = await bob.waitForMessage(bobRoom, draft);
      await api(`/v1/rooms/${room}/messages`, {
        method: 'POST',
        body: { body: 'The review is at 11:00.', edit: original.eventId },
      });
      const edit = await bob.waitForMessage(
        bobRoom,
        (m) => m.sender === alice.userId && m.relatesTo?.rel_type === 'm.replace',
      );
      const newText = (edit.content['m.new_content'] as { body?: string } | undefined)?.body;
      say(`    edit: bob's client shows "${newText ?? '?'}" in place of "${draft}" (m.replace)`);

      await bob.react(bobRoom, original.eventId, '👍');
      type Item = { eventId: string; body?: string; edited?: boolean; reactions?: unknown[] };
      let shown: Item | undefined;
      for (let i = 0; i < 100 && !shown?.reactions; i++) {
        const page = (await api(`/v1/rooms/${room}/timeline?limit=20`)) as { items: Item[] };
        shown = page.items.find((it) => it.eventId === original.eventId);
        if (!shown?.reactions) await sleep(200);
      }
      if (!shown?.reactions) throw new Error('the reaction did not show in the timeline');
      say(
        `    reaction: the timeline shows "${shown.body ?? ''}" (edited: ${String(shown.edited)}) with ${JSON.stringify(shown.reactions)}`,
      );

      const agenda = Buffer.from('1. keys in the TPM\n2. attestation\n3. questions\n');
      const upload = await gatewayStream(
        gateway.target,
        `/v1/rooms/${room}/attachments?name=agenda.txt`,
        {
          method: 'POST',
          token,
          headers: { 'content-type': 'text/plain', 'content-length': String(agenda.length) },
          body: Readable.from([agenda]),
        },
      );
      upload.body.resume();
      if (upload.status !== 202) throw new Error(`upload refused: ${upload.status}`);
      const file = await bob.waitForMessage(bobRoom, (m) => m.content.msgtype === 'm.file');
      const atBob = Buffer.from(await bob.downloadEncryptedFile(file.content));
      if (!atBob.equals(agenda)) throw new Error('bob decrypted something else');
      say(
        `    attachment: agenda.txt uploaded through the API, encrypted by the endpoint (AES-256-CTR); bob downloaded and decrypted the same ${atBob.length} bytes`,
      );
      const photo = Buffer.from('a file from bob, encrypted by matrix-js-sdk');
      const fromBob = await bob.sendEncryptedFile(bobRoom, photo, 'notes.txt', 'text/plain');
      let back: Buffer | undefined;
      let last = '';
      for (let i = 0; i < 50 && back === undefined; i++) {
        const res = await gateway.request(
          `/v1/rooms/${room}/events/${encodeURIComponent(fromBob)}/attachment`,
          { token },
        );
        if (res.status === 200) back = Buffer.from(res.text);
        else {
          last = `${res.status} ${res.text.slice(0, 200)}`;
          await sleep(200);
        }
      }
      if (!back?.equals(photo)) throw new Error(`the endpoint did not serve bob’s file (${last})`);
      return [
        undefined,
        `and bob's encrypted file came back through GET …/attachment, hash-checked and decrypted by the endpoint`,
      ];
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

    await step(`SAS verification of ${bob.userId}'s device, by emoji`, async () => {
      let theirs: SasOutcome | undefined;
      let done: SasOutcome | undefined;
      // bob plays a user who accepts, compares and confirms (matrix-js-sdk's own SAS).
      bob.acceptVerifications(
        (o) => (done = o),
        (o) => (theirs = o),
      );
      const requested = (await api('/v1/verifications', {
        method: 'POST',
        body: { userId: bob.userId, deviceId: bob.deviceId },
      })) as unknown as Flow;
      const flowPath = `/v1/verifications/${encodeURIComponent(requested.flowId)}`;
      const phase = (wanted: string) =>
        waitFor(`verification phase ${wanted}`, async () => {
          const flow = (await api(flowPath)) as unknown as Flow;
          if (flow.phase === 'cancelled') {
            throw new DemoError(`verification cancelled: ${flow.cancelled?.code ?? ''}`);
          }
          return flow.phase === wanted ? flow : undefined;
        });
      const compare = await phase('compare');
      const ours = compare.sas?.emoji ?? [];
      const shown = await waitFor("bob's screen", () => Promise.resolve(theirs));
      const theirEmoji = shown.emoji.map(([symbol, name]) => ({ symbol, name }));
      const match =
        ours.length === 7 &&
        JSON.stringify(ours) === JSON.stringify(theirEmoji) &&
        JSON.stringify(compare.sas?.decimals) === JSON.stringify(shown.decimals);
      say(`    ${alice.userId} (GET ${flowPath}):`);
      say(`      ${emojiLine(ours)}`);
      say(`    ${bob.userId} (matrix-js-sdk):`);
      say(`      ${emojiLine(theirEmoji)}`);
      say(
        `    ${match ? 'the same' : 'DIFFERENT'} (decimals ${compare.sas?.decimals.join(' ') ?? ''}): ${match ? 'POST …/confirm' : 'POST …/cancel {"mismatch":true}'}`,
      );
      if (!match) {
        await api(`${flowPath}/cancel`, { method: 'POST', body: { mismatch: true } });
        throw new Error('the two screens showed different emoji');
      }
      await api(`${flowPath}/confirm`, { method: 'POST', body: {} });
      await phase('done');
      await waitFor("bob's side to finish", () => Promise.resolve(done));
      const contact = await waitFor('bob to be verified', async () => {
        const c = (await api(
          `/v1/contacts/${encodeURIComponent(bob.userId)}`,
        )) as unknown as Contact;
        return c.identity.state === 'verified' ? c : undefined;
      });
      const device = contact.devices.find((d) => d.deviceId === bob.deviceId);
      await waitFor('bob to see our device verified', async () => {
        const status = await bob.crypto.getDeviceVerificationStatus(alice.userId, ourDevice);
        return status?.isVerified() ? true : undefined;
      });
      summary.sas = {
        flowId: requested.flowId,
        ours,
        theirs: theirEmoji,
        decimals: compare.sas?.decimals ?? [],
        match,
        contact: contact.identity,
      };
      return [
        undefined,
        `GET /v1/contacts/${bob.userId}: identity ${contact.identity.state}, device ${bob.deviceId} ${device?.verified ? 'verified' : 'not verified'}; and bob's client sees our device ${ourDevice} verified`,
      ];
    });

    await step('X.509: identities vouched for by the demo CA, no emoji', async () => {
      const key = createPrivateKey(await readFile(join(dir, 'carol.key')));
      const chainPem = await readFile(join(dir, 'carol.chain.pem'), 'utf8');
      const carol = await StockPeer.start(synapse.baseUrl, carolUser, {
        crypto: {
          caCertsPem: await readFile(join(dir, 'ca.pem'), 'utf8'),
          x509Signer: (item: Uint8Array) =>
            Promise.resolve({
              signature_scheme: 'RsaPssSha512' as const,
              signature_bytes: new Uint8Array(
                sign('sha512', item, {
                  key,
                  padding: constants.RSA_PKCS1_PSS_PADDING,
                  saltLength: 64,
                }),
              ),
              certificate_chain: chainPem,
            }),
          x509Validity: () => certs.carolNotAfter,
        },
      });
      stops.push(() => carol.stop());
      await carol.bootstrapCrossSigning(carolUser.password); // the SDK signs her master key
      const { roomId } = (await api('/v1/rooms', {
        method: 'POST',
        body: { invite: [carol.userId], isDirect: true },
      })) as { roomId: string };
      await carol.acceptInvite(roomId);
      await carol.waitForMember(roomId, alice.userId);
      const contact = await waitFor("carol's identity to be verified here", async () => {
        const c = (await api(
          `/v1/contacts/${encodeURIComponent(carol.userId)}`,
        )) as unknown as Contact;
        return c.identity.state === 'verified' ? c : undefined;
      });
      say(
        `    we see ${carol.userId}: identity ${contact.identity.state} (GET /v1/contacts; no SAS was run with her)`,
      );
      await waitFor('carol to see us verified', async () => {
        await carol.crypto.getUserDeviceInfo([alice.userId], true);
        const status = await carol.crypto.getUserVerificationStatus(alice.userId);
        return status.isVerified() ? true : undefined;
      });
      say(
        `    ${carol.userId} (matrix-js-sdk with the CA) sees ${alice.userId} verified: the vault's CMS signature on our master key`,
      );
      summary.x509 = {
        ca: certs.caName,
        keyId: certs.keyId,
        ourLeaf: certs.ourLeaf,
        peer: carol.userId,
        weSeePeer: contact.identity,
        peerSeesUs: true,
      };
      return [
        undefined,
        `both identities verified through "${certs.caName}" (key id ${certs.keyId})`,
      ];
    });

    await step(`${bob.userId} resets his identity (a new master key)`, async () => {
      const contactPath = `/v1/contacts/${encodeURIComponent(bob.userId)}`;
      const before = ((await api(contactPath)) as unknown as Contact).identity;
      const stream = await openEventStream(gateway.target, { token });
      let event: Identity | undefined;
      try {
        await bob.bootstrapCrossSigning(bobPassword); // as after "reset cross-signing"
        const deadline = Date.now() + 60_000;
        while (!event && Date.now() < deadline) {
          const e: SseEvent | undefined = await stream.next(deadline - Date.now());
          if (e === undefined) break;
          if (e.event !== 'identity') continue;
          const data = JSON.parse(e.data) as { userId: string; identity: Identity };
          if (data.userId === bob.userId && data.identity.state !== before.state) {
            event = data.identity;
          }
        }
      } finally {
        stream.close();
      }
      if (!event) throw new Error('no identity event on GET /v1/events');
      say(
        `    GET /v1/events: identity ${bob.userId} ${before.state} → ${event.state} (master key ${short(before.masterKey)} → ${short(event.masterKey)})`,
      );
      const room = encodeURIComponent(bobRoom);
      const refusedRes = await gateway.request(`/v1/rooms/${room}/messages`, {
        token,
        method: 'POST',
        body: { body: 'Are you still you?' },
      });
      const refused = {
        status: refusedRes.status,
        code: (refusedRes.json() as { error?: { code?: string } }).error?.code ?? '',
      };
      say(`    POST /v1/rooms/…/messages → ${refused.status} ${refused.code}`);
      if (refused.status !== 409 || refused.code !== 'IDENTITY_CHANGED') {
        throw new Error(`sending was not blocked (${refused.status} ${refused.code})`);
      }
      const { identity: acknowledged } = (await api(`${contactPath}/identity/acknowledge`, {
        method: 'POST',
        body: {},
      })) as unknown as { identity: Identity };
      const after = 'Acknowledged your new identity.';
      await api(`/v1/rooms/${room}/messages`, { method: 'POST', body: { body: after } });
      const atBob = await bob.waitForMessage(bobRoom, after);
      say(
        `    POST …/identity/acknowledge → ${acknowledged.state}; then "${atBob.body}" is sent, and decrypted by ${bob.userId}`,
      );
      summary.identityChange = { before, event, refused, acknowledged, delivered: true };
      return [
        undefined,
        'a changed identity blocks sending until a UI with `verification` acknowledges it',
      ];
    });

    await step(
      "Remote attestation: dave's endpoint on its own TPM, both ways over Matrix",
      async () => {
        const daveT = daveTpm;
        if (!daveT) throw new Error('no second TPM');
        const dave = await synapse.registerUser('dave');
        const daveDir = join(dir, 'dave');
        await mkdir(daveDir);
        const daveStack = await prepareCompartments(daveDir, {
          homeserver: synapse.baseUrl,
          tpm: daveT,
          user: dave,
          attestation: { policy: verifierPolicy, pcrs: [0, 7] },
        });
        const daveAuth = { token: daveStack.tokens.test ?? '' };
        let daveEndpoint = await spawnEndpoint(daveStack.endpointConfig);
        stops.push(() => daveEndpoint.stop());
        // Each invites the other, so each knows the other's devices.
        await api('/v1/rooms', { method: 'POST', body: { invite: [dave.userId], isDirect: true } });
        await daveEndpoint.client.call('createRoom', {
          auth: daveAuth,
          invite: [alice.userId],
          isDirect: true,
        });
        const daveDevice = (await daveEndpoint.client.call('status', { auth: daveAuth })).deviceId;
        const aliceDevice = String((await api('/v1/status')).deviceId);
        const path = `/v1/contacts/${encodeURIComponent(dave.userId)}/devices/${daveDevice}/attestation`;
        type Verdict = {
          state: string;
          failures: { code: string; message: string }[];
          facts?: { enrolment: string; manufacturer?: string };
        };
        const attestDave = async (): Promise<Verdict> => {
          for (let i = 0; ; i++) {
            const v = (await api(path, { method: 'POST' })) as unknown as Verdict;
            if (!v.failures.some((f) => /no such device/.test(f.message)) || i > 20) return v;
            await sleep(500);
          }
        };
        const first = await attestDave();
        if (first.state !== 'passed')
          throw new Error(`alice → dave: ${JSON.stringify(first.failures)}`);
        say(
          `    POST …/contacts/${dave.userId}/devices/${daveDevice}/attestation → passed (AK trusted by ${first.facts?.enrolment ?? '?'}, TPM ${first.facts?.manufacturer ?? '?'})`,
        );
        const back = await daveEndpoint.client.call(
          'attest',
          { auth: daveAuth, userId: alice.userId, deviceId: aliceDevice },
          { timeoutMs: 40_000 },
        );
        if (back.state !== 'passed')
          throw new Error(`dave → alice: ${JSON.stringify(back.failures)}`);
        say(`    dave's endpoint attests ${alice.userId} ${aliceDevice} → passed`);
        // dave's boot changes: PCR 7 extended on his TPM (his endpoint stops while it happens:
        // the simulator takes one client at a time).
        await daveEndpoint.stop();
        const c = new TpmClient(await daveT.connect());
        try {
          await c.pcrExtend(7, createHash('sha256').update('an unexpected boot loader').digest());
        } finally {
          await c.close();
        }
        daveEndpoint = await spawnEndpoint(daveStack.endpointConfig);
        const refused = await attestDave();
        const codes = refused.failures.map((f) => f.code);
        if (refused.state !== 'failed' || !codes.includes('PCR_VALUE_REJECTED')) {
          throw new Error(
            `a changed boot state was not refused (${refused.state} ${codes.join(',')})`,
          );
        }
        say(
          `    after PCR 7 changed on dave's TPM → failed: ${refused.failures[0]?.message ?? ''}`,
        );
        summary.attestation = { first, back, refused };
        await daveEndpoint.stop();
        daveMachine = { dir: daveDir, user: dave, vaultConfig: daveStack.vaultConfig, endpointConfig: daveStack.endpointConfig, token: daveAuth.token }; // prettier-ignore
        return [
          undefined,
          'mutual attestation over Olm to-device messages (credential activation, then quotes); a changed PCR is refused with its reason',
        ];
      },
    );

    await step(
      "Key backup: dave's machine dies, a new one on a fresh TPM recovers his history",
      async () => {
        const old = daveMachine;
        if (!old) throw new Error("dave's endpoint did not start");
        const vaultCli = (argv: string[], stdin = ''): Promise<string> =>
          new Promise((resolve, reject) => {
            const child = execFile(process.execPath, [join(import.meta.dirname, '..', '..', 'keyvault', 'main.ts'), ...argv], (error, stdout, stderr) => {
            if (error) reject(new Error(stderr.trim() || error.message));
            else resolve(stdout);
          }); // prettier-ignore
            child.stdin?.end(stdin);
          });
        // The admin makes the backup key in dave's vault (with his endpoint stopped: the simulator
        // takes one client at a time); the recovery key is printed once, and kept off the machine.
        const made = JSON.parse(
        await vaultCli(['backup-key', 'create', '--mode', 'recovery-key', '--config', old.vaultConfig, '--json']),
      ) as { recoveryKey: string; publicKey: string }; // prettier-ignore
        say(
          `    vault backup-key create --mode recovery-key → ${made.recoveryKey.slice(0, 9)}… (shown once)`,
        );
        const auth = { token: old.token };
        const first = await spawnEndpoint(old.endpointConfig);
        stops.push(() => first.stop());
        await first.client.call('backupCreate', { auth });
        const roomId = (await first.client.call('createRoom', { auth, invite: [bob.userId] }))
          .roomId;
        await bob.acceptInvite(roomId);
        await bob.waitForMember(roomId, old.user.userId);
        const history = ['the plan is on page 3', 'budget approved', 'see you on Monday'];
        for (const body of history) await bob.sendText(roomId, body);
        await waitFor('dave decrypting the history', async () => {
        const page = await first.client.call('timeline', { auth, roomId, limit: 50 });
        return page.items.some((i) => i.body === history.at(-1)) || undefined;
      }, 60_000); // prettier-ignore
        const backedUp = await waitFor('the backup to hold every room key', async () => {
        const s = await first.client.call('backupStatus', { auth });
        return s.counts.total > 0 && s.counts.backedUp === s.counts.total ? s : undefined;
      }, 60_000); // prettier-ignore
        say(
          `    backup status → ${backedUp.state}, ${backedUp.counts.backedUp} of ${backedUp.counts.total} room keys backed up (version ${backedUp.version ?? '?'})`,
        );
        // The machine dies: the endpoint, its sealed store and its vault state are gone, and the
        // new machine has a TPM of its own.
        await first.stop();
        await rm(old.dir, { recursive: true, force: true });
        const freshTpm = await startSwtpm();
        stops.push(() => freshTpm.stop());
        const newDir = join(dir, 'dave-new');
        await mkdir(newDir);
        const fresh = await prepareCompartments(newDir, {
          homeserver: synapse.baseUrl,
          tpm: freshTpm,
          user: old.user,
        });
        await vaultCli(['backup-key', 'import', '--config', fresh.vaultConfig], made.recoveryKey);
        say(
          '    new machine: vault init, backup-key import < recovery key, serve --replace-identity',
        );
        const second = await spawnEndpoint(fresh.endpointConfig, { replaceIdentity: true });
        stops.push(() => second.stop());
        const newAuth = { token: fresh.tokens.test ?? '' };
        await waitFor('the new device to know the room', async () =>
        (await second.client.call('rooms', { auth: newAuth })).rooms.some((r) => r.roomId === roomId) || undefined, 60_000); // prettier-ignore
        const restored = await second.client.call('backupRecover', { auth: newAuth });
        say(`    backup recover → ${restored.imported} of ${restored.total} room keys imported`);
        const page = await second.client.call('timeline', { auth: newAuth, roomId, limit: 50 });
        const read = history.filter((b) =>
          page.items.some((i) => i.body === b && i.encrypted === true),
        );
        if (read.length !== history.length)
          throw new Error(
            `only ${read.length} of ${history.length} old messages decrypt on the new machine`,
          );
        for (const body of read) say(`    on the new machine: "${body}"`);
        summary.backup = { backedUp: backedUp.counts.backedUp, restored, decrypted: read.length };
        await second.stop();
        return [
          undefined,
          `all ${history.length} old messages decrypt on a new TPM, from the backup`,
        ];
      },
    );

    if (args.ui && !json) {
      say(`\nThe web UI: open ${gateway.uiUrl ?? '(not listening)'}/ in a browser on this machine`);
      say(`and paste this token (the demo-ui client's): ${token}`);
      say(
        `Bob (${bob.userId}, a stock matrix-js-sdk client) is in the room; Synapse: ${synapse.baseUrl}`,
      );
      say('Press Ctrl-C to stop.');
      await new Promise(() => undefined);
    }
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
    if (json)
      process.stdout.write(`${JSON.stringify({ ok: true, checks, conversation, ...summary })}\n`);
    return 0;
  } catch (e) {
    await stopAll();
    const message = e instanceof DemoError ? e.message : `unexpected failure: ${String(e)}`;
    if (json)
      process.stdout.write(
        `${JSON.stringify({ ok: false, error: message, checks, ...summary })}\n`,
      );
    else process.stderr.write(`demo: ${message}\n`);
    return 1;
  }
}

class DemoError extends Error {}

const short = (key: string | undefined): string => (key ? `${key.slice(0, 8)}…` : 'none');

// The demo prints through process.stdout only; the SDK's debug chatter (some of its child
// loggers are pinned to DEBUG) goes nowhere.
console.log = console.info = console.debug = console.warn = () => undefined;

// Exit explicitly: the SDK leaves timers behind after stopClient(), which would keep the
// process alive long after everything was stopped.
process.exit(await main());
