/**
 * The platform-signed exam keys document (docs/envelope.md, "Keys"): which keys a candidate's
 * saves are sealed to. Checked exactly as the Rust `ExamKeys::verify`: the exam and candidate
 * must be this client's, the suite version 1's, the signer one of the platform's token keys
 * (by `kid`), and the Ed25519 signature must verify over the document's text.
 */

import { fromBase64Url, own, toHex, utf8 } from "./bytes.js";
import { publicKeyFromText, type SealKeys } from "./envelope.js";

/** The one suite version 1 names. */
export const SUITE = "X25519-HKDF-SHA256/AES-128-GCM";

/** The document, as `GET /v1/exams/{exam}/keys` answers it. */
export interface ExamKeysDocument {
  exam: string;
  candidate: string;
  suite: string;
  exam_key: string;
  restore_key?: string | null;
  issued_at: string;
  kid: string;
  signature: string;
}

/** A platform token key: its id and raw Ed25519 public key. */
export interface PlatformKey {
  kid: string;
  key: Uint8Array;
}

/** Why an exam keys document (or a platform key) cannot be used. */
export class ExamKeysError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ExamKeysError";
  }
}

/** The text the signature covers. */
export function signedText(doc: ExamKeysDocument): string {
  return (
    `hallrelay-exam-keys-v1\nexam=${doc.exam}\ncandidate=${doc.candidate}\nsuite=${doc.suite}\n` +
    `exam_key=${doc.exam_key}\nrestore_key=${doc.restore_key ?? ""}\nissued_at=${doc.issued_at}\n`
  );
}

function rawKey(text: string, kid: string): Uint8Array {
  let key: Uint8Array;
  try {
    key = fromBase64Url(text.trim());
  } catch {
    key = new Uint8Array(0);
  }
  if (key.length !== 32) {
    throw new ExamKeysError(`platform key ${JSON.stringify(kid)}: the public key must be 32 bytes in base64url without padding`);
  }
  return key;
}

/** The id the reference platform names a key by: hex of the first 8 bytes of its SHA-256. */
export async function platformKid(key: Uint8Array): Promise<string> {
  return toHex(new Uint8Array(await crypto.subtle.digest("SHA-256", own(key))).slice(0, 8));
}

/**
 * Platform keys from the configuration's text: each line either `KID PUBLIC` / `KID:PUBLIC`, or
 * `PUBLIC` alone (its id then computed as the reference platform does), `PUBLIC` being the
 * raw Ed25519 key in base64url; or a whole key set JSON
 * (`{"keys":[{"kid","alg":"Ed25519","public"}]}`, the form of `--platform-keys-file` and of
 * `GET /v1/platform/keys`).
 */
export async function parsePlatformKeys(lines: string[]): Promise<PlatformKey[]> {
  const out: PlatformKey[] = [];
  for (const raw of lines) {
    const line = raw.trim();
    if (!line || line.startsWith("#")) continue;
    if (line.startsWith("{")) {
      out.push(...keySetFromJson(JSON.parse(line)));
      continue;
    }
    const parts = line.split(/[\s:]+/);
    if (parts.length === 1) {
      const key = rawKey(parts[0] as string, "?");
      out.push({ kid: await platformKid(key), key });
    } else if (parts.length === 2) {
      out.push({ kid: parts[0] as string, key: rawKey(parts[1] as string, parts[0] as string) });
    } else {
      throw new ExamKeysError(`a platform key is "KID PUBLIC" or "PUBLIC" (base64url): ${JSON.stringify(line)}`);
    }
  }
  return out;
}

/** A published key set, `{"keys":[{"kid","alg":"Ed25519","public"}]}`. */
export function keySetFromJson(json: unknown): PlatformKey[] {
  const keys = (json as { keys?: unknown })?.keys;
  if (!Array.isArray(keys)) throw new ExamKeysError('the platform keys are not a key set ({"keys":[…]})');
  return keys.map((k: { kid?: unknown; alg?: unknown; public?: unknown }) => {
    const kid = String(k.kid ?? "");
    if (k.alg !== "Ed25519") throw new ExamKeysError(`platform key ${JSON.stringify(kid)}: only Ed25519 keys are understood`);
    if (!kid || kid.length > 64) throw new ExamKeysError("a platform key id is 1 to 64 characters");
    return { kid, key: rawKey(String(k.public ?? ""), kid) };
  });
}

/**
 * Checks `doc` against the platform's keys and this client's exam and candidate, and gives
 * the keys to seal to. Throws [`ExamKeysError`] saying why it cannot be trusted.
 */
