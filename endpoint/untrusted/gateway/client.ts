import { type IncomingHttpHeaders, type IncomingMessage, request as httpRequest } from 'node:http';
import type { Readable } from 'node:stream';

/**
 * A small HTTP client for the gateway, over its Unix socket (or loopback TCP): for tests, the
 * demo and simple local tools. Bodies are bounded; nothing is logged.
 */
export type GatewayTarget = { socketPath: string } | { host: string; port: number };

export interface GatewayResponse {
  status: number;
  headers: IncomingHttpHeaders;
  text: string;
  /** The body parsed as JSON (throws when it is not JSON). */
  json(): unknown;
}

export interface RequestOptions {
  method?: string;
  token?: string;
  headers?: Record<string, string>;
  /** Sent as JSON (an object) or as given (a string). */
  body?: unknown;
  timeoutMs?: number;
  maxResponseBytes?: number;
}

function target(t: GatewayTarget) {
  return 'socketPath' in t ? { socketPath: t.socketPath } : { host: t.host, port: t.port };
}

export function gatewayRequest(
  to: GatewayTarget,
  path: string,
  options: RequestOptions = {},
): Promise<GatewayResponse> {
  const headers: Record<string, string> = { ...options.headers };
  if (options.token !== undefined) headers.authorization = `Bearer ${options.token}`;
  let payload: string | undefined;
  if (options.body !== undefined) {
    payload = typeof options.body === 'string' ? options.body : JSON.stringify(options.body);
    headers['content-type'] ??= 'application/json';
  }
  const max = options.maxResponseBytes ?? 16 * 1024 * 1024;
  return new Promise((resolve, reject) => {
    const req = httpRequest(
      {
        ...target(to),
        path,
        method: options.method ?? 'GET',
        headers,
        timeout: options.timeoutMs ?? 30_000,
      },
      (res) => {
        const chunks: Buffer[] = [];
        let size = 0;
        res.on('data', (chunk: Buffer) => {
          size += chunk.length;
          if (size > max) {
            req.destroy(new Error('the gateway response is too large'));
            return;
          }
          chunks.push(chunk);
        });
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          resolve({
            status: res.statusCode ?? 0,
            headers: res.headers,
            text,
            json: () => JSON.parse(text) as unknown,
          });
        });
        res.on('error', reject);
      },
    );
    req.on('timeout', () => req.destroy(new Error('the gateway did not answer in time')));
    req.on('error', reject);
    req.end(payload);
  });
}

export interface StreamRequestOptions {
  method?: string;
  token?: string;
  headers?: Record<string, string>;
  /** Piped as the request body: set Content-Length in `headers` (the gateway wants it). */
  body?: Readable;
  /** The socket may be idle this long (default 30 s); not a bound on the whole transfer. */
  timeoutMs?: number;
}

export interface StreamResponse {
  status: number;
  headers: IncomingHttpHeaders;
  /** The response body, unread: the caller streams it (a download) or reads it (JSON). */
  body: IncomingMessage;
}

/**
 * One request whose body and answer are streams (attachments): resolves with the answer as
 * soon as its headers are in. A gateway that refuses before the body is all sent closes the
 * connection under a large one: the failed write that follows is not the request's error.
 */
export function gatewayStream(
  to: GatewayTarget,
  path: string,
  options: StreamRequestOptions = {},
): Promise<StreamResponse> {
  const headers: Record<string, string> = { ...options.headers };
  if (options.token !== undefined) headers.authorization = `Bearer ${options.token}`;
  return new Promise((resolve, reject) => {
    let answered = false;
    const req = httpRequest({
      ...target(to),
      path,
      method: options.method ?? 'GET',
      headers,
      timeout: options.timeoutMs ?? 30_000,
    });
    req.on('timeout', () => req.destroy(new Error('the gateway did not answer in time')));
    req.on('error', (e) => {
      if (!answered) reject(e);
    });
    req.on('response', (res) => {
      answered = true;
      resolve({ status: res.statusCode ?? 0, headers: res.headers, body: res });
    });
    if (options.body) {
      options.body.on('error', (e) => req.destroy(e));
      options.body.pipe(req);
    } else {
      req.end();
    }
  });
}

export interface SseEvent {
  id?: string;
  event: string;
  data: string;
}

export interface EventStream {
  status: number;
  headers: IncomingHttpHeaders;
  /** The next event (comments skipped); undefined once the stream has ended. */
  next(timeoutMs?: number): Promise<SseEvent | undefined>;
  /** Every comment line seen so far (heartbeats). */
  readonly comments: string[];
  /** Resolves when the server ends the stream. */
  readonly ended: Promise<void>;
  close(): void;
}

/** Opens GET /v1/events and parses the Server-Sent Events as they come. */
export function openEventStream(
  to: GatewayTarget,
  options: { token?: string; lastEventId?: string; path?: string } = {},
): Promise<EventStream> {
  const headers: Record<string, string> = { accept: 'text/event-stream' };
  if (options.token !== undefined) headers.authorization = `Bearer ${options.token}`;
  if (options.lastEventId !== undefined) headers['last-event-id'] = options.lastEventId;
  return new Promise((resolve, reject) => {
    const req = httpRequest({ ...target(to), path: options.path ?? '/v1/events', headers });
    req.on('error', reject);
    req.on('response', (res) => {
      const queue: SseEvent[] = [];
      const comments: string[] = [];
      const waiters: (() => void)[] = [];
      let done = false;
      let buffer = '';
      let endResolve: () => void = () => undefined;
      const ended = new Promise<void>((r) => (endResolve = r));
      const wake = () => {
        for (const w of waiters.splice(0)) w();
      };
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        buffer += chunk;
        let at: number;
        while ((at = buffer.indexOf('\n\n')) >= 0) {
          const block = buffer.slice(0, at);
          buffer = buffer.slice(at + 2);
          const event: SseEvent = { event: 'message', data: '' };
          let hasField = false;
          const data: string[] = [];
          for (const line of block.split('\n')) {
            if (line.startsWith(':')) {
              comments.push(line.slice(1).trim());
              continue;
            }
            const colon = line.indexOf(':');
            const field = colon < 0 ? line : line.slice(0, colon);
            const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
            if (field === 'id') event.id = value;
            else if (field === 'event') event.event = value;
            else if (field === 'data') data.push(value);
            else continue;
            hasField = true;
          }
          event.data = data.join('\n');
          if (hasField && (data.length > 0 || event.id !== undefined)) queue.push(event);
        }
        wake();
      });
      const finish = () => {
        done = true;
        endResolve();
        wake();
      };
      res.on('end', finish);
      res.on('close', finish);
      res.on('error', finish);
      resolve({
        status: res.statusCode ?? 0,
        headers: res.headers,
        comments,
        ended,
        async next(timeoutMs = 10_000) {
          const deadline = Date.now() + timeoutMs;
          for (;;) {
            const event = queue.shift();
            if (event) return event;
            if (done) return undefined;
            const left = deadline - Date.now();
            if (left <= 0) throw new Error('no event arrived in time');
            await new Promise<void>((r) => {
              const t = setTimeout(r, left);
              waiters.push(() => {
                clearTimeout(t);
                r();
              });
            });
          }
        },
        close() {
          req.destroy();
          res.destroy();
        },
      });
    });
    req.end();
  });
}
