// The journal's rules on an IndexedDB (fake-indexeddb here; Chromium's real one in the browser
// tests): no seq is given out twice, across reopening and after pruning; the cloud's saves are
// pruned but the newest is kept; receipts are kept one per box.
import "fake-indexeddb/auto";
import { test } from "node:test";
import assert from "node:assert/strict";
import { Journal } from "../dist/index.js";

const bytes = (t) => new TextEncoder().encode(t);
const plain = (t) => async () => ({ bytes: bytes(t), awaitsKeys: false });
let n = 0;
const fresh = () => `journal-test-${++n}`;

test("seqs go on after a reopen and after every save was pruned", async () => {
  const name = fresh();
  let j = await Journal.open(indexedDB, name, "math", "c001");
  assert.equal(await j.lastSeq(), 0);
  const seqs = [];
  for (const t of ["a", "b", "c"]) seqs.push((await j.append(0, false, plain(t))).seq);
  assert.deepEqual(seqs, [1, 2, 3]);
  for (const s of seqs) await j.markCloud(s);
  // Everything the cloud has is gone but the newest.
  assert.deepEqual((await j.entries()).map((e) => e.seq), [3]);
  assert.deepEqual(await j.notInCloud(), []);
  j.close();
  j = await Journal.open(indexedDB, name, "math", "c001");
  assert.equal(await j.lastSeq(), 3);
  assert.equal((await j.append(0, false, plain("d"))).seq, 4);
  // A floor (the cloud's newest seq, for a fresh journal) is respected; the newest given out too.
  assert.equal((await j.append(10, false, plain("e"))).seq, 11);
  assert.equal((await j.append(5, false, plain("f"))).seq, 12);
  // Another candidate's journal in the same database counts on its own.
  const other = await Journal.open(indexedDB, name, "math", "c002");
  assert.equal((await other.append(0, false, plain("x"))).seq, 1);
  j.close();
  other.close();
});

test("a seq given out for a save that was never written is not given out again", async () => {
  const name = fresh();
  const j = await Journal.open(indexedDB, name, "math", "c001");
  await assert.rejects(j.append(0, false, async () => { throw new Error("sealing failed"); }), /sealing failed/);
  assert.equal((await j.append(0, false, plain("a"))).seq, 2);
  // Concurrent saves get distinct seqs.
  const many = await Promise.all(Array.from({ length: 20 }, (_, i) => j.append(0, false, plain(`s${i}`))));
  assert.equal(new Set(many.map((e) => e.seq)).size, 20);
  assert.equal(await j.lastSeq(), 22);
  j.close();
});

test("box receipts are kept one per box; pending saves are what the cloud lacks", async () => {
  const j = await Journal.open(indexedDB, fresh(), "math", "c001");
  await j.append(0, false, plain("a"));
  await j.append(0, true, async () => ({ bytes: bytes("plain"), awaitsKeys: true }));
  assert.deepEqual(await j.onlyHere(), [1]);
  assert.deepEqual(await j.awaitingKeys(), [2]);
  await j.markBox(1, JSON.stringify({ pin: "sha256//A", seq: 1 }));
  await j.markBox(1, JSON.stringify({ pin: "sha256//A", seq: 1, again: true }));
  await j.markBox(1, JSON.stringify({ pin: "sha256//B", seq: 1 }));
  const e = await j.get(1);
  assert.equal(e.held, "box");
  assert.equal(e.receipts.length, 2);
  assert.match(e.receipts[0], /again/);
  await j.seal(2, bytes("HRAE-sealed"));
  const sealed = await j.get(2);
  assert.equal(sealed.awaitsKeys, false);
  assert.equal(new TextDecoder().decode(sealed.bytes), "HRAE-sealed");
  assert.equal(sealed.final, true);
  assert.deepEqual(await j.notInCloud(), [1, 2]);
  // The cloud takes the older one: it goes; the newest stays even once the cloud has it.
  await j.markCloud(1);
  assert.deepEqual((await j.entries()).map((x) => x.seq), [2]);
  await j.markCloud(2);
  assert.deepEqual((await j.entries()).map((x) => [x.seq, x.held]), [[2, "cloud"]]);
  j.close();
});

test("the meta values survive a reopen", async () => {
  const name = fresh();
  let j = await Journal.open(indexedDB, name, "math", "c001");
  await j.putMeta("relays", { venue: "hall-7", relays: [] });
  j.close();
  j = await Journal.open(indexedDB, name, "math", "c001");
  assert.deepEqual(await j.getMeta("relays"), { venue: "hall-7", relays: [] });
  assert.equal(await j.getMeta("examKeys"), undefined);
  j.close();
});

test("a fresh journal keeps saves without a seq until the floor is known, then numbers them after it", async () => {
  const name = fresh();
  let j = await Journal.open(indexedDB, name, "math", "c001");
  const device = j.deviceId;
  assert.match(device, /^[0-9a-f]{32}$/);
  assert.equal(await j.isNumbered(), false);
  assert.equal(await j.appendPending(bytes("one"), false), 1);
  assert.equal(await j.appendPending(bytes("two"), true), 2);
  assert.deepEqual(await j.entries(), [], "nothing to send while unnumbered");
  j.close();
  // A reload: still waiting, same device.
  j = await Journal.open(indexedDB, name, "math", "c001");
  assert.equal(j.deviceId, device);
  assert.equal((await j.pending()).length, 2);
  assert.deepEqual(await j.numberPending(7, true), [8, 9]);
  assert.equal(await j.isNumbered(), true);
  assert.deepEqual((await j.pending()).length, 0);
  assert.deepEqual(await j.awaitingKeys(), [8, 9]);
  assert.equal(new TextDecoder().decode((await j.get(9)).bytes), "two");
  assert.equal((await j.get(9)).final, true);
  assert.equal((await j.append(0, false, plain("three"))).seq, 10);
  // Numbered once: a later floor does not move it.
  assert.deepEqual(await j.numberPending(100, true), []);
  assert.equal((await j.append(0, false, plain("four"))).seq, 11);
  // Another journal (a spare laptop's) is another device.
  const other = await Journal.open(indexedDB, fresh(), "math", "c001");
  assert.notEqual(other.deviceId, device);
  j.close();
  other.close();
});

test("a known floor with nothing waiting is kept: the first save follows it", async () => {
  const name = fresh();
  let j = await Journal.open(indexedDB, name, "math", "c001");
  assert.deepEqual(await j.numberPending(41, false), []);
  j.close();
  j = await Journal.open(indexedDB, name, "math", "c001");
  assert.equal(await j.isNumbered(), true);
  assert.equal(await j.lastSeq(), 41);
  assert.equal((await j.append(0, false, plain("x"))).seq, 42);
  j.close();
});
