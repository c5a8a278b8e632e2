#!/usr/bin/env python3
"""`durable-stream check [--repair]` on damaged copies of a real data directory.

The server (DS_BINARY or build/durable-stream) writes a data dir: an /agents conversation,
a JSON protocol stream with a TTL, a text stream, a fork and an empty fork. Then, for each
kind of damage, a copy of it is damaged by hand and:
  * `check` must exit 4 and print the finding line naming the file and the byte offset
    (computed here, independently, from the document starts);
  * `check --repair` must exit 1 (4 where nothing can be repaired: a damaged .meta) and
    print what it did; a second `check` must exit 0;
  * the server started on the repaired copy must serve every intact record on both views,
    continue appends at the right offset (gap-free), keep content type and TTL, and leave
    a directory that `check` still finds clean.
Prints one line per case and exits non-zero on the first failure.
"""
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BINARY = os.environ.get("DS_BINARY", os.path.join(ROOT, "build", "durable-stream"))


class Server:
    def __init__(self, data_dir):
        self.data_dir = data_dir
        self.log = open(os.path.join(os.path.dirname(data_dir), os.path.basename(data_dir) + ".log"), "ab")
        self.proc = subprocess.Popen(
            [BINARY, "--port", "0", "--data-dir", data_dir, "--log-level", "info"],
            stdout=subprocess.PIPE, stderr=self.log, cwd=os.path.dirname(data_dir))
        line = self.proc.stdout.readline().decode()
        if not line.startswith("listening on http://"):
            raise RuntimeError("server did not start: %r" % line)
        self.port = int(line.strip().rsplit(":", 1)[1])

    def req(self, method, path, body=None, headers=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=20)
        self.proc.stdout.close()
        self.log.close()


def fail(msg):
    print("FAIL: " + msg, flush=True)
    sys.exit(1)


def expect(cond, msg):
    if not cond:
        fail(msg)


def agents_events(srv, path):
    st, _, body = srv.req("GET", "/agents/" + path)
    expect(st == 200, "GET /agents/%s -> %d" % (path, st))
    out = []
    for block in body.decode().split("\n\n"):
        data = [l[6:] for l in block.split("\n") if l.startswith("data: ")]
        if data:
            out.append(json.loads(data[0]))
    return out


def agents_post(srv, path, payload):
    st, h, body = srv.req("POST", "/agents/" + path, json.dumps({"type": "t", "payload": payload}))
    expect(st == 204, "POST /agents/%s -> %d %s" % (path, st, body[:200]))
    return int(h["stream-offset"])


def v1_messages(srv, path):
    st, h, body = srv.req("GET", "/v1/stream/%s?offset=-1" % path)
    expect(st == 200, "GET /v1/stream/%s -> %d %s" % (path, st, body[:200]))
    return h, body


def v1_post(srv, path, body, ctype="application/json"):
    st, h, b = srv.req("POST", "/v1/stream/" + path, body, {"Content-Type": ctype})
    expect(st in (200, 204), "POST /v1/stream/%s -> %d %s" % (path, st, b[:200]))
    return h


def build(data_dir):
    srv = Server(data_dir)
    for i in range(8):
        agents_post(srv, "a/conv", {"n": i, "text": "hello %d" % i})
    st, _, _ = srv.req("PUT", "/v1/stream/v/json", None,
                       {"Content-Type": "application/json", "Stream-TTL": "3600"})
    expect(st == 201, "PUT v/json -> %d" % st)
    for i in range(6):
        v1_post(srv, "v/json", json.dumps({"m": i}))
    st, _, _ = srv.req("PUT", "/v1/stream/v/text", None, {"Content-Type": "text/plain"})
    expect(st == 201, "PUT v/text -> %d" % st)
    for i in range(4):
        v1_post(srv, "v/text", "line %d\n" % i, "text/plain")
    st, _, _ = srv.req("PUT", "/v1/stream/v/fork", None,
                       {"Content-Type": "application/json", "Stream-Forked-From": "/v1/stream/v/json",
                        "Stream-Fork-Offset": "0000000000000003"})
    expect(st == 201, "PUT v/fork -> %d" % st)
    for i in range(3):
        v1_post(srv, "v/fork", json.dumps({"f": i}))
    st, _, _ = srv.req("PUT", "/v1/stream/v/efork", None,
                       {"Content-Type": "application/json", "Stream-Forked-From": "/v1/stream/v/json",
                        "Stream-Fork-Offset": "0000000000000002"})
    expect(st == 201, "PUT v/efork -> %d" % st)
    srv.stop()


def stream_file(d, path):
    return os.path.join(d, "streams", path + ".yaml")


def doc_starts(file):
    data = open(file, "rb").read()
    return [m.start() + (1 if m.start() else 0) for m in re.finditer(rb"(?:^|\n)---\n", data)]


