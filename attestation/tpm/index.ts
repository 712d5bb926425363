export { type QuoteAttest, parseQuoteAttest, sha256Selection } from './attest.ts';
export { type AkPublic, akAttributeProblems, parseAkPublic } from './public.ts';
export { verifyQuoteSignature } from './signature.ts';
export { TpmParseError } from './reader.ts';
export { ALG, TPMA } from './constants.ts';
