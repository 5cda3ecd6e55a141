// The companion Worker's own tests: node's test runner against workerd through Miniflare
// (serve.mjs's start()). Run with `node --test test/` (FLOWCRAFT_MINIFLARE_DIR pointing at the
// installed packages, or node_modules next to the Worker); pytest runs them too
// (packages/flowcraft-cloudflare/tests/test_cloudflare_js.py).

import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { start } from "../serve.mjs";

const SECRET = "js-test-secret-0123456789";
let mf;
let base;

before(async () => {
  ({ mf, url: base } = await start({ port: 0, secret: SECRET, shards: 4 }));
});

after(async () => {
  await mf?.dispose();
});

async function call(route, body, { secret = SECRET, ns = "js" } = {}) {
  const headers = { "content-type": "application/json", "x-flowcraft-namespace": ns };
  if (secret) headers.authorization = `Bearer ${secret}`;
  const r = await fetch(new URL(`v1/${route}`, base), {
    method: "POST",
    headers,
    body: typeof body === "string" ? body : JSON.stringify(body),
  });
  return { status: r.status, body: await r.json() };
}

test("a commit is compare-and-set on the version and stores only the keys sent", async () => {
  let r = await call("runs/commit", { run: "a", ops: [["x", "1"], ["y", "2"]], expected: 0, status: "running" });
  assert.deepEqual(r.body.result, { ok: true, version: 1 });
  r = await call("runs/commit", { run: "a", ops: [["x", "9"]], expected: 0 });
  assert.deepEqual(r.body.result, { ok: false, version: 1 });
  r = await call("runs/commit", { run: "a", ops: [["y", null], ["z", "3"]], expected: 1 });
  assert.deepEqual(r.body.result, { ok: true, version: 2 });
  r = await call("runs/load", { run: "a" });
  assert.deepEqual(r.body.result, { version: 2, status: "running", data: { x: "1", z: "3" } });
});

test("16 concurrent commits at one version: exactly one wins", async () => {
  await call("runs/commit", { run: "race", ops: [], expected: 0, status: "running" });
  const rs = await Promise.all(
    Array.from({ length: 16 }, (_, i) => call("runs/commit", { run: "race", ops: [["w", String(i)]], expected: 1 })),
  );
  assert.equal(rs.filter((r) => r.body.result.ok).length, 1);
});

test("16 concurrent set_if_not_exist: exactly one wins; an expired key is absent", async () => {
  const rs = await Promise.all(
    Array.from({ length: 16 }, (_, i) => call("coord", { op: "set_if_not_exist", key: "L", value: `v${i}`, ttl: 0.3 })),
  );
  assert.equal(rs.filter((r) => r.body.result.result === true).length, 1);
  await new Promise((res) => setTimeout(res, 450));
  const g = await call("coord", { op: "get", key: "L" });
  assert.equal(g.body.result.result, null);
});

test("the active-run index follows the status and namespaces are apart", async () => {
  await call("runs/commit", { run: "b", ops: [], expected: 0, status: "running" }, { ns: "other" });
  let r = await call("runs/active", {}, { ns: "other" });
  assert.deepEqual(r.body.result, { runs: ["b"], cursor: null });
  await call("runs/commit", { run: "b", ops: [], expected: 1, status: "failed" }, { ns: "other" });
  r = await call("runs/active", {}, { ns: "other" });
  assert.deepEqual(r.body.result, { runs: [], cursor: null });
  r = await call("runs/load", { run: "b" }, { ns: "js" });
  assert.equal(r.body.result.version, 0);
});

test("pull leases a message; an expired lease makes it visible again with attempts + 1", async () => {
  await call("queues/jq/messages", { body: "m1" });
  let r = await call("queues/jq/messages/pull", { batch_size: 5, visibility_timeout_ms: 200 });
  assert.equal(r.body.result.messages.length, 1);
  assert.equal(r.body.result.messages[0].attempts, 1);
  await new Promise((res) => setTimeout(res, 300));
  r = await call("queues/jq/messages/pull", { batch_size: 5, visibility_timeout_ms: 5000 });
  assert.equal(r.body.result.messages[0].attempts, 2);
  const ack = await call("queues/jq/messages/ack", { acks: [{ lease_id: r.body.result.messages[0].lease_id }] });
  assert.equal(ack.body.result.ackCount, 1);
});

test("no secret: 401; wrong secret: 403; malformed: 400 naming the problem", async () => {
  assert.equal((await call("runs/load", { run: "a" }, { secret: null })).status, 401);
  assert.equal((await call("runs/load", { run: "a" }, { secret: "not-the-secret-at-all" })).status, 403);
  const r = await call("runs/commit", { run: "a", ops: "nope", expected: 2 });
  assert.equal(r.status, 400);
  assert.equal(r.body.error, "ops must be an array");
  const l = await call("runs/load", { run: "a" });
  assert.equal(l.body.result.version, 2);
});
