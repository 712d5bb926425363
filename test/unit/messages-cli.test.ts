import { spawn } from 'node:child_process';
import { readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { type IncomingMessage, type Server, type ServerResponse, createServer } from 'node:http';
import { join } from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { makeTempDir, repoRoot } from '../fixtures/process.ts';

// The messaging CLI as a user runs it (a separate process), against a small fake gateway: a
// node HTTP server on a Unix socket that records each request and answers from a script.
// What the gateway itself does with these requests is tested in gateway-*.test.ts.

const CLI = join(repoRoot, 'endpoint', 'untrusted', 'cli', 'messages.ts');
const TOKEN = 'cli-token_0123456789abcdefghijkl';
const ROOM = '!room:example.org';
const TXN = 'mte.0123456789abcdef01234567';
const FILE_BYTES = Buffer.from(Array.from({ length: 70_000 }, (_, i) => (i * 13) & 0xff));

interface Seen {
  method: string;
  url: string;
  headers: IncomingMessage['headers'];
  body: Buffer;
}

type Answer = (req: Seen, res: ServerResponse) => void;

let dir: string;
let socket: string;
let server: Server;
let seen: Seen[];
let answer: Answer;

function json(res: ServerResponse, status: number, value: unknown): void {
  const text = JSON.stringify(value);
  res.writeHead(status, {
    'content-type': 'application/json; charset=utf-8',
    'content-length': Buffer.byteLength(text),
  });
  res.end(text);
}

/** What a real gateway answers for each route the CLI uses. */
const defaultAnswer: Answer = (req, res) => {
  const path = new URL(req.url, 'http://x').pathname;
  if (req.headers.authorization !== `Bearer ${TOKEN}`) {
    json(res, 401, { error: { code: 'UNAUTHENTICATED', message: 'No.' } });
  } else if (path === '/v1/rooms') {
    json(res, 200, {
      rooms: [
        {
          roomId: ROOM,
          membership: 'join',
          members: ['@a:example.org', '@b:example.org'],
          encrypted: true,
          roomKeyRecipients: 'cross-signed',
          showUnverifiedMessages: false,
        },
        {
          roomId: '!invite:example.org',
          membership: 'invite',
          members: [],
          inviter: '@bob:example.org',
          encrypted: true,
          roomKeyRecipients: 'cross-signed',
          showUnverifiedMessages: false,
        },
      ],
    });
  } else if (path.endsWith('/messages') || path.endsWith('/reactions')) {
    json(res, 202, {
      txnId: 'txn-1',
      excluded: [
        { userId: '@eve:example.org', reason: 'no-cross-signing' },
        { userId: '@bob:example.org', deviceId: 'NEWPHONE', reason: 'not-verified' },
      ],
    });
  } else if (path.endsWith('/timeline')) {
    json(res, 200, {
      items: [
        {
          eventId: '$2',
          sender: '@b:example.org',
          ts: 2_000,
          kind: 'message',
          decrypted: true,
          body: 'second\u001b[31m',
          edited: true,
          verification: 'unverified',
        },
        { eventId: '$1', sender: '@a:example.org', ts: 1_000, kind: 'redacted', decrypted: false },
      ],
      next: 'tok2',
    });
  } else if (path.endsWith('/attachments')) {
    json(res, 202, { txnId: 'txn-up', excluded: [] });
  } else if (path.endsWith('/attachment')) {
    res.writeHead(200, {
      'content-type': 'application/pdf',
      'content-length': FILE_BYTES.length,
      'content-disposition': 'attachment; filename="x"',
    });
    res.end(FILE_BYTES);
  } else if (path.endsWith('/redact') || path.endsWith('/retry')) {
    json(res, 202, { txnId: TXN });
  } else if (path === '/v1/outbox/failed') {
    json(res, 200, { failed: [] });
  } else {
    json(res, 200, {});
  }
};

beforeAll(async () => {
  dir = await makeTempDir('messages-cli');
  socket = join(dir, 'api.sock');
  server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const entry = {
        method: req.method ?? '',
        url: req.url ?? '',
        headers: req.headers,
        body: Buffer.concat(chunks),
      };
      seen.push(entry);
      answer(entry, res);
    });
  });
  await new Promise<void>((resolve) => server.listen(socket, resolve));
});

