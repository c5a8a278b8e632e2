#!/usr/bin/python3
"""subs_persist.py - subscriptions survive restarts of the real server (YAML store).

Drives build/durable-stream over HTTP (run by tests/subs_persist.test.sh):
  1. creates a webhook subscription that auto-acks ({done:true}), a webhook subscription
     acked through its callback, a pull-wake subscription (glob + explicit streams) and one
     whose id needs a hashed file name; drives them into states (acked offsets, an open
     webhook wake, a claimed pull-wake wake, explicit streams added and removed);
  2. SIGTERM restart: every subscription reads back identical (GET), the JWKS is the same,
     the open webhook wake is delivered again, tokens issued before the restart still ack,
     stale ones are fenced, and new appends wake webhooks and pull-wake workers again;
  3. kill -9 right after a create, an ack and a DELETE were acknowledged: all three hold;
  4. a damaged subscription file and a damaged key file: the server starts, logs an error
     naming the file, moves it aside (content kept), the rest is loaded, and the id can be
     created afresh without touching the damaged copy;
  5. a damaged file that cannot even be moved aside (subscription directory on a tmpfs
     remounted read-only for the start-up; needs root, skipped with a message otherwise):
     logged, skipped, and writes to that id are refused later while other ids work;
  6. the fsync policy: under `interval` no subscription file is fsynced on the event-loop
     thread (strace: only threadpool threads fsync them, and they do), under `always` they
     are fsynced before the answer; `never` and `always` keep acknowledged changes over
     kill -9 too;
  7. a save that keeps failing (a directory planted at the temp file's name): logged once
     however many appends, under `always` the wake is not announced until saving works
     again, then it is (same generation + 1) and the recovery is logged once;
  8. an acked offset beyond the recovered stream tail (stream data lost) is pulled back to
     the tail at start-up with a warning, and new appends wake again;
  9. a signing-keys.json that cannot be read is not replaced (error logged, server up);
     a missing one while subscription files exist is regenerated with a warning;
 10. the link journal: a new matching stream and an ack each append one line to
     "<sub>.links" and leave the subscription file alone (same inode: no rewrite); many
     acks compact the journal (off the loop) and the state survives; a torn last line is
     ignored, a damaged line in the middle is logged with its byte offset, kept aside and
     the rest loaded; a version 1 file (links inside) is migrated to file + journal;
 11. the memory store keeps subscriptions in memory only (gone after a restart, no files).
Webhooks go to a receiver on 127.0.0.1: every server runs with a config.lua that allows it
(protocol.webhook_allow_networks).
Environment: DS_BINARY. Must not: leave servers or temp dirs behind.
"""
import base64
import http.client
import http.server
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

BIN = os.environ.get("DS_BINARY", "build/durable-stream")
T = tempfile.mkdtemp(prefix="ds-subs-persist-")
DATA = os.path.join(T, "data")
SUBDIR = os.path.join(DATA, "subscriptions")
PREFIX = "/v1/stream"
CONFIG = os.path.join(T, "config.lua")  # the servers run in T: ./config.lua applies
server = None


def write_config(extra=""):
    with open(CONFIG, "w") as f:
        f.write("return { %sprotocol = { webhook_allow_networks = { \"127.0.0.0/8\" } } }\n" % extra)


write_config()
checks = 0


def check(cond, what):
    global checks
    if not cond:
        raise AssertionError(what)
    checks += 1


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


PORT = free_port()


class Server:
    def __init__(self, storage="yaml", new_port=False, args=(), wrap=()):
        """new_port: a start that does not resume an earlier one's state may move to another
        free port if this one was taken meanwhile (restarts keep theirs: callback URLs)."""
        global PORT
        self.args, self.wrap = list(args), list(wrap)
        for attempt in range(5):
            if self.start(storage):
                return
            if not new_port or "cannot listen" not in self.log():
                break
            PORT = free_port()
        raise AssertionError("server did not start:\n" + self.log())

    def start(self, storage):
        self.err_path = os.path.join(T, "server.err")
        out_path = os.path.join(T, "server.out")
        self.out = open(out_path, "w")
        self.err = open(self.err_path, "a")
        self.err_start = os.path.getsize(self.err_path)
        env = dict(os.environ)
        if self.wrap:  # LeakSanitizer cannot run under ptrace; ASan itself still does
            env["ASAN_OPTIONS"] = (env["ASAN_OPTIONS"] + ":" if env.get("ASAN_OPTIONS") else "") + "detect_leaks=0"
        # run in the temp dir so no ./config.lua of the checkout is picked up
        self.proc = subprocess.Popen(
            self.wrap + [os.path.abspath(BIN), "--port", str(PORT), "--storage", storage,
                         "--data-dir", DATA, "--long-poll-timeout", "500"] + self.args,
            cwd=T, stdout=self.out, stderr=self.err, env=env)
        want = "listening on http://127.0.0.1:%d" % PORT
        deadline = time.time() + 30
        while time.time() < deadline:
            with open(out_path) as f:
                if want in f.read():  # this process, not another one on the port
                    return True
            if self.proc.poll() is not None:
                self.out.close()
                self.err.close()
                return False
            time.sleep(0.05)
        raise AssertionError("server did not start in time:\n" + self.log())

    def log(self):
        if not self.err.closed:
            self.err.flush()
        with open(self.err_path) as f:
            f.seek(self.err_start)
            return f.read()

    def target(self):
        """pid of the server itself (a wrapper such as strace runs it as its child)"""
        if not self.wrap:
            return self.proc.pid
        with open("/proc/%d/task/%d/children" % (self.proc.pid, self.proc.pid)) as f:
            return int(f.read().split()[0])

    def stop(self, sig=signal.SIGTERM):
        os.kill(self.target(), sig)
        rc = self.proc.wait(timeout=20)
        log = self.log()
        check("runtime error:" not in log and "Sanitizer" not in log, "sanitizer report:\n" + log)
        if sig == signal.SIGTERM:
            check(rc == 0, "server exited with %d after SIGTERM:\n%s" % (rc, self.log()))
        self.out.close()
        self.err.close()


