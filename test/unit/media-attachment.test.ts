import { createHash, randomBytes } from 'node:crypto';
import * as elementNode from 'matrix-encrypt-attachment';
import type { IEncryptedFile } from 'matrix-encrypt-attachment';
import * as elementWeb from 'matrix-encrypt-attachment/lib/webcrypto.js';
import { afterAll, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest';

// Watch the cipher constructors: a refused attachment must never reach a decipher, and the
// key buffers handed to them must be zero once the call returns.
vi.mock('node:crypto', async (importOriginal) => {
  const actual = await importOriginal<typeof import('node:crypto')>();
  return {
    ...actual,
    createCipheriv: vi.fn(actual.createCipheriv),
    createDecipheriv: vi.fn(actual.createDecipheriv),
  };
});

const crypto = await import('node:crypto');
const {
  AttachmentCode,
  AttachmentError,
  decryptAttachment,
  encryptAttachment,
  encryptedFile,
  parseEncryptedFile,
  parseMxc,
} = await import('../../endpoint/media/index.ts');
type EncryptedFile = import('../../endpoint/media/index.ts').EncryptedFile;

// matrix-encrypt-attachment is Element's implementation, the independent peer: its WebCrypto
// half is what Element runs in browsers (it looks for `window.crypto`, which Node 24 has as
// globalThis.crypto), its Node half what matrix-js-sdk bots run.
beforeAll(() => {
  Object.assign(globalThis, { window: globalThis });
});
afterAll(() => {
  Reflect.deleteProperty(globalThis, 'window');
});
beforeEach(() => {
  vi.mocked(crypto.createDecipheriv).mockClear();
  vi.mocked(crypto.createCipheriv).mockClear();
});

const url = 'mxc://example.org/AbCdEf_123-xyz';

function sealed(plain: Uint8Array): { ciphertext: Uint8Array; file: EncryptedFile } {
  const { ciphertext, file } = encryptAttachment(plain);
  return { ciphertext, file: { ...file, url } };
}

function attachmentError(fn: () => unknown): InstanceType<typeof AttachmentError> {
  try {
    fn();
  } catch (e) {
    if (e instanceof AttachmentError) return e;
    throw e;
  }
  throw new Error('expected an AttachmentError');
}

const unpadded = (bytes: Uint8Array): string =>
  Buffer.from(bytes).toString('base64').replace(/=+$/, '');

/** The library's type wants `ext`, which our type (for peers' objects) leaves optional. */
const forElement = (file: EncryptedFile): IEncryptedFile => ({
  ...file,
  key: { ...file.key, ext: file.key.ext ?? true },
});

/** Copies into a fresh ArrayBuffer: what the library's ArrayBuffer API wants. */
const arrayBuffer = (bytes: Uint8Array): ArrayBuffer => new Uint8Array(bytes).buffer;

const sizes = [0, 1, 15, 16, 17, 4096, 1024 * 1024 + 3];

describe('encrypted attachments (v2)', () => {
  it.each(sizes)('round-trips %i bytes', (size) => {
    const plain = randomBytes(size);
    const { ciphertext, file } = sealed(plain);
    expect(ciphertext.byteLength).toBe(size);
    if (size >= 16) expect(Buffer.from(ciphertext).equals(plain)).toBe(false);
    expect(Buffer.from(decryptAttachment(ciphertext, file)).equals(plain)).toBe(true);
  });

  it('writes the file object the spec describes: JWK, zero low half of the IV, SHA-256 of the ciphertext', () => {
    const highHalves = new Set<string>();
    for (let i = 0; i < 8; i++) {
      const { ciphertext, file } = encryptAttachment(randomBytes(100));
      const iv = Buffer.from(file.iv, 'base64');
      expect(iv).toHaveLength(16);
      expect(iv.subarray(8).equals(Buffer.alloc(8))).toBe(true);
      highHalves.add(iv.subarray(0, 8).toString('hex'));
      expect(file.v).toBe('v2');
      expect(file.key).toEqual({
        kty: 'oct',
        key_ops: ['encrypt', 'decrypt'],
        alg: 'A256CTR',
        k: expect.stringMatching(/^[A-Za-z0-9_-]{43}$/) as unknown,
        ext: true,
      });
      expect(Buffer.from(file.key.k, 'base64url')).toHaveLength(32);
      expect(file.iv).toMatch(/^[A-Za-z0-9+/]{22}$/);
      expect(file.hashes.sha256).toBe(unpadded(createHash('sha256').update(ciphertext).digest()));
      expect(file.hashes.sha256).not.toContain('=');
      expect(encryptedFile.safeParse({ ...file, url }).success).toBe(true);
    }
    // The high half is random: eight equal ones would mean it is not.
    expect(highHalves.size).toBe(8);
  });

  it('zeroes the key buffers it hands to the cipher, once done', () => {
    const { ciphertext, file } = sealed(randomBytes(64));
    const cipherKey = vi.mocked(crypto.createCipheriv).mock.calls[0]?.[1];
    expect(cipherKey).toBeInstanceOf(Buffer);
    expect(Buffer.from(cipherKey as Buffer).equals(Buffer.alloc(32))).toBe(true);
    decryptAttachment(ciphertext, file);
    const decipherKey = vi.mocked(crypto.createDecipheriv).mock.calls[0]?.[1];
    expect(Buffer.from(decipherKey as Buffer).equals(Buffer.alloc(32))).toBe(true);
    // The key in the file object is intact: the wiped buffer was our own copy.
    expect(Buffer.from(file.key.k, 'base64url').equals(Buffer.alloc(32))).toBe(false);
  });

  describe.each([
    ['WebCrypto (Element in a browser)', elementWeb],
    ['Node.js (matrix-js-sdk bots)', elementNode],
  ])('interoperates with matrix-encrypt-attachment, %s', (_name, element) => {
    it.each(sizes)('it decrypts what we encrypt (%i bytes)', async (size) => {
      const plain = randomBytes(size);
      const { ciphertext, file } = sealed(plain);
      const theirs = await element.decryptAttachment(arrayBuffer(ciphertext), forElement(file));
      expect(Buffer.from(theirs).equals(plain)).toBe(true);
    });

    it.each(sizes)('we decrypt what it encrypts (%i bytes)', async (size) => {
      const plain = randomBytes(size);
      const { data, info } = await element.encryptAttachment(arrayBuffer(plain));
      // Its file object passes our schema for peers' file objects as it comes.
      const file = parseEncryptedFile({ ...info, url });
      expect(Buffer.from(decryptAttachment(new Uint8Array(data), file)).equals(plain)).toBe(true);
    });

    it('refuses, as we do, a ciphertext with a flipped bit', async () => {
      const { ciphertext, file } = sealed(randomBytes(64));
      const flipped = new Uint8Array(ciphertext);
      flipped[10] = (flipped[10] ?? 0) ^ 0x01;
      await expect(
        element.decryptAttachment(arrayBuffer(flipped), forElement(file)),
      ).rejects.toThrow();
    });
  });

  it('decrypts a counter block whose low half is near the top exactly as WebCrypto does', async () => {
    // Not what a v2 sender writes, but accepted: the low half does not wrap within the file.
    const plain = randomBytes(32);
    const iv = Buffer.concat([randomBytes(8), Buffer.from('fffffffffffffffe', 'hex')]);
    const key = randomBytes(32);
    const cipher = crypto.createCipheriv('aes-256-ctr', key, iv);
    const ciphertext = cipher.update(plain);
    const file: EncryptedFile = {
      url,
      v: 'v2',
      key: {
        kty: 'oct',
        key_ops: ['encrypt', 'decrypt'],
        alg: 'A256CTR',
        k: key.toString('base64url'),
        ext: true,
      },
      iv: unpadded(iv),
      hashes: { sha256: unpadded(createHash('sha256').update(ciphertext).digest()) },
    };
    const ours = decryptAttachment(ciphertext, file);
    const theirs = await elementWeb.decryptAttachment(arrayBuffer(ciphertext), forElement(file));
    expect(Buffer.from(ours).equals(plain)).toBe(true);
    expect(Buffer.from(theirs).equals(plain)).toBe(true);
  });

  it('refuses a counter block whose low half would wrap inside the file (WebCrypto and OpenSSL would differ)', () => {
    const ciphertext = randomBytes(33); // three blocks
    const iv = Buffer.concat([randomBytes(8), Buffer.from('fffffffffffffffe', 'hex')]);
    const file: EncryptedFile = {
      ...sealed(new Uint8Array()).file,
      iv: unpadded(iv),
      hashes: { sha256: unpadded(createHash('sha256').update(ciphertext).digest()) },
    };
    const error = attachmentError(() => decryptAttachment(ciphertext, file));
    expect(error.code).toBe(AttachmentCode.Invalid);
    expect(error.message).toMatch(/counter would wrap/);
    expect(crypto.createDecipheriv).not.toHaveBeenCalled();
  });
});

describe('tampered attachments', () => {
  it('a flipped ciphertext bit is ATTACHMENT_TAMPERED, and no decipher is ever made', () => {
    const { ciphertext, file } = sealed(randomBytes(4096));
    for (const bit of [0, 7, 8 * 2048 + 3, 8 * 4096 - 1]) {
      const flipped = new Uint8Array(ciphertext);
      const index = bit >> 3;
      flipped[index] = (flipped[index] ?? 0) ^ (1 << (bit & 7));
      const error = attachmentError(() => decryptAttachment(flipped, file));
      expect(error.code).toBe('ATTACHMENT_TAMPERED');
    }
    expect(crypto.createDecipheriv).not.toHaveBeenCalled();
  });

  it('a truncated, extended or swapped ciphertext is ATTACHMENT_TAMPERED', () => {
    const a = sealed(randomBytes(100));
    const b = sealed(randomBytes(100));
    const cases = [
      a.ciphertext.subarray(0, 99),
      Buffer.concat([a.ciphertext, Buffer.from([0])]),
      b.ciphertext,
      new Uint8Array(),
    ];
    for (const ciphertext of cases) {
      expect(attachmentError(() => decryptAttachment(ciphertext, a.file)).code).toBe(
        AttachmentCode.Tampered,
      );
    }
    expect(crypto.createDecipheriv).not.toHaveBeenCalled();
  });

  it('says so in one line without the key, the IV or the hash', () => {
    const { ciphertext, file } = sealed(randomBytes(64));
    const error = attachmentError(() => decryptAttachment(ciphertext.subarray(1), file));
    expect(error.message).not.toMatch(/\n/);
    for (const secret of [file.key.k, file.iv, file.hashes.sha256]) {
      expect(error.message).not.toContain(secret);
    }
  });
});

describe('file objects from peers (untrusted)', () => {
  const good = (): EncryptedFile => sealed(randomBytes(10)).file;
  const b64 = (n: number): string => unpadded(randomBytes(n));
  const b64url = (n: number): string => randomBytes(n).toString('base64url');

  const malformed: [string, (f: EncryptedFile) => unknown][] = [
    ['a 31-byte key', (f) => ({ ...f, key: { ...f.key, k: b64url(31) } })],
    ['a 33-byte key', (f) => ({ ...f, key: { ...f.key, k: b64url(33) } })],
    [
      'a key in standard base64 ("+" and "/")',
      (f) => ({ ...f, key: { ...f.key, k: `+/${f.key.k.slice(2)}` } }),
    ],
    [
      'a key with characters outside base64',
      (f) => ({ ...f, key: { ...f.key, k: `*${f.key.k.slice(1)}` } }),
    ],
    ['alg A128CTR', (f) => ({ ...f, key: { ...f.key, alg: 'A128CTR' } })],
    ['alg A256GCM', (f) => ({ ...f, key: { ...f.key, alg: 'A256GCM' } })],
    ['kty RSA', (f) => ({ ...f, key: { ...f.key, kty: 'RSA' } })],
    ['key_ops without decrypt', (f) => ({ ...f, key: { ...f.key, key_ops: ['encrypt'] } })],
    ['no key', (f) => ({ ...f, key: undefined })],
    ['a 15-byte IV', (f) => ({ ...f, iv: b64(15) })],
    ['a 17-byte IV', (f) => ({ ...f, iv: b64(17) })],
    ['a 31-byte hash', (f) => ({ ...f, hashes: { sha256: b64(31) } })],
    ['a 33-byte hash', (f) => ({ ...f, hashes: { sha256: b64(33) } })],
    [
      'a hash with characters outside base64',
      (f) => ({ ...f, hashes: { sha256: `${f.hashes.sha256.slice(0, 42)}!` } }),
    ],
    ['no sha256 hash', (f) => ({ ...f, hashes: { sha512: b64(64) } })],
    ['v1', (f) => ({ ...f, v: 'v1' })],
    ['no version', (f) => ({ ...f, v: undefined })],
    ['an https URL', (f) => ({ ...f, url: 'https://example.org/media/abc' })],
    ['an mxc URI with a path', (f) => ({ ...f, url: 'mxc://example.org/abc/def' })],
    ['an mxc URI with ".." as server', (f) => ({ ...f, url: 'mxc://../abc' })],
    ['an mxc URI with an encoded slash', (f) => ({ ...f, url: 'mxc://example.org/abc%2Fdef' })],
    ['an mxc URI with a dot in the media id', (f) => ({ ...f, url: 'mxc://example.org/..' })],
    ['an mxc URI with a newline', (f) => ({ ...f, url: 'mxc://example.org/abc\n' })],
    ['an mxc URI without a media id', (f) => ({ ...f, url: 'mxc://example.org/' })],
    [
      'an mxc URI of 600 characters',
      (f) => ({ ...f, url: `mxc://example.org/${'a'.repeat(582)}` }),
    ],
    ['a number for a URL', (f) => ({ ...f, url: 42 })],
    ['not an object', () => 'file'],
  ];

  it.each(malformed)(
    'refuses %s as ATTACHMENT_INVALID, naming the field, not its value',
    (_what, mutate) => {
      const original = good();
      const bad = mutate(original);
      const error = attachmentError(() => parseEncryptedFile(bad));
      expect(error.code).toBe('ATTACHMENT_INVALID');
      expect(error.message).toMatch(/^encrypted file object is invalid: file/);
      expect(error.message).not.toMatch(/\n/);
      expect(error.message).not.toContain(original.key.k);
      // decryptAttachment checks again, whatever the static type claims.
      const again = attachmentError(() =>
        decryptAttachment(new Uint8Array(10), bad as EncryptedFile),
      );
      expect(again.code).toBe(AttachmentCode.Invalid);
      expect(crypto.createDecipheriv).not.toHaveBeenCalled();
    },
  );

  it('accepts padded base64 for the IV and hash, no ext, and drops unknown fields', () => {
    const { ciphertext, file } = sealed(randomBytes(50));
    const parsed = parseEncryptedFile({
      ...file,
      iv: `${file.iv}==`,
      hashes: { sha256: `${file.hashes.sha256}=`, sha512: 'ignored' },
      key: { kty: 'oct', key_ops: ['decrypt', 'encrypt'], alg: 'A256CTR', k: file.key.k },
      mimetype: 'image/png',
    });
    expect(parsed).not.toHaveProperty('mimetype');
    expect(parsed.hashes).toEqual({ sha256: `${file.hashes.sha256}=` });
    expect(decryptAttachment(ciphertext, parsed)).toHaveLength(50);
  });

  it("ATTACHMENT_TOO_LARGE past the caller's bound, both ways", () => {
    expect(
      attachmentError(() => encryptAttachment(new Uint8Array(11), { maxBytes: 10 })).code,
    ).toBe(AttachmentCode.TooLarge);
    const { ciphertext, file } = sealed(randomBytes(11));
    const error = attachmentError(() => decryptAttachment(ciphertext, file, { maxBytes: 10 }));
    expect(error.code).toBe('ATTACHMENT_TOO_LARGE');
    expect(decryptAttachment(ciphertext, file, { maxBytes: 11 })).toHaveLength(11);
  });
});

describe('parseMxc', () => {
  it.each([
    ['mxc://example.org/abc', 'example.org', 'abc'],
    ['mxc://localhost:8448/A-b_C', 'localhost:8448', 'A-b_C'],
    ['mxc://127.0.0.1/x', '127.0.0.1', 'x'],
    ['mxc://[::1]:8008/x', '[::1]:8008', 'x'],
  ])('splits %s', (uri, server, mediaId) => {
    expect(parseMxc(uri)).toEqual({ server, mediaId });
  });

  it.each([
    'mxc://example.org',
    'mxc:///abc',
    'mxc://exa mple.org/abc',
    'mxc://example.org/a b',
    'mxc://./abc',
    'mxc://..:80/abc',
    'MXC://example.org/abc',
    'mxc://example.org/abc?x=1',
    'mxc://user@example.org/abc',
    `mxc://${'a'.repeat(300)}/abc`,
  ])('refuses %j as ATTACHMENT_INVALID', (uri) => {
    const error = attachmentError(() => parseMxc(uri));
    expect(error.code).toBe(AttachmentCode.Invalid);
    expect(error.message).not.toContain(uri);
  });
});
