/**
 * The demo, the README's main command. Today it starts the local world the endpoint will run
 * in (Synapse, an swtpm TPM, a SoftHSM2 token and stock matrix-js-sdk peers), checks that each
 * really works, says so, and stops them. Later issues add the vault, the endpoint and the API.
 */
import { parseArgs } from 'node:util';
import pkcs11js from 'pkcs11js';
import { connectSwtpm } from '../../keyvault/tpm/transport/index.ts';
import {
  StockPeer,
  type SoftHsm,
  type Swtpm,
  type Synapse,
  startSoftHsm,
  startSwtpm,
  startSynapse,
} from '../../test/fixtures/index.ts';

const usage = `Usage: bash deploy/demo.sh [--json] [--keep]

Starts a local Synapse homeserver, an swtpm TPM 2.0 simulator and a SoftHSM2 token, checks each
one works (two stock Matrix clients exchange an end-to-end encrypted message), then stops them.

  --json   print one JSON object with the results instead of progress lines
  --keep   leave everything running until Ctrl-C, to look around
  --help   this text`;

interface Check {
  component: string;
  ok: boolean;
  detail: string;
  ms: number;
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

  const step = async <T>(component: string, run: () => Promise<[T, string]>): Promise<T> => {
    const started = Date.now();
    say(`• ${component}: starting…`);
    try {
      const [value, detail] = await run();
      const ms = Date.now() - started;
      checks.push({ component, ok: true, detail, ms });
      say(`  ✓ ${detail} (${(ms / 1000).toFixed(1)} s)`);
      return value;
    } catch (e) {
      const detail = e instanceof Error ? (e.message.split('\n')[0] ?? 'failed') : String(e);
      checks.push({ component, ok: false, detail, ms: Date.now() - started });
      throw new DemoError(`${component}: ${detail}`);
    }
  };

  try {
    const synapse = await step<Synapse>('Synapse homeserver', async () => {
      const hs = await startSynapse();
      stops.push(() => hs.stop());
      const versions = (await (await fetch(`${hs.baseUrl}/_matrix/client/versions`)).json()) as {
        versions?: string[];
      };
      return [
        hs,
        `serving the client-server API at ${hs.baseUrl} (spec ${versions.versions?.at(-1) ?? '?'})`,
      ];
    });

    const tpm = await step<Swtpm>('TPM 2.0 (swtpm)', async () => {
      const t = await startSwtpm();
      stops.push(() => t.stop());
      const transport = await connectSwtpm({ host: t.host, port: t.port, ctrlPort: t.ctrlPort });
      try {
        const rsp = Buffer.from(
          await transport.send(Buffer.from('80010000000c0000017b0010', 'hex')),
        );
        if (rsp.readUInt32BE(6) !== 0)
          throw new Error(`TPM2_GetRandom failed with 0x${rsp.readUInt32BE(6).toString(16)}`);
      } finally {
        await transport.close();
      }
      return [
        t,
        `answering TPM2 commands on 127.0.0.1:${t.port} (tpm2-tools: TPM2TOOLS_TCTI=${t.tcti})`,
      ];
    });

    const hsm = await step<SoftHsm>('PKCS#11 HSM (SoftHSM2)', async () => {
      const h = await startSoftHsm({ label: 'mte-demo' });
      stops.push(() => h.stop());
      return [h, describeToken(h)];
    });

    await step('Stock Matrix clients (matrix-js-sdk, Rust crypto)', async () => {
      const alice = await StockPeer.start(synapse.baseUrl, await synapse.registerUser('alice'));
      stops.push(() => alice.stop());
      const bob = await StockPeer.start(synapse.baseUrl, await synapse.registerUser('bob'));
      stops.push(() => bob.stop());
      const roomId = await alice.createEncryptedRoom({ invite: [bob.userId], name: 'demo' });
      await bob.acceptInvite(roomId);
      await alice.waitForMember(roomId, bob.userId);
      const body = 'Hello Bob, this message is end-to-end encrypted.';
      await alice.sendText(roomId, body);
      const got = await bob.waitForMessage(roomId, body);
      if (!got.encrypted) throw new Error('the message arrived unencrypted');
      return [
        undefined,
        `${alice.userId} → ${bob.userId}: "${got.body}" (Megolm, decrypted by bob)`,
      ];
    });

    if (args.keep && !json) {
      say(
        `\nEverything is running. Synapse: ${synapse.baseUrl}  swtpm: ${tpm.tcti}  SoftHSM2: SOFTHSM2_CONF=${hsm.env.SOFTHSM2_CONF ?? ''}`,
      );
      say('Press Ctrl-C to stop.');
      await new Promise(() => undefined);
    }
    await stopAll();
    say(
      '\nAll components healthy; stopped them again. Next: the keyvault and the endpoint (issues 3 and 4).',
    );
    if (json) process.stdout.write(`${JSON.stringify({ ok: true, checks })}\n`);
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

/** Opens the token the way the vault will (PIN from a file, not argv) and describes it. */
function describeToken(h: SoftHsm): string {
  process.env.SOFTHSM2_CONF = h.env.SOFTHSM2_CONF;
  const p11 = new pkcs11js.PKCS11();
  p11.load(h.modulePath);
  p11.C_Initialize();
  try {
    const slot = p11
      .C_GetSlotList(true)
      .find((s) => p11.C_GetTokenInfo(s).label.trim() === h.label);
    if (!slot) throw new Error(`token ${h.label} not found`);
    const info = p11.C_GetTokenInfo(slot);
    const mechanisms = new Set(p11.C_GetMechanismList(slot));
    const eddsa = mechanisms.has(0x1057) ? 'EdDSA' : 'no EdDSA';
    return `token "${h.label}" (${info.model.trim()} ${info.firmwareVersion.major}.${info.firmwareVersion.minor}, ${mechanisms.size} mechanisms, ${eddsa})`;
  } finally {
    p11.C_Finalize();
  }
}

// The demo prints through process.stdout only; the SDK's debug chatter (some of its child
// loggers are pinned to DEBUG) goes nowhere.
console.log = console.info = console.debug = () => undefined;

// Exit explicitly: the SDK leaves timers behind after stopClient(), which would keep the
// process alive long after everything was stopped.
process.exit(await main());
