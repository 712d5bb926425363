import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { type Server, type Socket, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import {
  type FrameChannel,
  RpcCode,
  RpcError,
  bytes,
  connectUnix,
  createClient,
  defineContract,
  encodeFrame,
  inProcessPair,
  listenUnix,
  noParams,
  serve,
  serveOneAtATime,
  socketChannel,
} from '../../keyvault/common/rpc/index.ts';
import { WRITE_BUFFER_LIMIT } from '../../keyvault/common/rpc/channel.ts';
import { FrameDecoder } from '../../keyvault/common/rpc/frame.ts';

const SECRET = 'hunter2-this-must-never-cross-the-channel';
const MAX_FRAME = 64 * 1024;

const contract = defineContract({
  echo: {
    params: z.object({ text: z.string().max(100) }).strict(),
    result: z.object({ text: z.string() }),
  },
  reverse: {
    params: z.object({ data: bytes({ maxBytes: 4096 }) }),
    result: bytes({ maxBytes: 4096 }),
  },
  delay: {
    params: z.object({ ms: z.number().int().min(0).max(1000), tag: z.number() }),
    result: z.number(),
  },
  hang: { params: noParams, result: z.null() },
  locked: { params: noParams, result: z.null() },
  crash: { params: noParams, result: z.null() },
  badResult: { params: noParams, result: z.number() },
  huge: { params: noParams, result: z.string() },
  notImplementedHere: { params: noParams, result: z.null() },
});

let hangAborted = 0;
const handlers = {
  echo: ({ text }: { text: string }) => Promise.resolve({ text }),
  reverse: ({ data }: { data: Uint8Array }) => Promise.resolve(Uint8Array.from(data).reverse()),
  delay: async ({ ms, tag }: { ms: number; tag: number }) => {
    await sleep(ms);
    return tag;
  },
  hang: (_: object, ctx: { signal: AbortSignal }) =>
    new Promise<null>((resolve) => {
      ctx.signal.addEventListener('abort', () => {
        hangAborted++;
        resolve(null);
      });
    }),
  locked: () => Promise.reject(new RpcError('VAULT_LOCKED', 'the vault is locked')),
  crash: () => Promise.reject(new Error(`database exploded while holding ${SECRET}`)),
  badResult: () => Promise.resolve('not a number' as unknown as number),
  huge: () => Promise.resolve('x'.repeat(MAX_FRAME * 2)),
  notImplementedHere: () => Promise.resolve(null),
};

/** Everything a test needs from one transport: a client, and a raw way to send bytes. */
interface Harness {
  name: string;
  connect(opts?: { timeoutMs?: number }): Promise<{
    client: ReturnType<typeof createClient<typeof contract>>;
    channel: FrameChannel;
  }>;
  /** A raw peer: sends `bytes` as-is and collects the decoded response frames. */
  raw(): Promise<RawPeer>;
  serverErrors: unknown[];
}

interface RawPeer {
  write(bytes: Buffer): void;
  responses(n: number, timeoutMs?: number): Promise<unknown[]>;
  closed(): Promise<void>;
  end(): void;
}

function frameOf(value: unknown): Buffer {
  return encodeFrame(Buffer.from(typeof value === 'string' ? value : JSON.stringify(value)));
}

function rawPeerOverSocket(socket: Socket): RawPeer {
  const received: unknown[] = [];
  let buf = Buffer.alloc(0);
  let waiters: (() => void)[] = [];
  const closed = new Promise<void>((r) =>
    socket.once('close', () => {
      r();
    }),
  );
  socket.on('data', (chunk: Buffer) => {
    buf = Buffer.concat([buf, chunk]);
    while (buf.length >= 4 && buf.length >= 4 + buf.readUInt32BE(0)) {
      const len = buf.readUInt32BE(0);
      received.push(JSON.parse(buf.subarray(4, 4 + len).toString()));
      buf = buf.subarray(4 + len);
    }
    waiters.forEach((w) => {
      w();
    });
    waiters = [];
  });
  socket.on('close', () => {
    waiters.forEach((w) => {
      w();
    });
  });
  return {
    write: (b) => socket.write(b),
    end: () => socket.destroy(),
    closed: () => closed,
    async responses(n, timeoutMs = 2000) {
      const deadline = Date.now() + timeoutMs;
      while (received.length < n && Date.now() < deadline && !socket.destroyed) {
        await Promise.race([new Promise<void>((r) => waiters.push(r)), sleep(50)]);
      }
      return received.splice(0, n);
    },
  };
}

function inProcessHarness(): Harness {
  const serverErrors: unknown[] = [];
  const pair = () => {
    const [clientEnd, serverEnd] = inProcessPair({ maxFrameBytes: MAX_FRAME });
    serve(serverEnd, contract, handlers, {
      handlerTimeoutMs: 5000,
      maxInFlight: 256,
      onError: (e) => serverErrors.push(e),
    });
    return clientEnd;
  };
  return {
    name: 'in-process',
    serverErrors,
    connect(opts = {}) {
      const channel = pair();
      return Promise.resolve({ channel, client: createClient(channel, contract, opts) });
    },
    raw() {
      // In-process, "bytes" are whole frames: strip our own header and hand over the payload,
      // or, for an oversize header, a payload of that size.
      const channel = pair();
      const received: unknown[] = [];
      let isClosed = false;
      let onClose: () => void = () => undefined;
      const closed = new Promise<void>((r) => (onClose = r));
      channel.attach({
        frame: (p) => received.push(JSON.parse(p.toString())),
        fatal: () => undefined,
        close: () => {
          isClosed = true;
          onClose();
        },
      });
      return Promise.resolve({
        write(b: Buffer) {
          const len = b.readUInt32BE(0);
          channel.send(len > MAX_FRAME ? Buffer.alloc(len) : b.subarray(4, 4 + len));
        },
        end: () => {
          channel.close();
        },
        closed: () => closed,
        async responses(n: number, timeoutMs = 2000) {
          const deadline = Date.now() + timeoutMs;
          while (received.length < n && Date.now() < deadline && !isClosed) await sleep(10);
          return received.splice(0, n);
        },
      });
    },
  };
}

let dir: string;
let unixServer: Server;
const socketServerErrors: unknown[] = [];
const serverSockets = new Set<Socket>();

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'mte-rpc-'));
  unixServer = await listenUnix(join(dir, 'sock', 'rpc.sock'), (socket) => {
    serverSockets.add(socket);
    serve(socketChannel(socket, { maxFrameBytes: MAX_FRAME }), contract, handlers, {
      handlerTimeoutMs: 5000,
      maxInFlight: 256,
      onError: (e) => socketServerErrors.push(e),
    });
  });
});
afterAll(async () => {
  for (const s of serverSockets) s.destroy();
  await new Promise((r) => unixServer.close(r));
  await rm(dir, { recursive: true, force: true });
});

