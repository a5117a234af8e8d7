/**
 * The answer envelope (docs/envelope.md), sealed and opened with WebCrypto alone: HPKE
 * (RFC 9180) base mode, single shot, DHKEM(X25519, HKDF-SHA256) / HKDF-SHA256 / AES-128-GCM
 * for each recipient's content key, and AES-128-GCM for the body. Byte for byte what the Rust
 * crates `hallrelay-protocol` (format) and `hallrelay-envelope` (sealing) write and read: the
 * package's tests open the documented vector, and `tests/web_package.rs` has Rust open what
 * this module seals and the reverse.
 */

import { concat, equal, fromBase64Url, own, utf8 } from "./bytes.js";

const subtle = (): SubtleCrypto => {
  const s = globalThis.crypto?.subtle;
  if (!s) throw new Error("WebCrypto is not available: the page must be served over https");
  return s;
};

/** The first four bytes of every envelope. */
export const MAGIC = utf8("HRAE");
export const VERSION = 1;
export const KEM_X25519_HKDF_SHA256 = 0x0020;
export const KDF_HKDF_SHA256 = 0x0001;
export const AEAD_AES_128_GCM = 0x0001;
/** The HPKE `info` of every recipient's key encapsulation. */
export const HPKE_INFO = utf8("hallrelay-envelope-v1");
export const PREAMBLE_LEN = 12;
export const RECIPIENT_LEN = 1 + 8 + 32 + 32;
/** What an envelope with both recipients adds to its payload. */
export const OVERHEAD_TWO_RECIPIENTS = PREAMBLE_LEN + 2 * RECIPIENT_LEN + 16;

/** Who a recipient entry is for: 1 the exam (platform), 2 the restore code (candidate). */
export type Role = 1 | 2;
export const ROLE_EXAM: Role = 1;
export const ROLE_RESTORE: Role = 2;

/** The save an envelope belongs to: what both AEADs authenticate. */
export interface Save {
  exam: string;
  candidate: string;
  seq: number;
  final: boolean;
}

/** The public keys a client seals to, raw 32-byte X25519. */
export interface SealKeys {
  exam: Uint8Array;
  restore?: Uint8Array;
}

/** Why bytes did not open as the envelope of a save. */
export class EnvelopeError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "EnvelopeError";
  }
}

/** `hallrelay-envelope-v1\nexam=E\ncandidate=C\nseq=S\nfinal=0|1\n`. */
export function context(save: Save): Uint8Array {
  return utf8(
    `hallrelay-envelope-v1\nexam=${save.exam}\ncandidate=${save.candidate}\nseq=${save.seq}\nfinal=${save.final ? 1 : 0}\n`,
  );
}

function u16(n: number): Uint8Array {
  return new Uint8Array([(n >> 8) & 0xff, n & 0xff]);
}

/** The preamble of an envelope with `count` recipients. */
export function preamble(count: number): Uint8Array {
  return concat(
    MAGIC,
    new Uint8Array([VERSION]),
    u16(KEM_X25519_HKDF_SHA256),
    u16(KDF_HKDF_SHA256),
    u16(AEAD_AES_128_GCM),
    new Uint8Array([count]),
  );
}

/** A recipient's key id: the first 8 bytes of SHA-256 of its raw public key. */
export async function keyId(publicKey: Uint8Array): Promise<Uint8Array> {
  return new Uint8Array(await subtle().digest("SHA-256", own(publicKey))).slice(0, 8);
}

// ---- RFC 9180 on HMAC-SHA256, X25519 and AES-GCM ----

const KEM_SUITE = concat(utf8("KEM"), u16(KEM_X25519_HKDF_SHA256));
const HPKE_SUITE = concat(
  utf8("HPKE"),
  u16(KEM_X25519_HKDF_SHA256),
  u16(KDF_HKDF_SHA256),
  u16(AEAD_AES_128_GCM),
);
const HPKE_V1 = utf8("HPKE-v1");

