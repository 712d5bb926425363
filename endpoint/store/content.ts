/**
 * What the journal and snapshots contain, as plain data: a committed write transaction as its
 * list of effects, a committed versionchange transaction as the database's whole content
 * afterwards (schema changes are rare, and replaying a full image is simpler and more robust
 * than replaying schema operations in their original interleaving), a deleted database, and a
 * snapshot as every database. Values are encoded with V8's structured serializer (the same
 * algorithm IndexedDB's structured clone uses), then validated with zod: only authenticated
 * bytes ever reach the deserializer.
 */
import { formatZodIssues } from '../../keyvault/common/zod-issues.ts';
import { Deserializer, Serializer } from 'node:v8';
import { z } from 'zod';
import { StoreCode, StoreError } from './errors.ts';
import type { RawDatabase, RawFactory } from './fake-internals.ts';

const keyPath = z.union([z.string(), z.array(z.string())]);

const indexDump = z.object({
  name: z.string(),
  keyPath,
  unique: z.boolean(),
  multiEntry: z.boolean(),
});

const storeDump = z.object({
  name: z.string(),
  keyPath: keyPath.nullable(),
  autoIncrement: z.boolean(),
  keyGen: z.number().int().nonnegative(),
  indexes: z.array(indexDump),
  records: z.array(z.tuple([z.unknown(), z.unknown()])),
});

const databaseDump = z.object({
  name: z.string(),
  version: z.number().int().positive(),
  stores: z.array(storeDump),
});

const dataOp = z.discriminatedUnion('op', [
  z.object({ op: z.literal('put'), store: z.string(), key: z.unknown(), value: z.unknown() }),
  z.object({ op: z.literal('delete'), store: z.string(), key: z.unknown() }),
  z.object({
    op: z.literal('deleteRange'),
    store: z.string(),
    lower: z.unknown(),
    upper: z.unknown(),
    lowerOpen: z.boolean(),
    upperOpen: z.boolean(),
  }),
  z.object({ op: z.literal('clear'), store: z.string() }),
]);

const journalEntry = z.discriminatedUnion('kind', [
  z.object({
    kind: z.literal('write'),
    db: z.string(),
    ops: z.array(dataOp),
    keyGens: z.array(z.tuple([z.string(), z.number().int().nonnegative()])),
  }),
  z.object({ kind: z.literal('replaceDb'), dump: databaseDump }),
  z.object({ kind: z.literal('dropDb'), db: z.string() }),
]);

const journalPayload = z.object({ v: z.literal(1), entry: journalEntry });
const snapshotPayload = z.object({ v: z.literal(1), databases: z.array(databaseDump) });

export type DatabaseDump = z.output<typeof databaseDump>;
export type StoreDump = z.output<typeof storeDump>;
export type DataOp = z.output<typeof dataOp>;
export type JournalEntry = z.output<typeof journalEntry>;

function serialize(value: unknown): Buffer {
  const serializer = new Serializer();
  serializer.writeHeader();
  serializer.writeValue(value);
  return serializer.releaseBuffer();
}

function deserialize(bytes: Uint8Array, what: string): unknown {
  try {
    const deserializer = new Deserializer(bytes);
    deserializer.readHeader();
    return deserializer.readValue();
  } catch (e) {
    throw new StoreError(StoreCode.Corrupt, `${what} does not deserialize`, { cause: e });
  }
}

function validate<T>(schema: z.ZodType<T>, value: unknown, what: string): T {
  const parsed = schema.safeParse(value);
  if (!parsed.success) {
    const where = formatZodIssues(parsed.error);
    throw new StoreError(StoreCode.Corrupt, `${what} has an unexpected shape (${where})`);
  }
  return parsed.data;
}

export function encodeEntry(entry: JournalEntry): Buffer {
  return serialize({ v: 1, entry });
}

export function decodeEntry(bytes: Uint8Array): JournalEntry {
  return validate(journalPayload, deserialize(bytes, 'journal record'), 'journal record').entry;
}

export function encodeSnapshot(databases: DatabaseDump[]): Buffer {
  return serialize({ v: 1, databases });
}

export function decodeSnapshot(bytes: Uint8Array): DatabaseDump[] {
  return validate(snapshotPayload, deserialize(bytes, 'snapshot'), 'snapshot').databases;
}

/**
 * The whole content of one database, read synchronously from fake-indexeddb's structures so
 * the image is a consistent cut (no transaction can interleave within one JS turn). Values
 * are referenced, not copied: fake-indexeddb stores its own clones and never mutates them.
 */
export function dumpDatabase(db: RawDatabase): DatabaseDump {
  const stores: StoreDump[] = [];
  for (const store of db.rawObjectStores.values()) {
    if (store.deleted) continue;
    stores.push({
      name: store.name,
      keyPath: store.keyPath,
      autoIncrement: store.autoIncrement,
      keyGen: store.keyGenerator?.num ?? 0,
      indexes: [...store.rawIndexes.values()]
        .filter((index) => !index.deleted)
        .map((index) => ({
          name: index.name,
          keyPath: index.keyPath,
          unique: index.unique,
          multiEntry: index.multiEntry,
        })),
      records: Array.from(store.records.values(), (r): [unknown, unknown] => [r.key, r.value]),
    });
  }
  return { name: db.name, version: db.version, stores };
}

/** Every committed database. Version 0 marks one whose creating upgrade has not committed. */
export function dumpAll(factory: RawFactory): DatabaseDump[] {
  return [...factory._databases.values()].filter((db) => db.version > 0).map(dumpDatabase);
}
