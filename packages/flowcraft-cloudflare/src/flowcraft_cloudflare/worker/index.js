// The companion Worker of flowcraft-cloudflare: run state, coordination keys and job inboxes
// in SQLite-backed Durable Objects, served over HTTP to Python workers (flowcraft_cloudflare).
//
// Durable Objects (each a single-threaded SQLite database; every method below does its SQL
// synchronously, so no other request interleaves with a read-check-write):
//   RunObject     one per run (idFromName(run id)): rows (key, value text), the version and the
//                 status. A commit is one transactionSync: version check, the changed keys
//                 only, version + 1.
//   IndexObject   one ("active"): the active-run index, (run, version, active), paged by run id.
//   CoordObject   COORD_SHARDS shards by key hash: increment, set-if-not-exist, extend,
//                 get, delete, compare-and-delete; expiry checked on every read, expired rows
//                 removed by an alarm.
//   InboxObject   one per queue name: messages with a visible-at time (delays), leases
//                 (visibility timeouts), attempts, ack / retry with delay / dead letters.
//
// Every route needs `Authorization: Bearer <FLOWCRAFT_SECRET>` (a Worker secret). Malformed
// requests get 4xx and {"error": "..."} naming the problem, before anything is written.

import { DurableObject } from "cloudflare:workers";

const MAX_REQUEST_BYTES = 32 * 1024 * 1024; // refuse larger request bodies (413)
const MAX_VALUE_BYTES = 1_000_000; // an encoded context value / coordination value
const MAX_MESSAGE_BYTES = 128 * 1024; // one queue message (Cloudflare Queues' limit)
const MAX_DELAY_SECONDS = 12 * 3600; // Cloudflare Queues' delay / retry-delay cap
const MAX_VISIBILITY_MS = 12 * 3600 * 1000; // Cloudflare Queues' visibility cap
const MAX_BATCH = 100; // messages per send batch / pull (Cloudflare Queues' limit)
const MAX_PAGE = 1000; // runs per active-index page, statuses per status read

class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

const bad = (msg) => new HttpError(400, msg);

function json(body, status = 200) {
  return new Response(JSON.stringify(body), {
    status,
    headers: { "content-type": "application/json" },
  });
}

// -- validation --------------------------------------------------------------------------------

function str(v, name, { max = 4096, allowEmpty = false } = {}) {
  if (typeof v !== "string") throw bad(`${name} must be a string`);
  if (!allowEmpty && v.length === 0) throw bad(`${name} must not be empty`);
  if (v.length > max) throw bad(`${name} is longer than ${max} characters`);
  return v;
}

function num(v, name, { min = 0, max = Number.MAX_SAFE_INTEGER, int = false } = {}) {
  if (typeof v !== "number" || !Number.isFinite(v)) throw bad(`${name} must be a number`);
  if (int && !Number.isInteger(v)) throw bad(`${name} must be an integer`);
  if (v < min || v > max) throw bad(`${name} must be between ${min} and ${max}`);
  return v;
}

function optStr(v, name) {
  return v === undefined || v === null ? null : str(v, name, { max: 64 });
}

function obj(v, name) {
  if (v === null || typeof v !== "object" || Array.isArray(v)) throw bad(`${name} must be an object`);
  return v;
}

function arr(v, name, max) {
  if (!Array.isArray(v)) throw bad(`${name} must be an array`);
  if (v.length > max) throw bad(`${name} has more than ${max} entries`);
  return v;
}

function utf8Length(s) {
  return new TextEncoder().encode(s).length;
}

// A string that SQLite can store as text: lone UTF-16 surrogates cannot be UTF-8.
function wellFormed(s, name) {
  if (typeof s.isWellFormed === "function" ? !s.isWellFormed() : /[\ud800-\udfff]/.test(s)) {
    throw bad(`${name} contains a lone UTF-16 surrogate`);
  }
  return s;
}

