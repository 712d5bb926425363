import type { IdbDatabase, IdbFactory, IdbRequest, IdbTransaction } from './idb-types.ts';

/** Resolves with a request's result, or rejects with its error. */
export function requestResult<T>(request: IdbRequest<T>): Promise<T> {
  return new Promise((resolve, reject) => {
    request.addEventListener('success', () => {
      resolve(request.result);
    });
    request.addEventListener('error', () => {
      reject(request.error ?? new Error('IndexedDB request failed'));
    });
  });
}

/** Resolves when the transaction completes; rejects when it aborts. */
export function transactionDone(tx: IdbTransaction): Promise<void> {
  return new Promise((resolve, reject) => {
    tx.addEventListener('complete', () => {
      resolve();
    });
    tx.addEventListener('abort', () => {
      reject(tx.error ?? new Error('IndexedDB transaction aborted'));
    });
  });
}

/**
 * Opens a database; `upgrade` runs inside the versionchange transaction when one is needed.
 * The request's success is what the durable store delays until the upgrade is on disk.
 */
export function openDatabase(
  factory: IdbFactory,
  name: string,
  version?: number,
  upgrade?: (db: IdbDatabase, tx: IdbTransaction, oldVersion: number) => void,
): Promise<IdbDatabase> {
  const request = version === undefined ? factory.open(name) : factory.open(name, version);
  request.onupgradeneeded = (event) => {
    const tx = request.transaction;
    if (upgrade && tx) upgrade(request.result, tx, event.oldVersion);
  };
  return requestResult(request);
}

export async function deleteDatabase(factory: IdbFactory, name: string): Promise<void> {
  await requestResult(factory.deleteDatabase(name));
}
