"""workload.py - the client side of a recorded run: requests, their answers, the reference.

Provides: Client (HTTP/1.1 over keep-alive connections; every request carries
`X-Crash-Req: <n>`, which the recorder reads off the socket so that its ack marker for the
answer can be joined with this log), Server (starts/stops the real binary, optionally under
the recorder), the two workload phases (`initial`: before the snapshot, unrecorded;
`recorded`: what the crash states are cut from) and `reference()`, which reads every stream and
the subscription back through both views so the checker knows what a complete state holds.
The workload covers /agents appends on several (nested) paths, protocol PUT of JSON and binary
streams, POST with idempotent-producer headers, close (Stream-Closed) with a final message, a
fork and appends to it, a pull-wake subscription with a claim and an ack, a delete, a stream
with a TTL, concurrent appends (group commit) and a large event spanning several 4 KiB blocks.
Must not: decide what a state must hold (checker.py does), or depend on timings for anything
but giving the interval policy's timer rounds room to run.
"""
import base64
import http.client
import json
import os
import signal
import subprocess
import threading
import time

PREFIX = "/v1/stream/"
SUB = "/v1/stream/__ds/subscriptions/"

# every stream the workload touches: path -> view info
STREAMS = {
    "ag/a": {"kind": "agents"},
    "ag/b": {"kind": "agents"},
    "ag/n/c": {"kind": "agents"},
    "p/json": {"kind": "json"},
    "p/bin": {"kind": "bin"},
    "p/close": {"kind": "json"},
    "p/fork": {"kind": "json", "fork": True},  # its /v1 view reads its source's records too
    "p/wake": {"kind": "json", "server": True},  # the server appends the wake events
    "p/del": {"kind": "bin"},
    "p/ttl": {"kind": "json"},
}
SUB_ID = "sub1"
PRODUCER = "w1"


LIVE = set()  # servers running now: explore.py stops them if it is interrupted


class Server:
    def __init__(self, binary, data_dir, policy, config, log_path, env=None, preload=None):
        self.binary, self.data_dir, self.policy, self.config = binary, data_dir, policy, config
        self.log_path, self.env, self.preload = log_path, env or {}, preload
        self.proc, self.port = None, None

    def start(self, timeout=20):
        env = dict(os.environ)
        env.update(self.env)
        env["UV_USE_IO_URING"] = "0"  # libuv >= 1.45 could bypass libc: the recorder must see every call
        if self.preload:
            env["LD_PRELOAD"] = self.preload
            # an ASan binary refuses a preloaded library ahead of its runtime
            env["ASAN_OPTIONS"] = (env.get("ASAN_OPTIONS", "") + ":verify_asan_link_order=0").lstrip(":")
        self.err = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [self.binary, "--config", self.config, "--port", "0", "--data-dir", self.data_dir,
             "--fsync", self.policy, "--log-level", "info"],
            stdout=subprocess.PIPE, stderr=self.err, env=env, cwd=os.path.dirname(self.config))
        LIVE.add(self)
        deadline = time.time() + timeout
        line = b""
        while time.time() < deadline:
            line = self.proc.stdout.readline()
            if line.startswith(b"listening on http://"):
                self.port = int(line.strip().rsplit(b":", 1)[1])
                return True
            if not line and self.proc.poll() is not None:
                break
        self.kill()
        return False

    def stop(self, timeout=30):
        """SIGTERM; returns the exit status (None if it had to be killed)."""
        if not self.proc:
            return None
        rc = None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                rc = self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        else:
            rc = self.proc.returncode
        self._close()
        return rc

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._close()

    def _close(self):
        LIVE.discard(self)
        if self.proc and self.proc.stdout:
            self.proc.stdout.close()
        if getattr(self, "err", None):
            self.err.close()
            self.err = None


