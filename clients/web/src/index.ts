/**
 * `@hallrelay/web-client`: hallrelay's exam client for browser exam pages. The [`Autosaver`]
 * journals every save in IndexedDB, sends it to the cloud, fails over to the hall relay when
 * the cloud is gone, and re-sends to the cloud what it lacks with the boxes' receipts; saves
 * are sealed on the page into the answer envelope (docs/envelope.md) with WebCrypto.
 */

export { Autosaver, ConfigError, SaveError, receiptsHeader, type AutosaverConfig, type SaveResult } from "./autosaver.js";
export type { HallEvent } from "./events.js";
export type { RelayConfig, RelayList, ListedRelay } from "./relays.js";
export { copiesWanted, alsoHeldFor, identityOf, sameBox, issued, type BoxIdentity } from "./fanout.js";
export {
  seal,
  open,
  context,
  deriveKeyPair,
  restoreKeyPair,
  publicOf,
  keyId,
  looksLikeEnvelope,
  EnvelopeError,
  OVERHEAD_TWO_RECIPIENTS,
  ROLE_EXAM,
  ROLE_RESTORE,
  type Role,
  type Save,
  type SealKeys,
  type KeyPair,
} from "./envelope.js";
export {
  verifyExamKeys,
  verifyExamConfig,
  examConfigSignedText,
  claimedBox,
  parsePlatformKeys,
  keySetFromJson,
  signedText,
  ExamKeysError,
  SUITE,
  type ExamKeysDocument,
  type ExamConfigDocument,
  type PlatformKey,
} from "./examKeys.js";
export { Journal, JournalError, type Entry, type Held } from "./journal.js";
export { refusalOf, errorCode, tellLeft, leftPath, type Refusal, type Told } from "./http.js";
