import { type OlmMachine, RequestType, RoomId } from '@matrix-org/matrix-sdk-crypto-wasm';
import { z } from 'zod';
import { MAX_BACKUP_BATCH, encryptedSessionData } from '../../keyvault/contract.ts';
import { RpcError } from '../../keyvault/common/rpc/index.ts';
import type {
  BackedUpSession,
  BackupDecryptResult,
  BackupKeyMode,
  Vault,
} from '../../keyvault/vault.ts';
import type { HomeserverApi } from '../matrix/index.ts';
import { isMatrixApiError } from '../matrix/index.ts';
import type { AppState } from '../store/index.ts';
import {
  BACKUP_ALGORITHM,
  type BackupRefusal,
  type OurBackup,
  backupVersionInfo,
  checkBackupVersion,
  signedAuthData,
} from './version-check.ts';

/**
 * Server-side key backup, the standard way (`m.megolm_backup.v1.curve25519-aes-sha2`), driven by
 * the crypto core's own backup machinery. The core encrypts each room key to the backup's public
 * key and remembers, in the sealed store, which ones went up; this service sends what it hands
 * out and tells it when the server took them, so a kill -9 between a key arriving and its upload
 * only means the upload happens at the next start.
 *
 * The private key is never here: the vault holds it (or nobody does: recovery-key and escrow
 * modes), and a restore asks the vault to decrypt (keyvault/backup). The public key comes from
 * the vault too, never from the homeserver, and uploads go only to the version we made and
 * signed (version-check.ts): a homeserver that swaps in its own version or key gets nothing,
 * and the UI and the audit log are told.
 */

/** What we keep (app state): the version we made, its key, and whether the reset happened. */
const ourBackupSchema = z
  .object({
    version: z.string().min(1).max(255),
    publicKey: z.string().max(64),
    /** The core's "backed up" marks were reset for this version (all keys go to it). */
    reset: z.boolean(),
  })
  .strict();
type StoredBackup = z.infer<typeof ourBackupSchema>;
const STATE_KEY = 'backup';

/** How often the current version is asked again while uploads go through without error. */
const RECHECK_MS = 60_000;
/** How long stop() waits for a pass in flight. */
const STOP_GRACE_MS = 2_000;
/** Decrypted sessions imported into the core at once during a restore. */
const IMPORT_BATCH = 1024;
/** A pass also runs this often, for our own new sessions (no callback announces those). */
const PASS_EVERY_MS = 5_000;

export type BackupState = 'no-key' | 'off' | 'active' | 'refused';

export interface BackupStatus {
  state: BackupState;
  /** The vault's backup key: its mode and public key (absent: none yet). */
  key?: { mode: BackupKeyMode; publicKey: string; canDecrypt: boolean };
  /** The version we upload to. */
  version?: string;
  /** Room keys this endpoint holds, and how many of them the core marked backed up. */
  counts: { total: number; backedUp: number };
  /** Sessions left out of the backup by the policy (`not-attested-only`), this run. */
  skipped: number;
  /** The server's count for the current version, at the last check. */
  serverCount?: number;
  /** Why uploads stopped (state `refused`). */
  refusal?: { code: BackupRefusal; message: string };
  /** The last upload or check that failed for another reason (the homeserver is down...). */
  lastError?: string;
  /**
   * The vault's key is no longer the one our version uses (the admin made a new one): uploads
   * go on to the old version, with the old key, until a rotation moves the backup.
   */
  rotateNeeded?: boolean;
}

export type BackupEvent =
  | { kind: 'state'; status: BackupStatus }
  | { kind: 'progress'; phase: 'download' | 'decrypt' | 'import'; done: number; total: number };

export interface RecoverResult {
  version: string;
  /** Sessions in the backup. */
  total: number;
  /** Imported into this endpoint's store. */
  imported: number;
  /** Sessions the vault would not decrypt, by code (BACKUP_MAC_MISMATCH...). */
  failed: Record<string, number>;
}

