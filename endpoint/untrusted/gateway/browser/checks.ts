import type { GatewayRefusal } from '../../../contract.ts';

/**
 * The browser defences of the web UI listener, as one pure decision per request. A browser on
 * this machine can be made to send requests to a loopback port by any page it visits: a
 * foreign page's fetch, XHR or form post (CSRF), or that page's own origin rebound to
 * 127.0.0.1 (DNS rebinding: the request then carries the attacker's host name). None of them
 * can read the answer or learn the token (CORS is never granted, the token lives in the UI
 * origin's sessionStorage), but refusing them outright, before any call, is what keeps a
 * forgotten flaw elsewhere from ever mattering, and what puts the attempt on record.
 */
export interface BrowserRequest {
  method: string;
  /** The Host header, as sent. */
  host: string | undefined;
  origin: string | undefined;
  /** Sec-Fetch-Site (Fetch Metadata), which every current browser sends. */
  secFetchSite: string | undefined;
}

/** What the listener answers to: the Host values (name:port) a user's browser may send. */
export interface BrowserOrigins {
  /** Lower-case `name:port` values, e.g. `127.0.0.1:8008`, `localhost:8008`. */
  hosts: ReadonlySet<string>;
}

const SAFE_METHODS = new Set(['GET', 'HEAD']);

/** The Host values a listener on this loopback address and port answers to. */
export function allowedHosts(
  address: string,
  port: number,
  names: readonly string[] = [],
): Set<string> {
  const literal = address.includes(':') ? `[${address}]` : address;
  return new Set([literal, 'localhost', ...names].map((n) => `${n.toLowerCase()}:${port}`));
}

/**
 * Why the request is refused, or undefined to let it on. In order:
 * - the Host must be one of ours (a rebound name is not);
 * - a CORS preflight is refused (nothing here is ever shared with another origin);
 * - an Origin, when sent, must be `http://` + that Host; a state-changing request must send it;
 * - Sec-Fetch-Site, when sent, must be same-origin or none (typed in the address bar): another
 *   loopback port is "same-site" to a browser, and is exactly the neighbour to keep out.
 */
export function refusal(
  request: BrowserRequest,
  origins: BrowserOrigins,
): GatewayRefusal | undefined {
  const host = request.host?.toLowerCase();
  if (host === undefined || !origins.hosts.has(host)) return 'FORBIDDEN_HOST';
  if (request.method === 'OPTIONS') return 'PREFLIGHT';
  const safe = SAFE_METHODS.has(request.method);
  if (request.origin === undefined) {
    if (!safe) return 'FORBIDDEN_ORIGIN';
  } else if (request.origin.toLowerCase() !== `http://${host}`) {
    return 'FORBIDDEN_ORIGIN';
  }
  const site = request.secFetchSite?.toLowerCase();
  if (site !== undefined && site !== 'same-origin' && site !== 'none') return 'CROSS_SITE';
  return undefined;
}

/** The answer's code and sentence for each refusal (the audit log keeps the code). */
export const REFUSAL_MESSAGES: Readonly<Record<GatewayRefusal, string>> = Object.freeze({
  FORBIDDEN_HOST: 'This listener answers only to its own loopback address and port.',
  FORBIDDEN_ORIGIN: 'Requests must come from the web UI itself (same origin).',
  CROSS_SITE: 'Requests from other sites, or other local ports, are refused.',
  PREFLIGHT: 'Cross-origin requests are never allowed here.',
});
