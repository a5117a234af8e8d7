// A refusal's code reaches the exam page, and going back to the cloud tells the boxes: the
// 409 codes (conflict, after_final, continued_elsewhere) read from the answer and carried by
// the `rejected` event; and `tellLeft` POSTs `…/left` with the candidate's token to every box,
// over real HTTP to a listening server, without throwing for a box that is gone.
import { test } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import { readPut } from "../dist/http.js";
import { events } from "../dist/events.js";
import { refusalOf, tellLeft, leftPath } from "../dist/index.js";

const reply = (status, body = "") => ({ status, headers: new Headers(), body: new TextEncoder().encode(body) });

test("each 409 code is read and told apart", () => {
  for (const code of ["conflict", "after_final", "continued_elsewhere"]) {
    const put = readPut(reply(409, JSON.stringify({ error: code, message: "what happened, what to do" })));
    assert.deepEqual(put, { kind: "refused", status: 409, reason: "what happened, what to do", code });
    const event = events.rejected(7, "the cloud", put.status, put.reason, put.code);
    assert.equal(event.code, code);
    assert.equal(event.refusal, code);
  }
  // An older server's 409 without a code is a conflict; a 403 has a code and no refusal.
  const bare = readPut(reply(409, "other bytes"));
  assert.equal(bare.code, undefined);
  assert.equal(events.rejected(1, "the cloud", 409, bare.reason).refusal, "conflict");
  const forbidden = events.rejected(1, "the cloud", 403, "no", "forbidden");
  assert.equal(forbidden.code, "forbidden");
  assert.equal(forbidden.refusal, undefined);
  assert.equal(refusalOf("some_later_code"), "conflict");
});

test("going back to the cloud tells every box, and a box that is gone does not throw", async () => {
  const heard = [];
  const server = http.createServer((req, res) => {
    let body = "";
    req.on("data", (c) => (body += c));
    req.on("end", () => {
      heard.push({ method: req.method, url: req.url, auth: req.headers.authorization, body });
      res.writeHead(204).end();
    });
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  const { port } = server.address();
  // A port nothing listens on: a box that is gone.
  const gone = http.createServer();
  await new Promise((r) => gone.listen(0, "127.0.0.1", r));
  const gonePort = gone.address().port;
  await new Promise((r) => gone.close(r));
  try {
    const told = await tellLeft(
      [
        { name: "hall-a", url: `http://127.0.0.1:${port}/` },
        { name: "hall-b", url: `http://127.0.0.1:${gonePort}` },
      ],
      "math-2026",
      "c042",
      "the-token",
      2000,
    );
    assert.equal(told[0].status, 204);
    assert.equal(told[1].status, undefined);
    assert.ok(told[1].error, "the gone box's error is reported, not thrown");
    assert.deepEqual(heard, [{ method: "POST", url: leftPath("math-2026", "c042"), auth: "Bearer the-token", body: "" }]);
    assert.equal(leftPath("math-2026", "c042"), "/v1/exams/math-2026/candidates/c042/left");
  } finally {
    await new Promise((r) => server.close(r));
  }
});
