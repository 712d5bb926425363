import { type FileHandle, open } from 'node:fs/promises';
import {
  MAX_RESPONSE_BYTES,
  TPM_HEADER_BYTES,
  type TpmTransport,
  TpmTransportError,
  notAnswered,
} from './transport.ts';

/** How long a command may take before the TPM counts as not answering, unless told otherwise. */
const DEFAULT_TIMEOUT_MS = 30_000;

/**
 * The kernel's TPM character device. Use /dev/tpmrm0: the in-kernel resource manager
 * virtualises handles and flushes what a process leaves behind when the file is closed.
 * One write is one command; the following read returns the whole response.
 *
 * A command cannot be taken back once written, and a read in flight cannot be cancelled: when
 * the TPM does not answer in time the caller gets TPM_TIMEOUT, the late answer is still read
 * (and dropped) before anything else is written, and commands whose time ran out while they
 * waited for it are never sent.
 */
export async function openTpmDevice(path = '/dev/tpmrm0'): Promise<TpmTransport> {
  let file: FileHandle;
  try {
    file = await open(path, 'r+');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code ?? 'error';
    const hint =
      code === 'EACCES'
        ? ' (add the user to the tss group)'
        : code === 'ENOENT'
          ? ' (no TPM, or the tpm_crb/tpm_tis driver is not loaded)'
          : '';
    throw new TpmTransportError('TPM_UNREACHABLE', `${path}: ${code}${hint}`);
  }
  let queue: Promise<unknown> = Promise.resolve();
  let closed = false;
  const exchange = async (command: Uint8Array): Promise<Uint8Array> => {
    await file.write(command);
    const buf = Buffer.alloc(MAX_RESPONSE_BYTES);
    const { bytesRead } = await file.read(buf, 0, buf.length, null);
    if (bytesRead < TPM_HEADER_BYTES || buf.readUInt32BE(2) !== bytesRead) {
      throw new TpmTransportError(
        'TPM_BAD_RESPONSE',
        `${path}: malformed response of ${bytesRead} bytes`,
      );
    }
    return new Uint8Array(buf.subarray(0, bytesRead));
  };
  return {
    description: path,
    send(command, options = {}) {
      if (closed)
        return Promise.reject(new TpmTransportError('TPM_CLOSED', `${path}: transport is closed`));
      const limit = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
      let abandoned = false;
      const next = queue.then(() => {
        if (abandoned) throw notAnswered(path, limit);
        return exchange(command);
      });
      queue = next.catch(() => undefined);
      return new Promise<Uint8Array>((resolve, reject) => {
        const timer = setTimeout(() => {
          abandoned = true;
          reject(notAnswered(path, limit));
        }, limit);
        next.then(
          (response) => {
            clearTimeout(timer);
            resolve(response);
          },
          (e: unknown) => {
            clearTimeout(timer);
            reject(e instanceof Error ? e : new Error(String(e)));
          },
        );
      });
    },
    async close() {
      closed = true;
      // A command the TPM never answered would hold the queue for ever: do not wait on it.
      await Promise.race([queue, new Promise((resolve) => setTimeout(resolve, 1000).unref())]);
      await file.close();
    },
  };
}
