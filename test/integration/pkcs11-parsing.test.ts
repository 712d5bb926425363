import { createPublicKey, generateKeyPairSync } from 'node:crypto';
import pkcs11js from 'pkcs11js';
import { describe, expect, it } from 'vitest';
import { ckrName, toVaultError } from '../../keyvault/pkcs11/errors.ts';
import {
  CKM_EDDSA,
  REQUIRED_MECHANISMS,
  checkMechanisms,
  requireMechanisms,
} from '../../keyvault/pkcs11/mechanisms.ts';
import { ed25519PointFromEcPoint, ed25519Spki, rsaSpki } from '../../keyvault/pkcs11/spki.ts';
import { parseTokenUri, tokenMatches } from '../../keyvault/pkcs11/uri.ts';
import { VaultCode, VaultError } from '../../keyvault/vault.ts';

/**
 * The PKCS#11 backend's pure parts: what a real SoftHSM cannot be made to do (lack a mechanism,
 * lock a PIN) is checked here, on the functions the backend runs at start-up.
 */

function thrown(fn: () => unknown): VaultError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(VaultError);
    return e as VaultError;
  }
  throw new Error('expected a VaultError');
}

describe('RFC 7512 token URIs', () => {
  it('reads token, serial, manufacturer, model and slot-id, percent-decoded', () => {
    expect(
      parseTokenUri(
        'pkcs11:token=My%20Token%3B%C3%A9;serial=af1dbaf5c5b68721;manufacturer=SoftHSM%20project;model=SoftHSM%20v2;slot-id=7',
      ),
    ).toEqual({
      token: 'My Token;é',
      serial: 'af1dbaf5c5b68721',
      manufacturer: 'SoftHSM project',
      model: 'SoftHSM v2',
      slotId: 7,
    });
  });

  it('refuses malformed and unsupported URIs with VAULT_CONFIG', () => {
    for (const uri of [
      'pkcs11:',
      'pkcs11:token',
      'pkcs11:=x',
      'pkcs11:token=',
      'pkcs11:token=a%2',
      'pkcs11:token=a%zz',
      'pkcs11:token=%ff',
      'pkcs11:token=a b',
      'pkcs11:token=a;token=b',
      'pkcs11:object=mte-store-kek',
      'pkcs11:id=%01',
      'pkcs11:type=private',
      'pkcs11:library-description=x',
      'pkcs11:slot-id=abc',
      'pkcs11:token=a?module-path=/tmp/evil.so',
      'pkcs11:token=a#frag',
      'pkcs12:token=a',
    ]) {
      expect(thrown(() => parseTokenUri(uri)).code, uri).toBe(VaultCode.Config);
    }
  });

  it('never echoes a pin-value from the query', () => {
    const e = thrown(() => parseTokenUri('pkcs11:token=a?pin-value=s3cret-pin'));
    expect(e.code).toBe(VaultCode.Config);
    expect(JSON.stringify(e)).not.toContain('s3cret-pin');
  });

  it('matches every given attribute exactly, ignoring the ones not given', () => {
    const token = {
      label: 'mte',
      manufacturer: 'SoftHSM project',
      model: 'SoftHSM v2',
      serial: 'ab',
    };
    expect(tokenMatches({ token: 'mte' }, token, 1)).toBe(true);
    expect(tokenMatches({ token: 'mte', serial: 'ab', slotId: 1 }, token, 1)).toBe(true);
    expect(tokenMatches({ token: 'mte', serial: 'ac' }, token, 1)).toBe(false);
    expect(tokenMatches({ token: 'mt' }, token, 1)).toBe(false);
    expect(tokenMatches({ slotId: 2 }, token, 1)).toBe(false);
  });
});

