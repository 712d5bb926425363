/**
 * `node endpoint/untrusted/cli/messages.ts`: everyday messaging in a terminal (rooms,
 * invitations, timelines, sends, edits, reactions, redactions, attachments, failed sends). It
 * is an ordinary client of the local API (the gateway's socket, a bearer token): it can do
 * nothing a web UI could not, and the endpoint authorises and audits each step.
 */
import { randomBytes } from 'node:crypto';
import { type FileHandle, link, lstat, open, unlink } from 'node:fs/promises';
import type { IncomingMessage } from 'node:http';
import { basename, dirname, extname, join } from 'node:path';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { z } from 'zod';
import { UsageError, runMain } from '../../../keyvault/common/cli-main.ts';
import {
  type ExclusionWire,
  MAX_ATTACHMENT_BYTES,
  MAX_BODY_CHARS,
  MAX_PAGE,
  type TimelineItemWire,
  contentType as contentTypeSchema,
  endpointContract,
  eventId as eventIdSchema,
  fileName as fileNameSchema,
  pageToken as pageTokenSchema,
  roomId as roomIdSchema,
} from '../../contract.ts';
import { gatewayStream } from '../gateway/client.ts';
import {
  commandLine,
  type GatewayContext,
  answerOf,
  arg,
  call,
  clean,
  gatewayContext,
  print,
  unreachable,
} from './common.ts';

const usage = `Usage: node endpoint/untrusted/cli/messages.ts COMMAND [ARGS] [OPTIONS]

Reads and sends messages through the endpoint's local API.

Commands:
  rooms                       joined rooms and invitations
  join ROOM                   accept an invitation
  decline ROOM                decline an invitation
  timeline ROOM               one page of history, oldest first [--limit N] [--from TOKEN]
  send ROOM TEXT              send a message [--reply-to EVENT] [--thread ROOT]
  edit ROOM EVENT TEXT        replace the text of one of our messages
  react ROOM EVENT KEY        react to a message (KEY: an emoji or a short text)
  redact ROOM EVENT           remove a message or reaction [--reason TEXT]
  upload ROOM FILE            send a file, streamed [--type MEDIA/TYPE] [--caption TEXT]
  download ROOM EVENT         save a message's attachment --out FILE (never overwritten)
  failed                      sends the homeserver refused
  retry TXN                   queue a failed send again
  discard TXN                 drop a failed send

Options:
  --socket PATH       the gateway's Unix socket (default: api.sock)
  --token-file FILE   a file holding the client's bearer token (or set MTE_TOKEN);
                      never on the command line, where other users could read it
  --json              print the gateway's answer as JSON on stdout
  -h, --help          this text

Members or devices that will not be able to read a message (no cross-signing, not verified)
are named on stderr as a warning. Exit status: 0 on success, 1 when the gateway or endpoint
refuses or the transfer fails, 2 for a usage error.`;

/** Which options each command takes; any other is a usage error, not silently ignored. */
const COMMANDS = {
  rooms: { args: [], options: [] },
  join: { args: ['ROOM'], options: [] },
  decline: { args: ['ROOM'], options: [] },
  timeline: { args: ['ROOM'], options: ['limit', 'from'] },
  send: { args: ['ROOM', 'TEXT'], options: ['reply-to', 'thread'] },
  edit: { args: ['ROOM', 'EVENT', 'TEXT'], options: [] },
  react: { args: ['ROOM', 'EVENT', 'KEY'], options: [] },
  redact: { args: ['ROOM', 'EVENT'], options: ['reason'] },
  upload: { args: ['ROOM', 'FILE'], options: ['type', 'caption'] },
  download: { args: ['ROOM', 'EVENT'], options: ['out'] },
  failed: { args: [], options: [] },
  retry: { args: ['TXN'], options: [] },
  discard: { args: ['TXN'], options: [] },
} as const satisfies Record<string, { args: readonly string[]; options: readonly string[] }>;
type Command = keyof typeof COMMANDS;

const textSchema = z
  .string()
  .min(1, 'expected some text')
  .max(MAX_BODY_CHARS, `at most ${MAX_BODY_CHARS} characters`);
const keySchema = endpointContract.react.params.shape.key;
const txnSchema = endpointContract.retrySend.params.shape.txnId;
const reasonSchema = z.string().min(1).max(255);
const captionSchema = z.string().min(1).max(1024);
const limitSchema = z.coerce.number().int().min(1).max(MAX_PAGE);

