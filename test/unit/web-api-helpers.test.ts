import { describe, expect, it } from 'vitest';
import { ApiError, describeError, errorFromBody } from '../../endpoint/untrusted/web/src/errors.ts';
import { path, seg } from '../../endpoint/untrusted/web/src/paths.ts';

// API paths built from ids other users chose, and the API's error answers.

describe('path segments', () => {
  it('percent-encodes ids', () => {
    expect(path`/v1/rooms/${'!abc:example.org'}/timeline`).toBe(
      '/v1/rooms/!abc%3Aexample.org/timeline',
    );
    expect(path`/v1/contacts/${'@a:x'}/devices/${'DEV/../x?y#z'}/attestation`).toBe(
      '/v1/contacts/%40a%3Ax/devices/DEV%2F..%2Fx%3Fy%23z/attestation',
    );
    expect(seg('%2e%2e')).toBe('%252e%252e');
  });

  it('refuses ids the URL parser would read as "." or ".."', () => {
    for (const id of ['.', '..', '']) {
      expect(() => seg(id), JSON.stringify(id)).toThrow();
      expect(() => path`/v1/contacts/@a:x/devices/${id}/attestation`).toThrow();
    }
    expect(seg('...')).toBe('...');
  });

  it('keeps the route: a hostile id never changes which route is called', () => {
    for (const id of ['../../outbox/failed', 'x/../../y', '..%2f', 'a?b=c', 'a#b', '%00']) {
      const url = new URL(path`/v1/verifications/${id}/cancel`, 'http://127.0.0.1');
      expect(url.pathname.startsWith('/v1/verifications/')).toBe(true);
      expect(url.pathname.endsWith('/cancel')).toBe(true);
      expect(url.search).toBe('');
      expect(url.hash).toBe('');
    }
  });
});

describe('errors', () => {
  it('reads the API error shape', () => {
    const e = errorFromBody(403, '{"error":{"code":"FORBIDDEN_ROOM","message":"Not this room."}}');
    expect(e).toBeInstanceOf(ApiError);
    expect([e.status, e.code, e.message]).toEqual([403, 'FORBIDDEN_ROOM', 'Not this room.']);
    expect(describeError(e)).toBe('FORBIDDEN_ROOM: Not this room.');
  });

  it('falls back for anything else', () => {
    for (const body of [
      '',
      'not json',
      '[]',
      '{"error":"x"}',
      '{"error":{"code":"lower","message":7}}',
    ]) {
      const e = errorFromBody(502, body);
      expect(e.code, body).toBe('HTTP_502');
      expect(e.message).toBe('The request failed.');
    }
    expect(
      errorFromBody(500, `{"error":{"code":"X","message":"${'m'.repeat(900)}"}}`).message,
    ).toHaveLength(500);
  });

  it('describes network failures and the rest', () => {
    expect(describeError(new TypeError('Failed to fetch'))).toBe(
      'NETWORK: The gateway could not be reached.',
    );
    expect(describeError('x')).toBe('ERROR: Something went wrong.');
  });
});
