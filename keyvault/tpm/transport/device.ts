import { type FileHandle, open } from 'node:fs/promises';
import {
  MAX_RESPONSE_BYTES,
  TPM_HEADER_BYTES,
  type TpmTransport,
  TpmTransportError,
} from './transport.ts';

/**
 * The kernel's TPM character device. Use /dev/tpmrm0: the in-kernel resource manager
 * virtualises handles and flushes what a process leaves behind when the file is closed.
 * One write is one command; the following read returns the whole response.
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
    send(command) {
      if (closed)
        return Promise.reject(new TpmTransportError('TPM_CLOSED', `${path}: transport is closed`));
      const next = queue.then(() => exchange(command));
      queue = next.catch(() => undefined);
      return next;
    },
    async close() {
      closed = true;
      await queue;
      await file.close();
    },
  };
}
