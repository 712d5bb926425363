/** A TPM command channel: one command in, one response out, nothing interpreted. */
export interface TpmTransport {
  /**
   * Sends one marshalled command and returns the whole response (header included). A TPM
   * that does not answer within `timeoutMs` (counted from this call, so time spent waiting
   * behind an earlier command counts) gives TPM_TIMEOUT; a command still waiting its turn
   * when its time is up is never sent.
   */
  send(command: Uint8Array, options?: SendOptions): Promise<Uint8Array>;
  close(): Promise<void>;
  /** Where it goes, for messages ("swtpm 127.0.0.1:2321", "/dev/tpmrm0"). */
  readonly description: string;
}

export interface SendOptions {
  /** How long to wait for the response; the transport's own default when absent. */
  timeoutMs?: number;
}

export const TPM_HEADER_BYTES = 10;
/** Larger than any TPM 2.0 response (TPM2_MAX_RESPONSE_SIZE is 4096 on common TPMs). */
export const MAX_RESPONSE_BYTES = 64 * 1024;

export type TransportErrorCode =
  'TPM_UNREACHABLE' | 'TPM_TIMEOUT' | 'TPM_BAD_RESPONSE' | 'TPM_CLOSED';

export class TpmTransportError extends Error {
  readonly code: TransportErrorCode;
  constructor(code: TransportErrorCode, message: string) {
    super(message);
    this.name = 'TpmTransportError';
    this.code = code;
  }
}

/** The one sentence every transport gives for a TPM that does not answer in time. */
export function notAnswered(description: string, timeoutMs: number): TpmTransportError {
  const seconds = Number((timeoutMs / 1000).toFixed(1));
  return new TpmTransportError(
    'TPM_TIMEOUT',
    `the TPM (${description}) did not answer within ${seconds} s (frozen or busy)`,
  );
}