afterAll(async () => {
  await new Promise<void>((resolve) => {
    server.close(() => {
      resolve();
    });
  });
  await rm(dir, { recursive: true, force: true });
});

beforeEach(() => {
  seen = [];
  answer = defaultAnswer;
});

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

function cli(args: string[], env: Record<string, string | undefined> = {}): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, '--socket', socket, ...args], {
      env: { ...process.env, MTE_TOKEN: TOKEN, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('exit', (code) => {
      resolve({ code, stdout, stderr });
    });
  });
}

const oneLine = (text: string) => text.trimEnd().split('\n').length === 1;

describe('messages CLI: argument errors are one line and exit 2, before any request', () => {
  const cases: [string, string[], RegExp, Record<string, string | undefined>?][] = [
    ['no command', [], /a command is needed/],
    ['an unknown command', ['shout', ROOM], /unknown command "shout"/],
    ['an unknown command that may be a secret', ['S3cr3t!x'], /^messages: unknown command \(/],
    ['a missing argument', ['send', ROOM], /send takes ROOM TEXT/],
    ['an extra argument', ['rooms', 'x'], /rooms takes no arguments/],
    ['a bad room id', ['timeline', 'room'], /ROOM: expected a room id/],
    ['a bad event id', ['react', ROOM, 'e1', '👍'], /EVENT: expected an event id/],
    ['a limit out of range', ['timeline', ROOM, '--limit', '0'], /--limit/],
    [
      'an option of another command',
      ['send', ROOM, 'hi', '--limit', '5'],
      /--limit does not apply to send/,
    ],
    ['an empty message', ['send', ROOM, ''], /TEXT: expected some text/],
    ['a reaction key too long', ['react', ROOM, '$e', 'k'.repeat(65)], /KEY/],
    ['a made-up transaction id', ['retry', 'txn-1'], /TXN: expected a transaction id/],
    ['download without --out', ['download', ROOM, '$e'], /needs --out FILE/],
    ['a bad media type', ['upload', ROOM, '/etc/hostname', '--type', 'png'], /--type/],
    ['an unknown option', ['rooms', '--verbose'], /--verbose/],
    ['no token', ['rooms'], /no token: give --token-file FILE or set MTE_TOKEN/, { MTE_TOKEN: '' }],
  ];
  for (const [what, args, message, env] of cases) {
    it(what, async () => {
      const run = await cli(args, env);
      expect(run.code, run.stderr).toBe(2);
      expect(run.stderr).toMatch(/^messages: /);
      expect(run.stderr).toMatch(message);
      expect(oneLine(run.stderr)).toBe(true);
      expect(run.stdout).toBe('');
      expect(seen).toEqual([]);
    });
  }

  it('--help prints the usage and exits 0', async () => {
    const run = await cli(['--help']);
    expect(run.code).toBe(0);
    expect(run.stdout).toContain('Usage: node endpoint/untrusted/cli/messages.ts');
    for (const command of ['rooms', 'join', 'decline', 'timeline', 'send', 'edit', 'react']) {
      expect(run.stdout).toContain(`  ${command} `);
    }
  });
});

describe('messages CLI: requests and output', () => {
  it('send --json: the request as the gateway wants it, the answer as JSON on stdout', async () => {
    const run = await cli([
      'send',
      ROOM,
      'hello',
      '--reply-to',
      '$e1',
      '--thread',
      '$root',
      '--json',
    ]);
    expect(run.code, run.stderr).toBe(0);
    expect(JSON.parse(run.stdout)).toEqual({
      txnId: 'txn-1',
      excluded: [
        { userId: '@eve:example.org', reason: 'no-cross-signing' },
        { userId: '@bob:example.org', deviceId: 'NEWPHONE', reason: 'not-verified' },
      ],
    });
    expect(seen).toHaveLength(1);
    expect(seen[0]?.method).toBe('POST');
    expect(seen[0]?.url).toBe(`/v1/rooms/${encodeURIComponent(ROOM)}/messages`);
    expect(seen[0]?.headers.authorization).toBe(`Bearer ${TOKEN}`);
    expect(JSON.parse(seen[0]?.body.toString() ?? '')).toEqual({
      body: 'hello',
      replyTo: '$e1',
      thread: '$root',
    });
  });

  it('send: excluded recipients are one warning line on stderr', async () => {
    const run = await cli(['send', ROOM, 'hello']);
    expect(run.code).toBe(0);
    expect(run.stdout).toBe('message queued: txn-1\n');
    expect(run.stderr).toBe(
      'warning: not everyone can read this: @eve:example.org (no cross-signing), @bob:example.org NEWPHONE (not verified)\n',
    );
  });

  it('edit, react, redact, join, decline, retry, discard: one request each', async () => {
    const event = encodeURIComponent('$e1');
    const room = encodeURIComponent(ROOM);
    for (const [args, method, url, body] of [
      [
        ['edit', ROOM, '$e1', 'fixed'],
        'POST',
        `/v1/rooms/${room}/messages`,
        { edit: '$e1', body: 'fixed' },
      ],
      [
        ['react', ROOM, '$e1', '👍'],
        'POST',
        `/v1/rooms/${room}/reactions`,
        { eventId: '$e1', key: '👍' },
      ],
      [
        ['redact', ROOM, '$e1', '--reason', 'oops'],
        'POST',
        `/v1/rooms/${room}/events/${event}/redact`,
        { reason: 'oops' },
      ],
      [['join', ROOM], 'POST', `/v1/rooms/${room}/join`, {}],
      [['decline', ROOM], 'POST', `/v1/rooms/${room}/decline`, {}],
      [['retry', TXN], 'POST', `/v1/outbox/failed/${TXN}/retry`, {}],
      [['discard', TXN], 'POST', `/v1/outbox/failed/${TXN}/discard`, {}],
      [['failed'], 'GET', '/v1/outbox/failed', undefined],
    ] as const) {
      seen = [];
      const run = await cli([...args]);
      expect(run.code, `${args.join(' ')}: ${run.stderr}`).toBe(0);
      expect(seen.map((s) => `${s.method} ${s.url}`)).toEqual([`${method} ${url}`]);
      if (body !== undefined) expect(JSON.parse(seen[0]?.body.toString() ?? '')).toEqual(body);
    }
  });

  it('rooms and timeline: readable lines, control characters from peers removed', async () => {
    const rooms = await cli(['rooms']);
    expect(rooms.code).toBe(0);
    expect(rooms.stdout).toBe(
      `${ROOM}  join    encrypted  2 members\n!invite:example.org  invite  encrypted  invited by @bob:example.org\n`,
    );
    const timeline = await cli(['timeline', ROOM, '--limit', '5']);
    expect(timeline.code).toBe(0);
    expect(seen.at(-1)?.url).toBe(`/v1/rooms/${encodeURIComponent(ROOM)}/timeline?limit=5`);
    expect(timeline.stdout).toBe(
      '$1  1970-01-01 00:00  @a:example.org: [removed]\n' +
        '$2  1970-01-01 00:00  @b:example.org: second [31m  (edited; unverified device)\n',
    );
    expect(timeline.stderr).toBe('older messages: --from tok2\n');
    const page = await cli(['timeline', ROOM, '--json']);
    expect(JSON.parse(page.stdout)).toMatchObject({ next: 'tok2' });
  });

  it('a refusal: exit 1 with the code and sentence on one line', async () => {
    answer = (_req, res) => {
      json(res, 403, {
        error: { code: 'FORBIDDEN_ROOM', message: 'This client may not use this room.' },
      });
    };
    const run = await cli(['send', ROOM, 'hello']);
    expect(run.code).toBe(1);
    expect(run.stderr).toBe('messages: FORBIDDEN_ROOM: This client may not use this room.\n');
    expect(run.stdout).toBe('');
  });

  it('no gateway on the socket: exit 1, says so', async () => {
    const run = await cli(['rooms', '--socket', join(dir, 'nothing.sock')]);
    expect(run.code).toBe(1);
    expect(run.stderr).toMatch(/cannot reach the gateway/);
  });
});

describe('messages CLI: attachments', () => {
  it('upload streams the file with its size, guessed type, name and caption', async () => {
    const file = join(dir, 'photo.png');
    await writeFile(file, FILE_BYTES);
    const run = await cli(['upload', ROOM, file, '--caption', 'Look', '--json']);
    expect(run.code, run.stderr).toBe(0);
    expect(JSON.parse(run.stdout)).toEqual({ txnId: 'txn-up', excluded: [] });
    const [req] = seen;
    expect(req?.method).toBe('POST');
    expect(req?.url).toBe(
      `/v1/rooms/${encodeURIComponent(ROOM)}/attachments?name=photo.png&caption=Look`,
    );
    expect(req?.headers['content-type']).toBe('image/png');
    expect(req?.headers['content-length']).toBe(String(FILE_BYTES.length));
    expect(req?.headers['transfer-encoding']).toBeUndefined();
    expect(req?.body.equals(FILE_BYTES)).toBe(true);

    seen = [];
    const typed = await cli(['upload', ROOM, file, '--type', 'application/octet-stream']);
    expect(typed.code).toBe(0);
    expect(typed.stdout).toMatch(
      /^photo\.png \(70000 bytes, application\/octet-stream\) queued: txn-up\n$/,
    );
    expect(seen[0]?.headers['content-type']).toBe('application/octet-stream');
  });

  it('upload refuses a missing, empty or oversized file before any request', async () => {
    const empty = join(dir, 'empty.txt');
    await writeFile(empty, '');
    for (const file of [join(dir, 'missing.bin'), empty, dir]) {
      const run = await cli(['upload', ROOM, file]);
      expect(run.code, file).toBe(1);
      expect(oneLine(run.stderr)).toBe(true);
    }
    expect(seen).toEqual([]);
  });

  it('download saves the whole file, and only then, under --out', async () => {
    const out = join(dir, 'saved.pdf');
    const run = await cli(['download', ROOM, '$file', '--out', out]);
    expect(run.code, run.stderr).toBe(0);
    expect(run.stderr).toBe(`saved ${FILE_BYTES.length} bytes (application/pdf) to ${out}\n`);
    expect((await readFile(out)).equals(FILE_BYTES)).toBe(true);
    expect(seen.map((s) => s.url)).toEqual([
      `/v1/rooms/${encodeURIComponent(ROOM)}/events/${encodeURIComponent('$file')}/attachment`,
    ]);
    await rm(out);
  });

  it('download never overwrites: an existing --out is refused before any request', async () => {
    const out = join(dir, 'existing.pdf');
    await writeFile(out, 'keep me');
    const run = await cli(['download', ROOM, '$file', '--out', out, '--json']);
    expect(run.code).toBe(1);
    expect(run.stderr).toMatch(/already exists; it is not overwritten/);
    expect(await readFile(out, 'utf8')).toBe('keep me');
    expect(seen).toEqual([]);
    await rm(out);
  });

  it('a download that breaks off leaves no file, not even a temporary one', async () => {
    answer = (_req, res) => {
      res.writeHead(200, {
        'content-type': 'application/pdf',
        'content-length': FILE_BYTES.length,
      });
      res.write(FILE_BYTES.subarray(0, 1000));
      setTimeout(() => res.destroy(), 50);
    };
    const before = await readdir(dir);
    const out = join(dir, 'broken.pdf');
    const run = await cli(['download', ROOM, '$file', '--out', out]);
    expect(run.code).toBe(1);
    expect(run.stderr).toMatch(/broke off; nothing was saved/);
    expect(await readdir(dir)).toEqual(before);
  });

  it('a refused download: exit 1 with the error, no file', async () => {
    answer = (_req, res) => {
      json(res, 502, {
        error: { code: 'ATTACHMENT_TAMPERED', message: 'The file does not match its event.' },
      });
    };
    const before = await readdir(dir);
    const run = await cli(['download', ROOM, '$file', '--out', join(dir, 'tampered.pdf')]);
    expect(run.code).toBe(1);
    expect(run.stderr).toBe('messages: ATTACHMENT_TAMPERED: The file does not match its event.\n');
    expect(await readdir(dir)).toEqual(before);
  });
});