class Client:
    """Numbered requests; the log (self.log) is what the checker joins with the ack markers."""

    def __init__(self, port, log, lock, first_id=1, step=1):
        self.port, self.log, self.lock = port, log, lock
        self.next_id, self.step = first_id, step
        self.conn = None

    def req(self, method, url, body=None, headers=None, what=None, path=None, msgs=None):
        rid = self.next_id
        self.next_id += self.step
        h = dict(headers or {})
        h["X-Crash-Req"] = str(rid)
        if isinstance(body, str):
            body = body.encode()
        for attempt in range(2):
            try:
                if self.conn is None:
                    self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                self.conn.request(method, url, body=body, headers=h)
                r = self.conn.getresponse()
                data = r.read()
                break
            except (OSError, http.client.HTTPException):
                if self.conn:
                    self.conn.close()
                self.conn = None
                if attempt:
                    raise
        ent = {"id": rid, "method": method, "url": url, "what": what, "path": path,
               "status": r.status, "headers": {k.lower(): v for k, v in r.getheaders()},
               "req_headers": {k: v for k, v in h.items()},
               "body": base64.b64encode(body or b"").decode(),
               "resp": base64.b64encode(data).decode(), "msgs": msgs}
        with self.lock:
            self.log.append(ent)
        return r.status, ent["headers"], data

    def close(self):
        if self.conn:
            self.conn.close()
            self.conn = None

    # ---- helpers for the workload ----

    def agents(self, path, payload):
        body = json.dumps({"type": "crash:event", "payload": payload})
        st, h, d = self.req("POST", "/agents/" + path, body, {"Content-Type": "application/json"},
                            what="append", path=path, msgs=1)
        _expect(st, (204,), "append to /agents/" + path, d)
        return h

    def put(self, path, ctype, body=b"", headers=None, msgs=0):
        h = {"Content-Type": ctype}
        h.update(headers or {})
        st, hh, d = self.req("PUT", PREFIX + path, body, h, what="create", path=path, msgs=msgs)
        _expect(st, (201,), "PUT " + path, d)
        return hh

    def post(self, path, ctype, body, headers=None, msgs=1, ok=(200, 204)):
        h = {"Content-Type": ctype}
        h.update(headers or {})
        st, hh, d = self.req("POST", PREFIX + path, body, h, what="append", path=path, msgs=msgs)
        _expect(st, ok, "POST " + path, d)
        return hh


def _expect(st, ok, what, data):
    if st not in ok:
        raise RuntimeError("%s: HTTP %d %r" % (what, st, data[:300]))


def initial(c):
    """Before the snapshot: streams that the recorded run reopens (recovery at load)."""
    for i in range(2):
        c.agents("ag/a", {"k": "init-%d" % i})
    c.put("p/json", "application/json", json.dumps([{"i": 0}]), msgs=1)
    c.put("p/wake", "application/json")


def _pause(interval_ms, n=3):
    time.sleep(n * interval_ms / 1000.0)


