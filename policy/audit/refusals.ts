/**
 * Counting floods of refusals instead of writing each one.
 *
 * A refusal a caller can repeat without limit is a way to fill the disk: a line per refusal
 * was 2.3 GB an hour from 16 loops with unknown tokens. Those are the refusals of
 * callers without a valid token (UNAUTHENTICATED, and RATE_LIMITED by the shared budget for
 * unknown tokens) and a known client's RATE_LIMITED ones: every other refusal of a known
 * client costs it a request from its bucket, so its own rate bounds them.
 *
 * Per caller (one key for all unknown tokens, one per client) a window opens at its first
 * such refusal and lasts `windowMs`. The first `individualPerWindow` refusals in it are
 * written as usual, durable before the answer, so an occasional mistyped or revoked token is
 * on record exactly. The rest are counted, by reason, and one `audit.refusals` entry with the
 * counts is written when the window ends (or the log closes). A crash loses at most the counts
 * of the windows still open; no allowed request, and no refusal written on its own.
 */

export interface RefusalOptions {
  windowMs: number;
  individualPerWindow: number;
}

/** 60 s windows, 5 written each: see policy/README.md for the figures behind the choice. */
export const DEFAULT_REFUSALS: RefusalOptions = { windowMs: 60_000, individualPerWindow: 5 };

/** Reasons are codes from a short fixed list; this bounds an entry even if that list grows. */
const MAX_REASONS = 8;

/**
 * Whose window a refusal counts in: null for callers without a valid token, a client's name
 * for its rate-limit refusals; undefined for every refusal that is always written.
 */
export function refusalKey(record: {
  client: string | null;
  action?: string;
  decision: string;
  reason: string;
}): string | null | undefined {
  if (record.decision !== 'deny') return undefined;
  if (record.client === null) {
    return record.reason === 'UNAUTHENTICATED' ||
      record.reason === 'RATE_LIMITED' ||
      record.action === 'gateway.refusal'
      ? null
      : undefined;
  }
  return record.reason === 'RATE_LIMITED' ? record.client : undefined;
}

interface Window {
  written: number;
  counts: Map<string, number>;
  /** When the first counted refusal came. */
  since: string | undefined;
  timer: NodeJS.Timeout;
}

export type SummaryWriter = (
  client: string | null,
  since: string,
  counts: Record<string, number>,
) => void;

export class RefusalWindows {
  readonly #options: RefusalOptions;
  readonly #now: () => Date;
  readonly #write: SummaryWriter;
  readonly #windows = new Map<string | null, Window>();

  constructor(options: RefusalOptions, now: () => Date, write: SummaryWriter) {
    this.#options = options;
    this.#now = now;
    this.#write = write;
  }

  /** true: write this refusal as its own entry; false: it was counted for the summary. */
  admit(key: string | null, reason: string): boolean {
    let window = this.#windows.get(key);
    if (!window) {
      const timer = setTimeout(() => {
        this.#close(key);
      }, this.#options.windowMs);
      // An open window must not keep a stopping process alive; close() writes it.
      timer.unref();
      window = { written: 0, counts: new Map(), since: undefined, timer };
      this.#windows.set(key, window);
    }
    if (window.written < this.#options.individualPerWindow) {
      window.written++;
      return true;
    }
    const seen = window.counts.get(reason);
    if (seen === undefined && window.counts.size >= MAX_REASONS) return true;
    window.counts.set(reason, (seen ?? 0) + 1);
    window.since ??= this.#now().toISOString();
    return false;
  }

  /** Ends every window now, writing their summaries (the log is closing). */
  closeAll(): void {
    for (const key of [...this.#windows.keys()]) this.#close(key);
  }

  #close(key: string | null): void {
    const window = this.#windows.get(key);
    if (!window) return;
    this.#windows.delete(key);
    clearTimeout(window.timer);
    if (window.since === undefined) return;
    const counts = Object.fromEntries([...window.counts].sort(([a], [b]) => a.localeCompare(b)));
    this.#write(key, window.since, counts);
  }
}