async function main(argv: string[]): Promise<number> {
  const line = commandLine(argv, usage, {
    limit: { type: 'string' },
    from: { type: 'string' },
    'reply-to': { type: 'string' },
    thread: { type: 'string' },
    reason: { type: 'string' },
    type: { type: 'string' },
    caption: { type: 'string' },
    out: { type: 'string' },
  });
  if (line === undefined) return 0;
  const { values, command: name, args } = line;
  if (!Object.hasOwn(COMMANDS, name)) {
    // Echoed only when it looks like a command: a mistyped secret must not reach a log.
    const shown = /^[a-z][a-z-]{0,19}$/.test(name) ? ` "${name}"` : '';
    throw new UsageError(`unknown command${shown} (see --help)`);
  }
  const command = name as Command;
  const spec = COMMANDS[command];
  if (args.length !== spec.args.length) {
    throw new UsageError(
      spec.args.length === 0
        ? `${command} takes no arguments`
        : `${command} takes ${spec.args.join(' ')}`,
    );
  }
  const allowed: readonly string[] = spec.options;
  for (const option of [
    'limit',
    'from',
    'reply-to',
    'thread',
    'reason',
    'type',
    'caption',
    'out',
  ]) {
    if (values[option as keyof typeof values] !== undefined && !allowed.includes(option)) {
      throw new UsageError(`--${option} does not apply to ${command}`);
    }
  }
  const ctx = await gatewayContext(values, 4 * 1024 * 1024);
  const at = (i: number): string => args[i] ?? '';
  switch (command) {
    case 'rooms': {
      const { rooms } = answerAs(
        endpointContract.rooms.result,
        await call(ctx, 'GET', '/v1/rooms'),
      );
      if (ctx.json) print(rooms);
      else if (rooms.length === 0) out('no rooms');
      else {
        for (const r of rooms) {
          const what =
            r.membership === 'invite'
              ? `invited${r.inviter === undefined ? '' : ` by ${r.inviter}`}`
              : `${r.members.length} member${r.members.length === 1 ? '' : 's'}`;
          out(
            `${r.roomId}  ${r.membership.padEnd(6)}  ${r.encrypted ? 'encrypted' : 'NOT ENCRYPTED'}  ${what}`,
          );
        }
      }
      return 0;
    }
    case 'join':
    case 'decline': {
      const room = arg(roomIdSchema, at(0), 'ROOM');
      const answer = await call(ctx, 'POST', `${roomPath(room)}/${command}`, {});
      if (ctx.json) print(answer);
      else out(command === 'join' ? `joined ${room}` : `declined the invitation to ${room}`);
      return 0;
    }
    case 'timeline': {
      const room = arg(roomIdSchema, at(0), 'ROOM');
      const limit = values.limit === undefined ? 20 : arg(limitSchema, values.limit, '--limit');
      const query = new URLSearchParams({ limit: String(limit) });
      if (values.from !== undefined) query.set('from', arg(pageTokenSchema, values.from, '--from'));
      const page = answerAs(
        endpointContract.timeline.result,
        await call(ctx, 'GET', `${roomPath(room)}/timeline?${query.toString()}`),
      );
      if (ctx.json) print(page);
      else {
        if (page.items.length === 0) out('no messages');
        // Newest first from the API; a terminal reads top to bottom.
        for (const item of [...page.items].reverse()) out(itemLine(item));
        if (page.next !== undefined) say(`older messages: --from ${page.next}`);
      }
      return 0;
    }
    case 'send':
    case 'edit': {
      const room = arg(roomIdSchema, at(0), 'ROOM');
      const body: Record<string, string> = {};
      if (command === 'edit') {
        body.edit = arg(eventIdSchema, at(1), 'EVENT');
        body.body = arg(textSchema, at(2), 'TEXT');
      } else {
        body.body = arg(textSchema, at(1), 'TEXT');
        if (values['reply-to'] !== undefined) {
          body.replyTo = arg(eventIdSchema, values['reply-to'], '--reply-to');
        }
        if (values.thread !== undefined)
          body.thread = arg(eventIdSchema, values.thread, '--thread');
      }
      const result = answerAs(
        endpointContract.send.result,
        await call(ctx, 'POST', `${roomPath(room)}/messages`, body),
      );
      report(ctx, result, command === 'edit' ? 'edit queued' : 'message queued');
      return 0;
    }
    case 'react': {
      const room = arg(roomIdSchema, at(0), 'ROOM');
      const result = answerAs(
        endpointContract.react.result,
        await call(ctx, 'POST', `${roomPath(room)}/reactions`, {
          eventId: arg(eventIdSchema, at(1), 'EVENT'),
          key: arg(keySchema, at(2), 'KEY'),
        }),
      );
      report(ctx, result, 'reaction queued');
      return 0;
    }
    case 'redact': {
      const room = arg(roomIdSchema, at(0), 'ROOM');
      const event = arg(eventIdSchema, at(1), 'EVENT');
      const body =
        values.reason === undefined ? {} : { reason: arg(reasonSchema, values.reason, '--reason') };
      const result = answerAs(
        endpointContract.redact.result,
        await call(
          ctx,
          'POST',
          `${roomPath(room)}/events/${encodeURIComponent(event)}/redact`,
          body,
        ),
      );
      report(ctx, { ...result, excluded: [] }, 'redaction queued', result);
      return 0;
    }
    case 'upload':
      return upload(ctx, arg(roomIdSchema, at(0), 'ROOM'), at(1), values.type, values.caption);
    case 'download': {
      const room = arg(roomIdSchema, at(0), 'ROOM');
      const event = arg(eventIdSchema, at(1), 'EVENT');
      if (values.out === undefined || values.out === '') {
        throw new UsageError('download needs --out FILE (where to save it)');
      }
      return download(ctx, room, event, values.out);
    }
    case 'failed': {
      const { failed } = answerAs(
        endpointContract.failedSends.result,
        await call(ctx, 'GET', '/v1/outbox/failed'),
      );
      if (ctx.json) print(failed);
      else if (failed.length === 0) out('no failed sends');
      else {
        for (const f of failed) {
          out(
            `${f.txnId}  ${f.roomId}  ${f.kind}  ${time(f.failedAt)}  ${f.code}: ${f.reason}  "${f.preview}"`,
          );
        }
      }
      return 0;
    }
    case 'retry':
    case 'discard': {
      const txn = arg(txnSchema, at(0), 'TXN');
      const answer = await call(ctx, 'POST', `/v1/outbox/failed/${txn}/${command}`, {});
      if (ctx.json) print(answer);
      else out(command === 'retry' ? `queued again: ${txn}` : `discarded: ${txn}`);
      return 0;
    }
  }
}