def req(method, path, body=None, headers=None, ctype="application/json"):
    c = http.client.HTTPConnection("127.0.0.1", PORT, timeout=10)
    h = dict(headers or {})
    if body is not None:
        if not isinstance(body, (bytes, str)):
            body = json.dumps(body)
        h.setdefault("Content-Type", ctype)
    c.request(method, path, body, h)
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, data


def jreq(method, path, body=None, headers=None):
    st, data = req(method, path, body, headers)
    return st, (json.loads(data) if data else None)


def sub_url(sid):
    return PREFIX + "/__ds/subscriptions/" + urllib.parse.quote(sid, safe="")


def get_sub(sid):
    st, b = jreq("GET", sub_url(sid))
    check(st == 200, "GET %s: %d %r" % (sid, st, b))
    return b


def acked(sid, path):
    for s in get_sub(sid)["streams"]:
        if s["path"] == path:
            return s["acked_offset"]
    return None


def tail(path):
    c = http.client.HTTPConnection("127.0.0.1", PORT, timeout=10)
    c.request("HEAD", PREFIX + "/" + path)
    r = c.getresponse()
    r.read()
    c.close()
    return r.getheader("Stream-Next-Offset")


def wait_for(fn, what, timeout=15):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = fn()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError("timed out waiting for " + what)


# ---- webhook receiver: /done answers {"done":true}, /manual answers {} ----
hooks = {"done": queue.Queue(), "manual": queue.Queue()}


class Hook(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        raw = self.rfile.read(n)
        kind = self.path.strip("/")
        hooks.get(kind, queue.Queue()).put((raw, self.headers.get("Webhook-Signature")))
        out = b'{"done":true}' if kind == "done" else b"{}"
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)
        except OSError:
            pass  # the server went away mid-delivery (a restart): it delivers again

    def log_message(self, *a):
        pass


hook_srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
threading.Thread(target=hook_srv.serve_forever, daemon=True).start()
HOOK = "http://127.0.0.1:%d" % hook_srv.server_address[1]


def verify(raw, sig_header, jwks):
    parts = dict(p.split("=", 1) for p in sig_header.split(","))
    key = next(k for k in jwks["keys"] if k["kid"] == parts["kid"])
    pub = Ed25519PublicKey.from_public_bytes(base64.urlsafe_b64decode(key["x"] + "=="))
    pub.verify(base64.urlsafe_b64decode(parts["ed25519"] + "=="),
               parts["t"].encode() + b"." + raw)  # raises if invalid
    return True


def next_hook(kind, want=None, timeout=15):
    """Next notification on /kind (optionally the first one matching want(body))."""
    deadline = time.time() + timeout
    while True:
        left = deadline - time.time()
        if left <= 0:
            raise AssertionError("no webhook on /" + kind)
        try:
            raw, sig = hooks[kind].get(timeout=left)
        except queue.Empty:
            raise AssertionError("no webhook on /" + kind)
        body = json.loads(raw)
        if want is None or want(body):
            return raw, sig, body


def drain(kind):
    while not hooks[kind].empty():
        hooks[kind].get_nowait()


def put_stream(path, body):
    st, b = req("PUT", PREFIX + "/" + path, json.dumps(body))
    check(st == 201, "PUT %s: %d %r" % (path, st, b))


def append(path, body):
    st, b = req("POST", PREFIX + "/" + path, json.dumps(body))
    check(st == 204, "POST %s: %d %r" % (path, st, b))


def callback(note, acks, done=True, token=None):
    return jreq("POST", urllib.parse.urlparse(note["callback_url"]).path,
                {"wake_id": note["wake_id"], "generation": note["generation"],
                 "acks": acks, "done": done},
                {"Authorization": "Bearer " + (token or note["callback_token"])})


def wake_events(sid, pool="wake/pool"):
    st, data = req("GET", PREFIX + "/" + pool + "?offset=-1")
    check(st == 200, "read wake stream: %d" % st)
    return [e for e in json.loads(data) if e.get("subscription_id") == sid]


