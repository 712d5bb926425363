import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';

/**
 * How often Node checks the header and request cut-offs. Its default (30 s) let a connection
 * that never sends a byte hold a slot six times longer than the 5 s the limits promise; a
 * twentieth of the cut-off (at most a quarter second) keeps the promise to within 5%, and a
 * sweep over at most maxConnections parsers is cheap.
 */
export function checkingIntervalMs(headersTimeoutMs: number): number {
  return Math.max(25, Math.min(250, Math.floor(headersTimeoutMs / 20)));
}

interface Tracked {
  /** Requests whose headers arrived and whose answer is not yet over. */
  inFlight: number;
  /** Requests answered on this connection so far. */
  served: number;
  /** When the last answer ended (for ordering idle keep-alive connections). */
  idleSince: number;
}

/**
 * The connection cap, with shedding. Node's own maxConnections refuses the newest connection
 * when the cap is reached, which hands the whole server to whoever opens connections first and
 * sends nothing. Here, a new connection over the cap closes instead, in this order:
 *
 *  1. the oldest connection that has never sent a complete request (idle since it was
 *     accepted, or still trickling its first headers): it has cost the server nothing yet and
 *     a real client sends its request at once;
 *  2. the connection that has waited longest between requests (keep-alive, no request in
 *     progress): HTTP lets a server close those at any time, and keepAliveTimeout would soon;
 *  3. the new connection itself, when every one holds a request in progress (an event stream,
 *     an upload, a call at the endpoint): nothing under way is ever cut to admit another.
 *
 * Shedding is a plain close: the client never had an answer coming.
 */
export function shedConnections(server: Server, maxConnections: number): void {
  // Insertion order is accept order: the first candidate found is the oldest.
  const open = new Map<Socket, Tracked>();

  const victim = (): Socket | undefined => {
    let waiting: Socket | undefined;
    let waitingSince = Infinity;
    for (const [socket, t] of open) {
      if (t.inFlight > 0) continue;
      if (t.served === 0) return socket;
      if (t.idleSince < waitingSince) {
        waiting = socket;
        waitingSince = t.idleSince;
      }
    }
    return waiting;
  };

  // Node's own limit stays as a backstop one above ours, never reached while this runs: each
  // accept below leaves at most maxConnections open, synchronously.
  server.maxConnections = maxConnections + 1;

  server.on('connection', (socket: Socket) => {
    if (open.size >= maxConnections) {
      const shed = victim();
      if (shed === undefined) {
        socket.destroy();
        return;
      }
      open.delete(shed);
      shed.destroy();
    }
    open.set(socket, { inFlight: 0, served: 0, idleSince: 0 });
    socket.once('close', () => open.delete(socket));
  });

  // Before fastify's handler, so that an answer it ends at once is still counted.
  server.prependListener('request', (request: IncomingMessage, response: ServerResponse) => {
    const t = open.get(request.socket);
    if (t === undefined) return;
    t.inFlight += 1;
    response.once('close', () => {
      t.inFlight -= 1;
      t.served += 1;
      t.idleSince = performance.now();
    });
  });
}
