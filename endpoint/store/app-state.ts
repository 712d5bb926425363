/**
 * The endpoint's own state (device id, sync token, room list, outbox...) in the same sealed
 * store as the crypto engine's, as a small key-value table in a database of its own, so every
 * change goes through the same journal, epoch and counter. Values are structured-cloneable
 * data; a read names the zod schema it expects, since what comes back is only as trustworthy
 * as the code that wrote it (possibly an older version).
 */
import { formatZodIssues } from '../../keyvault/common/zod-issues.ts';
import type { z } from 'zod';
import { StoreCode, StoreError } from './errors.ts';
import { openDatabase, requestResult, transactionDone } from './idb-promise.ts';
import type { IdbDatabase, IdbFactory } from './idb-types.ts';

export const APP_STATE_DATABASE = 'mte-endpoint-state';
const TABLE = 'kv';

export interface AppStateChanges {
  put?: Iterable<readonly [string, unknown]>;
  delete?: Iterable<string>;
}

export interface AppState {
  get<T>(key: string, schema: z.ZodType<T>): Promise<T | undefined>;
  /** Resolves once the value is durable. */
  put(key: string, value: unknown): Promise<void>;
  delete(key: string): Promise<void>;
  keys(): Promise<string[]>;
  /** Several changes in one transaction: all of them are durable, or none. */
  update(changes: AppStateChanges): Promise<void>;
  close(): void;
}

export function createAppState(factory: IdbFactory): AppState {
  let connection: Promise<IdbDatabase> | null = null;
  const db = (): Promise<IdbDatabase> => {
    connection ??= openDatabase(factory, APP_STATE_DATABASE, 1, (created) => {
      created.createObjectStore(TABLE);
    });
    connection.catch(() => {
      connection = null;
    });
    return connection;
  };

  const write = async (changes: AppStateChanges): Promise<void> => {
    const tx = (await db()).transaction(TABLE, 'readwrite');
    const done = transactionDone(tx);
    const table = tx.objectStore(TABLE);
    try {
      for (const key of changes.delete ?? []) table.delete(key);
      for (const [key, value] of changes.put ?? []) table.put(value, key);
    } catch (e) {
      tx.abort();
      await done.catch(() => undefined);
      throw e;
    }
    await done;
  };

  return {
    async get<T>(key: string, schema: z.ZodType<T>): Promise<T | undefined> {
      const tx = (await db()).transaction(TABLE, 'readonly');
      const value = await requestResult(tx.objectStore(TABLE).get(key));
      if (value === undefined) return undefined;
      const parsed = schema.safeParse(value);
      if (!parsed.success) {
        const where = ` at ${formatZodIssues(parsed.error)}`;
        throw new StoreError(StoreCode.InvalidValue, `app state "${key}" fails its schema${where}`);
      }
      return parsed.data;
    },
    put: (key, value) => write({ put: [[key, value]] }),
    delete: (key) => write({ delete: [key] }),
    async keys(): Promise<string[]> {
      const tx = (await db()).transaction(TABLE, 'readonly');
      const keys = await requestResult(tx.objectStore(TABLE).getAllKeys());
      return keys.filter((k): k is string => typeof k === 'string');
    },
    update: write,
    close(): void {
      const pending = connection;
      connection = null;
      void pending?.then(
        (c) => {
          c.close();
        },
        () => undefined,
      );
    },
  };
}