ODD = "odd id/é+x"  # needs the hashed file name


def phase_create():
    global srv
    put_stream("wake/pool", [])
    put_stream("events/a", {"n": 0})
    st, b = jreq("PUT", sub_url("wh-done"), {
        "type": "webhook", "pattern": "events/*", "webhook": {"url": HOOK + "/done"},
        "lease_ttl_ms": 5000, "description": "auto-ack"})
    check(st == 201, "create wh-done: %d %r" % (st, b))
    st, b = jreq("PUT", sub_url("wh-manual"), {
        "type": "webhook", "streams": ["manual/x"], "webhook": {"url": HOOK + "/manual"},
        "lease_ttl_ms": 600000})
    check(st == 201, "create wh-manual: %d %r" % (st, b))
    st, b = jreq("PUT", sub_url("pull"), {
        "type": "pull-wake", "pattern": "jobs/**", "streams": ["jobs-explicit"],
        "wake_stream": "wake/pool", "lease_ttl_ms": 600000})
    check(st == 201, "create pull: %d %r" % (st, b))
    st, b = jreq("PUT", sub_url(ODD), {
        "type": "pull-wake", "streams": ["odd/s"], "wake_stream": "wake/pool"})
    check(st == 201, "create odd: %d %r" % (st, b))
    names = sorted(os.listdir(SUBDIR))
    check("s_wh-done.json" in names and "signing-keys.json" in names and
          any(n.startswith("h_") for n in names), "files in %s: %r" % (SUBDIR, names))
    check(oct(os.stat(os.path.join(SUBDIR, "signing-keys.json")).st_mode & 0o777) == "0o600",
          "signing-keys.json must be 0600")

    # wh-done: an append is delivered, auto-acked
    append("events/a", {"n": 1})
    raw, sig, note = next_hook("done")
    check(note["subscription_id"] == "wh-done", "wh-done notification")
    t = tail("events/a")
    wait_for(lambda: acked("wh-done", "events/a") == t, "wh-done auto-ack")
    # explicit streams added and removed
    st, _ = req("POST", sub_url("wh-done") + "/streams", json.dumps({"streams": ["extra/y", "extra/z"]}))
    check(st == 204, "add streams")
    st, _ = req("DELETE", sub_url("wh-done") + "/streams/" + urllib.parse.quote("extra/z", safe=""))
    check(st == 204, "remove stream")

    # wh-manual: an open wake, not acked
    put_stream("manual/x", {"m": 1})
    _, _, note = next_hook("manual", lambda b: b["subscription_id"] == "wh-manual")
    # pull: a wake event, claimed by worker-1
    put_stream("jobs/q/1", {"j": 1})
    wait_for(lambda: wake_events("pull"), "pull wake event")
    st, claim = jreq("POST", sub_url("pull") + "/claim", {"worker": "worker-1"})
    check(st == 200, "claim: %d %r" % (st, claim))
    return note, claim


def journal(sid):
    """The link journal of a subscription replayed: path -> last record."""
    out = {}
    with open(os.path.join(SUBDIR, "s_%s.links" % sid)) as f:
        for line in f:
            rec = json.loads(line)
            if rec.get("removed"):
                out.pop(rec["path"], None)
            else:
                out[rec["path"]] = rec
    return out


def lines_of(path):
    with open(path) as f:
        return sum(1 for _ in f)


