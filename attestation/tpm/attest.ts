import { ALG, TPM_GENERATED_VALUE, TPM_ST_ATTEST_QUOTE } from './constants.ts';
import { Reader, TpmParseError } from './reader.ts';

/** A parsed TPMS_ATTEST of type TPM_ST_ATTEST_QUOTE (Part 2 §10.12.12). */
export interface QuoteAttest {
  qualifiedSigner: Buffer;
  /** The qualifyingData the quote was asked for: our binding digest. */
  extraData: Buffer;
  clock: bigint;
  resetCount: number;
  restartCount: number;
  safe: boolean;
  firmwareVersion: bigint;
  /** The quoted PCRs, per bank, ascending. */
  selection: { hash: number; pcrs: number[] }[];
  pcrDigest: Buffer;
}

/** No bank has more than 24 PCRs in the PC Client profile; sizeofSelect above 4 is not ours. */
const MAX_SELECT_BYTES = 4;

export function parseQuoteAttest(bytes: Uint8Array): QuoteAttest {
  const r = new Reader(bytes, 'TPMS_ATTEST');
  if (r.u32('magic') !== TPM_GENERATED_VALUE) {
    throw new TpmParseError('TPMS_ATTEST.magic', 'not TPM_GENERATED_VALUE: not made by a TPM');
  }
  const type = r.u16('type');
  if (type !== TPM_ST_ATTEST_QUOTE) {
    throw new TpmParseError('TPMS_ATTEST.type', `0x${type.toString(16)} is not a quote`);
  }
  const qualifiedSigner = r.sized('qualifiedSigner', 2 + 64);
  const extraData = r.sized('extraData', 64);
  const clock = r.u64('clockInfo.clock');
  const resetCount = r.u32('clockInfo.resetCount');
  const restartCount = r.u32('clockInfo.restartCount');
  const safeByte = r.u8('clockInfo.safe');
  if (safeByte > 1) throw new TpmParseError('TPMS_ATTEST.clockInfo.safe', 'not a TPMI_YES_NO');
  const firmwareVersion = r.u64('firmwareVersion');
  const count = r.u32('pcrSelect.count');
  if (count > 8) throw new TpmParseError('TPMS_ATTEST.pcrSelect.count', `${count} banks`);
  const selection: QuoteAttest['selection'] = [];
  for (let i = 0; i < count; i++) {
    const hash = r.u16(`pcrSelect[${i}].hash`);
    const size = r.u8(`pcrSelect[${i}].sizeofSelect`);
    if (size > MAX_SELECT_BYTES) {
      throw new TpmParseError(`TPMS_ATTEST.pcrSelect[${i}]`, `sizeofSelect ${size}`);
    }
    const bitmap = r.bytes(size, `pcrSelect[${i}].pcrSelect`);
    const pcrs: number[] = [];
    for (let byte = 0; byte < size; byte++) {
      for (let bit = 0; bit < 8; bit++)
        if ((bitmap[byte] ?? 0) & (1 << bit)) pcrs.push(byte * 8 + bit);
    }
    selection.push({ hash, pcrs });
  }
  const pcrDigest = r.sized('pcrDigest', 64);
  r.end();
  return {
    qualifiedSigner,
    extraData,
    clock,
    resetCount,
    restartCount,
    safe: safeByte === 1,
    firmwareVersion,
    selection,
    pcrDigest,
  };
}

/** The one selection our quotes use: SHA-256 bank only. */
export function sha256Selection(attest: QuoteAttest): number[] | undefined {
  const [only] = attest.selection;
  return attest.selection.length === 1 && only?.hash === ALG.SHA256 ? only.pcrs : undefined;
}