export async function verifyExamKeys(
  doc: ExamKeysDocument,
  platformKeys: PlatformKey[],
  exam: string,
  candidate: string,
): Promise<SealKeys> {
  if (typeof doc !== "object" || doc === null) throw new ExamKeysError("the exam keys are not a JSON object");
  for (const field of ["exam", "candidate", "suite", "exam_key", "issued_at", "kid", "signature"] as const) {
    if (typeof doc[field] !== "string") throw new ExamKeysError(`the exam keys lack their ${field}`);
  }
  if (doc.exam !== exam || doc.candidate !== candidate) {
    throw new ExamKeysError(`the exam keys are for ${doc.exam}/${doc.candidate}, not for this candidate's exam`);
  }
  if (doc.suite !== SUITE) {
    throw new ExamKeysError(`the exam keys use suite ${JSON.stringify(doc.suite)}; this client seals with ${SUITE}`);
  }
  const signer = platformKeys.find((k) => k.kid === doc.kid);
  if (!signer) {
    throw new ExamKeysError(`the exam keys are signed by key ${JSON.stringify(doc.kid)}, which is not one of the platform's keys`);
  }
  const bad = new ExamKeysError(
    "the exam keys' signature does not verify: they were changed or not signed by the platform",
  );
  let signature: Uint8Array;
  try {
    signature = fromBase64Url(doc.signature);
  } catch {
    throw bad;
  }
  const key = await crypto.subtle.importKey("raw", own(signer.key), { name: "Ed25519" }, false, ["verify"]);
  const ok = signature.length === 64 && (await crypto.subtle.verify({ name: "Ed25519" }, key, own(signature), own(utf8(signedText(doc)))));
  if (!ok) throw bad;
  try {
    const keys: SealKeys = { exam: publicKeyFromText(doc.exam_key) };
    if (doc.restore_key) keys.restore = publicKeyFromText(doc.restore_key);
    return keys;
  } catch (e) {
    throw new ExamKeysError(`the exam keys hold a bad key: ${(e as Error).message}`);
  }
}

/**
 * The platform-signed exam configuration (`GET /v1/exams/{exam}/config`, served by the cloud
 * and kept by every box of the venue): what a laptop that was never online needs to start. As
 * the Rust `hallrelay_protocol::exam_config::ExamConfig`.
 */
export interface ExamConfigDocument {
  exam: string;
  venue: string;
  exam_key: string;
  relays: { name: string; pin: string; addresses: string[] }[];
  hall_copies: number;
  after_final: string;
  issued_at: string;
  kid: string;
  signature: string;
}

/** A relay name as the signed text spells it: percent-encoded except `[A-Za-z0-9._-]`. */
function encodeSegment(text: string): string {
  return Array.from(utf8(text), (b) => {
    const c = String.fromCharCode(b);
    return /[A-Za-z0-9._-]/.test(c) ? c : `%${b.toString(16).toUpperCase().padStart(2, "0")}`;
  }).join("");
}

/** The text the exam configuration's signature covers. */
export function examConfigSignedText(doc: ExamConfigDocument): string {
  let text =
    `hallrelay-exam-config-v1\nexam=${doc.exam}\nvenue=${doc.venue}\nexam_key=${doc.exam_key}\n` +
    `hall_copies=${doc.hall_copies}\nafter_final=${doc.after_final}\nrelays=${doc.relays.length}\n`;
  for (const relay of doc.relays) {
    text += `relay=${relay.pin}\nname=${encodeSegment(relay.name)}\naddresses=${relay.addresses.join(",")}\n`;
  }
  return `${text}issued_at=${doc.issued_at}\n`;
}

/**
 * Checks an exam configuration against the platform's keys and this client's exam: a box is
 * never trusted for what it lists, only the platform's signature is. Throws [`ExamKeysError`].
 */
export async function verifyExamConfig(doc: ExamConfigDocument, platformKeys: PlatformKey[], exam: string): Promise<void> {
  if (typeof doc !== "object" || doc === null || !Array.isArray(doc.relays)) throw new ExamKeysError("the exam configuration is not a JSON object with relays");
  for (const field of ["exam", "venue", "exam_key", "after_final", "issued_at", "kid", "signature"] as const) {
    if (typeof doc[field] !== "string") throw new ExamKeysError(`the exam configuration lacks its ${field}`);
  }
  if (doc.exam !== exam) throw new ExamKeysError(`the exam configuration is for exam ${JSON.stringify(doc.exam)}, not this one`);
  const signer = platformKeys.find((k) => k.kid === doc.kid);
  if (!signer) throw new ExamKeysError(`the exam configuration is signed by key ${JSON.stringify(doc.kid)}, which is not one of the platform's keys`);
  const bad = new ExamKeysError("the exam configuration's signature does not verify: it was changed or not signed by the platform");
  let signature: Uint8Array;
  try {
    signature = fromBase64Url(doc.signature);
  } catch {
    throw bad;
  }
  const key = await crypto.subtle.importKey("raw", own(signer.key), { name: "Ed25519" }, false, ["verify"]);
  const ok = signature.length === 64 && (await crypto.subtle.verify({ name: "Ed25519" }, key, own(signature), own(utf8(examConfigSignedText(doc)))));
  if (!ok) throw bad;
  if (doc.hall_copies !== 1 && doc.hall_copies !== 2) throw new ExamKeysError(`the exam configuration says hall_copies = ${doc.hall_copies}; only 1 and 2 are understood`);
  if (doc.after_final !== "accept" && doc.after_final !== "refuse") throw new ExamKeysError(`the exam configuration says after_final = ${JSON.stringify(doc.after_final)}`);
}

/** The box pin a token claims to be limited to (a box-only token), read without verifying it. */
export function claimedBox(token: string): string | undefined {
  const parts = token.split(".");
  if (parts.length !== 3) return undefined;
  try {
    const payload = JSON.parse(new TextDecoder().decode(fromBase64Url(parts[1] as string)));
    return typeof payload?.box === "string" ? payload.box : undefined;
  } catch {
    return undefined;
  }
}