def phase_journal():
    """Links are journaled one line per change; the subscription file is left alone."""
    global srv
    shutil.rmtree(DATA, ignore_errors=True)
    srv = Server(new_port=True)
    put_stream("jw/pool", [])
    for i in range(5):
        put_stream("old/%d" % i, {"n": i})  # streams before the subscription: not news
    sid = "jr"
    st, _ = jreq("PUT", sub_url(sid), {"type": "pull-wake", "pattern": "old/*",
                                      "wake_stream": "jw/pool", "lease_ttl_ms": 600000})
    check(st == 201, "create jr")
    f = os.path.join(SUBDIR, "s_%s.json" % sid)
    j = os.path.join(SUBDIR, "s_%s.links" % sid)
    check(get_sub(sid)["streams"] == [], "a glob PUT links no existing stream (nothing is "
          "enumerated): %r" % get_sub(sid)["streams"])
    check(lines_of(j) == 0, "no stream enumerated at creation: %d lines" % lines_of(j))
    # a pre-existing stream gets news: linked at its old tail; a wake opens
    t_before = tail("old/0")
    append("old/0", {"more": 1})
    wait_for(lambda: wake_events(sid, "jw/pool"), "wake for old/0")
    check(journal(sid)["old/0"]["acked_offset"] == t_before, "old/0 linked at its tail before the append: %r" % journal(sid))
    ino = os.stat(f).st_ino
    n0 = lines_of(j)
    # while that wake is open, 40 new matching streams: one journal line each, no rewrite
    for i in range(40):
        put_stream("old/new%d" % i, {"n": i})
    check(lines_of(j) == n0 + 40, "one line per new stream: %d -> %d" % (n0, lines_of(j)))
    check(os.stat(f).st_ino == ino, "the subscription file was rewritten for new streams")
    check(journal(sid)["old/new7"]["acked_offset"] == "-1", "a new stream is all news")
    # the claim lists the pending streams only (5 - 1 untouched old streams are not)
    st, claim = jreq("POST", sub_url(sid) + "/claim", {"worker": "w"})
    check(st == 200 and len(claim["streams"]) == 41, "claim: %d %r" % (st, claim and len(claim["streams"])))
    # many acks: the journal compacts (in the background) and keeps the last state
    acks = [{"stream": s["path"], "offset": s["tail_offset"]} for s in claim["streams"]]
    st, b = jreq("POST", sub_url(sid) + "/ack", {"wake_id": claim["wake_id"], "generation": claim["generation"],
                                                "acks": acks, "done": False},
                 {"Authorization": "Bearer " + claim["token"]})
    check(st == 200, "ack: %d %r" % (st, b))
    n1 = lines_of(j)

    def ack(path):
        st, b = jreq("POST", sub_url(sid) + "/ack",
                     {"wake_id": claim["wake_id"], "generation": claim["generation"],
                      "acks": [{"stream": path, "offset": tail(path)}], "done": False},
                     {"Authorization": "Bearer " + claim["token"]})
        check(st == 200, "ack %s: %d %r" % (path, st, b))

    for i in range(300):
        append("old/0", {"i": i})
        if i % 100 == 99:
            ack("old/0")
    # appends to a linked stream add no line: only acks and new links do
    check(lines_of(j) == n1 + 3, "appends journaled something: %d -> %d lines" % (n1, lines_of(j)))
    # 1,100 acks that move: the journal is compacted in the background, state kept
    for k in range(1100):
        append("old/0", {"k": k})
        ack("old/0")
    t = tail("old/0")
    # without compaction the file would hold 41 + 41 + 3 + 1,100 lines
    wait_for(lambda: lines_of(j) < 600, "compaction of %s (%d lines)" % (j, lines_of(j)))
    before = journal(sid)
    check(len(before) == 41 and before["old/0"]["acked_offset"] == t, "compacted state: %r" % len(before))
    check(not os.path.exists(j + ".tmp"), "no temp file left")
    srv.stop()
    srv = Server()
    wait_for(lambda: get_sub(sid), "loaded")
    got = {s["path"]: s["acked_offset"] for s in get_sub(sid)["streams"]}
    check(got == {p: r["acked_offset"] for p, r in before.items()}, "state after restart")
    srv.stop()
    # a torn last line is ignored; a damaged line in the middle is skipped and logged
    with open(j, "a") as jf:
        jf.write('{"path":"old/1","explicit":false,"glob":true,"acked_o')
    srv = Server()
    wait_for(lambda: "unfinished last line" in srv.log(), "torn line warned")
    check("old/1" not in {s["path"] for s in get_sub(sid)["streams"]}, "torn line ignored")
    srv.stop()
    lines = open(j).read().splitlines(True)
    lines.insert(3, "{garbage\n")
    open(j, "w").write("".join(lines))
    offset = len("".join(lines[:3]))
    srv = Server()
    log = wait_for(lambda: "damaged stream link record" in srv.log() and srv.log(), "damage logged")
    check(("byte %d" % offset) in log and j in log, "damage names file and byte:\n" + log)
    check(any(n.startswith("s_jr.links.damaged-") for n in os.listdir(SUBDIR)), "damaged journal kept aside")
    check(len(get_sub(sid)["streams"]) >= 40, "the rest loaded")
    wait_for(lambda: os.path.exists(j) and "garbage" not in open(j).read(), "journal rewritten")
    srv.stop()
    # a version 1 file (links inside the subscription file) is migrated
    v1 = {"version": 1, "id": "legacy", "type": "pull-wake", "pattern": "old/*",
          "wake_stream": "jw/pool", "config": "legacy-config", "base_url": "http://127.0.0.1",
          "created_at": "2026-11-01T00:00:00.000Z", "lease_ttl_ms": 30000, "failed": False,
          "generation": 3, "streams": [
              {"path": "old/2", "explicit": False, "glob": True, "acked_offset": "0000000000000001"},
              {"path": "legacy/x", "explicit": True, "glob": False, "acked_offset": "-1"}],
          "wake_snapshot": []}
    open(os.path.join(SUBDIR, "s_legacy.json"), "w").write(json.dumps(v1))
    srv = Server()
    check("moved to the version 2 layout" in srv.log(), "migration logged:\n" + srv.log())
    got = {s["path"]: s["acked_offset"] for s in get_sub("legacy")["streams"]}
    check(got == {"old/2": v1["streams"][0]["acked_offset"], "legacy/x": "-1"}, "migrated links: %r" % got)
    doc = json.load(open(os.path.join(SUBDIR, "s_legacy.json")))
    check(doc["version"] == 2 and "streams" not in doc, "version 2 file: %r" % doc)
    check(set(journal("legacy")) == {"old/2", "legacy/x"}, "journal written")
    srv.stop()
    srv = Server()
    check({s["path"] for s in get_sub("legacy")["streams"]} == {"old/2", "legacy/x"}, "migrated state reloads")
    srv.stop()