function socketHarness(): Harness {
  const path = () => join(dir, 'sock', 'rpc.sock');
  return {
    name: 'unix socket',
    serverErrors: socketServerErrors,
    async connect(opts = {}) {
      const channel = socketChannel(await connectUnix(path()), { maxFrameBytes: MAX_FRAME });
      return { channel, client: createClient(channel, contract, opts) };
    },
    async raw() {
      return rawPeerOverSocket(await connectUnix(path()));
    },
  };
}

const harnesses = [inProcessHarness(), socketHarness()];

describe.each(harnesses)('RPC over $name', (h) => {
  it('round-trips typed values, including binary', async () => {
    const { client } = await h.connect();
    await expect(client.call('echo', { text: 'hello' })).resolves.toEqual({ text: 'hello' });
    const data = new Uint8Array([0, 1, 2, 250, 255]);
    const reversed = await client.call('reverse', { data });
    expect(reversed).toBeInstanceOf(Uint8Array);
    expect([...reversed]).toEqual([255, 250, 2, 1, 0]);
    client.close();
  });

  it('matches 200 concurrent answers to their requests, whatever order they finish in', async () => {
    const { client } = await h.connect();
    const tags = Array.from({ length: 200 }, (_, i) => i);
    const results = await Promise.all(
      tags.map((tag) => client.call('delay', { ms: (tag * 7919) % 40, tag })),
    );
    expect(results).toEqual(tags);
    client.close();
  });

  it('passes application errors through with their code', async () => {
    const { client } = await h.connect();
    await expect(client.call('locked', {})).rejects.toMatchObject({
      code: 'VAULT_LOCKED',
      message: 'the vault is locked',
    });
  });

  it('turns an unexpected handler failure into INTERNAL without leaking its message', async () => {
    const { client } = await h.connect();
    const error = await client.call('crash', {}).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: RpcCode.Internal, message: 'internal error' });
    expect(JSON.stringify(error)).not.toContain('hunter2');
    // The server still saw it, locally.
    expect(h.serverErrors.some((e) => String(e).includes('database exploded'))).toBe(true);
  });

  it('refuses a handler result that breaks the contract, on the server side', async () => {
    const { client } = await h.connect();
    await expect(client.call('badResult', {})).rejects.toMatchObject({ code: RpcCode.Internal });
  });

  it('answers an oversize result with FRAME_TOO_LARGE and keeps serving', async () => {
    const { client } = await h.connect();
    await expect(client.call('huge', {})).rejects.toMatchObject({ code: RpcCode.FrameTooLarge });
    await expect(client.call('echo', { text: 'still here' })).resolves.toEqual({
      text: 'still here',
    });
  });

  it('validates params on the sending side before anything is sent', async () => {
    const { client } = await h.connect();
    // @ts-expect-error: the wrong type on purpose
    await expect(client.call('echo', { text: 42 })).rejects.toMatchObject({
      code: RpcCode.InvalidParams,
    });
    await expect(client.call('echo', { text: 'x'.repeat(MAX_FRAME) })).rejects.toMatchObject({
      code: RpcCode.InvalidParams,
    });
  });

  it('refuses to send a request larger than the frame bound', async () => {
    const { client } = await h.connect();
    const big = defineContract({
      echo: { params: z.object({ text: z.string() }), result: z.unknown() },
    });
    const { channel } = await h.connect();
    const bigClient = createClient(channel, big);
    await expect(bigClient.call('echo', { text: 'y'.repeat(MAX_FRAME) })).rejects.toMatchObject({
      code: RpcCode.FrameTooLarge,
    });
    client.close();
  });

  it('times out a call the peer never answers, and aborts the handler when the peer leaves', async () => {
    const { client } = await h.connect({ timeoutMs: 100 });
    const before = hangAborted;
    const started = Date.now();
    await expect(client.call('hang', {})).rejects.toMatchObject({ code: RpcCode.Timeout });
    expect(Date.now() - started).toBeLessThan(2000);
    // A call that did not time out still works on the same connection.
    await expect(client.call('echo', { text: 'after' })).resolves.toEqual({ text: 'after' });
    client.close();
    await expect.poll(() => hangAborted, { timeout: 2000 }).toBe(before + 1);
  });

  it('rejects pending calls with DISCONNECTED when the connection drops mid-request', async () => {
    const { client, channel } = await h.connect({ timeoutMs: 5000 });
    const call = client.call('hang', {});
    await sleep(20);
    channel.close();
    await expect(call).rejects.toMatchObject({ code: RpcCode.Disconnected });
    await expect(client.call('echo', { text: 'x' })).rejects.toMatchObject({
      code: RpcCode.Disconnected,
    });
  });

  describe('malformed input from a hostile peer', () => {
    const cases: [string, Buffer, Record<string, unknown>][] = [
      ['not JSON', frameOf('{"v":1, this is not json'), { id: null, error: { code: 'BAD_FRAME' } }],
      ['an empty frame', frameOf(''), { id: null, error: { code: 'BAD_FRAME' } }],
      ['a JSON array', frameOf([1, 2, 3]), { id: null, error: { code: 'BAD_FRAME' } }],
      [
        'a request without a method',
        frameOf({ v: 1, kind: 'request', id: 7, params: {} }),
        { id: 7, error: { code: 'BAD_FRAME' } },
      ],
      [
        'a wrong protocol version',
        frameOf({ v: 2, kind: 'request', id: 8, method: 'echo', params: { text: 'a' } }),
        { id: 8, error: { code: 'BAD_FRAME' } },
      ],
      [
        'a response sent to the server',
        frameOf({ v: 1, kind: 'response', id: 9, ok: true, result: 1 }),
        { id: 9, error: { code: 'BAD_FRAME' } },
      ],
      [
        'a negative id',
        frameOf({ v: 1, kind: 'request', id: -1, method: 'echo', params: { text: 'a' } }),
        { id: null, error: { code: 'BAD_FRAME' } },
      ],
      [
        'an unknown method',
        frameOf({ v: 1, kind: 'request', id: 10, method: 'exportAllKeys', params: {} }),
        { id: 10, error: { code: 'UNKNOWN_METHOD' } },
      ],
      [
        'a prototype property as method',
        frameOf({ v: 1, kind: 'request', id: 11, method: '__proto__', params: {} }),
        { id: 11, error: { code: 'UNKNOWN_METHOD' } },
      ],
      [
        'an inherited property as method',
        frameOf({ v: 1, kind: 'request', id: 12, method: 'hasOwnProperty', params: {} }),
        { id: 12, error: { code: 'UNKNOWN_METHOD' } },
      ],
      [
        'params of the wrong type',
        frameOf({ v: 1, kind: 'request', id: 13, method: 'echo', params: { text: 1 } }),
        { id: 13, error: { code: 'INVALID_PARAMS' } },
      ],
      [
        'params with an extra field',
        frameOf({
          v: 1,
          kind: 'request',
          id: 14,
          method: 'echo',
          params: { text: 'a', admin: true },
        }),
        { id: 14, error: { code: 'INVALID_PARAMS' } },
      ],
      [
        'params that are not base64 where bytes are expected',
        frameOf({
          v: 1,
          kind: 'request',
          id: 15,
          method: 'reverse',
          params: { data: '!!not base64!!' },
        }),
        { id: 15, error: { code: 'INVALID_PARAMS' } },
      ],
    ];

    it.each(cases)(
      'answers %s with a typed error and keeps serving',
      async (_name, bytes, expected) => {
        const peer = await h.raw();
        peer.write(bytes);
        const [answer] = await peer.responses(1);
        expect(answer).toMatchObject({ v: 1, kind: 'response', ok: false, ...expected });
        peer.write(
          frameOf({ v: 1, kind: 'request', id: 99, method: 'echo', params: { text: 'ok' } }),
        );
        const [next] = await peer.responses(1);
        expect(next).toEqual({ v: 1, kind: 'response', id: 99, ok: true, result: { text: 'ok' } });
        peer.end();
      },
    );

    it('names the offending field, never its value', async () => {
      const peer = await h.raw();
      peer.write(
        frameOf({ v: 1, kind: 'request', id: 1, method: 'echo', params: { text: [SECRET] } }),
      );
      const [answer] = await peer.responses(1);
      const text = JSON.stringify(answer);
      expect(text).toContain('params.text');
      expect(text).not.toContain('hunter2');
      peer.end();
    });

    it('answers an oversize frame with FRAME_TOO_LARGE, then hangs up; others are unaffected', async () => {
      const peer = await h.raw();
      const header = Buffer.alloc(4);
      header.writeUInt32BE(MAX_FRAME + 1);
      peer.write(header);
      const [answer] = await peer.responses(1);
      expect(answer).toMatchObject({ id: null, ok: false, error: { code: 'FRAME_TOO_LARGE' } });
      await peer.closed();
      const { client } = await h.connect();
      await expect(client.call('echo', { text: 'fine' })).resolves.toEqual({ text: 'fine' });
    });
  });
});