// --- attachments ----------------------------------------------------------------------------

/** Types worth naming from an extension; anything else goes as application/octet-stream. */
const TYPES: Readonly<Record<string, string>> = {
  '.png': 'image/png',
  '.jpg': 'image/jpeg',
  '.jpeg': 'image/jpeg',
  '.gif': 'image/gif',
  '.webp': 'image/webp',
  '.pdf': 'application/pdf',
  '.txt': 'text/plain',
  '.md': 'text/markdown',
  '.csv': 'text/csv',
  '.json': 'application/json',
  '.zip': 'application/zip',
  '.mp3': 'audio/mpeg',
  '.ogg': 'audio/ogg',
  '.mp4': 'video/mp4',
  '.webm': 'video/webm',
};

async function upload(
  ctx: GatewayContext,
  room: string,
  file: string,
  type: string | undefined,
  caption: string | undefined,
): Promise<number> {
  const name = arg(fileNameSchema, basename(file), 'FILE (its name, as peers will see it)');
  const mediaType =
    type === undefined
      ? (TYPES[extname(file).toLowerCase()] ?? 'application/octet-stream')
      : arg(contentTypeSchema, type, '--type');
  const query = new URLSearchParams({ name });
  if (caption !== undefined) query.set('caption', arg(captionSchema, caption, '--caption'));
  let handle: FileHandle;
  try {
    handle = await open(file, 'r');
  } catch (e) {
    throw new Error(`cannot read ${file} (${(e as NodeJS.ErrnoException).code ?? 'error'})`, {
      cause: e,
    });
  }
  // Once the read stream exists it owns the handle (closing it at its end or destruction).
  let body: ReturnType<FileHandle['createReadStream']> | undefined;
  try {
    // The size of what is open, not of what the path named a moment ago.
    const stat = await handle.stat();
    if (!stat.isFile()) throw new Error(`${file} is not a regular file`);
    if (stat.size === 0) throw new Error(`${file} is empty`);
    if (stat.size > MAX_ATTACHMENT_BYTES) {
      throw new Error(
        `${file} is ${stat.size} bytes; attachments may be at most ${MAX_ATTACHMENT_BYTES} bytes`,
      );
    }
    body = handle.createReadStream({ start: 0, end: stat.size - 1 });
    const res = await stream(ctx, `${roomPath(room)}/attachments?${query.toString()}`, {
      method: 'POST',
      headers: { 'content-type': mediaType, 'content-length': String(stat.size) },
      body,
    });
    const answer = await jsonAnswer(res.body, res.status);
    const result = answerAs(endpointContract.uploadFinish.result, answer);
    report(ctx, result, `${name} (${stat.size} bytes, ${mediaType}) queued`);
    return 0;
  } finally {
    if (body === undefined) await handle.close().catch(() => undefined);
    else body.destroy();
  }
}