def compare(before, after, what):
    check(before == after, "%s differs after restart:\n before %r\n after  %r" % (what, before, after))


mounted = False


def phase_blocked():
    global srv, mounted
    shutil.rmtree(DATA)
    os.makedirs(SUBDIR)
    if os.geteuid() != 0 or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", SUBDIR],
            stderr=subprocess.DEVNULL).returncode != 0:
        print("subs_persist: unmovable damaged file case skipped (mounting a tmpfs needs root)")
        return
    mounted = True
    srv = Server(new_port=True)
    st, _ = jreq("PUT", sub_url("good"), {"type": "pull-wake", "streams": ["g"], "wake_stream": "w"})
    check(st == 201, "create good")
    srv.stop()
    bad = os.path.join(SUBDIR, "s_bad.json")
    open(bad, "w").write("{not json")
    subprocess.run(["mount", "-o", "remount,ro", SUBDIR], check=True)
    srv = Server()
    log = srv.log()
    check("cannot be moved aside" in log and bad in log, "unmovable file logged:\n" + log)
    check(get_sub("good")["id"] == "good", "other subscriptions load")
    subprocess.run(["mount", "-o", "remount,rw", SUBDIR], check=True)
    st, b = jreq("PUT", sub_url("bad"), {"type": "pull-wake", "streams": ["b"], "wake_stream": "w"})
    check(st == 500 and b["error"]["code"] == "STORAGE_ERROR", "write over unmovable file refused: %d %r" % (st, b))
    check(open(bad).read() == "{not json", "unmovable damaged file untouched")
    check("refusing to save subscription bad" in srv.log(), "refusal logged")
    st, _ = jreq("GET", sub_url("bad"))
    check(st == 404, "refused create not created")
    st, _ = jreq("PUT", sub_url("other"), {"type": "pull-wake", "streams": ["o"], "wake_stream": "w"})
    check(st == 201, "other ids still written")
    srv.stop()
    subprocess.run(["umount", SUBDIR], check=True)
    mounted = False


def count_in(log, what):
    return log.count(what)


def strace_fsyncs(path, main_tid):
    """(tid, fd path) of every fsync/fdatasync in an `strace -f -y` log."""
    out = []
    with open(path) as f:
        for line in f:
            parts = line.split(None, 1)
            if len(parts) < 2 or not parts[0].isdigit():
                continue
            rest = parts[1]
            if rest.startswith("fsync(") or rest.startswith("fdatasync("):
                lt, gt = rest.find("<"), rest.find(">")
                if lt > 0 and gt > lt:
                    out.append((int(parts[0]), rest[lt + 1:gt]))
    return out


def phase_policy():
    """fsync policy: where and whether subscription files are fsynced."""
    global srv
    shutil.rmtree(DATA, ignore_errors=True)
    write_config("fsync_interval_ms = 100, ")
    trace = os.path.join(T, "strace.log")
    have_strace = shutil.which("strace") is not None
    for policy in ("interval", "always"):
        wrap = ["strace", "-f", "-y", "-qq", "-e", "trace=fsync,fdatasync", "-o", trace] if have_strace else []
        srv = Server(new_port=True, args=["--fsync", policy], wrap=wrap)
        sid = "pol-" + policy
        f = os.path.join(SUBDIR, "s_%s.json" % sid)
        st, _ = jreq("PUT", sub_url(sid), {"type": "pull-wake", "streams": ["pol/" + policy],
                                          "wake_stream": "pol/wake"})
        check(st == 201, "create under %s: %d" % (policy, st))
        if have_strace:
            # the server's main thread is the first traced thread after strace's own exec
            def main_tid():
                with open(trace) as tf:
                    for line in tf:
                        p0 = line.split(None, 1)[0]
                        if p0.isdigit():
                            return int(p0)
                return None
            mt = wait_for(main_tid, "strace output")
            if policy == "interval":
                ours = wait_for(lambda: [x for x in strace_fsyncs(trace, mt) if x[1] in (f, f + ".tmp")],
                                "threadpool fsync of " + f)
                check(all(tid != mt for tid, _ in ours),
                      "interval: %s fsynced on the loop thread: %r" % (f, ours))
                wait_for(lambda: any(p == SUBDIR and tid != mt for tid, p in strace_fsyncs(trace, mt)),
                         "threadpool fsync of the subscription directory")
            else:
                ours = [x for x in strace_fsyncs(trace, mt) if x[1] == f + ".tmp"]
                check(ours and all(tid == mt for tid, _ in ours),
                      "always: %s fsynced before the answer on the loop: %r" % (f, ours))
        srv.stop()
        srv = Server(args=["--fsync", policy])
        check(get_sub(sid)["id"] == sid, "SIGTERM restart under " + policy)
        srv.stop()
    # kill -9 right after acknowledged changes, under never (no fsync at all) and always
    for policy in ("never", "always"):
        srv = Server(args=["--fsync", policy])
        sid = "k9-" + policy
        st, _ = jreq("PUT", sub_url(sid), {"type": "pull-wake", "streams": ["k9/" + policy],
                                          "wake_stream": "pol/wake"})
        check(st == 201, "create %s" % sid)
        st, _ = req("DELETE", sub_url("pol-" + policy if policy == "always" else "pol-interval"))
        check(st == 204, "delete under " + policy)
        srv.stop(signal.SIGKILL)
        srv = Server(args=["--fsync", policy])
        check(get_sub(sid)["id"] == sid, "create kept over kill -9 under " + policy)
        st, _ = jreq("GET", sub_url("pol-" + policy if policy == "always" else "pol-interval"))
        check(st == 404, "delete kept over kill -9 under " + policy)
        srv.stop()
    write_config()


