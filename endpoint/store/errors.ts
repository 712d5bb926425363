/**
 * Typed failures of the durable store. Messages name files, epochs and counts, never key
 * material or stored values: they end up in logs and in the gateway's audit trail.
 */
export const StoreCode = {
  /** The store on disk is older than the vault's counter: a restored backup or copied dir. */
  RolledBack: 'STORE_ROLLED_BACK',
  /** The store is newer than the vault's counter: a different or reset vault. */
  CounterBehind: 'STORE_COUNTER_BEHIND',
  /** The files were sealed under another store key (copied next to another vault). */
  WrongKey: 'STORE_WRONG_KEY',
  /** A record, snapshot or header fails authentication or is out of place. */
  Tampered: 'STORE_TAMPERED',
  /** Authenticated content that does not parse: a bug or an incompatible version. */
  Corrupt: 'STORE_CORRUPT',
  /** Another live process (or another handle in this one) has the directory open. */
  Locked: 'STORE_LOCKED',
  /** A write to disk failed; the in-memory state is ahead of the disk. Reopen. */
  Failed: 'STORE_FAILED',
  Closed: 'STORE_CLOSED',
  /** The counter moved in a way this store did not cause (shared or tampered counter). */
  CounterMismatch: 'STORE_COUNTER_MISMATCH',
  BadOptions: 'STORE_BAD_OPTIONS',
  /** fake-indexeddb's internals are not what this module was written against. */
  Incompatible: 'STORE_INCOMPATIBLE_ENGINE',
  /** An app-state value does not match the schema the caller expects. */
  InvalidValue: 'STORE_INVALID_VALUE',
  /** The store belongs to another Matrix user or device than the one configured. */
  WrongIdentity: 'STORE_WRONG_IDENTITY',
  /** No store on disk though the vault's counter shows one existed: refused, never recreated. */
  Missing: 'STORE_MISSING',
  /** The directory or its files have the wrong owner or mode, or are symlinks. */
  UnsafeFiles: 'STORE_UNSAFE_FILES',
  /** The disk is full: writes are refused (and retried) until space returns; nothing is lost. */
  Full: 'STORAGE_FULL',
} as const;
export type StoreErrorCode = (typeof StoreCode)[keyof typeof StoreCode];

export class StoreError extends Error {
  readonly code: StoreErrorCode;

  constructor(code: StoreErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'StoreError';
    this.code = code;
  }
}

export function isStoreError(e: unknown, code?: StoreErrorCode): e is StoreError {
  return e instanceof StoreError && (code === undefined || e.code === code);
}