function parseOps(v) {
  const ops = arr(v, "ops", 100_000);
  return ops.map((op, i) => {
    if (!Array.isArray(op) || op.length !== 2) throw bad(`ops[${i}] must be [key, value or null]`);
    const key = wellFormed(str(op[0], `ops[${i}][0] (the key)`, { max: 65_536, allowEmpty: true }), `ops[${i}][0]`);
    if (op[1] === null) return [key, null];
    const text = wellFormed(str(op[1], `ops[${i}][1] (the value)`, { max: MAX_VALUE_BYTES, allowEmpty: true }), `ops[${i}][1]`);
    if (utf8Length(text) > MAX_VALUE_BYTES) throw bad(`ops[${i}][1]: value of key ${JSON.stringify(key)} is over ${MAX_VALUE_BYTES} bytes`);
    return [key, text];
  });
}

// -- RunObject: one run ------------------------------------------------------------------------

export class RunObject extends DurableObject {
  constructor(ctx, env) {
    super(ctx, env);
    this.sql = ctx.storage.sql;
    this.sql.exec(`CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
      CREATE TABLE IF NOT EXISTS meta (id INTEGER PRIMARY KEY CHECK (id = 1), ns TEXT NOT NULL,
        run TEXT, version INTEGER NOT NULL, status TEXT, indexed INTEGER NOT NULL DEFAULT 0);`);
  }

  meta() {
    const rows = this.sql.exec("SELECT ns, run, version, status, indexed FROM meta WHERE id = 1").toArray();
    return rows[0] ?? null;
  }

  load() {
    const m = this.meta();
    if (!m) return { version: 0, status: null, data: {} };
    const data = {};
    for (const r of this.sql.exec("SELECT key, value FROM kv")) data[r.key] = r.value;
    return { version: m.version, status: m.status, data };
  }

  status() {
    return this.meta()?.status ?? null;
  }

  // Compare-and-set: apply ops (in order) if the version is `expected` (null: any), bump it,
  // record `status` (null: unchanged). Synchronous, in one transaction.
  commit(ns, run, ops, expected, status) {
    const result = this.ctx.storage.transactionSync(() => {
      const m = this.meta();
      const version = m ? m.version : 0;
      if (expected !== null && version !== expected) return { ok: false, version };
      for (const [key, value] of ops) {
        if (value === null) this.sql.exec("DELETE FROM kv WHERE key = ?", key);
        else this.sql.exec("INSERT INTO kv (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value", key, value);
      }
      const newStatus = status ?? m?.status ?? null;
      this.sql.exec(
        "INSERT INTO meta (id, ns, run, version, status) VALUES (1, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET version = excluded.version, status = excluded.status",
        ns, run, version + 1, newStatus,
      );
      const reindex = isActive(newStatus) !== isActive(m?.status ?? null);
      return { ok: true, version: version + 1, status: newStatus, reindex };
    });
    if (result.reindex) {
      // The output gate holds the reply until this alarm is stored with the commit: if the
      // index update of the request (below, in the front Worker) never happens, it does.
      this.ctx.storage.setAlarm(Date.now() + 5000);
    }
    return result;
  }

  markIndexed(version) {
    this.sql.exec("UPDATE meta SET indexed = ? WHERE id = 1 AND indexed < ?", version, version);
  }

  // A commit that changed whether the run is active leaves `indexed` behind `version`: this
  // alarm repeats the index update that the commit's request did (in case that one failed).
  async alarm() {
    const m = this.meta();
    if (!m || m.indexed >= m.version) return;
    await indexStub(this.env, m.ns).put(m.run, m.version, isActive(m.status));
    this.markIndexed(m.version);
  }

  deleteAll() {
    const m = this.meta();
    this.sql.exec("DELETE FROM kv; DELETE FROM meta;");
    return m ? 1 : 0;
  }
}

const FINAL = new Set(["completed", "failed", "cancelled"]);

function isActive(status) {
  return status !== null && status !== undefined && !FINAL.has(status);
}

