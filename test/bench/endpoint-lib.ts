/**
 * What bench/endpoint.ts and its child processes (test/bench/endpoint-child.ts) share: the history
 * messages' bodies, the stock client's history decryption, and reading a process's memory.
 * Nothing here imports the endpoint, so a stock child's memory holds only the stock SDK.
 */
import { readFile } from 'node:fs/promises';
import { type IEvent, type MatrixClient, MatrixEvent } from 'matrix-js-sdk';

/** About 100 characters, like a short chat message. */
export function historyBody(i: number): string {
  return `history ${i} ${'lorem ipsum dolor sit amet '.repeat(4)}`.trimEnd();
}

export function historyIndex(body: unknown): number | undefined {
  if (typeof body !== 'string') return undefined;
  const m = /^history (\d+) /.exec(body);
  return m ? Number(m[1]) : undefined;
}

export interface HistoryResult {
  /** Room messages seen (m.room.encrypted or m.room.message). */
  events: number;
  /** Indices of history messages that arrived encrypted and decrypted. */
  decrypted: Set<number>;
  pages: number;
}

/**
 * The stock client reading a room's history: /messages pages fetched with its access token
 * (the SDK's own pagination needs a live timeline; this is the same request), each event
 * decrypted through the SDK's public API. Stops after `max` room messages when given.
 */
export async function stockHistory(
  client: MatrixClient,
  roomId: string,
  options: { pageSize: number; max?: number },
): Promise<HistoryResult> {
  const token = client.getAccessToken();
  if (!token) throw new Error('stock client has no access token');
  const result: HistoryResult = { events: 0, decrypted: new Set(), pages: 0 };
  const max = options.max ?? Infinity;
  let from: string | undefined;
  for (;;) {
    const url = new URL(
      `${client.baseUrl}/_matrix/client/v3/rooms/${encodeURIComponent(roomId)}/messages`,
    );
    url.searchParams.set('dir', 'b');
    url.searchParams.set('limit', String(Math.min(options.pageSize, max - result.events)));
    if (from) url.searchParams.set('from', from);
    const res = await fetch(url, { headers: { authorization: `Bearer ${token}` } });
    if (!res.ok) throw new Error(`/messages failed: ${res.status} ${await res.text()}`);
    const page = (await res.json()) as { chunk: Partial<IEvent>[]; end?: string };
    result.pages++;
    for (const raw of page.chunk) {
      if (raw.type !== 'm.room.encrypted' && raw.type !== 'm.room.message') continue;
      const event = new MatrixEvent({ ...raw, room_id: roomId });
      await client.decryptEventIfNeeded(event);
      result.events++;
      if (event.isEncrypted() && !event.isDecryptionFailure()) {
        const index = historyIndex(event.getContent().body);
        if (index !== undefined) result.decrypted.add(index);
      }
    }
    if (!page.end || page.chunk.length === 0 || result.events >= max) return result;
    from = page.end;
  }
}

export interface Memory {
  /** VmRSS, bytes. */
  rss: number;
  /** VmHWM (peak resident), bytes. */
  peak: number;
}

export async function processMemory(pid: number): Promise<Memory> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const field = (name: string): number => {
    const m = new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(status);
    if (!m) throw new Error(`/proc/${pid}/status has no ${name}`);
    return Number(m[1]) * 1024;
  };
  return { rss: field('VmRSS'), peak: field('VmHWM') };
}

/** Children speak one JSON object per stdout line. */
export function say(message: Record<string, unknown>): void {
  process.stdout.write(`${JSON.stringify(message)}\n`);
}

/** The q-quantile of the samples (nearest rank); NaN when there are none. */
export function quantile(samples: number[], q: number): number {
  const sorted = [...samples].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? NaN;
}

export const median = (samples: number[]): number => quantile(samples, 0.5);
