/**
 * Combining abort signals with explicit cleanup. AbortSignal.any() registers the combined
 * signal on every source until a source aborts or garbage collection catches up; the client's
 * lifetime signal lives as long as the process and a sync loop combines it with a fresh signal
 * every few seconds, so listeners are added and removed here deterministically instead.
 */
export interface LinkedSignal {
  readonly signal: AbortSignal;
  /** Whether the deadline (not a source) fired. */
  readonly timedOut: boolean;
  /** Detaches from the sources and clears the deadline; call when the operation ends. */
  dispose(): void;
}

export function linkSignals(
  sources: readonly (AbortSignal | undefined)[],
  deadlineMs?: number,
): LinkedSignal {
  const controller = new AbortController();
  const present = sources.filter((s): s is AbortSignal => s !== undefined);
  let timedOut = false;
  const onAbort = (): void => {
    controller.abort();
  };
  for (const source of present) {
    if (source.aborted) controller.abort();
    else source.addEventListener('abort', onAbort, { once: true });
  }
  const timer =
    deadlineMs === undefined
      ? undefined
      : setTimeout(() => {
          timedOut = true;
          controller.abort();
        }, deadlineMs);
  return {
    signal: controller.signal,
    get timedOut() {
      return timedOut;
    },
    dispose() {
      clearTimeout(timer);
      for (const source of present) source.removeEventListener('abort', onAbort);
    },
  };
}