describe('RPC over a Unix socket, stream-level faults', () => {
  it('survives a frame cut off by a disconnect and a 4 GiB length header', async () => {
    const sockPath = join(dir, 'sock', 'rpc.sock');
    const torn = rawPeerOverSocket(await connectUnix(sockPath));
    const whole = frameOf({ v: 1, kind: 'request', id: 1, method: 'echo', params: { text: 'a' } });
    torn.write(whole.subarray(0, whole.length - 3));
    await sleep(20);
    torn.end();

    const giant = rawPeerOverSocket(await connectUnix(sockPath));
    giant.write(Buffer.from([0xff, 0xff, 0xff, 0xff]));
    await giant.closed();

    const split = rawPeerOverSocket(await connectUnix(sockPath));
    // One request delivered a byte at a time, then two requests in one write.
    for (const byte of whole) split.write(Buffer.from([byte]));
    split.write(Buffer.concat([whole, whole]));
    const answers = await split.responses(3);
    expect(answers).toHaveLength(3);
    split.end();
  });

  it('a rogue server: a result that violates the schema is refused by the client', async () => {
    const rogueDir = await mkdtemp(join(tmpdir(), 'mte-rogue-'));
    const rogue = await listenUnix(join(rogueDir, 's', 'rogue.sock'), (socket) => {
      const peer = rawPeerOverSocket(socket);
      void peer.responses(1).then(([req]) => {
        const id = (req as { id: number }).id;
        socket.write(
          frameOf({ v: 1, kind: 'response', id: 12345, ok: true, result: { text: 'unsolicited' } }),
        );
        socket.write(frameOf('garbage'));
        socket.write(frameOf({ v: 1, kind: 'response', id, ok: true, result: { text: 7 } }));
      });
    });
    const protocolErrors: RpcError[] = [];
    const client = createClient(
      socketChannel(await connectUnix(join(rogueDir, 's', 'rogue.sock'))),
      contract,
      {
        onProtocolError: (e) => protocolErrors.push(e),
      },
    );
    await expect(client.call('echo', { text: 'hi' })).rejects.toMatchObject({
      code: RpcCode.InvalidResult,
    });
    expect(protocolErrors.map((e) => e.code)).toEqual([RpcCode.BadFrame]);
    client.close();
    await new Promise((r) => rogue.close(r));
    await rm(rogueDir, { recursive: true, force: true });
  });

  it('bounds the requests in flight per connection', async () => {
    const [clientEnd, serverEnd] = inProcessPair();
    serve(serverEnd, contract, handlers, { maxInFlight: 3 });
    const client = createClient(clientEnd, contract);
    const calls = Array.from({ length: 6 }, (_, tag) =>
      client.call('delay', { ms: 50, tag }).catch((e: unknown) => e),
    );
    const results = await Promise.all(calls);
    expect(results.slice(0, 3)).toEqual([0, 1, 2]);
    for (const r of results.slice(3)) expect(r).toMatchObject({ code: RpcCode.Busy });
  });

  it('refuses to listen in a directory other users can reach', async () => {
    const open = await mkdtemp(join(tmpdir(), 'mte-open-'));
    const { chmod } = await import('node:fs/promises');
    await chmod(open, 0o755);
    await expect(listenUnix(join(open, 'x.sock'), () => undefined)).rejects.toThrow(
      /reachable by other users/,
    );
    await rm(open, { recursive: true, force: true });
  });
});

