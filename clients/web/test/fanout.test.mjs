// Two boxes in one hall (src/fanout.ts): when saves go to two boxes, how a box is told apart
// from another, and what each PUT names in Hallrelay-Also-Held. The Autosaver's end-to-end
// behaviour with two real boxes is tested from tests/web_package.rs.
import { test } from "node:test";
import assert from "node:assert/strict";
import { copiesWanted, alsoHeldFor, identityOf, sameBox, issued } from "../dist/index.js";
import { checkRelayList } from "../dist/relays.js";

const PIN_A = "sha256//" + "A".repeat(43) + "=";
const PIN_B = "sha256//" + "B".repeat(43) + "=";
const list = (relays, extra = {}) => checkRelayList({ venue: "v", relays, ...extra });
const box = (name, pin) => ({ name, pin, addresses: ["10.0.0.2:8443"] });
const receipt = (pin, appliance = "x") => JSON.stringify({ seq: 1, pin, appliance });

test("two copies only when two boxes are known and nobody says 1", () => {
  const two = list([box("a", PIN_A), box("b", PIN_B)]);
  assert.equal(copiesWanted(undefined, [], two), 2);
  assert.equal(copiesWanted(undefined, [], list([box("a", PIN_A)])), 1, "one box");
  assert.equal(copiesWanted(undefined, [], list([box("a", PIN_A), box("a again", PIN_A)])), 1, "one pin twice is one box");
  assert.equal(copiesWanted(undefined, [{ name: "hall-a", urls: [] }], list([box("b", PIN_B)])), 2, "configured + listed");
  // The platform turns it off in the relay list; the client's option overrides the list.
  const off = list([box("a", PIN_A), box("b", PIN_B)], { hall_copies: 1 });
  assert.equal(off.hall_copies, 1);
  assert.equal(copiesWanted(undefined, [], off), 1);
  assert.equal(copiesWanted(2, [], off), 2);
  assert.equal(copiesWanted(1, [], two), 1);
  assert.equal(list([], { hall_copies: 7 }).hall_copies, undefined, "a value that is not 1 or 2 is dropped");
  assert.equal(copiesWanted(undefined, [], null), 1);
});

test("a box is known by the pin its health names, else its appliance id", () => {
  const a = identityOf(new TextEncoder().encode(JSON.stringify({ status: "ok", pin: PIN_A, appliance: "app-a" })));
  assert.deepEqual(a, { pin: PIN_A, appliance: "app-a" });
  assert.deepEqual(identityOf(new TextEncoder().encode("not json")), {});
  assert.ok(sameBox(a, { pin: PIN_A }));
  assert.ok(!sameBox(a, { pin: PIN_B, appliance: "app-a" }), "the pin decides when both have one");
  assert.ok(sameBox({ appliance: "app-a" }, a));
  assert.ok(!sameBox({}, {}), "two unknown boxes are not taken for one");
  assert.ok(issued(a, receipt(PIN_A)));
  assert.ok(!issued(a, receipt(PIN_B, "app-a")));
  assert.ok(issued(a, JSON.stringify({ appliance: "app-a" })), "a version-1 receipt names its appliance");
  assert.ok(!issued(a, "garbage"));
});

test("Hallrelay-Also-Held names the other box holding the newest save, never the box itself", () => {
  const both = [receipt(PIN_A), receipt(PIN_B)];
  assert.equal(alsoHeldFor({ pin: PIN_A }, both), PIN_B);
  assert.equal(alsoHeldFor({ pin: PIN_B }, both), PIN_A);
  assert.equal(alsoHeldFor({ pin: PIN_B }, [receipt(PIN_B)]), undefined, "held by this box alone");
  assert.equal(alsoHeldFor({ pin: PIN_A }, []), undefined);
  assert.equal(alsoHeldFor({ pin: PIN_A }, ["garbage", receipt(PIN_B)]), PIN_B);
});
