// views.mjs - functional tests of the /v1/stream protocol view with the official
// TypeScript client (@durable-streams/client), run by tests/protocol_views.test.sh.
//
// 1. One log, two views: an agent conversation written through POST /agents/<p> is read
//    through /v1/stream/<p> by the official client in catch-up, long-poll and SSE modes,
//    and offsets resume across the views (protocol reads are inclusive, /agents reads
//    exclusive).
// 2. Subscriptions: a webhook subscription delivers a signed wake (verified against the
//    JWKS) that a `{done:true}` reply acknowledges; a pull-wake subscription is claimed,
//    acked and released.
// 3. Restart: streams, metadata (content type, TTL), producer state, closure, forks and
//    soft deletes written through the protocol survive a restart of the server on the
//    same YAML data directory.
// The server runs with the checkout's ./config.lua (when present) plus
// protocol.webhook_allow_networks = { "127.0.0.0/8" }: the webhook receiver listens on
// 127.0.0.1, which webhooks may reach only when a network allows it.
// Environment: DS_BINARY (server binary). Exits non-zero on the first failure.
import { spawn } from "node:child_process"
import { createServer } from "node:http"
import { createPublicKey, verify } from "node:crypto"
import { existsSync, mkdtempSync, rmSync, readFileSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join, resolve } from "node:path"
import assert from "node:assert/strict"
import { stream } from "@durable-streams/client"

const BIN = process.env.DS_BINARY
if (!BIN) throw new Error("DS_BINARY is not set")

const dataDir = mkdtempSync(join(tmpdir(), "ds-views-"))
const cfgDir = mkdtempSync(join(tmpdir(), "ds-views-cfg-"))
const cfgPath = join(cfgDir, "config.lua")
writeFileSync(cfgPath, `local c = ${existsSync("config.lua") ? `dofile(${JSON.stringify(resolve("config.lua"))})` : "{}"}
c.protocol = c.protocol or {}
c.protocol.webhook_allow_networks = { "127.0.0.0/8" }
return c
`)
let server = null

async function startServer(storage) {
  const child = spawn(BIN, ["--config", cfgPath, "--port", "0", "--storage", storage, "--data-dir", dataDir,
    "--long-poll-timeout", "500"], { stdio: ["ignore", "pipe", "pipe"] })
  let out = ""
  let err = ""
  child.stderr.on("data", (d) => { err += d })
  const url = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`server did not start: ${err}`)), 10000)
    child.stdout.on("data", (d) => {
      out += d
      const m = out.match(/listening on (http:\/\/\S+)/)
      if (m) { clearTimeout(timer); resolve(m[1]) }
    })
    child.on("exit", (code) => { clearTimeout(timer); reject(new Error(`server exited ${code}: ${err}`)) })
  })
  child.removeAllListeners("exit")
  server = { child, url }
  return url
}

async function stopServer() {
  if (!server) return
  const { child } = server
  server = null
  const code = await new Promise((resolve) => {
    child.on("exit", (c, sig) => resolve(sig ? sig : c))
    child.kill("SIGTERM")
  })
  // a clean shutdown exits 0 (sanitizer builds exit non-zero on leaks or errors)
  assert.equal(code, 0, "server exit status after SIGTERM")
}

async function until(pred, what, ms = 5000) {
  const deadline = Date.now() + ms
  while (Date.now() < deadline) {
    if (await pred()) return
    await new Promise((r) => setTimeout(r, 20))
  }
  throw new Error(`timed out waiting for ${what}`)
}

const off = (n) => String(n).padStart(16, "0")

async function postEvent(base, path, type, payload) {
  const res = await fetch(`${base}/agents/${path}`, {
    method: "POST", headers: { "content-type": "application/json" },
    body: JSON.stringify({ type, payload }),
  })
  assert.equal(res.status, 204, `POST /agents/${path}`)
}

// Reads /agents SSE history (no live) and returns the events.
async function agentsHistory(base, path, offset) {
  const res = await fetch(`${base}/agents/${path}?offset=${offset}`)
  assert.equal(res.status, 200)
  const text = await res.text()
  return text.split("\n").filter((l) => l.startsWith("data: ")).map((l) => JSON.parse(l.slice(6)))
}