def run_check(d, repair=False):
    args = [BINARY, "check"] + (["--repair"] if repair else []) + [d]
    p = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
    return p.returncode, p.stdout.decode()


def splice(file, at, delete, insert=b""):
    data = open(file, "rb").read()
    open(file, "wb").write(data[:at] + insert + data[at + delete:])


# ---- the damage kinds: each damages a copy and says what check must print ----
# returns (file named in the finding, byte offset, a fragment of the finding line)

def dmg_flip(d):
    f = stream_file(d, "a/conv")
    st = doc_starts(f)
    splice(f, st[3] + 6, 3, b"\x01\x7f\xff")
    return f, st[3], "document 3 (expected offset 3) does not decode"


def dmg_truncate(d):
    f = stream_file(d, "v/json")
    st = doc_starts(f)
    splice(f, st[4] - 36, 36)  # document 3 loses its createdAt line
    return f, st[3], "document 3 (expected offset 3) is cut short"


def dmg_dup(d):
    f = stream_file(d, "a/conv")
    st = doc_starts(f)
    data = open(f, "rb").read()
    splice(f, st[3], 0, data[st[2]:st[3]])
    return f, st[3], "document 3 is an exact duplicate of the document at byte %d" % st[2]


def dmg_delete(d):
    f = stream_file(d, "a/conv")
    st = doc_starts(f)
    splice(f, st[5], st[6] - st[5])
    return f, st[5], "document 5 holds offset 6, expected 5: offset 5 is missing"


def dmg_idx(d):
    f = stream_file(d, "v/text") + ".idx"
    data = bytearray(open(f, "rb").read())
    data[8 * 2 + 1] ^= 0x40
    open(f, "wb").write(bytes(data))
    return f, 16, "entry 2 says byte"


def dmg_offset(d):
    f = stream_file(d, "v/efork") + ".offset"
    open(f, "wb").write(b"\x00garbage")
    return f, 0, "damaged: not a decimal number"


def dmg_meta(d):
    f = stream_file(d, "v/json") + ".meta"
    data = open(f, "rb").read()
    at = data.index(b'"contentType":') + len(b'"contentType"')
    open(f, "wb").write(data[:at] + b";" + data[at + 1:])  # one flipped byte
    return f, at, "damaged metadata"


def dmg_stray(d):
    f = stream_file(d, "v/json") + ".meta.tmp"
    open(f, "wb").write(b'{"contentType":"text/plain"}')
    return f, 0, "stray temporary file"


def dmg_torn(d):
    f = stream_file(d, "v/fork")
    size = os.path.getsize(f)
    with open(f, "ab") as fh:
        fh.write(b"---\njson:\n  f: 3\noffset: \"00000000000")
    return f, size, "torn tail"


CASES = [
    ("flipped bytes", dmg_flip, 1),
    ("truncated document", dmg_truncate, 1),
    ("duplicated document", dmg_dup, 1),
    ("deleted document", dmg_delete, 1),
    ("damaged .idx", dmg_idx, 1),
    ("damaged .offset of an empty fork", dmg_offset, 1),
    ("damaged .meta", dmg_meta, 4),
    ("stray temporary file", dmg_stray, 1),
    ("torn tail", dmg_torn, 1),
]


def verify_served(name, d):
    """The server on the repaired copy: intact records, gap-free appends, same content type."""
    srv = Server(d)
    try:
        ev = agents_events(srv, "a/conv")
        offs = [int(e["offset"]) for e in ev]
        expect(offs == list(range(len(offs))), "%s: /agents offsets %s" % (name, offs))
        want = {"flipped bytes": 3, "deleted document": 5}.get(name, 8)
        expect(len(ev) == want, "%s: /agents served %d events, expected %d" % (name, len(ev), want))
        expect(all(e["payload"]["n"] == i for i, e in enumerate(ev)), "%s: wrong payloads" % name)
        expect(agents_post(srv, "a/conv", {"n": "after"}) == want, "%s: append offset" % name)
        h, body = v1_messages(srv, "a/conv")
        expect(len(json.loads(body)) == want + 1, "%s: /v1 view of a/conv" % name)

        if name != "damaged .meta":
            h, body = v1_messages(srv, "v/json")
            msgs = json.loads(body)
            n = 3 if name == "truncated document" else 6
            expect(msgs == [{"m": i} for i in range(n)], "%s: v/json holds %s" % (name, msgs))
            expect(h.get("content-type") == "application/json", "%s: content type %s" % (name, h))
            st, hh, _ = srv.req("HEAD", "/v1/stream/v/json")
            expect(hh.get("stream-ttl") == "3600", "%s: TTL lost: %s" % (name, hh))
            nh = v1_post(srv, "v/json", json.dumps({"m": "after"}))
            expect(int(nh.get("stream-next-offset", "-1")) == n + 1, "%s: v/json next %s" % (name, nh))

        h, body = v1_messages(srv, "v/text")
        expect(body == b"".join(b"line %d\n" % i for i in range(4)), "%s: v/text %r" % (name, body))
        expect(h.get("content-type", "").startswith("text/plain"), "%s: v/text type %s" % (name, h))

        h, body = v1_messages(srv, "v/fork")
        fork = json.loads(body)
        base = [{"m": i} for i in range(3)]
        expect(fork[:3] == base and fork[3:] == [{"f": i} for i in range(3)],
               "%s: v/fork %s" % (name, fork))
        nh = v1_post(srv, "v/efork", json.dumps({"e": 0}))
        expect(int(nh.get("stream-next-offset", "-1")) == 3, "%s: empty fork appended at %s" % (name, nh))
        h, body = v1_messages(srv, "v/efork")
        expect(json.loads(body) == [{"m": 0}, {"m": 1}, {"e": 0}], "%s: v/efork %s" % (name, body))
    finally:
        srv.stop()
    rc, out = run_check(d)
    expect(rc == (4 if name == "damaged .meta" else 0),
           "%s: check after the server ran exits %d:\n%s" % (name, rc, out))


