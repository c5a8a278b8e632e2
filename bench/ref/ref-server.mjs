// ref-server.mjs - starts the Node reference Durable Streams server
// (@durable-streams/server, pinned in package.json) for side-by-side benchmarks.
// It provides nothing else: in-memory store, no webhooks, no file backing.
// Usage: node ref-server.mjs [--port N] [--host H] [--long-poll-timeout MS]
//   --port 0 picks a free port. Prints "listening on http://HOST:PORT" once ready
//   (bench/run.sh parses that line) and stops cleanly on SIGTERM/SIGINT.
// Resolution: the package is installed by install.sh into .cache/bench-ref/, so this
// script is run with NODE_PATH unset and imports it relative to that directory.
import { createRequire } from "node:module";
import path from "node:path";
import { pathToFileURL } from "node:url";

function arg(name, def) {
  const i = process.argv.indexOf(name);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : def;
}

const port = Number(arg("--port", "4437"));
const host = arg("--host", "127.0.0.1");
const longPollTimeout = Number(arg("--long-poll-timeout", "30000"));
// The install dir defaults to <repo>/.cache/bench-ref; DS_BENCH_REF_DIR overrides it.
const here = path.dirname(new URL(import.meta.url).pathname);
const refDir = process.env.DS_BENCH_REF_DIR || path.resolve(here, "../../.cache/bench-ref");
const require = createRequire(path.join(refDir, "package.json"));
const entry = require.resolve("@durable-streams/server");
// require.resolve picks the CJS entry; import the ESM build next to it.
const mod = await import(pathToFileURL(entry.replace(/index\.cjs$/, "index.js")).href);

// compression off: our server does not compress, and the load generators do not send
// Accept-Encoding anyway; keeping it off makes the comparison explicit.
const server = new mod.DurableStreamTestServer({ port, host, longPollTimeout, compression: false });
const url = await server.start();
process.stdout.write(`listening on ${url}\n`);

let stopping = false;
async function stop() {
  if (stopping) return;
  stopping = true;
  try {
    await server.stop();
  } finally {
    process.exit(0);
  }
}
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