/**
 * Saves an attachment to `out` without ever replacing a file: the bytes go to a temporary file
 * beside it, which is linked to `out` only once the whole download arrived (link, unlike
 * rename, fails when `out` exists, even if it appeared meanwhile).
 */
async function download(
  ctx: GatewayContext,
  room: string,
  event: string,
  out: string,
): Promise<number> {
  if (await exists(out)) throw new Error(`${out} already exists; it is not overwritten`);
  const res = await stream(
    ctx,
    `${roomPath(room)}/events/${encodeURIComponent(event)}/attachment`,
    { method: 'GET' },
  );
  if (res.status !== 200) {
    await jsonAnswer(res.body, res.status);
    throw new Error(`the gateway answered ${res.status}`);
  }
  const expected = Number(res.headers['content-length'] ?? Number.NaN);
  if (!Number.isSafeInteger(expected) || expected < 0) {
    res.body.destroy();
    throw new Error('the gateway did not say how large the file is');
  }
  const temp = join(dirname(out), `.${basename(out)}.${randomBytes(6).toString('hex')}.part`);
  let handle: FileHandle;
  try {
    handle = await open(temp, 'wx', 0o600);
  } catch (e) {
    res.body.destroy();
    throw new Error(
      `cannot write in ${dirname(out)} (${(e as NodeJS.ErrnoException).code ?? 'error'})`,
      { cause: e },
    );
  }
  try {
    let received = 0;
    const count = new Transform({
      transform(chunk: Buffer, _encoding, done) {
        received += chunk.length;
        if (received > expected) done(new Error('the download is longer than announced'));
        else done(null, chunk);
      },
    });
    try {
      // flush: fsynced before it is closed, so what is linked below is on the disk.
      await pipeline(res.body, count, handle.createWriteStream({ flush: true }));
    } catch (e) {
      throw new Error('the download broke off; nothing was saved', { cause: e });
    }
    if (received !== expected || !res.body.complete) {
      throw new Error(
        `the download broke off after ${received} of ${expected} bytes; nothing was saved`,
      );
    }
    try {
      await link(temp, out);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EEXIST') {
        throw new Error(`${out} appeared during the download; it is not overwritten`, { cause: e });
      }
      throw new Error(`cannot save ${out} (${(e as NodeJS.ErrnoException).code ?? 'error'})`, {
        cause: e,
      });
    }
    const type = clean(res.headers['content-type'] ?? 'application/octet-stream');
    if (ctx.json) print({ path: out, size: received, contentType: type });
    else say(`saved ${received} bytes (${type}) to ${out}`);
    return 0;
  } finally {
    // The stream closed the handle (pipeline destroys it on failure); only `out` remains.
    res.body.destroy();
    await unlink(temp).catch(() => undefined);
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await lstat(path);
    return true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw new Error(`cannot check ${path} (${(e as NodeJS.ErrnoException).code ?? 'error'})`, {
      cause: e,
    });
  }
}

// --- the gateway ----------------------------------------------------------------------------

async function stream(
  ctx: GatewayContext,
  path: string,
  options: Parameters<typeof gatewayStream>[2],
): Promise<Awaited<ReturnType<typeof gatewayStream>>> {
  try {
    return await gatewayStream(ctx.target, path, { ...options, token: ctx.token });
  } catch (e) {
    throw unreachable(e);
  }
}

