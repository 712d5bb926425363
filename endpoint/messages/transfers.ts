import { randomBytes } from 'node:crypto';

/**
 * Attachment bytes on their way between a UI and the homeserver, held by the endpoint in
 * memory only: an upload collects its chunks until it is finished (then it is encrypted and
 * uploaded), a download holds the decrypted file until the UI has read it. Each belongs to the
 * client that started it; unused ones are dropped after IDLE_MS, and their bytes overwritten.
 *
 * Bounds: a compromised UI can pin at most PER_CLIENT transfers of MAX_ATTACHMENT_BYTES, and
 * all clients together TOTAL of them.
 */
export const IDLE_MS = 60_000;
const PER_CLIENT = 4;
const TOTAL = 16;

export class TransferError extends Error {
  readonly code:
    'NOT_FOUND' | 'UPLOAD_INCOMPLETE' | 'ATTACHMENT_TOO_LARGE' | 'RATE_LIMITED' | 'INVALID_REQUEST';
  constructor(code: TransferError['code'], message: string) {
    super(message);
    this.name = 'TransferError';
    this.code = code;
  }
}

export interface UploadMeta {
  roomId: string;
  name: string;
  contentType: string;
  size: number;
  caption?: string;
}

interface Upload {
  kind: 'upload';
  client: string;
  meta: UploadMeta;
  chunks: Buffer[];
  received: number;
  lastActive: number;
}

interface Download {
  kind: 'download';
  client: string;
  bytes: Buffer;
  lastActive: number;
}

export class Transfers {
  readonly #open = new Map<string, Upload | Download>();
  readonly #now: () => number;
  readonly #sweep: NodeJS.Timeout;

  constructor(options: { now?: () => number } = {}) {
    this.#now = options.now ?? Date.now;
    this.#sweep = setInterval(() => {
      this.sweep();
    }, IDLE_MS / 4);
    this.#sweep.unref();
  }

  startUpload(client: string, meta: UploadMeta): string {
    return this.#add({
      kind: 'upload',
      client,
      meta,
      chunks: [],
      received: 0,
      lastActive: this.#now(),
    });
  }

  /** Appends a chunk at `offset`, which must be where the previous one ended. */
  chunk(client: string, id: string, offset: number, data: Buffer): number {
    const upload = this.#get(client, id, 'upload');
    if (offset !== upload.received) {
      throw new TransferError(
        'UPLOAD_INCOMPLETE',
        `expected the chunk at offset ${upload.received}, got ${offset}`,
      );
    }
    if (upload.received + data.length > upload.meta.size) {
      this.#drop(id);
      throw new TransferError(
        'ATTACHMENT_TOO_LARGE',
        `more bytes than the ${upload.meta.size} announced; the upload is dropped`,
      );
    }
    upload.chunks.push(Buffer.from(data));
    upload.received += data.length;
    upload.lastActive = this.#now();
    return upload.received;
  }

  /** The whole upload, once every byte arrived; it is no longer open afterwards. */
  finish(client: string, id: string): { meta: UploadMeta; bytes: Buffer } {
    const upload = this.#get(client, id, 'upload');
    if (upload.received !== upload.meta.size) {
      throw new TransferError(
        'UPLOAD_INCOMPLETE',
        `${upload.received} of ${upload.meta.size} bytes received`,
      );
    }
    this.#open.delete(id);
    const bytes = Buffer.concat(upload.chunks);
    for (const c of upload.chunks) c.fill(0);
    return { meta: upload.meta, bytes };
  }

  /** Keeps a decrypted file for `client` to read in chunks; takes ownership of `bytes`. */
  startDownload(client: string, bytes: Buffer): string {
    return this.#add({ kind: 'download', client, bytes, lastActive: this.#now() });
  }

  read(
    client: string,
    id: string,
    offset: number,
    max: number,
  ): { data: Buffer; done: boolean; size: number } {
    const download = this.#get(client, id, 'download');
    if (!Number.isSafeInteger(offset) || offset < 0 || offset > download.bytes.length) {
      throw new TransferError('INVALID_REQUEST', `offset ${offset} is not within the file`);
    }
    const end = Math.min(download.bytes.length, offset + max);
    const data = Buffer.from(download.bytes.subarray(offset, end));
    const done = end === download.bytes.length;
    download.lastActive = this.#now();
    if (done) this.#drop(id);
    return { data, done, size: download.bytes.length };
  }

  /** Drops one of the client's transfers now; false if it has none by this id. */
  cancel(client: string, id: string): boolean {
    const t = this.#open.get(id);
    if (t === undefined || t.client !== client) return false;
    this.#drop(id);
    return true;
  }

  /** Drops what nobody touched for IDLE_MS. */
  sweep(): void {
    const cutoff = this.#now() - IDLE_MS;
    for (const [id, t] of this.#open) if (t.lastActive < cutoff) this.#drop(id);
  }

  close(): void {
    clearInterval(this.#sweep);
    for (const id of [...this.#open.keys()]) this.#drop(id);
  }

  #add(transfer: Upload | Download): string {
    this.sweep();
    const mine = [...this.#open.values()].filter((t) => t.client === transfer.client).length;
    if (mine >= PER_CLIENT || this.#open.size >= TOTAL) {
      throw new TransferError(
        'RATE_LIMITED',
        'too many attachment transfers open; finish one or wait a minute',
      );
    }
    const id = randomBytes(18).toString('base64url');
    this.#open.set(id, transfer);
    return id;
  }

  #get<K extends 'upload' | 'download'>(
    client: string,
    id: string,
    kind: K,
  ): Extract<Upload | Download, { kind: K }> {
    const t = this.#open.get(id);
    // Another client's transfer is "not found", never "forbidden": ids are not confirmed.
    if (t === undefined || t.client !== client || t.kind !== kind) {
      throw new TransferError('NOT_FOUND', `no such ${kind} (finished, or idle for a minute)`);
    }
    return t as Extract<Upload | Download, { kind: K }>;
  }

  #drop(id: string): void {
    const t = this.#open.get(id);
    if (t === undefined) return;
    this.#open.delete(id);
    if (t.kind === 'upload') for (const c of t.chunks) c.fill(0);
    else t.bytes.fill(0);
  }
}
