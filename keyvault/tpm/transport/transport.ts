/** A TPM command channel: one command in, one response out, nothing interpreted. */
export interface TpmTransport {
  /** Sends one marshalled command and returns the whole response (header included). */
  send(command: Uint8Array): Promise<Uint8Array>;
  close(): Promise<void>;
  /** Where it goes, for messages ("swtpm 127.0.0.1:2321", "/dev/tpmrm0"). */
  readonly description: string;
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