export interface BackupDependencies {
  machine: OlmMachine;
  api: Pick<
    HomeserverApi,
    | 'backupVersion'
    | 'backupCreateVersion'
    | 'backupDeleteVersion'
    | 'backupUpload'
    | 'backupDownload'
  >;
  vault: Pick<Vault, 'backupKey' | 'backupDecrypt'>;
  state: Pick<AppState, 'get' | 'put'>;
  /** The policy's word, asked at each use (it can be reloaded). */
  settings: () => { mode?: BackupKeyMode | undefined; mayBackUp: (roomId: string) => boolean };
  onEvent?: (event: BackupEvent) => void;
  /** An audit line for a refused backup; a failure to write it is logged, never fatal here. */
  audit?: (code: BackupRefusal) => Promise<unknown>;
  logger?: { warn(message: string): void; info(message: string): void };
}

/** `GET /room_keys/keys`, as much of it as a restore reads. */
const downloaded = z.object({
  rooms: z.record(
    z.string().max(255),
    z.object({
      sessions: z.record(
        z.string().max(255),
        z.object({ session_data: encryptedSessionData }).loose(),
      ),
    }),
  ),
});

export class BackupService {
  readonly #deps: BackupDependencies;
  #ours: StoredBackup | undefined;
  #refusal: { code: BackupRefusal; message: string } | undefined;
  #lastError: string | undefined;
  #serverCount: number | undefined;
  #lastCheck = 0;
  /** enableBackupV1 was called for #ours (only after the server named it as current). */
  #enabled = false;
  #skipped = 0;
  #running: Promise<void> | undefined;
  #again = false;
  #timer: NodeJS.Timeout | undefined;
  #stopped = false;
  /** Serialises create, rotate and recover: one changes what the others rely on. */
  #admin: Promise<unknown> = Promise.resolve();

  private constructor(deps: BackupDependencies) {
    this.#deps = deps;
  }