def phase_save_failure():
    """A save that keeps failing: logged once, retried from a timer, wake held under always."""
    global srv
    for policy in ("always", "interval"):
        shutil.rmtree(DATA, ignore_errors=True)
        srv = Server(new_port=True, args=["--fsync", policy])
        sid = "stuck"
        st, _ = jreq("PUT", sub_url(sid), {"type": "webhook", "streams": ["stuck/x"],
                                          "webhook": {"url": HOOK + "/done"}})
        check(st == 201, "create stuck")
        drain("done")
        put_stream("stuck/x", {"n": 0})
        _, _, first = next_hook("done", lambda b: b["subscription_id"] == sid)
        t0 = tail("stuck/x")
        wait_for(lambda: acked(sid, "stuck/x") == t0, "first wake auto-acked")
        blocker = os.path.join(SUBDIR, "s_%s.json.tmp" % sid)
        os.mkdir(blocker)  # the temp file cannot be created: every save fails
        for i in range(30):
            append("stuck/x", {"n": i + 1})
        wait_for(lambda: "cannot save subscription stuck" in srv.log(), "save failure logged")
        if policy == "always":
            try:
                _, _, early = next_hook("done", lambda b: b["subscription_id"] == sid, timeout=0.5)
                raise AssertionError("always: a wake that could not be saved was announced: %r" % early)
            except AssertionError as e:
                if "no webhook" not in str(e):
                    raise
        for i in range(30):
            append("stuck/x", {"m": i})
        check(count_in(srv.log(), "cannot save subscription stuck") == 1,
              "%s: save failure logged once:\n%s" % (policy, srv.log()))
        os.rmdir(blocker)
        wait_for(lambda: "subscription stuck saved again" in srv.log(), "recovery logged")
        _, _, note = next_hook("done", lambda b: b["subscription_id"] == sid and
                               b["generation"] > first["generation"])
        check(note["generation"] == first["generation"] + 1,
              "%s: one new generation for the held wake: %r" % (policy, note))
        t1 = tail("stuck/x")
        wait_for(lambda: acked(sid, "stuck/x") == t1, "wake after recovery auto-acked")
        log = srv.log()
        check(count_in(log, "cannot save subscription stuck") == 1 and
              count_in(log, "subscription stuck saved again") == 1,
              "%s: one failure and one recovery line:\n%s" % (policy, log))
        srv.stop()
        srv = Server(args=["--fsync", policy])
        check(acked(sid, "stuck/x") == t1, "%s: state saved after recovery" % policy)
        srv.stop()


def phase_clamp_and_keys():
    global srv
    shutil.rmtree(DATA, ignore_errors=True)
    srv = Server(new_port=True)
    sid = "ahead"
    st, _ = jreq("PUT", sub_url(sid), {"type": "webhook", "streams": ["ahead/x"],
                                      "webhook": {"url": HOOK + "/manual"}})
    check(st == 201, "create ahead")
    put_stream("ahead/x", {"n": 0})
    _, _, note = next_hook("manual", lambda b: b["subscription_id"] == sid)
    t = tail("ahead/x")
    st, b = callback(note, [{"stream": "ahead/x", "offset": t}])
    check(st == 200, "ack ahead: %d %r" % (st, b))
    srv.stop()
    # the stream lost data the subscription had acked (as after a power loss)
    f = os.path.join(SUBDIR, "s_%s.json" % sid)
    j = os.path.join(SUBDIR, "s_%s.links" % sid)
    far = "9999999999999999"
    with open(j, "a") as jf:
        jf.write(json.dumps({"path": "ahead/x", "explicit": True, "glob": False,
                             "acked_offset": far}) + "\n")
    drain("manual")
    srv = Server()
    log = wait_for(lambda: "beyond the stream's tail" in srv.log() and srv.log(), "clamp logged")
    check(f in log, "clamp names the subscription file:\n" + log)
    check(acked(sid, "ahead/x") == t, "acked pulled back to the tail: %r" % acked(sid, "ahead/x"))
    append("ahead/x", {"n": 1})
    _, _, n2 = next_hook("manual", lambda b: b["subscription_id"] == sid and
                         b["generation"] > note["generation"])
    check(n2["streams"][0]["acked_offset"] == t, "wake after clamp: %r" % n2)
    srv.stop()
    check(journal(sid).get("ahead/x", {}).get("acked_offset") not in (None, far), "clamped value saved")

    # an unreadable key file (a directory here: EISDIR; as root EACCES cannot be made)
    k = os.path.join(SUBDIR, "signing-keys.json")
    keys = open(k, "rb").read()
    os.unlink(k)
    os.mkdir(k)
    srv = Server()
    log = srv.log()
    check("cannot read the signing keys" in log and k in log, "unreadable keys logged:\n" + log)
    st, _ = jreq("GET", PREFIX + "/__ds/jwks.json")
    check(st == 200, "server runs on temporary keys")
    srv.stop()
    check(os.path.isdir(k) and not [n for n in os.listdir(SUBDIR) if "signing-keys.json.damaged" in n],
          "unreadable key file neither replaced nor moved: %r" % os.listdir(SUBDIR))
    os.rmdir(k)
    open(k, "wb").write(keys)
    os.chmod(k, 0o600)
    # missing key file while subscriptions exist: regenerated with a warning
    os.unlink(k)
    srv = Server()
    check("missing while subscription files exist" in srv.log(), "regenerated keys warned:\n" + srv.log())
    check(os.path.exists(k), "new key file written")
    srv.stop()


