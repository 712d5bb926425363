import { afterEach, describe, expect, it, vi } from 'vitest';
import {
  TransferError,
  Transfers,
  type UploadMeta,
  msgtypeFor,
  sniffImage,
} from '../../endpoint/messages/index.ts';
import { IDLE_MS } from '../../endpoint/messages/transfers.ts';

// Attachment bytes held in memory between a UI and the homeserver: each transfer is its
// client's alone, bounded, complete before it is used, and overwritten once done with.

let clock = 1_000_000;
let transfers: Transfers | undefined;
const open = () => (transfers = new Transfers({ now: () => clock }));
afterEach(() => {
  transfers?.close();
  transfers = undefined;
  clock = 1_000_000;
  vi.restoreAllMocks();
});

const meta = (size: number): UploadMeta => ({
  roomId: '!r:example',
  name: 'f.bin',
  contentType: 'application/octet-stream',
  size,
});

function codeOf(f: () => unknown): string | undefined {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(TransferError);
    return (e as TransferError).code;
  }
  return undefined;
}

describe('uploads', () => {
  it('chunks arrive in order at the offset where the previous one ended', () => {
    const t = open();
    const id = t.startUpload('ui', meta(6));
    expect(t.chunk('ui', id, 0, Buffer.from('abc'))).toBe(3);
    expect(codeOf(() => t.chunk('ui', id, 0, Buffer.from('abc')))).toBe('UPLOAD_INCOMPLETE');
    expect(codeOf(() => t.chunk('ui', id, 4, Buffer.from('ef')))).toBe('UPLOAD_INCOMPLETE');
    expect(t.chunk('ui', id, 3, Buffer.from('def'))).toBe(6);
    const done = t.finish('ui', id);
    expect(done.bytes.toString()).toBe('abcdef');
    expect(done.meta).toEqual(meta(6));
    expect(codeOf(() => t.finish('ui', id))).toBe('NOT_FOUND');
  });

  it('more bytes than announced drop the upload', () => {
    const t = open();
    const id = t.startUpload('ui', meta(4));
    t.chunk('ui', id, 0, Buffer.from('ab'));
    expect(codeOf(() => t.chunk('ui', id, 2, Buffer.from('cde')))).toBe('ATTACHMENT_TOO_LARGE');
    expect(codeOf(() => t.chunk('ui', id, 2, Buffer.from('cd')))).toBe('NOT_FOUND');
    expect(codeOf(() => t.finish('ui', id))).toBe('NOT_FOUND');
  });

  it('an upload cannot be finished before all its bytes arrived, and stays open', () => {
    const t = open();
    const id = t.startUpload('ui', meta(4));
    t.chunk('ui', id, 0, Buffer.from('abc'));
    expect(codeOf(() => t.finish('ui', id))).toBe('UPLOAD_INCOMPLETE');
    t.chunk('ui', id, 3, Buffer.from('d'));
    expect(t.finish('ui', id).bytes.toString()).toBe('abcd');
  });

  it('another client’s transfer is not found, and stays intact for its owner', () => {
    const t = open();
    const up = t.startUpload('alice-ui', meta(2));
    const down = t.startDownload('alice-ui', Buffer.from('secret'));
    expect(codeOf(() => t.chunk('mallory', up, 0, Buffer.from('xx')))).toBe('NOT_FOUND');
    expect(codeOf(() => t.finish('mallory', up))).toBe('NOT_FOUND');
    expect(codeOf(() => t.read('mallory', down, 0, 100))).toBe('NOT_FOUND');
    // Nor is an upload's id a download's, or the other way round.
    expect(codeOf(() => t.read('alice-ui', up, 0, 100))).toBe('NOT_FOUND');
    expect(codeOf(() => t.finish('alice-ui', down))).toBe('NOT_FOUND');
    t.chunk('alice-ui', up, 0, Buffer.from('ok'));
    expect(t.finish('alice-ui', up).bytes.toString()).toBe('ok');
    expect(t.read('alice-ui', down, 0, 100).data.toString()).toBe('secret');
  });

  it('a client has at most 4 transfers open; others are not affected', () => {
    const t = open();
    const ids = [0, 1, 2, 3].map(() => t.startUpload('greedy', meta(1)));
    expect(new Set(ids).size).toBe(4);
    expect(codeOf(() => t.startUpload('greedy', meta(1)))).toBe('RATE_LIMITED');
    expect(codeOf(() => t.startDownload('greedy', Buffer.alloc(1)))).toBe('RATE_LIMITED');
    expect(() => t.startUpload('other', meta(1))).not.toThrow();
    t.chunk('greedy', ids[0] as string, 0, Buffer.from('x'));
    t.finish('greedy', ids[0] as string);
    expect(() => t.startUpload('greedy', meta(1))).not.toThrow();
  });

  it('all clients together have at most 16 transfers open', () => {
    const t = open();
    for (let c = 0; c < 4; c++) for (let i = 0; i < 4; i++) t.startUpload(`ui-${c}`, meta(1));
    expect(codeOf(() => t.startUpload('late', meta(1)))).toBe('RATE_LIMITED');
  });

  it('idle transfers are swept after IDLE_MS; activity keeps one alive', () => {
    const t = open();
    const idle = t.startUpload('ui', meta(4));
    const busy = t.startUpload('ui', meta(4));
    clock += IDLE_MS - 1;
    t.chunk('ui', busy, 0, Buffer.from('a'));
    clock += 2;
    t.sweep();
    expect(codeOf(() => t.chunk('ui', idle, 0, Buffer.from('a')))).toBe('NOT_FOUND');
    expect(t.chunk('ui', busy, 1, Buffer.from('b'))).toBe(2);
    // Opening a transfer sweeps first: stale ones never count against the limit.
    for (let i = 0; i < 3; i++) t.startUpload('ui', meta(1));
    clock += IDLE_MS + 1;
    expect(() => t.startUpload('ui', meta(1))).not.toThrow();
    expect(codeOf(() => t.chunk('ui', busy, 2, Buffer.from('c')))).toBe('NOT_FOUND');
  });

  it('the chunks of an upload are its own copies, overwritten once finished or dropped', () => {
    const t = open();
    const copies = vi.spyOn(Buffer, 'from');
    const kept = () => copies.mock.results.map((r) => r.value as Buffer).filter((b) => b.length);
    const finished = t.startUpload('ui', meta(4));
    const sent = Buffer.from('key!');
    copies.mockClear();
    t.chunk('ui', finished, 0, sent);
    const [copy] = kept();
    expect(copy?.toString()).toBe('key!');
    sent.fill(0x41); // the caller's buffer is its own
    const { bytes } = t.finish('ui', finished);
    expect(bytes.toString()).toBe('key!');
    expect(copy?.every((b) => b === 0)).toBe(true);

    const dropped = t.startUpload('ui', meta(4));
    copies.mockClear();
    t.chunk('ui', dropped, 0, Buffer.from('abc'));
    const held = kept().at(-1);
    expect(codeOf(() => t.chunk('ui', dropped, 3, Buffer.from('de')))).toBe('ATTACHMENT_TOO_LARGE');
    expect(held?.toString('hex')).toBe('000000');
  });
});