async function hmac(key: Uint8Array, data: Uint8Array): Promise<Uint8Array> {
  const k = await subtle().importKey("raw", own(key.length ? key : new Uint8Array(32)), { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
  return new Uint8Array(await subtle().sign("HMAC", k, own(data)));
}

/** HKDF-Extract (RFC 5869): an empty salt is 32 zero bytes. */
export async function hkdfExtract(salt: Uint8Array, ikm: Uint8Array): Promise<Uint8Array> {
  return hmac(salt.length ? salt : new Uint8Array(32), ikm);
}

/** HKDF-Expand (RFC 5869) to `length` bytes. */
export async function hkdfExpand(prk: Uint8Array, info: Uint8Array, length: number): Promise<Uint8Array> {
  const out: Uint8Array[] = [];
  let previous: Uint8Array = new Uint8Array(0);
  for (let i = 1; out.length * 32 < length; i++) {
    previous = await hmac(prk, concat(previous, info, new Uint8Array([i])));
    out.push(previous);
  }
  return concat(...out).slice(0, length);
}

function labeledExtract(suite: Uint8Array, salt: Uint8Array, label: string, ikm: Uint8Array) {
  return hkdfExtract(salt, concat(HPKE_V1, suite, utf8(label), ikm));
}

function labeledExpand(suite: Uint8Array, prk: Uint8Array, label: string, info: Uint8Array, length: number) {
  return hkdfExpand(prk, concat(u16(length), HPKE_V1, suite, utf8(label), info), length);
}

const PKCS8_X25519 = new Uint8Array([
  0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x6e, 0x04, 0x22, 0x04, 0x20,
]);
const BASE_POINT = new Uint8Array(32);
BASE_POINT[0] = 9;

function importPrivate(raw: Uint8Array): Promise<CryptoKey> {
  return subtle().importKey("pkcs8", own(concat(PKCS8_X25519, raw)), { name: "X25519" }, false, ["deriveBits"]);
}

async function dh(privateKey: CryptoKey, publicRaw: Uint8Array): Promise<Uint8Array> {
  const pub = await subtle().importKey("raw", own(publicRaw), { name: "X25519" }, false, []);
  try {
    return new Uint8Array(await subtle().deriveBits({ name: "X25519", public: pub }, privateKey, 256));
  } catch {
    throw new EnvelopeError("the X25519 exchange failed: the public key is a small-order point");
  }
}

/** An X25519 private key (raw 32 bytes) and its public key. */
export interface KeyPair {
  privateKey: Uint8Array;
  publicKey: Uint8Array;
}

/** The public key of a raw X25519 private key. */
export async function publicOf(privateRaw: Uint8Array): Promise<Uint8Array> {
  return dh(await importPrivate(privateRaw), BASE_POINT);
}

/** RFC 9180 `DeriveKeyPair(ikm)` for X25519 (what the Rust `PrivateKey::derive` does). */
export async function deriveKeyPair(ikm: Uint8Array): Promise<KeyPair> {
  const prk = await labeledExtract(KEM_SUITE, new Uint8Array(0), "dkp_prk", ikm);
  const privateKey = await labeledExpand(KEM_SUITE, prk, "sk", new Uint8Array(0), 32);
  return { privateKey, publicKey: await publicOf(privateKey) };
}

async function sharedSecret(dhOut: Uint8Array, enc: Uint8Array, pkR: Uint8Array) {
  const prk = await labeledExtract(KEM_SUITE, new Uint8Array(0), "eae_prk", dhOut);
  return labeledExpand(KEM_SUITE, prk, "shared_secret", concat(enc, pkR), 32);
}

async function keySchedule(shared: Uint8Array): Promise<{ key: CryptoKey; nonce: Uint8Array }> {
  const none = new Uint8Array(0);
  const pskIdHash = await labeledExtract(HPKE_SUITE, none, "psk_id_hash", none);
  const infoHash = await labeledExtract(HPKE_SUITE, none, "info_hash", HPKE_INFO);
  const ksc = concat(new Uint8Array([0]), pskIdHash, infoHash);
  const secret = await labeledExtract(HPKE_SUITE, shared, "secret", none);
  const key = await labeledExpand(HPKE_SUITE, secret, "key", ksc, 16);
  const nonce = await labeledExpand(HPKE_SUITE, secret, "base_nonce", ksc, 12);
  return { key: await aesKey(key), nonce };
}

async function aesKey(raw: Uint8Array): Promise<CryptoKey> {
  return subtle().importKey("raw", own(raw), "AES-GCM", false, ["encrypt", "decrypt"]);
}

async function gcmSeal(key: CryptoKey, nonce: Uint8Array, aad: Uint8Array, plain: Uint8Array) {
  return new Uint8Array(
    await subtle().encrypt({ name: "AES-GCM", iv: own(nonce), additionalData: own(aad), tagLength: 128 }, key, own(plain)),
  );
}

async function gcmOpen(key: CryptoKey, nonce: Uint8Array, aad: Uint8Array, sealed: Uint8Array) {
  return new Uint8Array(
    await subtle().decrypt({ name: "AES-GCM", iv: own(nonce), additionalData: own(aad), tagLength: 128 }, key, own(sealed)),
  );
}

/** HPKE base-mode single-shot seal of `plain` to `pkR`: (enc, ciphertext). */
async function hpkeSeal(pkR: Uint8Array, aad: Uint8Array, plain: Uint8Array) {
  const eph = (await subtle().generateKey({ name: "X25519" }, true, ["deriveBits"])) as CryptoKeyPair;
  const enc = new Uint8Array(await subtle().exportKey("raw", eph.publicKey));
  const shared = await sharedSecret(await dh(eph.privateKey, pkR), enc, pkR);
  const ctx = await keySchedule(shared);
  return { enc, sealed: await gcmSeal(ctx.key, ctx.nonce, aad, plain) };
}

async function hpkeOpen(skR: Uint8Array, enc: Uint8Array, aad: Uint8Array, sealed: Uint8Array) {
  const priv = await importPrivate(skR);
  const pkR = await dh(priv, BASE_POINT);
  const shared = await sharedSecret(await dh(priv, enc), enc, pkR);
  const ctx = await keySchedule(shared);
  return gcmOpen(ctx.key, ctx.nonce, aad, sealed);
}

const ZERO_NONCE = new Uint8Array(12);

/**
 * Seals `payload` as the envelope of `save` to the exam's key and, if given, the restore key.
 * Randomised: seal a save once, when it is journaled, and send those bytes everywhere.
 */
export async function seal(keys: SealKeys, save: Save, payload: Uint8Array): Promise<Uint8Array> {
  if (payload.length === 0) throw new EnvelopeError("an empty payload is never sealed");
  const ctx = context(save);
  const recipients: [Role, Uint8Array][] = [[ROLE_EXAM, keys.exam]];
  if (keys.restore) recipients.push([ROLE_RESTORE, keys.restore]);
  const pre = preamble(recipients.length);
  const contentKey = globalThis.crypto.getRandomValues(new Uint8Array(16));
  const entries: Uint8Array[] = [];
  for (const [role, key] of recipients) {
    if (key.length !== 32) throw new EnvelopeError("an X25519 public key is 32 bytes");
    const id = await keyId(key);
    const aad = concat(pre, new Uint8Array([role]), id, ctx);
    const { enc, sealed } = await hpkeSeal(key, aad, contentKey);
    entries.push(concat(new Uint8Array([role]), id, enc, sealed));
  }
  const header = concat(pre, ...entries);
  const body = await gcmSeal(await aesKey(contentKey), ZERO_NONCE, concat(header, ctx), payload);
  return concat(header, body);
}

/** Whether `bytes` start like an envelope (the magic). */
export function looksLikeEnvelope(bytes: Uint8Array): boolean {
  return bytes.length >= 4 && equal(bytes.slice(0, 4), MAGIC);
}

/**
 * Opens `bytes` as the envelope of `save` with the raw X25519 private key of its `role`
 * recipient. Throws [`EnvelopeError`] if it is not this save's envelope or was changed; never
 * returns a partial plaintext.
 */
export async function open(bytes: Uint8Array, privateKey: Uint8Array, role: Role, save: Save): Promise<Uint8Array> {
  if (!looksLikeEnvelope(bytes)) throw new EnvelopeError("not an answer envelope (it does not start with \"HRAE\")");
  if (bytes.length < PREAMBLE_LEN || !equal(bytes.slice(0, 11), preamble(0).slice(0, 11))) {
    throw new EnvelopeError("the envelope's version or suite is not version 1's");
  }
  const count = bytes[11] as number;
  const headerLen = PREAMBLE_LEN + count * RECIPIENT_LEN;
  if (count < 1 || count > 4 || bytes.length < headerLen + 17) {
    throw new EnvelopeError("the envelope is malformed (recipient count or length)");
  }
  const id = await keyId(await publicOf(privateKey));
  const ctx = context(save);
  const header = bytes.slice(0, headerLen);
  for (let i = 0; i < count; i++) {
    const entry = bytes.slice(PREAMBLE_LEN + i * RECIPIENT_LEN, PREAMBLE_LEN + (i + 1) * RECIPIENT_LEN);
    if (entry[0] !== role || !equal(entry.slice(1, 9), id)) continue;
    const aad = concat(bytes.slice(0, PREAMBLE_LEN), new Uint8Array([role]), id, ctx);
    let contentKey: Uint8Array;
    try {
      contentKey = await hpkeOpen(privateKey, entry.slice(9, 41), aad, entry.slice(41));
    } catch {
      throw new EnvelopeError(
        "the envelope's content key does not open with this key for this save: it belongs to another exam, candidate, seq or final flag, or its header was changed",
      );
    }
    try {
      return await gcmOpen(await aesKey(contentKey), ZERO_NONCE, concat(header, ctx), bytes.slice(headerLen));
    } catch {
      throw new EnvelopeError("the envelope's body fails its check: its bytes were changed");
    }
  }
  throw new EnvelopeError(`the envelope is not sealed to this key (no role ${role} recipient with its key id)`);
}

// ---- the restore code on the exam card ----

const CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/**
 * The restore key pair of `exam`/`candidate` from the code on the exam card (28 Crockford
 * base32 characters with a 12-bit check; `I`/`L` read as `1`, `O` as `0`, dashes and spaces
 * ignored), as docs/envelope.md derives it.
 */
export async function restoreKeyPair(code: string, exam: string, candidate: string): Promise<KeyPair> {
  const text = code.toUpperCase().replace(/[-\s]/g, "").replace(/[IL]/g, "1").replace(/O/g, "0");
  if (text.length !== 28 || [...text].some((c) => !CROCKFORD.includes(c))) {
    throw new EnvelopeError("a restore code has 28 characters in groups of four (as printed on the exam card): type it again");
  }
  const decode = (s: string) => [...s].reduce((n, c) => (n << 5n) | BigInt(CROCKFORD.indexOf(c)), 0n);
  const head = decode(text.slice(0, 20));
  const tail = decode(text.slice(20));
  const secretN = (head << 28n) | (tail >> 12n);
  const secret = new Uint8Array(16);
  for (let i = 0; i < 16; i++) secret[i] = Number((secretN >> BigInt(8 * (15 - i))) & 0xffn);
  const digest = new Uint8Array(await subtle().digest("SHA-256", own(secret)));
  const check = ((digest[0] as number) << 4) | ((digest[1] as number) >> 4);
  if (Number(tail & 0xfffn) !== check) {
    throw new EnvelopeError("the restore code's check does not match: a character is mistyped. Type it again");
  }
  const prk = await hkdfExtract(utf8("hallrelay-restore-v1"), secret);
  const ikm = await hkdfExpand(prk, utf8(`exam=${exam}\ncandidate=${candidate}\n`), 32);
  return deriveKeyPair(ikm);
}

/** A raw X25519 public key from its base64url text (as the exam keys document writes it). */
export function publicKeyFromText(text: string): Uint8Array {
  const raw = fromBase64Url(text);
  if (raw.length !== 32) throw new EnvelopeError("not an X25519 public key (32 bytes, base64url without padding)");
  return raw;
}
