// The exam keys document is checked as the Rust `ExamKeys::verify` checks it: a document signed
// by a platform key verifies; a changed field, another save, another suite or an unknown
// signer does not.
import { test } from "node:test";
import assert from "node:assert/strict";
import { verifyExamKeys, parsePlatformKeys, keySetFromJson, signedText, ExamKeysError, SUITE, deriveKeyPair } from "../dist/index.js";

const b64u = (bytes) => Buffer.from(bytes).toString("base64url");

async function platform() {
  const pair = await crypto.subtle.generateKey({ name: "Ed25519" }, true, ["sign", "verify"]);
  const raw = new Uint8Array(await crypto.subtle.exportKey("raw", pair.publicKey));
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", raw));
  return { pair, raw, kid: Buffer.from(digest.slice(0, 8)).toString("hex") };
}

async function signed(p, fields) {
  const exam = await deriveKeyPair(new Uint8Array(32).fill(1));
  const restore = await deriveKeyPair(new Uint8Array(32).fill(2));
  const doc = {
    exam: "math", candidate: "c001", suite: SUITE,
    exam_key: b64u(exam.publicKey), restore_key: b64u(restore.publicKey),
    issued_at: "2026-12-05T09:00:00Z", kid: p.kid, signature: "", ...fields,
  };
  doc.signature = b64u(new Uint8Array(await crypto.subtle.sign("Ed25519", p.pair.privateKey, new TextEncoder().encode(signedText(doc)))));
  return { doc, exam, restore };
}

test("the signed text is the documented one", () => {
  const doc = { exam: "e", candidate: "c", suite: SUITE, exam_key: "K", issued_at: "T", kid: "k", signature: "s" };
  assert.equal(signedText(doc), `hallrelay-exam-keys-v1\nexam=e\ncandidate=c\nsuite=${SUITE}\nexam_key=K\nrestore_key=\nissued_at=T\n`);
  assert.equal(signedText({ ...doc, restore_key: "R" }), `hallrelay-exam-keys-v1\nexam=e\ncandidate=c\nsuite=${SUITE}\nexam_key=K\nrestore_key=R\nissued_at=T\n`);
});

test("a signed document verifies, in each form platform keys are given", async () => {
  const p = await platform();
  const { doc, exam, restore } = await signed(p, {});
  for (const lines of [[b64u(p.raw)], [`${p.kid} ${b64u(p.raw)}`], [JSON.stringify({ keys: [{ kid: p.kid, alg: "Ed25519", public: b64u(p.raw) }] })]]) {
    const keys = await verifyExamKeys(doc, await parsePlatformKeys(lines), "math", "c001");
    assert.deepEqual(keys.exam, exam.publicKey);
    assert.deepEqual(keys.restore, restore.publicKey);
  }
  const noRestore = await signed(p, { restore_key: undefined });
  const keys = await verifyExamKeys(noRestore.doc, keySetFromJson({ keys: [{ kid: p.kid, alg: "Ed25519", public: b64u(p.raw) }] }), "math", "c001");
  assert.equal(keys.restore, undefined);
});

test("a tampered, misdirected or foreign document is refused with its reason", async () => {
  const p = await platform();
  const keys = await parsePlatformKeys([b64u(p.raw)]);
  const { doc } = await signed(p, {});
  const other = await deriveKeyPair(new Uint8Array(32).fill(3));
  const cases = [
    [{ ...doc, exam_key: b64u(other.publicKey) }, /signature does not verify/],
    [{ ...doc, restore_key: undefined }, /signature does not verify/],
    [{ ...doc, issued_at: "2026-12-05T09:00:01Z" }, /signature does not verify/],
    [{ ...doc, signature: doc.signature.slice(0, -2) + (doc.signature.endsWith("AA") ? "BA" : "AA") }, /signature does not verify/],
    [{ ...doc, candidate: "c002" }, /not for this candidate's exam/],
    [{ ...doc, suite: "X25519-HKDF-SHA256/CHACHA20" }, /suite/],
    [{ ...doc, kid: "0000000000000000" }, /not one of the platform's keys/],
  ];
  for (const [bad, why] of cases) {
    await assert.rejects(verifyExamKeys(bad, keys, "math", "c001"), (e) => e instanceof ExamKeysError && why.test(e.message), JSON.stringify(bad));
  }
  // Signed by another key that claims the platform's kid.
  const forger = await platform();
  const forged = await signed({ ...forger, kid: p.kid }, {});
  await assert.rejects(verifyExamKeys(forged.doc, keys, "math", "c001"), /signature does not verify/);
  await assert.rejects(parsePlatformKeys(["not-a-key"]), /32 bytes/);
});
