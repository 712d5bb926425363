/** Every failure of the certificate tool has a code and a one-line message naming what to fix. */
export type X509ErrorCode =
  'X509_BAD_MXID' | 'X509_BAD_INPUT' | 'X509_BAD_KEY' | 'X509_REJECTED' | 'X509_IO';

export class X509Error extends Error {
  readonly code: X509ErrorCode;
  constructor(code: X509ErrorCode, message: string) {
    super(message);
    this.name = 'X509Error';
    this.code = code;
  }
}