  /**
   * Resumes the backup this endpoint made, if any, in the background: a homeserver that does
   * not answer must not hold up the endpoint's start (the first pass checks and enables).
   */
  static async start(deps: BackupDependencies): Promise<BackupService> {
    const service = new BackupService(deps);
    service.#ours = await deps.state.get(STATE_KEY, ourBackupSchema);
    deps.machine.registerRoomKeyUpdatedCallback(async (infos) => {
      for (const info of infos) info.free();
      service.schedule();
      return Promise.resolve();
    });
    service.#timer = setInterval(() => {
      service.schedule();
    }, PASS_EVERY_MS);
    service.#timer.unref();
    service.schedule();
    return service;
  }

  /**
   * No new pass starts; one in flight gets 2 s to finish. An upload cut off there is simply
   * not marked sent, so it goes up again at the next start (a homeserver that does not answer
   * must not hold up the endpoint's stop through the client's retries).
   */
  async stop(): Promise<void> {
    this.#stopped = true;
    clearInterval(this.#timer);
    if (!this.#running) return;
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      this.#running,
      new Promise<void>((resolve) => (timer = setTimeout(resolve, STOP_GRACE_MS))),
    ]);
    clearTimeout(timer);
  }

  async status(): Promise<BackupStatus> {
    const key = await this.#deps.vault.backupKey();
    const counts = await this.#deps.machine.roomKeyCounts();
    const state: BackupState = !key
      ? 'no-key'
      : !this.#ours
        ? 'off'
        : this.#refusal
          ? 'refused'
          : 'active';
    return {
      state,
      ...(key
        ? { key: { mode: key.mode, publicKey: key.publicKey, canDecrypt: key.canDecrypt } }
        : {}),
      ...(this.#ours ? { version: this.#ours.version } : {}),
      counts: { total: counts.total, backedUp: counts.backedUp },
      skipped: this.#skipped,
      ...(this.#serverCount === undefined ? {} : { serverCount: this.#serverCount }),
      ...(this.#refusal ? { refusal: this.#refusal } : {}),
      ...(this.#lastError === undefined ? {} : { lastError: this.#lastError }),
      ...(key && this.#ours && key.publicKey !== this.#ours.publicKey
        ? { rotateNeeded: true }
        : {}),
    };
  }

  /** Makes a backup version with the vault's key and starts uploading every room key to it. */
  create(): Promise<BackupStatus> {
    return this.#exclusive(async () => {
      if (this.#ours && !this.#refusal) {
        const key = await this.#deps.vault.backupKey();
        if (key?.publicKey === this.#ours.publicKey) {
          throw new RpcError(
            'BACKUP_EXISTS',
            `the backup is already on (version ${this.#ours.version}); rotate makes a new version`,
          );
        }
      }
      await this.#newVersion();
      this.schedule();
      return this.status();
    });
  }

  /**
   * A new version (with the vault's current key, which may be new), every room key uploaded to
   * it, and only then the old version deleted: a rotation that stops half way leaves the old
   * backup whole.
   */
  rotate(): Promise<BackupStatus & { deletedVersion?: string }> {
    return this.#exclusive(async () => {
      const old = this.#ours?.version;
      await this.#newVersion();
      await this.#drain();
      const status = await this.status();
      if (status.state !== 'active' || status.counts.backedUp < status.counts.total) {
        throw new RpcError(
          'BACKUP_INCOMPLETE',
          `the new version ${this.#ours?.version ?? ''} does not hold every room key yet (${status.lastError ?? status.refusal?.message ?? 'uploads pending'}); the old version was kept`,
        );
      }
      if (old !== undefined && old !== this.#ours?.version) {
        await this.#deps.api.backupDeleteVersion(old);
        return { ...status, deletedVersion: old };
      }
      return status;
    });
  }

  /**
   * Restores room keys from the homeserver's current backup, decrypted by the vault (which
   * must hold the private key: vault mode, or a key imported with `vault backup-key import`).
   * The vault's key must be the one the backup was made for: a wrong recovery key imports
   * nothing.
   */
  recover(): Promise<RecoverResult> {
    return this.#exclusive(async () => {
      const { vault, api, machine } = this.#deps;
      const key = await vault.backupKey();
      if (!key) {
        throw new RpcError(
          'BACKUP_NO_KEY',
          'the vault has no backup key: import the recovery key with "vault backup-key import" first',
        );
      }
      if (!key.canDecrypt) {
        throw new RpcError(
          'BACKUP_CANNOT_DECRYPT',
          `the vault holds only the public half of its backup key (${key.mode} mode): import the recovery key with "vault backup-key import" first`,
        );
      }
      const answer = await api.backupVersion();
      if (!answer) throw new RpcError('BACKUP_NONE', 'the homeserver holds no key backup');
      const info = backupVersionInfo.safeParse(answer);
      if (!info.success || info.data.algorithm !== BACKUP_ALGORITHM) {
        throw new RpcError(
          'BACKUP_UNREADABLE',
          'the current backup is not one this endpoint reads',
        );
      }
      if (info.data.auth_data.public_key !== key.publicKey) {
        throw new RpcError(
          'BACKUP_WRONG_KEY',
          "the vault's backup key does not open the current backup (another recovery key, or the backup was replaced); nothing was imported",
        );
      }
      const version = info.data.version;
      this.#emit({ kind: 'progress', phase: 'download', done: 0, total: 0 });
      const parsed = downloaded.safeParse(await api.backupDownload(version));
      if (!parsed.success) {
        throw new RpcError(
          'BACKUP_UNREADABLE',
          'the homeserver answered with no backup we can read',
        );
      }
      const sessions: BackedUpSession[] = [];
      for (const [roomId, room] of Object.entries(parsed.data.rooms)) {
        for (const [sessionId, s] of Object.entries(room.sessions)) {
          sessions.push({ roomId, sessionId, sessionData: s.session_data });
        }
      }
      const total = sessions.length;
      const failed: Record<string, number> = {};
      let imported = 0;
      let decrypted: BackupDecryptResult[] = [];
      for (let i = 0; i < total; i += MAX_BACKUP_BATCH) {
        const batch = sessions.slice(i, i + MAX_BACKUP_BATCH);
        decrypted.push(...(await vault.backupDecrypt(key.publicKey, batch)));
        const done = i + batch.length;
        this.#emit({ kind: 'progress', phase: 'decrypt', done, total });
        // Imported in larger batches: each import is one pass through the core's store.
        if (decrypted.length >= IMPORT_BATCH || done === total) {
          imported += await importBatch(machine, decrypted, version, failed);
          decrypted = [];
          this.#emit({ kind: 'progress', phase: 'import', done, total });
        }
      }
      return { version, total, imported, failed };
    });
  }

  /** Runs an upload pass soon; calls during a pass ask for one more. */
  schedule(): void {
    if (this.#stopped || !this.#ours) return;
    if (this.#running) {
      this.#again = true;
      return;
    }
    this.#running = (async () => {
      try {
        do {
          this.#again = false;
          await this.#pass();
          // eslint-disable-next-line @typescript-eslint/no-unnecessary-condition -- set by schedule() and stop() during the await
        } while (this.#again && !this.#stopped);
      } catch (e) {
        this.#lastError = message(e);
      } finally {
        this.#running = undefined;
      }
    })();
  }

  /** Every pending upload, now (rotate waits on this). */
  async #drain(): Promise<void> {
    this.schedule();
    while (this.#running) await this.#running;
  }

  async #exclusive<T>(run: () => Promise<T>): Promise<T> {
    const next = this.#admin.then(run);
    this.#admin = next.catch(() => undefined);
    return next;
  }

  async #newVersion(): Promise<void> {
    const { vault, api, machine, state, settings } = this.#deps;
    const key = await vault.backupKey();
    if (!key) {
      throw new RpcError(
        'BACKUP_NO_KEY',
        'the vault has no backup key: run "vault backup-key create" on the vault first',
      );
    }
    const wanted = settings().mode;
    if (wanted !== undefined && key.mode !== wanted) {
      throw new RpcError(
        'BACKUP_MODE_MISMATCH',
        `the policy asks for a backup key in ${wanted} mode, but the vault's is in ${key.mode} mode`,
      );
    }
    const authData = await signedAuthData(machine, key.publicKey);
    const version = await api.backupCreateVersion(BACKUP_ALGORITHM, authData);
    const ours: StoredBackup = { version, publicKey: key.publicKey, reset: false };
    await state.put(STATE_KEY, ours);
    this.#ours = ours;
    this.#refusal = undefined;
    this.#lastError = undefined;
    this.#skipped = 0;
    await this.#enable(ours);
    this.#emitState();
  }

  /** Checks the server's current version is ours, resets the core's marks once, enables. */
  async #enable(ours: StoredBackup): Promise<void> {
    this.#enabled = false;
    await this.#resetOnce(ours);
    await this.#check();
  }

  /**
   * Marks from an earlier version: every key must go to this one. Recorded, so a crash right
   * after making the version still resets at the next start.
   */
  async #resetOnce(ours: StoredBackup): Promise<void> {
    if (ours.reset) return;
    await this.#deps.machine.disableBackup();
    this.#enabled = false;
    ours.reset = true;
    await this.#deps.state.put(STATE_KEY, ours);
  }

  async #check(): Promise<void> {
    const ours = this.#ours;
    if (!ours) return;
    this.#lastCheck = Date.now();
    let answer: Record<string, unknown> | undefined;
    try {
      answer = await this.#deps.api.backupVersion();
    } catch (e) {
      this.#lastError = message(e);
      return;
    }
    const wanted: OurBackup = { version: ours.version, publicKey: ours.publicKey };
    const verdict = answer
      ? await checkBackupVersion(this.#deps.machine, wanted, answer)
      : ({
          ok: false,
          code: 'BACKUP_VERSION_CHANGED',
          message: `the homeserver has no current backup (ours was version ${ours.version})`,
        } as const);
    const count = answer?.count;
    if (typeof count === 'number') this.#serverCount = count;
    if (verdict.ok) {
      if (!this.#enabled) {
        await this.#deps.machine.enableBackupV1(ours.publicKey, ours.version);
        this.#enabled = true;
      }
      if (this.#refusal) {
        this.#refusal = undefined;
        this.#emitState();
      }
      return;
    }
    if (this.#refusal?.code === verdict.code) return;
    // Nothing more goes up until the server names our version again (or we make a new one):
    // #pass uploads nothing while this is set.
    this.#refusal = { code: verdict.code, message: verdict.message };
    this.#deps.logger?.warn(`backup: uploads stopped: ${verdict.message} [${verdict.code}]`);
    this.#emitState();
    await this.#deps.audit?.(verdict.code).catch((e: unknown) => {
      this.#deps.logger?.warn(`backup: the audit log refused the refusal record (${message(e)})`);
    });
  }

  async #pass(): Promise<void> {
    const ours = this.#ours;
    if (!ours) return;
    await this.#resetOnce(ours);
    if (this.#refusal || !this.#enabled || Date.now() - this.#lastCheck > RECHECK_MS) {
      await this.#check();
    }
    if (this.#refusal || !this.#enabled) return;
    const { machine, api } = this.#deps;
    for (;;) {
      if (this.#stopped) return;
      const request = await machine.backupRoomKeys();
      if (!request) break;
      try {
        // The version is the one we enabled; the core's own field says which it encrypted for.
        if (request.version !== ours.version) return;
        const body = this.#withoutExcludedRooms(request.body);
        const response =
          body === undefined
            ? JSON.stringify({ etag: '', count: this.#serverCount ?? 0 })
            : await api.backupUpload(request.version, body);
        await machine.markRequestAsSent(request.id, RequestType.KeysBackup, response);
        this.#lastError = undefined;
      } catch (e) {
        if (isMatrixApiError(e, 'M_WRONG_ROOM_KEYS_VERSION')) {
          await this.#check();
        } else {
          this.#lastError = message(e);
        }
        return;
      } finally {
        request.free();
      }
    }
  }

  /** The request body without the rooms the policy keeps out, or undefined if none is left. */
  #withoutExcludedRooms(body: string): string | undefined {
    const { mayBackUp } = this.#deps.settings();
    const parsed = JSON.parse(body) as { rooms: Record<string, { sessions: object }> };
    const rooms = Object.entries(parsed.rooms);
    const kept = rooms.filter(([roomId]) => mayBackUp(roomId));
    if (kept.length === rooms.length) return body;
    for (const [roomId, room] of rooms) {
      if (!mayBackUp(roomId)) this.#skipped += Object.keys(room.sessions).length;
    }
    return kept.length === 0 ? undefined : JSON.stringify({ rooms: Object.fromEntries(kept) });
  }

  #emitState(): void {
    if (!this.#deps.onEvent) return;
    void this.status().then(
      (status) => this.#deps.onEvent?.({ kind: 'state', status }),
      () => undefined,
    );
  }

  #emit(event: BackupEvent): void {
    this.#deps.onEvent?.(event);
  }
}

/** Imports one batch's decrypted sessions; counts the refused ones by code. */
async function importBatch(
  machine: OlmMachine,
  results: BackupDecryptResult[],
  version: string,
  failed: Record<string, number>,
): Promise<number> {
  const byRoom = new Map<string, Map<string, unknown>>();
  for (const r of results) {
    if (!r.ok) {
      failed[r.code] = (failed[r.code] ?? 0) + 1;
      continue;
    }
    let room = byRoom.get(r.roomId);
    if (!room) byRoom.set(r.roomId, (room = new Map<string, unknown>()));
    room.set(r.sessionId, r.session);
  }
  if (byRoom.size === 0) return 0;
  const keyed = new Map<RoomId, Map<string, unknown>>();
  for (const [roomId, sessions] of byRoom) keyed.set(new RoomId(roomId), sessions);
  const result = await machine.importBackedUpRoomKeys(keyed, () => undefined, version);
  // The core took the RoomIds (freeing them here is a use after free).
  try {
    return result.importedCount;
  } finally {
    result.free();
  }
}

function message(e: unknown): string {
  return (e instanceof Error ? e.message : String(e)).slice(0, 300);
}
