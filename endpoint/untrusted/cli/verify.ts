/**
 * `node endpoint/untrusted/cli/verify.ts`: contact verification in a terminal, for headless
 * endpoints. It is an ordinary client of the local API (the gateway's socket, a bearer token
 * with the `verification` capability): it can do nothing a web UI could not, and every step
 * it takes is authorised and audited by the endpoint like any other.
 */
import { createInterface } from 'node:readline/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { UsageError, runMain } from '../../../keyvault/common/cli-main.ts';
import {
  type VerificationFlowWire,
  deviceId as deviceIdSchema,
  endpointContract,
  flowId as flowIdSchema,
  userId as userIdSchema,
} from '../../contract.ts';
import {
  commandLine,
  type GatewayContext,
  arg,
  call,
  clean,
  gatewayContext,
  print,
} from './common.ts';

const usage = `Usage: node endpoint/untrusted/cli/verify.ts COMMAND [ARGS] [OPTIONS]

Verifies contacts by emoji (SAS) through the endpoint's local API.

Commands:
  list                      verification flows in progress or recently finished
  request USER [DEVICE]     ask USER (in our direct room: any of their devices may answer)
                            or one DEVICE of theirs to verify, then compare the emoji
  wait                      wait for an incoming request, accept it, then compare the emoji
  accept FLOW               accept one incoming request, then compare the emoji
  show FLOW                 one flow: its phase, and the emoji once they can be compared
  confirm FLOW              the emoji match (use after comparing them yourself)
  cancel FLOW [--mismatch]  stop a flow (--mismatch: the emoji differ)
  identity USER             a contact's identity: pinned, verified, or changed
  acknowledge USER          accept a contact's changed identity (lifts the send block)

Options:
  --socket PATH       the gateway's Unix socket (default: api.sock)
  --token-file FILE   a file holding the client's bearer token (or set MTE_TOKEN);
                      never on the command line, where other users could read it
  --timeout SECONDS   how long to wait for the other side (default 120)
  --json              print the result as JSON on stdout (progress still goes to stderr)
  -h, --help          this text

When the emoji can be compared they are printed with their names, and the command asks
whether they match the other screen: answer y to confirm, anything else cancels as a mismatch.
Exit status: 0 when the flow ends verified (or the command succeeded), 1 when it fails or is
cancelled, 2 for a usage error.`;

const flowsSchema = endpointContract.verifications.result;
const flowSchema = endpointContract.verification.result;
const contactSchema = endpointContract.contact.result;
const identitySchema = endpointContract.identityAcknowledge.result;

interface Context extends GatewayContext {
  timeoutMs: number;
  say(line: string): void;
}

async function main(argv: string[]): Promise<number> {
  const line = commandLine(argv, usage, {
    timeout: { type: 'string' },
    mismatch: { type: 'boolean' },
  });
  if (line === undefined) return 0;
  const { values, command, args } = line;
  const timeout = Number(values.timeout ?? '120');
  if (!Number.isFinite(timeout) || timeout <= 0 || timeout > 3600) {
    throw new UsageError('--timeout must be a number of seconds between 1 and 3600');
  }
  const ctx: Context = {
    ...(await gatewayContext(values, 1024 * 1024)),
    timeoutMs: timeout * 1000,
    say: (line) => process.stderr.write(`${line}\n`),
  };
  const want = (n: number): string[] => {
    if (args.length !== n) {
      throw new UsageError(`${command} takes ${n === 1 ? 'one argument' : `${n} arguments`}`);
    }
    return args;
  };
  switch (command) {
    case 'list': {
      want(0);
      const { verifications } = flowsSchema.parse(await call(ctx, 'GET', '/v1/verifications'));
      if (ctx.json) print(verifications);
      else if (verifications.length === 0) process.stdout.write('no verifications\n');
      else for (const f of verifications) process.stdout.write(`${flowLine(f)}\n`);
      return 0;
    }
    case 'request': {
      if (args.length < 1 || args.length > 2) throw new UsageError('request takes USER [DEVICE]');
      const [user, device] = args;
      const flow = flowSchema.parse(
        await call(ctx, 'POST', '/v1/verifications', {
          userId: arg(userIdSchema, user, 'USER'),
          ...(device === undefined ? {} : { deviceId: arg(deviceIdSchema, device, 'DEVICE') }),
        }),
      );
      ctx.say(clean(`asked ${flow.userId} (${flow.deviceId ?? 'any device'}) to verify; waiting`));
      return follow(ctx, flow.flowId);
    }
    case 'wait': {
      want(0);
      ctx.say('waiting for a verification request...');
      const flow = await waitForIncoming(ctx);
      ctx.say(clean(`request from ${flow.userId} (${flow.deviceId ?? '?'}); accepting`));
      await call(ctx, 'POST', `${flowPath(flow.flowId)}/accept`, {});
      return follow(ctx, flow.flowId);
    }
    case 'accept': {
      const id = arg(flowIdSchema, want(1)[0], 'FLOW');
      await call(ctx, 'POST', `${flowPath(id)}/accept`, {});
      return follow(ctx, id);
    }
    case 'show': {
      const id = arg(flowIdSchema, want(1)[0], 'FLOW');
      const flow = flowSchema.parse(await call(ctx, 'GET', flowPath(id)));
      if (ctx.json) print(flow);
      else {
        process.stdout.write(`${flowLine(flow)}\n`);
        if (flow.sas) process.stdout.write(sasText(flow));
      }
      return 0;
    }
    case 'confirm':
    case 'cancel': {
      const id = arg(flowIdSchema, want(1)[0], 'FLOW');
      const body = command === 'cancel' && values.mismatch === true ? { mismatch: true } : {};
      const flow = flowSchema.parse(await call(ctx, 'POST', `${flowPath(id)}/${command}`, body));
      if (ctx.json) print(flow);
      else process.stdout.write(`${flowLine(flow)}\n`);
      return 0;
    }
    case 'identity': {
      const user = arg(userIdSchema, want(1)[0], 'USER');
      const contact = contactSchema.parse(
        await call(ctx, 'GET', `/v1/contacts/${encodeURIComponent(user)}`),
      );
      if (ctx.json) print(contact.identity);
      else process.stdout.write(`${identityLine(user, contact.identity)}\n`);
      return 0;
    }
    case 'acknowledge': {
      const user = arg(userIdSchema, want(1)[0], 'USER');
      const { identity } = identitySchema.parse(
        await call(
          ctx,
          'POST',
          `/v1/contacts/${encodeURIComponent(user)}/identity/acknowledge`,
          {},
        ),
      );
      if (ctx.json) print(identity);
      else process.stdout.write(`${identityLine(user, identity)}\n`);
      return 0;
    }
    default:
      throw new UsageError(`unknown command "${command.slice(0, 40)}" (see --help)`);
  }
}

