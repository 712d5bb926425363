/**
 * The endpoint's sealed durable store (DESIGN.md §5): the wasm OlmMachine's IndexedDB, and
 * the endpoint's own state, kept in memory and made durable by an encrypted journal and
 * snapshots bound to the vault's monotonic counter.
 */
export {
  openDurableStore,
  type DurableStore,
  type DurableStoreHealth,
  type DurableStoreOptions,
  type DurableStoreStats,
} from './durable-store.ts';
export { APP_STATE_DATABASE, type AppState, type AppStateChanges } from './app-state.ts';
export { birthRecordPath, type EpochStep, type StoreCounter, type StoreLogger } from './epochs.ts';
export { resetDurableStore, type ResetResult } from './reset.ts';
export { StoreCode, StoreError, isStoreError, type StoreErrorCode } from './errors.ts';
export { type StoreIdentity } from './identity.ts';
export { openDatabase, requestResult, transactionDone, deleteDatabase } from './idb-promise.ts';
export type * from './idb-types.ts';
