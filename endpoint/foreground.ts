/**
 * Sends go first. The endpoint is one thread, and a page of history costs it about half a
 * millisecond of signature checks per event: 16 timelines in flight keep it busy, and a send
 * that only needs two durable writes would wait behind whole pages at every step (measured:
 * p50 16 ms alone, 144 ms among 50 readers). So reads decrypt one event per turn of the event
 * loop, and while a send runs they pause between events.
 *
 * A read is never starved: it waits at most MAX_WAIT_MS per event and MAX_PAGE_WAIT_MS per page
 * (its budget), whatever the sends do, so a stream of sends from many clients slows a page by
 * a fraction of a second, not by 100 ms for each of its events.
 */
import { setTimeout as sleep } from 'node:timers/promises';

const MAX_WAIT_MS = 100;
export const MAX_PAGE_WAIT_MS = 300;

/** How long one read (a page) has waited for sends so far. */
export interface WaitBudget {
  waitedMs: number;
}
/**
 * A send keeps its priority this long at most. Its own work is a durable write or two (p50
 * 16 ms); one that runs longer is waiting on something else (the homeserver for an upload or
 * an edit's target, a stalled disk), for up to minutes, and reads would pay MAX_WAIT_MS per
 * event all that time.
 */
const MAX_HOLD_MS = 250;

export class Foreground {
  #active = 0;
  readonly #idle = new Set<() => void>();

  /** Runs latency-sensitive work; background work pauses while any is running. */
  async run<T>(work: () => Promise<T>): Promise<T> {
    this.#active++;
    let held = true;
    const release = (): void => {
      if (!held) return;
      held = false;
      this.#active--;
      if (this.#active === 0) {
        for (const wake of this.#idle) wake();
        this.#idle.clear();
      }
    };
    const timer = setTimeout(release, MAX_HOLD_MS);
    timer.unref();
    try {
      return await work();
    } finally {
      clearTimeout(timer);
      release();
    }
  }

  /** How many foreground tasks hold their priority (running, for at most MAX_HOLD_MS). */
  get active(): number {
    return this.#active;
  }

  /** A fresh budget for one read (a page of history). */
  budget(): WaitBudget {
    return { waitedMs: 0 };
  }

  /**
   * Background work calls this between steps: one turn of the event loop (so a send's request,
   * or its write's completion, is seen), then a wait while foreground work runs, charged to
   * `budget` (without one, each step may wait MAX_WAIT_MS).
   */
  async yield(budget?: WaitBudget): Promise<void> {
    await new Promise<void>((resolve) => setImmediate(resolve));
    if (this.#active === 0) return;
    const left = Math.min(MAX_WAIT_MS, MAX_PAGE_WAIT_MS - (budget?.waitedMs ?? 0));
    if (left <= 0) return;
    const started = performance.now();
    let wake = (): void => undefined;
    const abort = new AbortController();
    await Promise.race([
      new Promise<void>((resolve) => {
        wake = resolve;
        this.#idle.add(resolve);
      }),
      sleep(left, undefined, { signal: abort.signal }).catch(() => undefined),
    ]);
    // Whichever came first, the other is dropped: a flood of sends leaves nothing behind.
    this.#idle.delete(wake);
    abort.abort();
    if (budget) budget.waitedMs += performance.now() - started;
  }
}