/** Reads a (small) JSON answer from a streamed response. */
async function jsonAnswer(body: IncomingMessage, status: number): Promise<unknown> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of body as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > 1024 * 1024) throw new Error('the gateway answer is too large');
    chunks.push(chunk);
  }
  return answerOf(status, Buffer.concat(chunks).toString('utf8'));
}

/** A success answer, checked against the contract: a gateway of another version says so. */
function answerAs<T>(schema: z.ZodType<T>, value: unknown): T {
  const parsed = schema.safeParse(value);
  if (!parsed.success) {
    throw new Error(
      'the gateway answered something this tool does not understand (another version?)',
    );
  }
  return parsed.data;
}

// --- output ---------------------------------------------------------------------------------

function roomPath(room: string): string {
  return `/v1/rooms/${encodeURIComponent(room)}`;
}

/** A queued send: its transaction id, and who will not be able to read it. */
function report(
  ctx: GatewayContext,
  result: { txnId: string; excluded: ExclusionWire[] },
  what: string,
  json: unknown = result,
): void {
  if (ctx.json) {
    print(json);
    return;
  }
  out(clean(`${what}: ${result.txnId}`));
  const warning = excludedWarning(result.excluded);
  if (warning !== undefined) say(warning);
}

const REASONS: Readonly<Record<ExclusionWire['reason'], string>> = {
  'no-cross-signing': 'no cross-signing',
  'not-cross-signed': 'device not cross-signed',
  'not-verified': 'not verified',
  'no-devices': 'no devices',
  'device-list-unavailable': 'their server did not answer for their devices',
};

/** One line naming who cannot read the message (the first ten, then how many more). */
function excludedWarning(excluded: readonly ExclusionWire[]): string | undefined {
  if (excluded.length === 0) return undefined;
  const named = excluded
    .slice(0, 10)
    .map(
      (x) =>
        `${x.userId}${x.deviceId === undefined ? '' : ` ${x.deviceId}`} (${REASONS[x.reason]})`,
    );
  const more = excluded.length > 10 ? ` and ${excluded.length - 10} more` : '';
  return clean(`warning: not everyone can read this: ${named.join(', ')}${more}`);
}

function itemLine(item: TimelineItemWire): string {
  const flags: string[] = [];
  let text: string;
  switch (item.kind) {
    case 'redacted':
      text = '[removed]';
      break;
    case 'undecryptable':
      text = `[cannot decrypt${item.reason === undefined ? '' : `: ${item.reason}`}]`;
      break;
    case 'unsupported':
      text = `[${item.type ?? 'unsupported event'}]${item.body === undefined ? '' : ` ${item.body}`}`;
      break;
    case 'message':
      text = item.body ?? '';
      if (item.attachment) {
        const a = item.attachment;
        const size = a.size === undefined ? '' : `, ${a.size} bytes`;
        text = `[file ${a.name}${size}${a.encrypted ? '' : ', SENT UNENCRYPTED'}]${item.body !== undefined && item.body !== a.name ? ` ${item.body}` : ''}`;
      }
      break;
  }
  if (item.replyTo !== undefined) flags.push(`reply to ${item.replyTo}`);
  if (item.thread !== undefined) flags.push(`thread ${item.thread}`);
  if (item.edited === true) flags.push('edited');
  if (item.verification === 'unverified') flags.push('unverified device');
  if (item.verification === 'warning') {
    flags.push(`WARNING${item.reason === undefined ? '' : `: ${item.reason}`}`);
  }
  if (item.verification === 'unencrypted') flags.push('not encrypted');
  const reactions = (item.reactions ?? []).map((r) => `${r.key} ${r.count}`).join('  ');
  return clean(
    `${item.eventId}  ${time(item.ts)}  ${item.sender}: ${text}` +
      (flags.length > 0 ? `  (${flags.join('; ')})` : '') +
      (reactions === '' ? '' : `  [${reactions}]`),
  );
}

function time(ms: number): string {
  const d = new Date(ms);
  return Number.isNaN(d.getTime()) ? '?' : d.toISOString().slice(0, 16).replace('T', ' ');
}

function out(line: string): void {
  process.stdout.write(`${clean(line)}\n`);
}

function say(line: string): void {
  process.stderr.write(`${clean(line)}\n`);
}

runMain('messages', main);