function indexStub(env, ns) {
  return env.INDEX.get(env.INDEX.idFromName(`active:${ns}`));
}

// -- IndexObject: the active-run index ---------------------------------------------------------

export class IndexObject extends DurableObject {
  constructor(ctx, env) {
    super(ctx, env);
    this.sql = ctx.storage.sql;
    this.sql.exec(`CREATE TABLE IF NOT EXISTS runs (run TEXT PRIMARY KEY, version INTEGER NOT NULL,
      active INTEGER NOT NULL);
      CREATE INDEX IF NOT EXISTS runs_active ON runs (active, run);`);
  }

  // Record the run's state as of `version`; an older update arriving late changes nothing.
  put(run, version, active) {
    this.sql.exec(
      `INSERT INTO runs (run, version, active) VALUES (?, ?, ?)
       ON CONFLICT (run) DO UPDATE SET version = excluded.version, active = excluded.active
       WHERE excluded.version > runs.version`,
      run, version, active ? 1 : 0,
    );
  }

  remove(run) {
    this.sql.exec("DELETE FROM runs WHERE run = ?", run);
  }

  page(cursor, limit) {
    const rows = this.sql
      .exec("SELECT run FROM runs WHERE active = 1 AND run > ? ORDER BY run LIMIT ?", cursor ?? "", limit + 1)
      .toArray();
    const runs = rows.slice(0, limit).map((r) => r.run);
    return { runs, cursor: rows.length > limit ? runs[runs.length - 1] : null };
  }
}

// -- CoordObject: coordination keys ------------------------------------------------------------

export class CoordObject extends DurableObject {
  constructor(ctx, env) {
    super(ctx, env);
    this.sql = ctx.storage.sql;
    this.sql.exec("CREATE TABLE IF NOT EXISTS keys (key TEXT PRIMARY KEY, value TEXT NOT NULL, expires REAL NOT NULL)");
    this.sql.exec("CREATE INDEX IF NOT EXISTS keys_expires ON keys (expires)");
  }

  live(key, now) {
    const r = this.sql.exec("SELECT value, expires FROM keys WHERE key = ?", key).toArray()[0];
    return r && r.expires > now ? r.value : null;
  }

  put(key, value, expires) {
    this.sql.exec(
      "INSERT INTO keys (key, value, expires) VALUES (?, ?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires = excluded.expires",
      key, value, expires,
    );
  }

  async op(op, key, value, ttl) {
    const now = Date.now() / 1000;
    const cur = this.live(key, now);
    let result;
    switch (op) {
      case "get":
        return cur;
      case "delete":
        this.sql.exec("DELETE FROM keys WHERE key = ?", key);
        return true;
      case "compare_and_delete":
        if (cur === null || cur !== value) return false;
        this.sql.exec("DELETE FROM keys WHERE key = ?", key);
        return true;
      case "increment": {
        const n = cur === null ? 1 : (Number.parseInt(cur, 10) || 0) + 1;
        this.put(key, String(n), now + ttl);
        result = n;
        break;
      }
      case "set_if_not_exist":
        if (cur !== null) return false;
        this.put(key, value, now + ttl);
        result = true;
        break;
      case "extend_ttl":
        if (cur === null) return false;
        this.put(key, cur, now + ttl);
        result = true;
        break;
      default:
        throw bad(`unknown op ${JSON.stringify(op)}`);
    }
    await this.arm(now + ttl);
    return result;
  }

  async arm(at) {
    const alarm = await this.ctx.storage.getAlarm();
    if (alarm === null || alarm > at * 1000) await this.ctx.storage.setAlarm(Math.ceil(at * 1000) + 1);
  }

  // Expired keys are already absent to every operation; the alarm only frees their rows.
  async alarm() {
    const now = Date.now() / 1000;
    this.sql.exec("DELETE FROM keys WHERE expires <= ?", now);
    const next = this.sql.exec("SELECT MIN(expires) AS e FROM keys").toArray()[0]?.e;
    if (next !== null && next !== undefined) await this.ctx.storage.setAlarm(Math.ceil(next * 1000) + 1);
  }
}

