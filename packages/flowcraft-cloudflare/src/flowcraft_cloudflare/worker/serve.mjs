// Run the companion Worker locally on workerd through Miniflare's Node API (tests, benchmarks,
// development):
//
//   node serve.mjs --port 8787 [--host 127.0.0.1] [--persist DIR] [--secret S] [--shards N]
//
// Miniflare is loaded from $FLOWCRAFT_MINIFLARE_DIR/node_modules (where
// `scripts/install-services cloudflare` puts the pinned packages) or from node_modules next to
// this file. The secret comes from --secret or $FLOWCRAFT_SECRET. Prints "ready <url>" once
// the Worker answers, and stops workerd on SIGTERM / SIGINT.

import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

const here = path.dirname(fileURLToPath(import.meta.url));

export function loadMiniflare() {
  const dirs = [process.env.FLOWCRAFT_MINIFLARE_DIR, here].filter(Boolean);
  const errors = [];
  for (const dir of dirs) {
    try {
      return createRequire(path.join(dir, "node_modules", "_"))("miniflare");
    } catch (e) {
      errors.push(`${dir}: ${e.code ?? e.message}`);
    }
  }
  throw new Error(`miniflare not found (${errors.join("; ")}); run scripts/install-services cloudflare`);
}

export function workerOptions({ secret, shards = 16, persist } = {}) {
  const persistOpt = persist ? { durableObjectsPersist: persist } : {};
  return {
    modules: true,
    cf: false, // offline: no download of the Request.cf placeholder
    scriptPath: path.join(here, "index.js"),
    modulesRoot: here, // module names relative to this directory, whatever the cwd
    compatibilityDate: "2025-04-01",
    bindings: { FLOWCRAFT_SECRET: secret, COORD_SHARDS: String(shards) },
    durableObjects: {
      RUNS: { className: "RunObject", useSQLite: true },
      INDEX: { className: "IndexObject", useSQLite: true },
      COORD: { className: "CoordObject", useSQLite: true },
      INBOX: { className: "InboxObject", useSQLite: true },
    },
    ...persistOpt,
  };
}

export async function start({ host = "127.0.0.1", port = 0, secret, shards, persist } = {}) {
  const { Miniflare, Log, LogLevel } = loadMiniflare();
  const mf = new Miniflare({
    host,
    port,
    log: new Log(LogLevel.WARN),
    ...workerOptions({ secret, shards, persist }),
  });
  const url = await mf.ready;
  return { mf, url };
}

if (process.argv[1] && fileURLToPath(import.meta.url) === path.resolve(process.argv[1])) {
  const { values } = parseArgs({
    options: {
      host: { type: "string", default: "127.0.0.1" },
      port: { type: "string", default: "8787" },
      persist: { type: "string" },
      secret: { type: "string" },
      shards: { type: "string", default: "16" },
    },
  });
  const secret = values.secret ?? process.env.FLOWCRAFT_SECRET;
  if (!secret) {
    console.error("serve.mjs: give --secret or set FLOWCRAFT_SECRET");
    process.exit(2);
  }
  const { mf, url } = await start({
    host: values.host,
    port: Number(values.port),
    secret,
    shards: Number(values.shards),
    persist: values.persist,
  });
  console.log(`ready ${url}`);
  let stopping = false;
  const stop = async () => {
    if (stopping) return;
    stopping = true;
    await mf.dispose();
    process.exit(0);
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}
