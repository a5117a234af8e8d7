// The envelope against docs/envelope.md: the documented vector opens with this package's
// keys (derived from the vector's inputs), and what the package seals opens only as the save
// it was sealed for.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { seal, open, deriveKeyPair, restoreKeyPair, context, EnvelopeError, OVERHEAD_TWO_RECIPIENTS, ROLE_EXAM, ROLE_RESTORE } from "../dist/index.js";

const hex = (t) => Uint8Array.from(Buffer.from(t, "hex"));
const doc = readFileSync(fileURLToPath(new URL("../../../docs/envelope.md", import.meta.url)), "utf8");
const start = doc.indexOf("```json vector\n") + 15;
const vector = JSON.parse(doc.slice(start, doc.indexOf("```", start)));
const save = { exam: vector.exam, candidate: vector.candidate, seq: vector.seq, final: vector.final };

test("the documented vector's keys derive and both recipients open it", async () => {
  const exam = await deriveKeyPair(hex(vector.exam_ikm));
  assert.equal(Buffer.from(exam.publicKey).toString("hex"), vector.exam_public);
  const restore = await restoreKeyPair(vector.restore_code, vector.exam, vector.candidate);
  assert.equal(Buffer.from(restore.publicKey).toString("hex"), vector.restore_public);
  const envelope = hex(vector.envelope);
  for (const [key, role] of [[exam.privateKey, ROLE_EXAM], [restore.privateKey, ROLE_RESTORE]]) {
    const plain = await open(envelope, key, role, save);
    assert.equal(Buffer.from(plain).toString("utf8"), vector.plaintext);
    await assert.rejects(open(envelope, key, role, { ...save, seq: save.seq + 1 }), EnvelopeError, "seq + 1 must not open");
  }
});

test("the context is the documented text", () => {
  assert.equal(
    Buffer.from(context({ exam: "math-2026", candidate: "c001", seq: 7, final: true })).toString(),
    "hallrelay-envelope-v1\nexam=math-2026\ncandidate=c001\nseq=7\nfinal=1\n",
  );
});

test("a restore code with a mistyped character is refused by its check", async () => {
  const typo = vector.restore_code.replace(/^E/, "F");
  await assert.rejects(restoreKeyPair(typo, vector.exam, vector.candidate), /check does not match/);
  // Read as printed: lower case, I/L as 1, O as 0, without dashes.
  const relaxed = vector.restore_code.toLowerCase().replace(/-/g, " ");
  const a = await restoreKeyPair(relaxed, vector.exam, vector.candidate);
  assert.equal(Buffer.from(a.publicKey).toString("hex"), vector.restore_public);
});

test("what is sealed opens for both recipients, only as its own save, and any flipped byte fails", async () => {
  const exam = await deriveKeyPair(new Uint8Array(32).fill(1));
  const restore = await deriveKeyPair(new Uint8Array(32).fill(2));
  const mine = { exam: "math-2026", candidate: "c001", seq: 7, final: false };
  const payload = new TextEncoder().encode("photosynthesis turns light into sugar");
  const sealed = await seal({ exam: exam.publicKey, restore: restore.publicKey }, mine, payload);
  assert.equal(sealed.length, payload.length + OVERHEAD_TWO_RECIPIENTS);
  assert.equal(OVERHEAD_TWO_RECIPIENTS, 174);
  assert.deepEqual(await open(sealed, exam.privateKey, ROLE_EXAM, mine), payload);
  assert.deepEqual(await open(sealed, restore.privateKey, ROLE_RESTORE, mine), payload);
  for (const other of [{ exam: "math-2027" }, { candidate: "c002" }, { seq: 8 }, { final: true }]) {
    await assert.rejects(open(sealed, exam.privateKey, ROLE_EXAM, { ...mine, ...other }), EnvelopeError, JSON.stringify(other));
  }
  const again = await seal({ exam: exam.publicKey, restore: restore.publicKey }, mine, payload);
  assert.notDeepEqual(again, sealed, "sealing is randomised");
  for (let at = 0; at < sealed.length; at++) {
    const bad = Uint8Array.from(sealed);
    bad[at] ^= 1;
    await assert.rejects(open(bad, exam.privateKey, ROLE_EXAM, mine), EnvelopeError, `byte ${at} flipped opened`);
  }
  const stranger = await deriveKeyPair(new Uint8Array(32).fill(3));
  await assert.rejects(open(sealed, stranger.privateKey, ROLE_EXAM, mine), /not sealed to this key/);
  const examOnly = await seal({ exam: exam.publicKey }, mine, payload);
  assert.equal(examOnly.length, payload.length + 12 + 73 + 16);
  await assert.rejects(open(examOnly, restore.privateKey, ROLE_RESTORE, mine), /not sealed to this key/);
  await assert.rejects(seal({ exam: exam.publicKey }, mine, new Uint8Array(0)), EnvelopeError);
});