def main():
    work = tempfile.mkdtemp(prefix="ds-check-")
    ok = False
    try:
        orig = os.path.join(work, "orig")
        build(orig)
        rc, out = run_check(orig)
        expect(rc == 0 and out.rstrip().endswith(": clean"), "clean dir: exit %d:\n%s" % (rc, out))
        rc, out = run_check(os.path.join(work, "missing"))
        expect(rc == 8, "missing dir: exit %d" % rc)
        p = subprocess.run([BINARY, "check"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        expect(p.returncode == 16, "no DATA_DIR: exit %d" % p.returncode)
        p = subprocess.run([BINARY, "check", "--help"], stdout=subprocess.PIPE)
        expect(p.returncode == 0 and b"--repair" in p.stdout, "--help")
        # a running server and the checker exclude each other (flock on DATA_DIR/streams)
        srv = Server(orig)
        try:
            rc, out = run_check(orig, repair=True)
            expect(rc == 8 and "in use by a running server" in out, "check under a server: %d %s" % (rc, out))
        finally:
            srv.stop()
        import fcntl
        lockfd = os.open(os.path.join(orig, "streams"), os.O_RDONLY)
        fcntl.flock(lockfd, fcntl.LOCK_EX)
        try:
            p = subprocess.run([BINARY, "--port", "0", "--data-dir", orig], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, timeout=30)
            expect(p.returncode != 0 and b"locked by `durable-stream check`" in p.stderr,
                   "server under a check: exit %d %s" % (p.returncode, p.stderr[-300:]))
        finally:
            os.close(lockfd)
        print("clean directory: exit 0; usage errors 16, unreadable or in use 8; a server does "
              "not start under a check", flush=True)
        for name, damage, repaired_rc in CASES:
            d = os.path.join(work, re.sub(r"\W+", "-", name))
            shutil.copytree(orig, d)
            file, byte, what = damage(d)
            rc, out = run_check(d)
            line = "%s: byte %d: " % (file, byte)
            hit = [l for l in out.splitlines() if l.startswith(line) and what in l]
            expect(rc == 4, "%s: check exits %d, expected 4:\n%s" % (name, rc, out))
            expect(hit, "%s: no line '%s...%s' in:\n%s" % (name, line, what, out))
            rc, rout = run_check(d, repair=True)
            expect(rc == repaired_rc, "%s: --repair exits %d, expected %d:\n%s" % (name, rc, repaired_rc, rout))
            expect("repaired" in rout, "%s: --repair printed no action:\n%s" % (name, rout))
            rc2, out2 = run_check(d)
            expect(rc2 == (0 if repaired_rc == 1 else 4), "%s: check after --repair exits %d:\n%s" % (name, rc2, out2))
            if name == "damaged .meta":
                # not repairable: put the original back, then the server must serve the rest
                shutil.copy(os.path.join(orig, "streams", "v", "json.yaml.meta"), file)
                rc2, out2 = run_check(d)
                expect(rc2 == 0, "%s: check with the metadata restored exits %d:\n%s" % (name, rc2, out2))
                name = "restored .meta"
            verify_served(name, d)
            print("%-34s found: %s" % (name + ":", hit[0]), flush=True)
            moved = [l for l in rout.splitlines() if "repaired: moved bytes" in l or "repaired: removed" in l]
            for l in moved:
                print("%-34s repair: %s" % ("", l), flush=True)
        ok = True
        print("check.test: %d damage kinds found, repaired and served" % len(CASES), flush=True)
    finally:
        if ok:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print("data kept in " + work, flush=True)


if __name__ == "__main__":
    main()