async function testAgentsView(base, storage) {
  const path = `conv/session-${Date.now()}`
  const url = `${base}/v1/stream/${path}`
  await postEvent(base, path, "user.message", { text: "hello" })
  await postEvent(base, path, "assistant.message", { text: "hi, how can I help?" })
  await postEvent(base, path, "user.message", { text: "tell me a joke" })

  // catch-up
  const res = await stream({ url, offset: "-1", live: false })
  assert.equal(res.contentType, "application/json")
  const items = await res.json()
  assert.equal(items.length, 3)
  assert.deepEqual(items.map((e) => e.type), ["user.message", "assistant.message", "user.message"])
  assert.deepEqual(items.map((e) => e.offset), [off(0), off(1), off(2)])
  assert.equal(items[1].payload.text, "hi, how can I help?")
  assert.equal(items[0].path, path)
  assert.equal(res.offset, off(3))

  // long-poll: wait at the tail, then an /agents append arrives
  const lp = await stream({ url, offset: res.offset, live: "long-poll" })
  const lpGot = []
  lp.subscribeJson((batch) => { lpGot.push(...batch.items) })
  await new Promise((r) => setTimeout(r, 100))
  await postEvent(base, path, "assistant.message", { text: "why did the stream cross the road" })
  await until(() => lpGot.length >= 1, "long-poll delivery")
  lp.cancel()
  assert.equal(lpGot[0].type, "assistant.message")
  assert.equal(lpGot[0].offset, off(3))

  // SSE from an inclusive protocol offset, then live
  const sse = await stream({ url, offset: off(2), live: "sse" })
  const sseGot = []
  sse.subscribeJson((batch) => { sseGot.push(...batch.items) })
  await until(() => sseGot.length >= 2, "SSE catch-up")
  assert.deepEqual(sseGot.map((e) => e.offset), [off(2), off(3)])
  await postEvent(base, path, "user.message", { text: "ha" })
  await until(() => sseGot.length >= 3, "SSE live delivery")
  sse.cancel()
  assert.equal(sseGot[2].offset, off(4))
  assert.equal(sseGot[2].payload.text, "ha")

  // offsets resume across views: /agents offset=X is exclusive, /v1/stream offset=X inclusive
  const viaAgents = await agentsHistory(base, path, off(2))
  assert.deepEqual(viaAgents.map((e) => e.offset), [off(3), off(4)])
  const viaProtocol = await (await fetch(`${url}?offset=${off(3)}`)).json()
  assert.deepEqual(viaProtocol.map((e) => e.offset), [off(3), off(4)])
  assert.deepEqual(viaProtocol, viaAgents)

  // a protocol append to the agent stream is visible to /agents readers too
  const post = await fetch(url, { method: "POST", headers: { "content-type": "application/json" },
    body: JSON.stringify({ type: "note", payload: { by: "protocol" } }) })
  assert.equal(post.status, 204)
  assert.equal(post.headers.get("stream-next-offset"), off(6))
  const head = await fetch(url, { method: "HEAD" })
  assert.equal(head.headers.get("content-type"), "application/json")
  console.log(`ok - ${storage} store: agent conversation read through /v1/stream (catch-up, long-poll, SSE)`)
}

async function testSubscriptions(base) {
  const hits = []
  const recv = createServer((req, res) => {
    let body = ""
    req.on("data", (d) => { body += d })
    req.on("end", () => {
      hits.push({ body, sig: req.headers["webhook-signature"] })
      res.writeHead(200, { "content-type": "application/json" })
      res.end(JSON.stringify({ done: true }))
    })
  })
  await new Promise((r) => recv.listen(0, "127.0.0.1", r))
  const hook = `http://127.0.0.1:${recv.address().port}/hook`
  try {
    const sub = `${base}/v1/stream/__ds/subscriptions/vw-hook`
    const cfg = { type: "webhook", pattern: "hooked/*", webhook: { url: hook }, lease_ttl_ms: 1000 }
    const created = await fetch(sub, { method: "PUT", body: JSON.stringify(cfg) })
    assert.equal(created.status, 201)
    const jwksUrl = (await created.json()).webhook.signing.jwks_url
    const jwks = await (await fetch(jwksUrl)).json()
    await put(base, "hooked/a", { "content-type": "application/json" }, `{"n":1}`)
    await until(() => hits.length >= 1, "webhook delivery")
    const m = hits[0].sig.match(/^t=(\d+),kid=([^,]+),ed25519=([A-Za-z0-9_-]+)$/)
    assert.ok(m, `signature header ${hits[0].sig}`)
    const key = createPublicKey({ key: jwks.keys.find((k) => k.kid === m[2]), format: "jwk" })
    assert.ok(verify(null, Buffer.from(`${m[1]}.${hits[0].body}`), key, Buffer.from(m[3], "base64url")))
    const wake = JSON.parse(hits[0].body)
    const tail = wake.streams.find((x) => x.path === "hooked/a").tail_offset
    assert.equal(tail, off(1))
    await until(async () => {
      const s = await (await fetch(sub)).json()
      return s.streams.some((x) => x.path === "hooked/a" && x.acked_offset === tail)
    }, "auto-ack of the wake")
    assert.equal((await fetch(sub, { method: "DELETE" })).status, 204)

    const pull = `${base}/v1/stream/__ds/subscriptions/vw-pull`
    await put(base, "wakes", { "content-type": "application/json" }, "[]")
    const pcfg = { type: "pull-wake", streams: ["pulled/a"], wake_stream: "wakes" }
    assert.equal((await fetch(pull, { method: "PUT", body: JSON.stringify(pcfg) })).status, 201)
    await put(base, "pulled/a", { "content-type": "text/plain" }, "work")
    await until(async () => (await (await fetch(`${base}/v1/stream/wakes`)).json()).length >= 1, "wake event")
    const claim = await fetch(`${pull}/claim`, { method: "POST", body: JSON.stringify({ worker: "w1" }) })
    assert.equal(claim.status, 200)
    const c = await claim.json()
    const auth = { authorization: `Bearer ${c.token}` }
    const ack = await fetch(`${pull}/ack`, { method: "POST", headers: auth,
      body: JSON.stringify({ wake_id: c.wake_id, generation: c.generation, acks: [{ stream: "pulled/a", offset: off(1) }] }) })
    assert.equal(ack.status, 200)
    const rel = await fetch(`${pull}/release`, { method: "POST", headers: auth,
      body: JSON.stringify({ wake_id: c.wake_id, generation: c.generation }) })
    assert.equal(rel.status, 204)
    const stale = await fetch(`${pull}/release`, { method: "POST", headers: auth,
      body: JSON.stringify({ wake_id: c.wake_id, generation: c.generation }) })
    assert.equal(stale.status, 409)
  } finally {
    recv.closeAllConnections()
    await new Promise((r) => recv.close(r))
  }
  console.log("ok - webhook (Ed25519-signed, auto-acked) and pull-wake subscriptions")
}