describe('RPC resource bounds against a hostile peer', () => {
  it('stops reading from a peer that never reads its answers, so our buffers stay bounded', async () => {
    const socket = await connectUnix(join(dir, 'sock', 'rpc.sock'));
    socket.pause(); // never read
    const data = Buffer.alloc(4096, 7).toString('base64');
    const request = (id: number): Buffer =>
      frameOf({ v: 1, kind: 'request', id, method: 'reverse', params: { data } });
    for (let id = 0; id < 3000; id++) socket.write(request(id)); // ~16 MiB of answers
    await sleep(1500);
    const server = [...serverSockets].find((s) => s.writableLength > 0);
    const buffered = server?.writableLength ?? 0;
    // At most the limit plus what was already in flight when reading stopped.
    expect(buffered).toBeLessThan(WRITE_BUFFER_LIMIT + 256 * 6000);
    socket.destroy();
  });

  it('keeps a timed-out request counted in flight until its handler really ends', async () => {
    const [clientEnd, serverEnd] = inProcessPair();
    serve(serverEnd, contract, handlers, { maxInFlight: 1, handlerTimeoutMs: 50 });
    const client = createClient(clientEnd, contract);
    await expect(client.call('delay', { ms: 400, tag: 1 })).rejects.toMatchObject({
      code: RpcCode.Timeout,
    });
    await expect(client.call('echo', { text: 'too soon' })).rejects.toMatchObject({
      code: RpcCode.Busy,
    });
    await sleep(450);
    await expect(client.call('echo', { text: 'now' })).resolves.toEqual({ text: 'now' });
  });
});

