/**
 * The live event stream: `GET /v1/events` read with fetch (EventSource cannot send the
 * Authorization header), framed by sse.ts, reconnecting with exponential backoff (1 s .. 30 s)
 * and `Last-Event-ID`.
 */
import { call } from './api.ts';
import { ApiError, isRecord } from './errors.ts';
import { SseParser, lastEventIdHeader, reconnectDelayMs } from './sse.ts';

export type ConnectionState = 'connecting' | 'connected' | 'reconnecting' | 'stopped';

export interface StreamHandlers {
  /** One event: its `event:` name and its parsed JSON data. */
  onEvent(type: string, data: unknown): void;
  onState(state: ConnectionState): void;
  /** The stream ended for good (token revoked, capability lost). */
  onFatal(error: ApiError): void;
}

/** Three heartbeats (15 s each) missed: the connection is dead even if the socket is not. */
const SILENCE_MS = 50_000;
/** A connection open this long counts as having worked (the backoff starts again at 1 s). */
const HEALTHY_MS = 10_000;

export interface Stream {
  stop(): void;
}

export function openStream(handlers: StreamHandlers): Stream {
  let stopped = false;
  /** Read through a call: stop() changes it while run() awaits. */
  const isStopped = (): boolean => stopped;
  let controller: AbortController | undefined;
  let lastId: string | undefined;
  let attempt = 0;
  let wake: (() => void) | undefined;

  const sleep = (ms: number) =>
    new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, ms);
      wake = () => {
        clearTimeout(timer);
        resolve();
      };
    });

  const run = async (): Promise<void> => {
    handlers.onState('connecting');
    while (!isStopped()) {
      const ac = new AbortController();
      controller = ac;
      /** Why this connection ended, when the server said (an `event: error`). */
      let ended: { code: string; message: string } | undefined;
      let connectedAt: number | undefined;
      try {
        const id = lastEventIdHeader(lastId);
        const response = await call('GET', '/v1/events', {
          headers: {
            accept: 'text/event-stream',
            ...(id === undefined ? {} : { 'last-event-id': id }),
          },
          signal: ac.signal,
        });
        if (!response.body) throw new Error('no stream body');
        handlers.onState('connected');
        connectedAt = Date.now();
        const reader = response.body.getReader();
        const decoder = new TextDecoder('utf-8');
        const parser = new SseParser();
        let silence = setTimeout(() => {
          ac.abort();
        }, SILENCE_MS);
        try {
          for (;;) {
            const { done, value } = await reader.read();
            if (done) break;
            clearTimeout(silence);
            silence = setTimeout(() => {
              ac.abort();
            }, SILENCE_MS);
            for (const frame of parser.push(decoder.decode(value, { stream: true }))) {
              if (frame.kind === 'comment') continue;
              if (frame.id !== undefined) lastId = frame.id;
              attempt = 0;
              let data: unknown;
              try {
                data = JSON.parse(frame.data);
              } catch {
                continue; // not JSON: not one of ours
              }
              if (frame.event === 'error') {
                ended = streamError(data);
                break;
              }
              handlers.onEvent(frame.event, data);
            }
            if (ended) break;
          }
        } finally {
          clearTimeout(silence);
          reader.cancel().catch(() => undefined);
        }
      } catch (e) {
        if (isStopped()) return;
        if (e instanceof ApiError) {
          if (e.status === 401 || e.status === 403) {
            stopped = true;
            handlers.onState('stopped');
            handlers.onFatal(e);
            return;
          }
        }
      }
      if (isStopped()) return;
      // A connection that held for a while was healthy: start the backoff afresh.
      if (connectedAt !== undefined && Date.now() - connectedAt > HEALTHY_MS) attempt = 0;
      if (ended) {
        if (ended.code === 'UNAUTHENTICATED' || ended.code.startsWith('FORBIDDEN')) {
          stopped = true;
          handlers.onState('stopped');
          handlers.onFatal(
            new ApiError(ended.code === 'UNAUTHENTICATED' ? 401 : 403, ended.code, ended.message),
          );
          return;
        }
        // SLOW_READER and the like: resume at once from where we were.
        if (ended.code === 'SLOW_READER') attempt = 0;
      }
      handlers.onState('reconnecting');
      await sleep(reconnectDelayMs(attempt));
      attempt++;
    }
  };
  void run();

  return {
    stop() {
      stopped = true;
      controller?.abort();
      wake?.();
      handlers.onState('stopped');
    },
  };
}

function streamError(data: unknown): { code: string; message: string } {
  const error = isRecord(data) && isRecord(data.error) ? data.error : {};
  const code =
    typeof error.code === 'string' && /^[A-Z][A-Z0-9_]{0,63}$/.test(error.code)
      ? error.code
      : 'STREAM_ERROR';
  const message =
    typeof error.message === 'string' ? error.message.slice(0, 500) : 'The stream ended.';
  return { code, message };
}