// The two views agree on closure, content type and subscriptions: /agents respects a
// protocol close, refuses non-JSON streams, and its appends wake subscriptions.
async function testAgentsInterplay(base) {
  const postEvent = (b, path, type, payload) => fetch(`${b}/agents/${path}`, {
    method: "POST", body: JSON.stringify({ type, payload }),
  })
  await put(base, "mix/closed", { "content-type": "application/json" })
  assert.equal((await postEvent(base, "mix/closed", "note", { n: 1 })).status, 204)
  const close = await fetch(`${base}/v1/stream/mix/closed`, { method: "POST", headers: { "stream-closed": "true" } })
  assert.equal(close.status, 204)
  const refused = await postEvent(base, "mix/closed", "note", { n: 2 })
  assert.equal(refused.status, 409)
  assert.deepEqual(await refused.json(), { error: "stream is closed" })
  await put(base, "mix/text", { "content-type": "text/plain" }, "plain")
  const wrong = await postEvent(base, "mix/text", "note", {})
  assert.equal(wrong.status, 409)
  assert.match((await wrong.json()).error, /text\/plain/)

  const pull = `${base}/v1/stream/__ds/subscriptions/mix-pull`
  await put(base, "mixwakes", { "content-type": "application/json" }, "[]")
  const pcfg = { type: "pull-wake", pattern: "mixagent/*", wake_stream: "mixwakes" }
  assert.equal((await fetch(pull, { method: "PUT", body: JSON.stringify(pcfg) })).status, 201)
  assert.equal((await postEvent(base, "mixagent/a", "user.message", { text: "wake up" })).status, 204)
  await until(async () => (await (await fetch(`${base}/v1/stream/mixwakes`)).json())
    .some((w) => w.stream === "mixagent/a"), "wake event for an /agents append")
  assert.equal((await fetch(pull, { method: "DELETE" })).status, 204)
  console.log("ok - /agents respects protocol closure and content type; its appends wake subscriptions")
}

async function put(base, name, headers, body) {
  const res = await fetch(`${base}/v1/stream/${name}`, { method: "PUT", headers, body })
  assert.equal(res.status, 201, `PUT ${name}`)
  return res
}

async function post(base, name, headers, body) {
  return fetch(`${base}/v1/stream/${name}`, { method: "POST", headers, body })
}