// -- InboxObject: one queue --------------------------------------------------------------------

export class InboxObject extends DurableObject {
  constructor(ctx, env) {
    super(ctx, env);
    this.sql = ctx.storage.sql;
    this.sql.exec(`CREATE TABLE IF NOT EXISTS messages (id TEXT PRIMARY KEY, body TEXT NOT NULL,
        sent REAL NOT NULL, visible REAL NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, lease TEXT);
      CREATE INDEX IF NOT EXISTS messages_visible ON messages (visible, id);
      CREATE TABLE IF NOT EXISTS dead (id TEXT PRIMARY KEY, body TEXT NOT NULL, reason TEXT NOT NULL,
        attempts INTEGER NOT NULL, at REAL NOT NULL);`);
  }

  send(messages) {
    const now = Date.now();
    const ids = [];
    for (const m of messages) {
      const id = crypto.randomUUID();
      this.sql.exec("INSERT INTO messages (id, body, sent, visible) VALUES (?, ?, ?, ?)", id, m.body, now, now + m.delay * 1000);
      ids.push(id);
    }
    return ids;
  }

  pull(batchSize, visibilityMs) {
    const now = Date.now();
    const rows = this.sql
      .exec("SELECT id, body, sent, attempts FROM messages WHERE visible <= ? ORDER BY visible, id LIMIT ?", now, batchSize)
      .toArray();
    const out = [];
    for (const r of rows) {
      const attempts = r.attempts + 1;
      const lease = `${r.id}.${attempts}.${crypto.randomUUID()}`;
      this.sql.exec("UPDATE messages SET visible = ?, attempts = ?, lease = ? WHERE id = ?", now + visibilityMs, attempts, lease, r.id);
      out.push({ id: r.id, body: r.body, timestamp_ms: r.sent, attempts, lease_id: lease });
    }
    const backlog = this.sql.exec("SELECT COUNT(*) AS n FROM messages").toArray()[0].n;
    return { messages: out, message_backlog_count: backlog };
  }

  // The message held under `lease`, while that lease is current and not expired.
  held(lease, now) {
    const r = this.sql.exec("SELECT id, body, attempts, visible FROM messages WHERE lease = ?", lease).toArray()[0];
    return r && r.visible > now ? r : null;
  }

  settle(acks, retries, deadLetters, extends_) {
    const now = Date.now();
    const warnings = [];
    let ackCount = 0, retryCount = 0, deadCount = 0, extendCount = 0;
    this.ctx.storage.transactionSync(() => {
      for (const lease of acks) {
        // An ack of an expired lease still deletes the message while nobody else holds it.
        const r = this.sql.exec("SELECT id FROM messages WHERE lease = ?", lease).toArray()[0];
        if (!r) { warnings.push(`ack: lease ${lease} is not current`); continue; }
        this.sql.exec("DELETE FROM messages WHERE id = ?", r.id);
        ackCount++;
      }
      for (const { lease, delay } of retries) {
        const r = this.sql.exec("SELECT id FROM messages WHERE lease = ?", lease).toArray()[0];
        if (!r) { warnings.push(`retry: lease ${lease} is not current`); continue; }
        this.sql.exec("UPDATE messages SET visible = ?, lease = NULL WHERE id = ?", now + delay * 1000, r.id);
        retryCount++;
      }
      for (const { lease, reason } of deadLetters) {
        const r = this.sql.exec("SELECT id, body, attempts FROM messages WHERE lease = ?", lease).toArray()[0];
        if (!r) { warnings.push(`dead_letter: lease ${lease} is not current`); continue; }
        this.sql.exec("INSERT OR REPLACE INTO dead (id, body, reason, attempts, at) VALUES (?, ?, ?, ?, ?)", r.id, r.body, reason, r.attempts, now);
        this.sql.exec("DELETE FROM messages WHERE id = ?", r.id);
        deadCount++;
      }
      for (const { lease, visibilityMs } of extends_) {
        const r = this.held(lease, now);
        if (!r) { warnings.push(`extend: lease ${lease} is not current or has expired`); continue; }
        this.sql.exec("UPDATE messages SET visible = ? WHERE id = ?", now + visibilityMs, r.id);
        extendCount++;
      }
    });
    return { ackCount, retryCount, deadLetterCount: deadCount, extendCount, warnings };
  }

