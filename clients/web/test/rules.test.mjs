// The small rules the Autosaver is built on: how a PUT's answer is read (the protocol's table,
// as crates/protocol/src/v1/autosave.rs `Answer`), which address space a box URL is declared
// in, which URLs a listed box is tried at, and the receipts header.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readPut, addressSpaceOf } from "../dist/http.js";
import { checkRelayList, urlsOf } from "../dist/relays.js";
import { receiptsHeader } from "../dist/index.js";

const reply = (status, body = "") => ({ status, headers: new Headers(), body: new TextEncoder().encode(body) });

test("answers are read the protocol's way", () => {
  for (const s of [200, 201]) assert.equal(readPut(reply(s, "{}")).kind, "stored", String(s));
  for (const s of [400, 401, 403, 404, 409, 413]) {
    const put = readPut(reply(s, '{"error":"conflict","message":"words"}'));
    assert.deepEqual(put, { kind: "refused", status: s, reason: "words", code: "conflict" }, String(s));
  }
  // The code tells a refusal for good from "the candidate continued on another device".
  const elsewhere = readPut(reply(409, '{"error":"continued_elsewhere","message":"another device"}'));
  assert.equal(elsewhere.code, "continued_elsewhere");
  assert.equal(readPut(reply(404, "not json")).code, undefined);
  for (const s of [429, 503]) assert.equal(readPut(reply(s)).kind, "busy", String(s));
  for (const s of [408, 425, 500, 502, 507]) assert.equal(readPut(reply(s)).kind, "failed", String(s));
  assert.equal(readPut(reply(201, ' {"seq":1}\n')).receipt, '{"seq":1}');
});

test("a box URL is declared in its address space", () => {
  const cases = {
    "https://127.0.0.1:8443": "loopback",
    "https://localhost:8443": "loopback",
    "https://[::1]:8443": "loopback",
    "https://10.0.7.2:8443": "local",
    "https://172.20.1.1": "local",
    "https://192.168.1.9:8443": "local",
    "https://169.254.3.3": "local",
    "https://[fe80::1]:8443": "local",
    "https://[fd00::2]:8443": "local",
    "https://hall-a.local:8443": "local",
    "https://box.hall.example": undefined,
    "https://100.64.0.1": undefined,
    "https://8.8.8.8": undefined,
    "https://172.32.0.1": undefined,
    "https://[2001:db8::1]": undefined,
  };
  for (const [url, space] of Object.entries(cases)) assert.equal(addressSpaceOf(url), space, url);
});

test("a listed box is tried at its addresses, then at NAME.local; bad entries are dropped alone", () => {
  const pin = "sha256//" + "A".repeat(43) + "=";
  const list = checkRelayList({
    venue: "hall-7",
    relays: [
      { name: "Hall-A", pin, addresses: ["10.0.0.2:8443", "[fe80::1]:8443", "https://evil.example", "10.0.0.3"] },
      { name: "bad-pin", pin: "sha256//short", addresses: ["10.0.0.4:8443"] },
      { name: "no addresses, odd name", pin, addresses: [] },
    ],
    extra: 1,
  });
  assert.equal(list.relays.length, 2);
  assert.deepEqual(urlsOf(list.relays[0]), ["https://10.0.0.2:8443", "https://[fe80::1]:8443", "https://hall-a.local:8443"]);
  assert.deepEqual(urlsOf(list.relays[1]), []);
  assert.throws(() => checkRelayList({ relays: [] }), /not \{venue/);
});

test("receipts go as base64url of their JSON, comma-separated, at most four", () => {
  const bodies = [1, 2, 3, 4, 5].map((n) => JSON.stringify({ seq: n, pin: `p${n}` }));
  const header = receiptsHeader(bodies);
  const parts = header.split(",");
  assert.equal(parts.length, 4);
  assert.deepEqual(JSON.parse(Buffer.from(parts[0], "base64url").toString()), { seq: 1, pin: "p1" });
  assert.ok(!/[=+/]/.test(header));
  assert.equal(receiptsHeader([]), "");
});
