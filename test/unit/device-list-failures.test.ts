import { describe, expect, it } from 'vitest';
import { DeviceListFailures } from '../../endpoint/crypto/device-list-failures.ts';

const query = (...users: string[]): string =>
  JSON.stringify({ device_keys: Object.fromEntries(users.map((u) => [u, []])), timeout: 10_000 });

describe('device lists a remote server did not give us', () => {
  it('marks the users of a server listed under failures, and only them', () => {
    const f = new DeviceListFailures();
    f.record(
      query('@carol:remote.example:8448', '@bob:other.example'),
      JSON.stringify({ device_keys: {}, failures: { 'remote.example:8448': { status: 503 } } }),
    );
    expect(f.unavailable('@carol:remote.example:8448')).toBe(true);
    expect(f.unavailable('@bob:other.example')).toBe(false);
    // Same host, different port: a different server.
    f.record(
      query('@dan:remote.example'),
      JSON.stringify({ failures: { 'remote.example:8448': {} } }),
    );
    expect(f.unavailable('@dan:remote.example')).toBe(false);
  });

  it('clears a user once a later query for them succeeds', () => {
    const f = new DeviceListFailures();
    f.record(
      query('@carol:remote.example'),
      JSON.stringify({ failures: { 'remote.example': {} } }),
    );
    f.record(query('@carol:remote.example'), JSON.stringify({ device_keys: {}, failures: {} }));
    expect(f.unavailable('@carol:remote.example')).toBe(false);
  });

  it('a query that did not ask for a user leaves what we know of them', () => {
    const f = new DeviceListFailures();
    f.record(
      query('@carol:remote.example'),
      JSON.stringify({ failures: { 'remote.example': {} } }),
    );
    f.record(query('@bob:local.example'), JSON.stringify({ failures: {} }));
    expect(f.unavailable('@carol:remote.example')).toBe(true);
  });

  it('ignores malformed bodies instead of throwing', () => {
    const f = new DeviceListFailures();
    expect(() => {
      f.record('not json', '{}');
      f.record(query('@carol:remote.example'), 'not json');
      f.record(query('@carol:remote.example'), JSON.stringify({ failures: ['remote.example'] }));
    }).not.toThrow();
    expect(f.unavailable('@carol:remote.example')).toBe(false);
  });
});