  deadLetters(limit) {
    return this.sql
      .exec("SELECT id, body, reason, attempts, at FROM dead ORDER BY at, id LIMIT ?", limit)
      .toArray()
      .map((r) => ({ id: r.id, body: r.body, reason: r.reason, attempts: r.attempts, timestamp_ms: r.at }));
  }

  purge() {
    this.sql.exec("DELETE FROM messages; DELETE FROM dead;");
  }
}

// -- the HTTP front ----------------------------------------------------------------------------

function timingSafeEqual(a, b) {
  const x = new TextEncoder().encode(a);
  const y = new TextEncoder().encode(b);
  let diff = x.length ^ y.length;
  for (let i = 0; i < Math.max(x.length, y.length); i++) diff |= (x[i % x.length] ?? 0) ^ (y[i % y.length] ?? 0);
  return diff === 0 && x.length > 0;
}

function authorize(request, env) {
  const secret = env.FLOWCRAFT_SECRET;
  if (typeof secret !== "string" || secret.length < 16) {
    throw new HttpError(500, "the Worker has no FLOWCRAFT_SECRET of at least 16 characters: set it with `wrangler secret put FLOWCRAFT_SECRET`");
  }
  const header = request.headers.get("authorization") ?? "";
  const m = /^Bearer (.+)$/.exec(header);
  if (!m) throw new HttpError(401, "missing Authorization: Bearer <secret> header");
  if (!timingSafeEqual(m[1], secret)) throw new HttpError(403, "wrong secret");
}

async function body(request) {
  const len = Number(request.headers.get("content-length") ?? "0");
  if (len > MAX_REQUEST_BYTES) throw new HttpError(413, `request body is over ${MAX_REQUEST_BYTES} bytes`);
  const text = await request.text();
  if (text.length > MAX_REQUEST_BYTES) throw new HttpError(413, `request body is over ${MAX_REQUEST_BYTES} bytes`);
  let v;
  try {
    v = JSON.parse(text);
  } catch (e) {
    throw bad(`request body is not JSON: ${e.message}`);
  }
  return obj(v, "request body");
}

// Tenants (and test runs) of one Worker are kept apart by the X-Flowcraft-Namespace header:
// every Durable Object name includes it.
function namespace(request) {
  const ns = request.headers.get("x-flowcraft-namespace") ?? "";
  if (ns.length > 64 || !/^[A-Za-z0-9_-]*$/.test(ns)) {
    throw bad("X-Flowcraft-Namespace may hold at most 64 letters, digits, '-' and '_'");
  }
  return ns;
}

function runStub(env, ns, run) {
  return env.RUNS.get(env.RUNS.idFromName(`${ns}:${run}`));
}

function shards(env) {
  const n = Number.parseInt(env.COORD_SHARDS ?? "16", 10);
  return Number.isInteger(n) && n > 0 ? n : 16;
}

function coordStub(env, ns, key) {
  let h = 2166136261; // FNV-1a over the key's UTF-16 code units
  for (let i = 0; i < key.length; i++) h = Math.imul(h ^ key.charCodeAt(i), 16777619) >>> 0;
  return env.COORD.get(env.COORD.idFromName(`coord:${ns}:${h % shards(env)}`));
}

function inboxStub(env, ns, queue) {
  return env.INBOX.get(env.INBOX.idFromName(`queue:${ns}:${queue}`));
}