def recorded(c, port, log, lock, interval_ms, settle_ms=0):
    """The recorded workload. Returns the paths deleted, with their content read just before.
    settle_ms: a quiet time at the end, so that the last crash points (the reference reads'
    answers, the shutdown) lie beyond the interval policy's window for every acknowledgement."""
    pre_delete = {}
    c.agents("ag/a", {"k": "a-0"})
    c.agents("ag/b", {"k": "b-0"})
    c.agents("ag/n/c", {"k": "c-0"})
    c.agents("ag/a", {"k": "a-1"})
    # protocol streams: binary (non-UTF-8 bytes and newlines), producer appends, close
    c.put("p/bin", "application/octet-stream", b"bin-0\n\x00\xff", msgs=1)
    for s in range(3):
        c.post("p/json", "application/json", json.dumps({"p": PRODUCER, "s": s}),
               {"Producer-Id": PRODUCER, "Producer-Epoch": "0", "Producer-Seq": str(s)})
    _pause(interval_ms)
    c.post("p/bin", "application/octet-stream", b"bin-1" + bytes(range(256)) * 40)  # ~10 KiB
    c.put("p/ttl", "application/json", json.dumps([{"t": 0}]), {"Stream-TTL": "86400"}, msgs=1)
    c.put("p/close", "application/json", json.dumps([{"c": 0}, {"c": 1}]), msgs=2)
    c.post("p/close", "application/json", json.dumps({"c": 2}))
    c.post("p/close", "application/json", json.dumps({"c": "last"}), {"Stream-Closed": "true"})
    # a fork of p/json at its tail, then its own appends
    c.req("PUT", PREFIX + "p/fork", b"", {"Content-Type": "application/json",
                                           "Stream-Forked-From": "p/json"}, what="create",
          path="p/fork", msgs=0)
    c.post("p/fork", "application/json", json.dumps([{"f": 0}, {"f": 1}]), msgs=2)
    # a pull-wake subscription on p/json: create, wake (an append), claim, ack
    st, _, d = c.req("PUT", SUB + SUB_ID, json.dumps({"type": "pull-wake", "streams": ["p/json"],
                                                      "wake_stream": "p/wake", "lease_ttl_ms": 600000}),
                     {"Content-Type": "application/json"}, what="sub-create", path=SUB_ID)
    _expect(st, (201,), "subscription create", d)
    c.post("p/json", "application/json", json.dumps({"p": PRODUCER, "s": 3}),
           {"Producer-Id": PRODUCER, "Producer-Epoch": "0", "Producer-Seq": "3"})
    claim = None
    deadline = time.time() + 10
    while time.time() < deadline:
        st, _, d = c.req("POST", SUB + SUB_ID + "/claim", json.dumps({"worker": "worker-1"}),
                         {"Content-Type": "application/json"}, what="sub-claim", path=SUB_ID)
        if st == 200:
            claim = json.loads(d)
            break
        time.sleep(0.05)
    if not claim:
        raise RuntimeError("no pull-wake wake to claim: %d %r" % (st, d[:200]))
    tail = next(s["tail_offset"] for s in claim["streams"] if s["path"] == "p/json")
    st, _, d = c.req("POST", SUB + SUB_ID + "/ack",
                     json.dumps({"wake_id": claim["wake_id"], "generation": claim["generation"],
                                 "acks": [{"stream": "p/json", "offset": tail}], "done": True}),
                     {"Content-Type": "application/json", "Authorization": "Bearer " + claim["token"]},
                     what="sub-ack", path=SUB_ID, msgs={"p/json": tail})
    _expect(st, (200,), "subscription ack", d)
    _pause(interval_ms)
    # a stream that is deleted
    c.put("p/del", "application/octet-stream", b"del-0", msgs=1)
    c.post("p/del", "application/octet-stream", b"del-1")
    pre_delete["p/del"] = read_stream(c, "p/del")
    st, _, d = c.req("DELETE", PREFIX + "p/del", None, {}, what="delete", path="p/del")
    _expect(st, (204,), "DELETE p/del", d)
    # concurrent appends from three clients (group commit under `always`)
    errs = []

    def worker(n):
        cc = Client(port, log, lock, first_id=100000 * (n + 1), step=1)
        try:
            for k in range(4):
                cc.agents(("ag/a", "ag/b", "ag/n/c")[(n + k) % 3], {"k": "w%d-%d" % (n, k)})
            cc.post("p/json", "application/json", json.dumps({"w": n}))
        except Exception as e:  # reported below: a worker must not fail silently
            errs.append(e)
        finally:
            cc.close()

    ts = [threading.Thread(target=worker, args=(n,)) for n in range(3)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errs:
        raise errs[0]
    c.agents("ag/b", {"k": "big", "pad": "x" * 20000})  # spans several blocks
    c.post("p/ttl", "application/json", json.dumps({"t": 1}))
    c.post("p/json", "application/json", json.dumps({"p": PRODUCER, "s": 4}),
           {"Producer-Id": PRODUCER, "Producer-Epoch": "0", "Producer-Seq": "4"})
    _pause(interval_ms)
    c.agents("ag/a", {"k": "a-last"})
    time.sleep(settle_ms / 1000.0)
    return pre_delete


# ---- reading back ----

def parse_sse(body):
    out = []
    for block in body.split(b"\n\n"):
        rid, data = None, []
        for line in block.split(b"\n"):
            if line.startswith(b"id: "):
                rid = line[4:].decode()
            elif line.startswith(b"data: "):
                data.append(line[6:])
            elif line.startswith(b": error"):
                out.append(("error", line))
        if rid is not None:
            out.append((rid, b"\n".join(data)))
    return out


def read_stream(c, path, kind=None):
    """Both views of one stream: HEAD, the /v1 catch-up (followed to the tail) and, for JSON
    content, the /agents history. Returns a dict (status 404/410 when absent)."""
    kind = kind or STREAMS[path]["kind"]
    st, h, _ = c.req("HEAD", PREFIX + path, None, {}, what="read")
    out = {"status": st, "headers": {k: h.get(k) for k in ("content-type", "stream-next-offset",
                                                             "stream-closed", "stream-ttl")}}
    if st != 200:
        return out
    body, off, rounds, v1_status = b"", "-1", 0, 200
    items = []
    while rounds < 1000:
        rounds += 1
        st, hh, d = c.req("GET", PREFIX + path + "?offset=" + off, None, {}, what="read")
        if st != 200:
            v1_status = st
            out["v1_error"] = d[:300].decode("utf-8", "replace")
            break
        if kind == "bin":
            body += d
        else:
            items.extend(json.loads(d) if d else [])
        nxt = hh.get("stream-next-offset")
        if hh.get("stream-up-to-date") == "true" or nxt == off or not nxt:
            break
        off = nxt
    out["v1_status"] = v1_status
    if kind == "bin":
        out["v1_bytes"] = base64.b64encode(body).decode()
    else:
        out["v1_items"] = items
        st, _, d = c.req("GET", "/agents/" + path, None, {}, what="read")
        out["agents_status"] = st
        if st == 200:
            ev = parse_sse(d)
            out["agents"] = [(i, x.decode("utf-8", "replace")) for i, x in ev]
        else:
            out["agents_error"] = d[:300].decode("utf-8", "replace")
    return out


def read_sub(c):
    st, _, d = c.req("GET", SUB + SUB_ID, None, {}, what="read")
    return {"status": st, "body": json.loads(d) if st == 200 and d else d.decode("utf-8", "replace")}


def reference(c):
    return {"streams": {p: read_stream(c, p) for p in STREAMS}, "sub": read_sub(c)}