/**
 * Follows a flow to its end: prints the emoji when they can be compared, asks the user, and
 * confirms or cancels (mismatch) accordingly.
 */
async function follow(ctx: Context, id: string): Promise<number> {
  const deadline = Date.now() + ctx.timeoutMs;
  let asked = false;
  let last = '';
  for (;;) {
    const flow = flowSchema.parse(await call(ctx, 'GET', flowPath(id)));
    if (flow.phase !== last) {
      last = flow.phase;
      if (!['compare', 'done', 'cancelled'].includes(flow.phase)) ctx.say(`... ${flow.phase}`);
    }
    if (flow.phase === 'compare' && !asked) {
      asked = true;
      process.stderr.write(sasText(flow));
      const same = await ask(
        'Do the same emoji, in the same order, show on the other screen? [y/N] ',
      );
      const step = same ? 'confirm' : 'cancel';
      await call(ctx, 'POST', `${flowPath(id)}/${step}`, same ? {} : { mismatch: true });
      if (!same) ctx.say('cancelled: the emoji did not match');
      continue;
    }
    if (flow.phase === 'done' || flow.phase === 'cancelled') {
      if (ctx.json) print(flow);
      if (flow.phase === 'done') {
        ctx.say(clean(`verified: ${flow.userId} (${flow.deviceId ?? '?'})`));
        return 0;
      }
      const why = flow.cancelled;
      ctx.say(
        clean(
          `not verified: cancelled${why ? ` by ${why.byUs ? 'us' : 'them'} (${why.code}: ${why.reason})` : ''}`,
        ),
      );
      return 1;
    }
    if (Date.now() > deadline) {
      ctx.say(
        `gave up after ${Math.round(ctx.timeoutMs / 1000)} s (the flow is ${flow.phase}); cancelling`,
      );
      await call(ctx, 'POST', `${flowPath(id)}/cancel`, {}).catch(() => undefined);
      return 1;
    }
    await sleep(300);
  }
}

async function waitForIncoming(ctx: Context): Promise<VerificationFlowWire> {
  const deadline = Date.now() + ctx.timeoutMs;
  for (;;) {
    const { verifications } = flowsSchema.parse(await call(ctx, 'GET', '/v1/verifications'));
    const incoming = verifications.find((f) => !f.weStarted && f.phase === 'requested');
    if (incoming) return incoming;
    if (Date.now() > deadline) {
      throw new Error(
        `no verification request arrived within ${Math.round(ctx.timeoutMs / 1000)} s`,
      );
    }
    await sleep(500);
  }
}

async function ask(question: string): Promise<boolean> {
  const rl = createInterface({ input: process.stdin, output: process.stderr });
  try {
    const answer = await rl.question(question);
    return /^\s*y(es)?\s*$/i.test(answer);
  } catch {
    return false; // stdin closed: no answer is not a yes
  } finally {
    rl.close();
  }
}

function flowPath(id: string): string {
  return `/v1/verifications/${encodeURIComponent(id)}`;
}

function flowLine(f: VerificationFlowWire): string {
  const direction = f.weStarted ? 'to' : 'from';
  return clean(
    `${f.flowId}  ${f.phase.padEnd(9)}  ${direction} ${f.userId} (${f.deviceId ?? '?'})`,
  );
}

function sasText(f: VerificationFlowWire): string {
  if (!f.sas) return '';
  const emoji = f.sas.emoji.map((e) => clean(`  ${e.symbol}  ${e.name}`)).join('\n');
  return `Compare with the other screen:\n${emoji}\n  or the numbers ${f.sas.decimals.join(' ')}\n`;
}

function identityLine(
  user: string,
  identity: { state: string; masterKey?: string | undefined; wasVerified: boolean },
): string {
  return `${user}  ${identity.state}${identity.masterKey ? `  master key ${identity.masterKey}` : ''}`;
}

runMain('verify', main);