function queueName(v) {
  const q = str(v, "queue name", { max: 63 });
  if (!/^[A-Za-z0-9_-]+$/.test(q)) throw bad("queue name may contain only letters, digits, '-' and '_'");
  return q;
}

function parseMessage(m, i, defaultDelay) {
  obj(m, `messages[${i}]`);
  if (typeof m.body !== "string") throw bad(`messages[${i}].body must be a string (JSON text)`);
  if (utf8Length(m.body) > MAX_MESSAGE_BYTES) throw bad(`messages[${i}].body is over ${MAX_MESSAGE_BYTES} bytes`);
  wellFormed(m.body, `messages[${i}].body`);
  const delay = m.delay_seconds === undefined ? defaultDelay : num(m.delay_seconds, `messages[${i}].delay_seconds`, { max: MAX_DELAY_SECONDS });
  return { body: m.body, delay };
}

const ROUTES = {
  async "runs/load"(env, ns, b) {
    return await runStub(env, ns, str(b.run, "run")).load();
  },

  async "runs/commit"(env, ns, b) {
    const run = wellFormed(str(b.run, "run"), "run");
    const ops = parseOps(b.ops);
    const expected = b.expected === undefined || b.expected === null ? null : num(b.expected, "expected", { int: true });
    const status = optStr(b.status, "status");
    const stub = runStub(env, ns, run);
    const res = await stub.commit(ns, run, ops, expected, status);
    if (res.ok && res.reindex) {
      // The active-run index changes with this commit: before replying (an active run is
      // listed once its commit returned); the run's alarm repeats it if this request dies.
      await indexStub(env, ns).put(run, res.version, isActive(res.status));
      await stub.markIndexed(res.version);
    }
    return { ok: res.ok, version: res.version };
  },

  async "runs/status"(env, ns, b) {
    const runs = arr(b.runs, "runs", MAX_PAGE).map((r, i) => str(r, `runs[${i}]`));
    const got = await Promise.all(runs.map((r) => runStub(env, ns, r).status()));
    return { statuses: Object.fromEntries(runs.map((r, i) => [r, got[i]])) };
  },

  async "runs/delete"(env, ns, b) {
    const run = str(b.run, "run");
    const n = await runStub(env, ns, run).deleteAll();
    await indexStub(env, ns).remove(run);
    return { deleted: n };
  },

  async "runs/active"(env, ns, b) {
    const cursor = b.cursor === undefined || b.cursor === null ? null : str(b.cursor, "cursor");
    const limit = b.limit === undefined ? 100 : num(b.limit, "limit", { min: 1, max: MAX_PAGE, int: true });
    return await indexStub(env, ns).page(cursor, limit);
  },

  async coord(env, ns, b) {
    const op = str(b.op, "op", { max: 32 });
    const key = wellFormed(str(b.key, "key", { max: 65_536, allowEmpty: true }), "key");
    let value = null;
    let ttl = 0;
    if (op === "set_if_not_exist" || op === "compare_and_delete") {
      value = wellFormed(str(b.value, "value", { max: MAX_VALUE_BYTES, allowEmpty: true }), "value");
    }
    if (op === "increment" || op === "set_if_not_exist" || op === "extend_ttl") {
      ttl = num(b.ttl, "ttl", { min: 0.001, max: 366 * 86400 });
    }
    if (!["get", "delete", "compare_and_delete", "increment", "set_if_not_exist", "extend_ttl"].includes(op)) {
      throw bad(`unknown op ${JSON.stringify(op)} (one of get, delete, compare_and_delete, increment, set_if_not_exist, extend_ttl)`);
    }
    return { result: await coordStub(env, ns, key).op(op, key, value, ttl) };
  },
};

