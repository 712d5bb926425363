/**
 * Messages as a UI sees them: rich events read (view.ts, relations.ts), folded into items
 * (aggregate.ts), built for sending (outgoing.ts), and who a send leaves out (exclusions.ts).
 */
export { aggregate, applyEdit, latestEdit, mayReplace } from './aggregate.ts';
export { Transfers, TransferError, type UploadMeta } from './transfers.ts';
export { msgtypeFor, sniffImage } from './media-type.ts';
export { type Exclusion, type ExclusionReason, exclusionsFor } from './exclusions.ts';
export {
  type Outgoing,
  type OutgoingAttachment,
  clearEventBytes,
  contentOf,
  outgoingOfEntry,
  previewOf,
  tooLarge,
} from './outgoing.ts';
export { type Relation, type Relations, relationsOf } from './relations.ts';
export { MAX_PREFETCHED, PREFETCH_TTL_MS, PagePrefetch } from './prefetch.ts';
export {
  type AttachmentView,
  type Classified,
  type EditView,
  type ItemKind,
  type MessageView,
  PLAINTEXT_IN_ENCRYPTED_ROOM,
  attachmentOfContent,
  classify,
  isRedacted,
  mayBeItem,
  redactedView,
  redactionTarget,
} from './view.ts';