describe('framing limits', () => {
  const LIMIT = 1024;
  const frameTooLarge = { code: RpcCode.FrameTooLarge };

  it('refuses a 4 GiB or 64 MiB length on its 4 bytes alone, before any payload is held', () => {
    for (const length of [0xffffffff, 64 * 1024 * 1024, LIMIT + 1]) {
      const d = new FrameDecoder(LIMIT);
      const head = Buffer.alloc(4);
      head.writeUInt32BE(length);
      // The header a byte at a time: nothing is decided until the fourth byte, then at once.
      for (const byte of head.subarray(0, 3)) expect(d.push(Buffer.from([byte]))).toEqual([]);
      expect(() => d.push(head.subarray(3))).toThrow(
        expect.objectContaining({
          ...frameTooLarge,
          message: `frame of ${length} bytes exceeds the limit of ${LIMIT} bytes`,
        }),
      );
      expect(d.pendingBytes).toBe(0);
      // Afterwards the stream is dead: nothing more is read, and nothing more is thrown.
      expect(d.push(Buffer.alloc(8192, 0x41))).toEqual([]);
      expect(d.push(encodeFrame(Buffer.from('{}')))).toEqual([]);
      expect(d.pendingBytes).toBe(0);
    }
  });

  it('takes a frame of exactly the limit, and an empty one', () => {
    const d = new FrameDecoder(LIMIT);
    const full = Buffer.alloc(LIMIT, 0x7a);
    const frames = d.push(Buffer.concat([encodeFrame(full), encodeFrame(Buffer.alloc(0))]));
    expect(frames.map((f) => f.length)).toEqual([LIMIT, 0]);
    expect(frames[0]?.equals(full)).toBe(true);
  });

  it('holds no more than the announced frame while it trickles in, a byte at a time', () => {
    const d = new FrameDecoder(LIMIT);
    const payload = Buffer.from(randomText(LIMIT));
    const wire = Buffer.concat([encodeFrame(payload), encodeFrame(Buffer.from('next'))]);
    const out: Buffer[] = [];
    let most = 0;
    for (const byte of wire) {
      out.push(...d.push(Buffer.from([byte])));
      most = Math.max(most, d.pendingBytes);
    }
    expect(out.map((f) => f.toString())).toEqual([payload.toString(), 'next']);
    expect(most).toBeLessThanOrEqual(LIMIT);
    expect(d.pendingBytes).toBe(0);
  });

  it('splits many frames and a partial one out of one chunk, each a copy of its own', () => {
    const d = new FrameDecoder(LIMIT);
    const a = encodeFrame(Buffer.from('one'));
    const b = encodeFrame(Buffer.from('two'));
    const c = encodeFrame(Buffer.from('three'));
    const chunk = Buffer.concat([a, b, c.subarray(0, 6)]);
    const frames = d.push(chunk);
    chunk.fill(0); // the frames must not share the socket's buffer
    expect(frames.map((f) => f.toString())).toEqual(['one', 'two']);
    expect(d.pendingBytes).toBe(2);
    expect(d.push(c.subarray(6)).map((f) => f.toString())).toEqual(['three']);
  });

  it('a socket channel reads nothing before it is attached, and loses nothing either', async () => {
    const sockDir = await mkdtemp(join(tmpdir(), 'mte-early-'));
    const path = join(sockDir, 's', 'early.sock');
    let accepted: (s: Socket) => void = () => undefined;
    const got = new Promise<Socket>((r) => (accepted = r));
    const srv = await listenUnix(path, (s) => {
      accepted(s);
    });
    const peer = await connectUnix(path);
    peer.write(frameOf({ n: 1 }));
    peer.end(frameOf({ n: 2 }));
    const channel = socketChannel(await got, { maxFrameBytes: LIMIT });
    await sleep(100); // the peer has written and hung up before we attach
    const frames: unknown[] = [];
    const closed = new Promise<void>((resolve) => {
      channel.attach({
        frame: (p) => frames.push(JSON.parse(p.toString())),
        fatal: () => undefined,
        close: resolve,
      });
    });
    await closed;
    expect(frames).toEqual([{ n: 1 }, { n: 2 }]);
    await new Promise((r) => srv.close(r));
    await rm(sockDir, { recursive: true, force: true });
  });

  it('the server reports malformed frames (kept) and an oversize one (fatal, the reason)', async () => {
    const [clientEnd, serverEnd] = inProcessPair({ maxFrameBytes: LIMIT });
    const reported: [string, boolean][] = [];
    const conn = serve(serverEnd, contract, handlers, {
      onProtocolError: (e, { fatal }) => reported.push([e.code, fatal]),
    });
    const answers: unknown[] = [];
    clientEnd.attach({
      frame: (p) => answers.push(JSON.parse(p.toString())),
      fatal: () => undefined,
      close: () => undefined,
    });
    clientEnd.send(Buffer.from('not json'));
    clientEnd.send(Buffer.from('[]'));
    await sleep(20);
    expect(conn.reason).toBeUndefined();
    clientEnd.send(Buffer.alloc(LIMIT + 1));
    await conn.closed;
    expect(reported).toEqual([
      ['BAD_FRAME', false],
      ['BAD_FRAME', false],
      ['FRAME_TOO_LARGE', true],
    ]);
    expect(conn.reason?.code).toBe(RpcCode.FrameTooLarge);
    expect(answers).toHaveLength(3);
  });
});