async function queueRoute(env, ns, queue, action, b) {
  const stub = inboxStub(env, ns, queue);
  switch (action) {
    case "messages": {
      const delay = b.delay_seconds === undefined ? 0 : num(b.delay_seconds, "delay_seconds", { max: MAX_DELAY_SECONDS });
      const [m] = [parseMessage(b, 0, delay)];
      const ids = await stub.send([m]);
      return { id: ids[0] };
    }
    case "messages/batch": {
      const delay = b.delay_seconds === undefined ? 0 : num(b.delay_seconds, "delay_seconds", { max: MAX_DELAY_SECONDS });
      const ms = arr(b.messages, "messages", MAX_BATCH).map((m, i) => parseMessage(m, i, delay));
      return { ids: await stub.send(ms) };
    }
    case "messages/pull": {
      const n = b.batch_size === undefined ? 5 : num(b.batch_size, "batch_size", { min: 1, max: MAX_BATCH, int: true });
      const vis = b.visibility_timeout_ms === undefined ? 30_000 : num(b.visibility_timeout_ms, "visibility_timeout_ms", { min: 1, max: MAX_VISIBILITY_MS });
      return await stub.pull(n, vis);
    }
    case "messages/ack": {
      const lease = (x, n) => str(obj(x, n).lease_id, `${n}.lease_id`, { max: 200 });
      const acks = arr(b.acks ?? [], "acks", MAX_BATCH).map((x, i) => lease(x, `acks[${i}]`));
      const retries = arr(b.retries ?? [], "retries", MAX_BATCH).map((x, i) => ({
        lease: lease(x, `retries[${i}]`),
        delay: x.delay_seconds === undefined ? 0 : num(x.delay_seconds, `retries[${i}].delay_seconds`, { max: MAX_DELAY_SECONDS }),
      }));
      const dead = arr(b.dead_letters ?? [], "dead_letters", MAX_BATCH).map((x, i) => ({
        lease: lease(x, `dead_letters[${i}]`),
        reason: wellFormed(str(x.reason ?? "", `dead_letters[${i}].reason`, { max: 65_536, allowEmpty: true }), "reason"),
      }));
      const ext = arr(b.extends ?? [], "extends", 1000).map((x, i) => ({
        lease: lease(x, `extends[${i}]`),
        visibilityMs: num(x.visibility_timeout_ms, `extends[${i}].visibility_timeout_ms`, { min: 1, max: MAX_VISIBILITY_MS }),
      }));
      return await stub.settle(acks, retries, dead, ext);
    }
    case "dead": {
      const limit = b.limit === undefined ? 100 : num(b.limit, "limit", { min: 1, max: MAX_PAGE, int: true });
      return { messages: await stub.deadLetters(limit) };
    }
    case "purge":
      await stub.purge();
      return {};
    default:
      throw new HttpError(404, `no queue route ${JSON.stringify(action)}`);
  }
}

export default {
  async fetch(request, env) {
    try {
      authorize(request, env);
      const url = new URL(request.url);
      const path = url.pathname.replace(/^\/+|\/+$/g, "");
      if (path === "v1/health") return json({ result: { ok: true }, success: true });
      if (!path.startsWith("v1/")) throw new HttpError(404, `no route ${JSON.stringify(url.pathname)}`);
      if (request.method !== "POST") throw new HttpError(405, `${request.method} ${url.pathname}: only POST is served`);
      const rest = path.slice(3);
      const ns = namespace(request);
      let result;
      const q = /^queues\/([^/]+)\/(.+)$/.exec(rest);
      if (q) {
        result = await queueRoute(env, ns, queueName(decodeURIComponent(q[1])), q[2], await body(request));
      } else if (Object.hasOwn(ROUTES, rest)) {
        result = await ROUTES[rest](env, ns, await body(request));
      } else {
        throw new HttpError(404, `no route ${JSON.stringify(url.pathname)}`);
      }
      return json({ result, success: true });
    } catch (e) {
      if (e instanceof HttpError) return json({ error: e.message, success: false }, e.status);
      // Errors thrown inside a Durable Object arrive here through RPC (with their message).
      if (e?.status >= 400 && e?.status < 500) return json({ error: e.message, success: false }, e.status);
      return json({ error: `internal error: ${e?.message ?? e}`, success: false }, 500);
    }
  },
};
