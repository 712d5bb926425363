/**
 * Publishing a store's IndexedDB as the process globals, which is where the wasm crypto engine
 * looks for `indexedDB` (and where it checks `instanceof IDBRequest` and friends). One store
 * at a time: two engines silently sharing whichever store was installed last would be worse
 * than an error.
 */
import { StoreCode, StoreError } from './errors.ts';
import { idbGlobals, keyRange } from './fake-internals.ts';
import type { IdbFactory } from './idb-types.ts';

const NAMES = ['indexedDB', 'IDBKeyRange', ...Object.keys(idbGlobals)];
let installed: { factory: IdbFactory; uninstall: () => void } | null = null;

/** Installs `factory`; returns a function that restores whatever the globals were before. */
export function installGlobals(factory: IdbFactory): () => void {
  if (installed?.factory === factory) return installed.uninstall;
  if (installed !== null) {
    throw new StoreError(StoreCode.BadOptions, 'another durable store is installed already');
  }
  const g = globalThis as Record<string, unknown>;
  const previous = new Map(NAMES.map((name) => [name, g[name]] as const));
  const values: Record<string, unknown> = {
    ...idbGlobals,
    indexedDB: factory,
    IDBKeyRange: keyRange,
  };
  for (const name of NAMES) g[name] = values[name];
  const uninstall = (): void => {
    if (installed?.factory !== factory) return;
    for (const [name, value] of previous) {
      if (value === undefined) Reflect.deleteProperty(g, name);
      else g[name] = value;
    }
    installed = null;
  };
  installed = { factory, uninstall };
  return uninstall;
}

export function uninstallGlobals(factory: IdbFactory): void {
  if (installed?.factory === factory) installed.uninstall();
}