async function testRestart() {
  let base = await startServer("yaml")
  const bytes = new Uint8Array(256)
  for (let i = 0; i < 256; i++) bytes[i] = i
  await put(base, "r/json", { "content-type": "application/json" }, `[{"a":1},{"b":2}]`)
  await post(base, "r/json", { "content-type": "application/json" }, `{"c":3}`)
  await put(base, "r/text", { "content-type": "text/plain", "stream-ttl": "3600" }, "line one\r\nline two")
  await put(base, "r/bin", { "content-type": "application/octet-stream" }, bytes)
  const prod = { "content-type": "text/plain", "producer-id": "p1", "producer-epoch": "3" }
  await put(base, "r/prod", { "content-type": "text/plain" })
  assert.equal((await post(base, "r/prod", { ...prod, "producer-seq": "0" }, "a")).status, 200)
  assert.equal((await post(base, "r/prod", { ...prod, "producer-seq": "1" }, "b")).status, 200)
  await put(base, "r/closed", { "content-type": "text/plain", "stream-closed": "true" }, "final")
  await put(base, "r/fork", { "stream-forked-from": "/v1/stream/r/json", "stream-fork-offset": off(2) })
  await post(base, "r/fork", { "content-type": "application/json" }, `{"f":1}`)
  await put(base, "r/src2", { "content-type": "text/plain" }, "abc")
  await put(base, "r/fork2", { "stream-forked-from": "/v1/stream/r/src2" })
  assert.equal((await fetch(`${base}/v1/stream/r/src2`, { method: "DELETE" })).status, 204)
  assert.equal((await fetch(`${base}/v1/stream/r/src2`)).status, 410)
  await stopServer()

  // the YAML store keeps binary messages as !!binary, text as strings
  const binYaml = readFileSync(join(dataDir, "streams", "r", "bin.yaml"), "utf8")
  assert.match(binYaml, /^bytes: !!binary/m)
  assert.match(readFileSync(join(dataDir, "streams", "r", "text.yaml"), "utf8"), /^text: /m)

  base = await startServer("yaml")
  const get = async (name, q = "") => fetch(`${base}/v1/stream/${name}${q}`)
  assert.deepEqual(await (await get("r/json")).json(), [{ a: 1 }, { b: 2 }, { c: 3 }])
  const text = await get("r/text")
  assert.equal(await text.text(), "line one\r\nline two")
  const head = await fetch(`${base}/v1/stream/r/text`, { method: "HEAD" })
  assert.equal(head.headers.get("stream-ttl"), "3600")
  assert.equal(head.headers.get("content-type"), "text/plain")
  assert.deepEqual(new Uint8Array(await (await get("r/bin")).arrayBuffer()), bytes)
  // producer state survived: a retry is a duplicate, the next seq is accepted, a gap is 409
  const dup = await post(base, "r/prod", { ...prod, "producer-seq": "1" }, "b")
  assert.equal(dup.status, 204)
  assert.equal(dup.headers.get("producer-seq"), "1")
  assert.equal((await post(base, "r/prod", { ...prod, "producer-seq": "2" }, "c")).status, 200)
  assert.equal((await post(base, "r/prod", { ...prod, "producer-seq": "9" }, "x")).status, 409)
  const stale = await post(base, "r/prod", { ...prod, "producer-epoch": "2", "producer-seq": "0" }, "z")
  assert.equal(stale.status, 403)
  assert.equal(await (await get("r/prod")).text(), "abc")
  // closure survived
  const closedRead = await get("r/closed")
  assert.equal(await closedRead.text(), "final")
  assert.equal(closedRead.headers.get("stream-closed"), "true")
  const late = await post(base, "r/closed", { "content-type": "text/plain" }, "more")
  assert.equal(late.status, 409)
  assert.equal(late.headers.get("stream-closed"), "true")
  // forks survived: inherited part stitched with the fork's own data
  assert.deepEqual(await (await get("r/fork")).json(), [{ a: 1 }, { b: 2 }, { f: 1 }])
  assert.deepEqual(await (await get("r/json")).json(), [{ a: 1 }, { b: 2 }, { c: 3 }])
  // a soft-deleted source stays gone but its fork still reads through it
  assert.equal((await get("r/src2")).status, 410)
  assert.equal(await (await get("r/fork2")).text(), "abc")
  // deleting the last fork garbage-collects the soft-deleted source
  assert.equal((await fetch(`${base}/v1/stream/r/fork2`, { method: "DELETE" })).status, 204)
  assert.equal((await get("r/src2")).status, 404)
  await stopServer()
  console.log("ok - streams, metadata, producer state, closure and forks survive a restart")
}

try {
  for (const storage of ["yaml", "memory"]) {
    const base = await startServer(storage)
    await testAgentsView(base, storage)
    if (storage === "memory") await testSubscriptions(base)
    await testAgentsInterplay(base)
    await stopServer()
  }
  await testRestart()
} catch (e) {
  console.error("FAIL:", e)
  process.exitCode = 1
} finally {
  await stopServer()
  rmSync(dataDir, { recursive: true, force: true })
  rmSync(cfgDir, { recursive: true, force: true })
}