describe('mechanism check', () => {
  const all = REQUIRED_MECHANISMS.map((m) => m.code);

  it('accepts a token with every mechanism', () => {
    expect(checkMechanisms([...all, 0x1234])).toEqual({
      found: REQUIRED_MECHANISMS.map((m) => m.name),
      missing: [],
    });
    expect(() => {
      requireMechanisms(checkMechanisms(all));
    }).not.toThrow();
  });

  it('names a missing mechanism (a SoftHSM built without EdDSA)', () => {
    const check = checkMechanisms(all.filter((c) => c !== CKM_EDDSA));
    expect(check.missing).toEqual(['CKM_EDDSA']);
    const e = thrown(() => {
      requireMechanisms(check);
    });
    expect(e.code).toBe(VaultCode.MechanismMissing);
    expect(e.message).toContain('CKM_EDDSA (0x1057');
  });

  it('names every missing one', () => {
    const e = thrown(() => {
      requireMechanisms(checkMechanisms([]));
    });
    for (const m of REQUIRED_MECHANISMS) expect(e.message).toContain(m.name);
  });
});

describe('CKR codes to VaultErrors', () => {
  const pkcs11Error = (code: number): Error =>
    Object.assign(new Error(ckrName(code)), { code, nativeStack: 'at PKCS11.C_Login (native)' });

  it('maps PIN and token failures to their codes, with readable names', () => {
    const cases: [number, string][] = [
      [pkcs11js.CKR_PIN_INCORRECT, VaultCode.WrongPin],
      [pkcs11js.CKR_PIN_LOCKED, VaultCode.PinLocked],
      [pkcs11js.CKR_TOKEN_NOT_PRESENT, VaultCode.TokenNotFound],
      [pkcs11js.CKR_DEVICE_REMOVED, VaultCode.TokenNotFound],
      [pkcs11js.CKR_MECHANISM_INVALID, VaultCode.MechanismMissing],
      [pkcs11js.CKR_GENERAL_ERROR, VaultCode.HardwareError],
    ];
    for (const [ckr, code] of cases) {
      const e = toVaultError(pkcs11Error(ckr), 'logging in');
      expect(e.code, ckrName(ckr)).toBe(code);
      expect(e.message).toContain(ckrName(ckr));
      expect(JSON.stringify(e)).not.toContain('native');
    }
  });

  it('reads the plain "CKR_NAME:number" errors some pkcs11js calls throw', () => {
    const e = toVaultError(new Error('CKR_ATTRIBUTE_READ_ONLY:16'), 'updating');
    expect(e.code).toBe(VaultCode.HardwareError);
    expect(e.message).toBe('updating failed: CKR_ATTRIBUTE_READ_ONLY');
  });

  it('hides anything that is not a PKCS#11 error', () => {
    const e = toVaultError(new TypeError('secret detail'), 'signing');
    expect(e.message).toBe('signing failed: unexpected error');
    expect(ckrName(0x8000_0001)).toBe('CKR_0x80000001');
  });
});

describe('public keys from token attributes', () => {
  it('accepts a raw or DER-wrapped Ed25519 point and builds a loadable SPKI', () => {
    const { publicKey } = generateKeyPairSync('ed25519');
    const spki = publicKey.export({ type: 'spki', format: 'der' });
    const point = spki.subarray(12);
    expect(Buffer.from(ed25519Spki(ed25519PointFromEcPoint(point))).equals(spki)).toBe(true);
    const wrapped = Buffer.concat([Buffer.from([0x04, 0x20]), point]);
    expect(Buffer.from(ed25519Spki(ed25519PointFromEcPoint(wrapped))).equals(spki)).toBe(true);
    for (const bad of [point.subarray(1), Buffer.concat([Buffer.from([0x03, 0x20]), point])]) {
      expect(thrown(() => ed25519PointFromEcPoint(bad)).code).toBe(VaultCode.HardwareError);
    }
  });

  it('builds an RSA SPKI from modulus and exponent', () => {
    const { publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
    const jwk = publicKey.export({ format: 'jwk' });
    const n = Buffer.concat([Buffer.from([0]), Buffer.from(jwk.n ?? '', 'base64url')]);
    const e = Buffer.from(jwk.e ?? '', 'base64url');
    const spki = rsaSpki(n, e);
    const expected = publicKey.export({ type: 'spki', format: 'der' });
    expect(Buffer.from(spki).equals(expected)).toBe(true);
    expect(createPublicKey({ key: Buffer.from(spki), format: 'der', type: 'spki' }).type).toBe(
      'public',
    );
  });
});