def main():
    global srv
    srv = Server(new_port=True)
    manual_note, claim = phase_create()
    ids = ["wh-done", "wh-manual", "pull", ODD]
    snap = {i: get_sub(i) for i in ids}
    check([s["link_type"] for s in snap["wh-done"]["streams"] if s["path"] == "extra/y"] == ["explicit"],
          "extra/y explicit")
    check(not any(s["path"] == "extra/z" for s in snap["wh-done"]["streams"]), "extra/z removed")
    st, jwks = jreq("GET", PREFIX + "/__ds/jwks.json")
    check(st == 200, "jwks")

    # ---- SIGTERM restart ----
    srv.stop()
    drain("manual")
    srv = Server()
    check("4 subscriptions loaded" in srv.log(), "start-up log:\n" + srv.log())
    for i in ids:
        compare(snap[i], get_sub(i), "subscription " + i)
    st, jwks2 = jreq("GET", PREFIX + "/__ds/jwks.json")
    compare(jwks, jwks2, "JWKS")
    # the stored configuration still decides idempotent re-creates
    same = {"type": "webhook", "streams": ["manual/x"], "webhook": {"url": HOOK + "/manual"},
            "lease_ttl_ms": 600000}
    st, _ = jreq("PUT", sub_url("wh-manual"), same)
    check(st == 200, "same config after restart: %d" % st)
    st, b = jreq("PUT", sub_url("wh-manual"), dict(same, lease_ttl_ms=5000))
    check(st == 409 and b["error"]["code"] == "SUBSCRIPTION_ALREADY_EXISTS", "different config: %d" % st)
    # the open webhook wake is delivered again, same wake and generation, still signed
    raw, sig, again = next_hook("manual", lambda b: b["wake_id"] == manual_note["wake_id"])
    check(again["generation"] == manual_note["generation"], "same generation re-delivered")
    check(verify(raw, sig, jwks2), "signature after restart")
    # the token from before the restart still acks; a repeat is fenced
    t = tail("manual/x")
    st, b = callback(manual_note, [{"stream": "manual/x", "offset": t}])
    check(st == 200 and b == {"ok": True, "next_wake": False}, "callback with old token: %d %r" % (st, b))
    st, b = callback(manual_note, [{"stream": "manual/x", "offset": t}])
    check(st == 409 and b["error"]["code"] == "FENCED", "stale callback fenced: %d %r" % (st, b))
    check(acked("wh-manual", "manual/x") == t, "wh-manual acked after callback")
    # the claimed pull-wake wake: worker-1 still holds it and acks with its old token
    st, b = jreq("POST", sub_url("pull") + "/claim", {"worker": "worker-2"})
    check(st == 409 and b["error"]["current_holder"] == "worker-1", "claim survives: %d %r" % (st, b))
    jt = next(s["tail_offset"] for s in claim["streams"] if s["path"] == "jobs/q/1")
    st, b = jreq("POST", sub_url("pull") + "/ack",
                 {"wake_id": claim["wake_id"], "generation": claim["generation"],
                  "acks": [{"stream": "jobs/q/1", "offset": jt}], "done": True},
                 {"Authorization": "Bearer " + claim["token"]})
    check(st == 200 and b == {"ok": True, "next_wake": False}, "pull ack after restart: %d %r" % (st, b))
    # wakes continue: webhook (glob, a stream new since the restart) and pull-wake
    put_stream("events/b", {"n": 1})
    _, _, nb = next_hook("done", lambda b: any(s["path"] == "events/b" for s in b["streams"]))
    tb = tail("events/b")
    wait_for(lambda: acked("wh-done", "events/b") == tb, "wh-done ack of events/b")
    append("jobs/q/1", {"j": 2})
    ev = wait_for(lambda: [e for e in wake_events("pull") if e["generation"] > claim["generation"]],
                  "pull wake after restart")
    st, claim2 = jreq("POST", sub_url("pull") + "/claim", {"worker": "worker-2"})
    check(st == 200 and claim2["generation"] == ev[0]["generation"], "claim after restart: %d %r" % (st, claim2))

    # ---- kill -9 right after acknowledged changes ----
    st, b = jreq("PUT", sub_url("after-crash"), {
        "type": "webhook", "pattern": "late/*", "webhook": {"url": HOOK + "/done"}})
    check(st == 201, "create after-crash: %d" % st)
    append("manual/x", {"m": 2})
    _, _, n2 = next_hook("manual", lambda b: b["generation"] > manual_note["generation"])
    t2 = tail("manual/x")
    st, b = callback(n2, [{"stream": "manual/x", "offset": t2}])
    check(st == 200, "callback before kill -9: %d %r" % (st, b))
    st, _ = req("DELETE", sub_url(ODD))
    check(st == 204, "delete odd")
    srv.stop(signal.SIGKILL)
    srv = Server()
    a = get_sub("after-crash")
    check(a["type"] == "webhook" and a["pattern"] == "late/*", "after-crash config")
    check(acked("wh-manual", "manual/x") == t2, "ack before kill -9 kept")
    st, _ = jreq("GET", sub_url(ODD))
    check(st == 404, "deleted subscription stays deleted: %d" % st)
    check(get_sub("pull")["streams"] == get_sub("pull")["streams"], "pull readable")
    # deliveries continue with a fresh generation
    append("manual/x", {"m": 3})
    _, _, n3 = next_hook("manual", lambda b: b["generation"] > n2["generation"])
    st, b = callback(n3, [{"stream": "manual/x", "offset": tail("manual/x")}])
    check(st == 200, "callback after kill -9: %d %r" % (st, b))
    put_stream("late/1", {"x": 1})
    next_hook("done", lambda b: b["subscription_id"] == "after-crash")
    srv.stop()

    # ---- damaged files ----
    f = os.path.join(SUBDIR, "s_wh-done.json")
    garbage = open(f, "rb").read()[:37]
    open(f, "wb").write(garbage)
    k = os.path.join(SUBDIR, "signing-keys.json")
    open(k, "w").write('{"version":1,"ed25519_private_key":"short"}')
    srv = Server()
    log = srv.log()
    check("damaged subscription file" in log and f in log, "error names the file:\n" + log)
    check("damaged signing key file" in log and k in log, "key error names the file:\n" + log)
    aside = [n for n in os.listdir(SUBDIR) if n.startswith("s_wh-done.json.damaged-")]
    check(len(aside) == 1 and open(os.path.join(SUBDIR, aside[0]), "rb").read() == garbage,
          "damaged file moved aside unchanged: %r" % os.listdir(SUBDIR))
    st, _ = jreq("GET", sub_url("wh-done"))
    check(st == 404, "damaged subscription not loaded")
    check(get_sub("wh-manual")["id"] == "wh-manual", "others still loaded")
    st, jwks3 = jreq("GET", PREFIX + "/__ds/jwks.json")
    check(jwks3["keys"][0]["kid"] != jwks["keys"][0]["kid"], "new signing key after damage")
    st, b = jreq("PUT", sub_url("wh-done"), {
        "type": "webhook", "pattern": "events/*", "webhook": {"url": HOOK + "/done"}})
    check(st == 201, "re-create after damage: %d %r" % (st, b))
    check(open(os.path.join(SUBDIR, aside[0]), "rb").read() == garbage, "aside copy untouched")
    drain("done")
    append("events/a", {"n": 9})
    raw, sig, nd = next_hook("done", lambda b: b["subscription_id"] == "wh-done")
    check(verify(raw, sig, jwks3), "signed with the new key")
    srv.stop()
    srv = Server()
    check(get_sub("wh-done")["id"] == "wh-done", "re-created subscription persisted")
    srv.stop()

    phase_blocked()
    phase_policy()
    phase_save_failure()
    phase_clamp_and_keys()
    phase_journal()

    # ---- memory store: in memory only ----
    shutil.rmtree(DATA)
    srv = Server("memory", new_port=True)
    st, _ = jreq("PUT", sub_url("mem"), {"type": "pull-wake", "streams": ["m"], "wake_stream": "w"})
    check(st == 201, "memory create")
    check(not os.path.exists(SUBDIR), "memory store writes no subscription files")
    srv.stop()
    srv = Server("memory")
    st, _ = jreq("GET", sub_url("mem"))
    check(st == 404, "memory store: gone after restart")
    srv.stop()
    srv = None
    print("subs_persist: %d checks passed" % checks)


srv = None
try:
    main()
except Exception:
    if srv is not None:
        sys.stderr.write("--- server log ---\n" + srv.log())
    raise
finally:
    if srv is not None and srv.proc.poll() is None:
        try:
            os.kill(srv.target(), signal.SIGKILL)
        except (OSError, ValueError, IndexError):
            pass
        srv.proc.kill()
        srv.proc.wait()
    hook_srv.shutdown()
    if mounted:
        subprocess.run(["umount", SUBDIR])
    shutil.rmtree(T, ignore_errors=True)