describe('one peer at a time (a restarted gateway)', () => {
  let sockDir: string;
  beforeAll(async () => {
    sockDir = await mkdtemp(join(tmpdir(), 'mte-one-'));
  });
  afterAll(async () => {
    await rm(sockDir, { recursive: true, force: true });
  });

  /** A connected pair of sockets: ours for the server, theirs for a client. */
  async function socketPair(): Promise<[Socket, Socket]> {
    const path = join(sockDir, `pair-${Math.random().toString(36).slice(2)}.sock`);
    let accepted: (s: Socket) => void = () => undefined;
    const server = createServer((s) => {
      accepted(s);
    });
    const ours = new Promise<Socket>((r) => (accepted = r));
    await new Promise<void>((r) => server.listen(path, r));
    const theirs = await connectUnix(path);
    const mine = await ours;
    server.close();
    return [mine, theirs];
  }

  const start = (first: Socket, listenPath?: string) => {
    const ends: { reason: string | undefined; replaced: boolean; stopping: boolean }[] = [];
    const serving = serveOneAtATime({
      first,
      ...(listenPath ? { listenPath } : {}),
      channel: { maxFrameBytes: MAX_FRAME },
      serve: (channel) => serve(channel, contract, handlers),
      onEnd: (e) =>
        ends.push({ reason: e.reason?.code, replaced: e.replaced, stopping: e.stopping }),
    });
    return { serving, ends };
  };

  it('an oversize frame or a hang-up ends that peer only; the next is served; a newer replaces it', async () => {
    const listenPath = join(sockDir, 'gw', 'gateway.sock');
    const [mine, theirs] = await socketPair();
    const { serving, ends } = start(mine, listenPath);
    const one = await serving;
    let done = false;
    void one.done.then(() => (done = true));

    // The first peer sends a 4 GiB length: its channel ends, with the reason.
    const first = rawPeerOverSocket(theirs);
    first.write(Buffer.from([0xff, 0xff, 0xff, 0xff]));
    const [answer] = await first.responses(1);
    expect(answer).toMatchObject({ id: null, error: { code: 'FRAME_TOO_LARGE' } });
    await first.closed();

    // The next connects on the socket (mode 0600) and is served.
    expect(((await import('node:fs')).statSync(listenPath).mode & 0o777).toString(8)).toBe('600');
    const second = createClient(socketChannel(await connectUnix(listenPath)), contract);
    await expect(second.call('echo', { text: 'again' })).resolves.toEqual({ text: 'again' });

    // One hanging up mid-request ends only itself.
    const torn = rawPeerOverSocket(await connectUnix(listenPath));
    torn.write(frameOf({ v: 1, kind: 'request', id: 1, method: 'hang', params: {} }));
    await sleep(50);
    torn.end();
    await sleep(50);
    expect(second.closed).toBe(true); // the torn one had taken its place

    const third = createClient(socketChannel(await connectUnix(listenPath)), contract);
    await expect(third.call('echo', { text: 'third' })).resolves.toEqual({ text: 'third' });
    expect(done).toBe(false);
    expect(ends.slice(0, 3)).toEqual([
      { reason: 'FRAME_TOO_LARGE', replaced: false, stopping: false },
      { reason: undefined, replaced: true, stopping: false }, // the second, by the torn one
      { reason: undefined, replaced: false, stopping: false }, // the torn one hung up
    ]);

    await one.close();
    expect(done).toBe(true);
    expect(ends.at(-1)).toEqual({ reason: undefined, replaced: false, stopping: true });
    await expect(connectUnix(listenPath)).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it('without a socket to listen on, it is done when its one peer leaves', async () => {
    const [mine, theirs] = await socketPair();
    const { serving, ends } = start(mine);
    const one = await serving;
    theirs.destroy();
    await one.done;
    expect(ends).toEqual([{ reason: undefined, replaced: false, stopping: false }]);
  });

  it('refuses to listen where something other than a socket is (and leaves it there)', async () => {
    const path = join(sockDir, 'gw2', 'journal');
    await (await import('node:fs/promises')).mkdir(join(sockDir, 'gw2'), { mode: 0o700 });
    await writeFile(path, 'precious');
    const [mine] = await socketPair();
    await expect(start(mine, path).serving).rejects.toThrow(/something other than a socket/);
    expect(await readFile(path, 'utf8')).toBe('precious');
    mine.destroy();
  });
});

function randomText(n: number): string {
  let out = '';
  while (out.length < n) out += Math.random().toString(36).slice(2);
  return out.slice(0, n);
}
