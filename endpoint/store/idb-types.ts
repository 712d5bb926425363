/**
 * The part of the IndexedDB API this project uses, typed here because the project compiles
 * without the DOM lib (fake-indexeddb's own declarations point at DOM types and so resolve
 * to `any`). Shapes follow the W3C IndexedDB 3.0 interfaces; names carry an `Idb` prefix so
 * they are never mistaken for the DOM globals.
 */
export type IdbValidKey = number | string | Date | ArrayBuffer | ArrayBufferView | IdbValidKey[];
export type IdbTransactionMode = 'readonly' | 'readwrite' | 'versionchange';
export type IdbCursorDirection = 'next' | 'nextunique' | 'prev' | 'prevunique';
export type IdbKeyPath = string | string[];

export interface IdbEvent {
  readonly type: string;
  readonly target: unknown;
  preventDefault(): void;
  stopPropagation(): void;
}

export interface IdbVersionChangeEvent extends IdbEvent {
  readonly oldVersion: number;
  readonly newVersion: number | null;
}

type Handler<E extends IdbEvent = IdbEvent> = ((event: E) => void) | null;

export interface IdbEventTarget {
  addEventListener(type: string, listener: (event: IdbEvent) => void): void;
  removeEventListener(type: string, listener: (event: IdbEvent) => void): void;
}

export interface IdbStringList extends Iterable<string> {
  readonly length: number;
  contains(name: string): boolean;
  item(index: number): string | null;
}

export interface IdbKeyRange {
  readonly lower: unknown;
  readonly upper: unknown;
  readonly lowerOpen: boolean;
  readonly upperOpen: boolean;
  includes(key: unknown): boolean;
}

export interface IdbKeyRangeStatic {
  only(value: unknown): IdbKeyRange;
  lowerBound(lower: unknown, open?: boolean): IdbKeyRange;
  upperBound(upper: unknown, open?: boolean): IdbKeyRange;
  bound(lower: unknown, upper: unknown, lowerOpen?: boolean, upperOpen?: boolean): IdbKeyRange;
}

export type IdbQuery = IdbValidKey | IdbKeyRange;

export interface IdbRequest<T = unknown> extends IdbEventTarget {
  readonly result: T;
  readonly error: DOMException | null;
  readonly readyState: 'pending' | 'done';
  readonly transaction: IdbTransaction | null;
  onsuccess: Handler;
  onerror: Handler;
}

export interface IdbOpenDBRequest extends IdbRequest<IdbDatabase> {
  onupgradeneeded: Handler<IdbVersionChangeEvent>;
  onblocked: Handler<IdbVersionChangeEvent>;
}

export interface IdbFactory {
  open(name: string, version?: number): IdbOpenDBRequest;
  deleteDatabase(name: string): IdbOpenDBRequest;
  databases(): Promise<{ name: string; version: number }[]>;
  cmp(first: unknown, second: unknown): number;
}

export interface IdbDatabase extends IdbEventTarget {
  readonly name: string;
  readonly version: number;
  readonly objectStoreNames: IdbStringList;
  createObjectStore(
    name: string,
    options?: { keyPath?: IdbKeyPath | null; autoIncrement?: boolean },
  ): IdbObjectStore;
  deleteObjectStore(name: string): void;
  transaction(
    storeNames: string | string[],
    mode?: IdbTransactionMode,
    options?: { durability?: 'default' | 'strict' | 'relaxed' },
  ): IdbTransaction;
  close(): void;
  onversionchange: Handler<IdbVersionChangeEvent>;
  onclose: Handler;
}

export interface IdbTransaction extends IdbEventTarget {
  readonly mode: IdbTransactionMode;
  readonly db: IdbDatabase;
  readonly error: DOMException | null;
  readonly objectStoreNames: IdbStringList;
  objectStore(name: string): IdbObjectStore;
  abort(): void;
  commit(): void;
  oncomplete: Handler;
  onabort: Handler;
  onerror: Handler;
}

interface IdbReadable {
  get(query: IdbQuery): IdbRequest;
  getKey(query: IdbQuery): IdbRequest<IdbValidKey | undefined>;
  getAll(query?: IdbQuery | null, count?: number): IdbRequest<unknown[]>;
  getAllKeys(query?: IdbQuery | null, count?: number): IdbRequest<IdbValidKey[]>;
  count(query?: IdbQuery | null): IdbRequest<number>;
  openCursor(
    query?: IdbQuery | null,
    direction?: IdbCursorDirection,
  ): IdbRequest<IdbCursorWithValue | null>;
  openKeyCursor(
    query?: IdbQuery | null,
    direction?: IdbCursorDirection,
  ): IdbRequest<IdbCursor | null>;
}

export interface IdbObjectStore extends IdbReadable {
  name: string;
  readonly keyPath: IdbKeyPath | null;
  readonly autoIncrement: boolean;
  readonly indexNames: IdbStringList;
  readonly transaction: IdbTransaction;
  put(value: unknown, key?: IdbValidKey): IdbRequest<IdbValidKey>;
  add(value: unknown, key?: IdbValidKey): IdbRequest<IdbValidKey>;
  delete(query: IdbQuery): IdbRequest<undefined>;
  clear(): IdbRequest<undefined>;
  createIndex(
    name: string,
    keyPath: IdbKeyPath,
    options?: { unique?: boolean; multiEntry?: boolean },
  ): IdbIndex;
  deleteIndex(name: string): void;
  index(name: string): IdbIndex;
}

export interface IdbIndex extends IdbReadable {
  name: string;
  readonly keyPath: IdbKeyPath;
  readonly unique: boolean;
  readonly multiEntry: boolean;
  readonly objectStore: IdbObjectStore;
}

export interface IdbCursor {
  readonly key: IdbValidKey;
  readonly primaryKey: IdbValidKey;
  readonly direction: IdbCursorDirection;
  continue(key?: IdbValidKey): void;
  advance(count: number): void;
  update(value: unknown): IdbRequest<IdbValidKey>;
  delete(): IdbRequest<undefined>;
}

export interface IdbCursorWithValue extends IdbCursor {
  readonly value: unknown;
}
