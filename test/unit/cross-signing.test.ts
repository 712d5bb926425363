import { generateKeyPairSync, sign } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import {
  canonicalJson,
  ed25519PublicFromSeed,
  ed25519RawFromSpki,
  keyOf,
  signingBytes,
  unpadded,
  vaultMasterKeySigner,
} from '../../endpoint/crypto/cross-signing.ts';

describe('cross-signing helpers', () => {
  it('encodes canonical JSON as the Matrix spec examples do', () => {
    expect(canonicalJson({ b: '2', a: '1' })).toBe('{"a":"1","b":"2"}');
    expect(
      canonicalJson({
        auth: {
          success: true,
          mxid: '@john.doe:example.com',
          profile: { display_name: 'John Doe', three_pids: [{ medium: 'email' }] },
        },
      }),
    ).toBe(
      '{"auth":{"mxid":"@john.doe:example.com","profile":{"display_name":"John Doe","three_pids":[{"medium":"email"}]},"success":true}}',
    );
    expect(canonicalJson({ a: '日本語' })).toBe('{"a":"日本語"}');
    expect(canonicalJson({ 本: 2, 日: 1 })).toBe('{"日":1,"本":2}');
  });

  it('refuses control characters rather than sign bytes no one else would make', () => {
    expect(() => canonicalJson({ a: '\u0001' })).toThrow();
  });

  it('signs the object without signatures and unsigned', () => {
    const bytes = signingBytes({ b: 1, signatures: { x: {} }, unsigned: { y: 1 }, a: [] });
    expect(new TextDecoder().decode(bytes)).toBe('{"a":[],"b":1}');
  });

  it('derives the Ed25519 public key of a seed (RFC 8032 test 1)', () => {
    const seed = Buffer.from(
      '9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60',
      'hex',
    );
    expect(Buffer.from(ed25519PublicFromSeed(seed)).toString('hex')).toBe(
      'd75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a',
    );
  });

  it('takes the raw key out of an Ed25519 SPKI and refuses anything else', () => {
    const { publicKey } = generateKeyPairSync('ed25519');
    const spki = publicKey.export({ format: 'der', type: 'spki' });
    expect(Buffer.from(ed25519RawFromSpki(spki))).toEqual(spki.subarray(12));
    const rsa = generateKeyPairSync('rsa', { modulusLength: 1024 }).publicKey.export({
      format: 'der',
      type: 'spki',
    });
    expect(() => ed25519RawFromSpki(rsa)).toThrow(/not an Ed25519/);
  });

  it("wraps a vault's cross-signing-master key, and asks for nothing else", async () => {
    const { publicKey, privateKey } = generateKeyPairSync('ed25519');
    const asked: string[] = [];
    const signer = vaultMasterKeySigner({
      publicKey: (purpose) => {
        asked.push(`publicKey:${purpose}`);
        return Promise.resolve({
          purpose,
          algorithm: 'ed25519',
          spki: publicKey.export({ format: 'der', type: 'spki' }),
        });
      },
      sign: (purpose, message) => {
        asked.push(`sign:${purpose}`);
        return Promise.resolve(sign(null, message, privateKey));
      },
    });
    const raw = publicKey.export({ format: 'der', type: 'spki' }).subarray(12);
    expect(await signer.publicKeyBase64()).toBe(unpadded(raw));
    expect((await signer.sign(new Uint8Array([1]))).length).toBe(64);
    expect(asked).toEqual(['publicKey:cross-signing-master', 'sign:cross-signing-master']);
  });

  it('reads the one ed25519 key of a cross-signing key', () => {
    expect(keyOf({ user_id: '@a:b', usage: ['master'], keys: { 'ed25519:K': 'K' } })).toBe('K');
    expect(keyOf(undefined)).toBeUndefined();
    expect(
      keyOf({ user_id: '@a:b', usage: ['master'], keys: { 'ed25519:K': 'K', 'ed25519:L': 'L' } }),
    ).toBeUndefined();
  });
});