describe('downloads', () => {
  it('is read in chunks, then gone, and its buffer is zeroed', () => {
    const t = open();
    const plain = Buffer.from('0123456789');
    const id = t.startDownload('ui', plain);
    expect(t.read('ui', id, 0, 4)).toMatchObject({ done: false, size: 10 });
    const middle = t.read('ui', id, 4, 4);
    expect(middle.data.toString()).toBe('4567');
    expect(codeOf(() => t.read('ui', id, 11, 4))).toBe('INVALID_REQUEST');
    const last = t.read('ui', id, 8, 4);
    expect(last).toMatchObject({ done: true, size: 10 });
    expect(last.data.toString()).toBe('89'); // a copy: intact after the zeroing
    expect(plain.every((b) => b === 0)).toBe(true);
    expect(codeOf(() => t.read('ui', id, 0, 4))).toBe('NOT_FOUND');
  });

  it('a download dropped unread (idle, or at close) is zeroed too', () => {
    const t = open();
    const swept = Buffer.from('decrypted file');
    t.startDownload('ui', swept);
    clock += IDLE_MS + 1;
    t.sweep();
    expect(swept.every((b) => b === 0)).toBe(true);
    const closed = Buffer.from('another file');
    t.startDownload('ui', closed);
    t.close();
    expect(closed.every((b) => b === 0)).toBe(true);
  });
});

describe('media types', () => {
  const png = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0, 0]);
  const jpeg = Buffer.from([0xff, 0xd8, 0xff, 0xe0, 0, 0x10]);
  const gif = Buffer.from('GIF89a\x01\x00', 'latin1');
  const webp = Buffer.concat([Buffer.from('RIFF'), Buffer.alloc(4), Buffer.from('WEBPVP8 ')]);
  const html = Buffer.from('<html><script>alert(1)</script></html>');

  it('png, jpeg, gif and webp are recognised by their first bytes', () => {
    expect(sniffImage(png)).toBe('image/png');
    expect(sniffImage(jpeg)).toBe('image/jpeg');
    expect(sniffImage(gif)).toBe('image/gif');
    expect(sniffImage(webp)).toBe('image/webp');
    expect(sniffImage(html)).toBeUndefined();
    expect(sniffImage(png.subarray(0, 7))).toBeUndefined();
    const riffNotWebp = Buffer.concat([Buffer.from('RIFF'), Buffer.alloc(4), Buffer.from('WAVE')]);
    expect(sniffImage(riffNotWebp)).toBeUndefined();
    expect(msgtypeFor('image/webp', webp)).toEqual({ msgtype: 'm.image', mismatch: false });
  });

  it('a declared image type the bytes are not is a mismatch, sent as a plain file', () => {
    expect(msgtypeFor('image/png', html)).toEqual({ msgtype: 'm.file', mismatch: true });
    expect(msgtypeFor('image/png', jpeg)).toEqual({ msgtype: 'm.file', mismatch: true });
    expect(msgtypeFor('image/png', png)).toEqual({ msgtype: 'm.image', mismatch: false });
  });

  it('an SVG (it can carry script) is a file; video and audio keep their msgtype', () => {
    const svg = Buffer.from('<svg xmlns="http://www.w3.org/2000/svg"><script/></svg>');
    expect(msgtypeFor('image/svg+xml', svg)).toEqual({ msgtype: 'm.file', mismatch: false });
    expect(msgtypeFor('text/html', html)).toEqual({ msgtype: 'm.file', mismatch: false });
    expect(msgtypeFor('video/mp4', Buffer.alloc(8))).toEqual({
      msgtype: 'm.video',
      mismatch: false,
    });
    expect(msgtypeFor('audio/ogg', Buffer.alloc(8))).toEqual({
      msgtype: 'm.audio',
      mismatch: false,
    });
  });
});
