/**
 * The endpoint compartment: `node endpoint/main.ts serve --config FILE`. It launches its vault
 * compartment (keyvault/main.ts serve, over a socketpair), opens the sealed store with the
 * vault's key, runs the Matrix device, and serves the endpoint contract on file descriptor 3
 * for its launcher (the gateway, or a test). It listens on nothing.
 */
import { fstatSync } from 'node:fs';
import { Socket } from 'node:net';
import { parseArgs } from 'node:util';
import { readSecret } from '../keyvault/secret.ts';
import { spawnVault } from '../keyvault/spawn.ts';
import { serve, socketChannel } from '../keyvault/rpc/index.ts';
import { endpointContract } from './contract.ts';
import { isDecrypted } from './device.ts';
import { loadEndpointConfig } from './config.ts';
import { EndpointService } from './service.ts';

const usage = `Usage: node endpoint/main.ts serve --config FILE

Runs the endpoint compartment: launches the vault, opens the sealed store, syncs with the
homeserver, and serves the endpoint contract on file descriptor 3. The password comes from the
file or environment variable the config names, never from argv.`;

async function main(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    options: { config: { type: 'string' }, help: { type: 'boolean', short: 'h' } },
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
  let isSocket = false;
  try {
    isSocket = fstatSync(3).isSocket();
  } catch {
    // reported below
  }
  if (!isSocket)
    throw new Error('serve needs its channel on file descriptor 3; it listens on nothing itself');

  const config = await loadEndpointConfig(values.config);
  const password = await readSecret(config.password, 'password');
  const vault = await spawnVault(config.vaultConfig);
  const log = {
    warn: (m: string) => process.stderr.write(`endpoint: ${m}\n`),
    info: () => undefined,
  };
  let service: EndpointService;
  try {
    service = await EndpointService.start({
      vault: vault.vault,
      dataDir: config.dataDir,
      homeserver: config.homeserver,
      user: config.user,
      password: password.toString('utf8'),
      ...(config.trust ? { trust: config.trust } : {}),
      logger: log,
    });
  } finally {
    password.fill(0);
  }
  const { endpoint, outbox } = service;
  const connection = serve(
    socketChannel(new Socket({ fd: 3, readable: true, writable: true })),
    endpointContract,
    {
      status: async () => ({
        userId: endpoint.userId,
        deviceId: endpoint.deviceId,
        pendingSends: (await outbox.pending()).length,
      }),
      createRoom: async (p) => ({
        roomId: await endpoint.createRoom({
          invite: p.invite,
          ...(p.isDirect === undefined ? {} : { isDirect: p.isDirect }),
          ...(p.name === undefined ? {} : { name: p.name }),
        }),
      }),
      sendText: async ({ roomId, body }) => ({ txnId: (await outbox.enqueue(roomId, body)).txnId }),
      timeline: async ({ roomId, limit }) => {
        const { items } = await endpoint.timeline(roomId, { limit });
        return {
          items: items.map((i) =>
            isDecrypted(i)
              ? {
                  eventId: i.eventId,
                  sender: i.sender,
                  ts: i.ts,
                  decrypted: true,
                  ...(typeof i.content.body === 'string' ? { body: i.content.body } : {}),
                  encrypted: i.encrypted,
                  verification: i.verification,
                }
              : {
                  eventId: i.eventId,
                  sender: i.sender,
                  ts: i.ts,
                  decrypted: false,
                  reason: i.reason,
                },
          ),
        };
      },
    },
    {
      onError: (e, { method }) =>
        log.warn(
          `internal error in ${method ?? 'a request'}: ${e instanceof Error ? e.message : 'error'}`,
        ),
    },
  );
  const stop = (): void => {
    connection.close();
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
  await connection.closed;
  await service.stop();
  await vault.stop();
  return 0;
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
