import type { FastifyInstance } from 'fastify';
import type { GatewayRefusal } from '../../../contract.ts';
import { GatewayError } from '../errors.ts';
import { global } from '../plugins/global.ts';
import { type BrowserOrigins, REFUSAL_MESSAGES, refusal } from './checks.ts';
import { FILE_NAME, type StaticFile } from './static-files.ts';

/**
 * The UI's pages may run script from this origin only, load nothing from anywhere else, and
 * talk to nothing but this origin; no inline script or style, no eval, no framing, no form
 * posts, no <base>. The sanitiser in the UI is the first wall against hostile HTML; this is
 * the second.
 */
export const UI_CSP = [
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self' blob:",
  "connect-src 'self'",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join('; ');

/** Extra headers on every answer of the browser listener (the API's own are in headers.ts). */
export const BROWSER_HEADERS: Readonly<Record<string, string>> = Object.freeze({
  'cross-origin-opener-policy': 'same-origin',
  'x-frame-options': 'DENY',
  'permissions-policy': 'camera=(), microphone=(), geolocation=(), payment=(), usb=()',
});

export interface BrowserOptions {
  origins: BrowserOrigins;
  files: ReadonlyMap<string, StaticFile>;
  /** Puts a refusal on record (the endpoint's audit log); must not throw. */
  report(reason: GatewayRefusal): void;
}

/**
 * The browser guard, before anything else a request meets (auth, routes, the endpoint): a
 * refused request is answered 403 with the reason's code, reported for the audit log, and
 * goes nowhere.
 */
export const browserGuardPlugin = global(async (app: FastifyInstance, opts: BrowserOptions) => {
  app.addHook('onRequest', async (request, reply) => {
    reply.headers(BROWSER_HEADERS);
    const headers = request.headers;
    const reason = refusal(
      {
        method: request.method,
        host: headers.host,
        origin: single(headers.origin),
        secFetchSite: single(headers['sec-fetch-site']),
      },
      opts.origins,
    );
    if (reason !== undefined) {
      opts.report(reason);
      throw new GatewayError(403, reason, REFUSAL_MESSAGES[reason]);
    }
    return Promise.resolve();
  });
  return Promise.resolve();
});

function single(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value.join(',') : value;
}

/** The UI's files: `/` is index.html, `/<name>` each other file; nothing else. */
export async function staticFilesPlugin(
  app: FastifyInstance,
  opts: { files: ReadonlyMap<string, StaticFile> },
): Promise<void> {
  const serve = (name: string) => opts.files.get(name);
  app.get('/', async (_request, reply) => send(reply, serve('index.html')));
  // Browsers ask for it on every page; there is none, and a 404 would be an error each time.
  app.get('/favicon.ico', async (_request, reply) => reply.code(204).send());
  app.get<{ Params: { name: string } }>('/:name', async (request, reply) => {
    const name = request.params.name;
    return send(reply, FILE_NAME.test(name) ? serve(name) : undefined);
  });
  return Promise.resolve();

  function send(reply: import('fastify').FastifyReply, file: StaticFile | undefined) {
    if (file === undefined) {
      throw new GatewayError(404, 'NOT_FOUND', 'There is no such file or route.');
    }
    return reply
      .header('content-security-policy', UI_CSP)
      .header('cache-control', 'no-cache')
      .type(file.type)
      .send(file.body);
  }
}

/**
 * Reports refusals one RPC at a time: while one is on its way, more are counted and sent as
 * one call, so a page hammering the listener costs the endpoint a call per round trip, not
 * per request (and the audit log counts floods itself).
 */
export function refusalReporter(
  send: (reason: GatewayRefusal, count: number) => Promise<unknown>,
): (reason: GatewayRefusal) => void {
  const pending = new Map<GatewayRefusal, number>();
  let busy = false;
  const flush = async (): Promise<void> => {
    busy = true;
    try {
      while (pending.size > 0) {
        const [reason, count] = pending.entries().next().value as [GatewayRefusal, number];
        pending.delete(reason);
        await send(reason, count).catch(() => undefined);
      }
    } finally {
      busy = false;
    }
  };
  return (reason) => {
    pending.set(reason, Math.min((pending.get(reason) ?? 0) + 1, MAX_REPORTED));
    if (!busy) void flush();
  };
}

/** At most this many refusals of one reason in one report (the RPC's own bound). */
export const MAX_REPORTED = 10_000;
