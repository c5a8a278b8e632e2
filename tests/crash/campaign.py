#!/usr/bin/env python3
"""Crash campaign: SIGKILL the server at random moments under load, verify nothing is lost.

Runs the real binary (DS_BINARY or build/durable-stream) on a YAML store. Several writer
threads append events (some large) to a few paths while live SSE subscribers read; a
killer SIGKILLs the server at random points: between appends, mid-append of a large
event, mid-fsync (fsync=always rounds), and right after a restart while torn-tail
recovery runs (garbage is appended to a file before some restarts so recovery has work).
After every restart, and at the end, the client-side log of acknowledged (204) events is
checked against what the server returns: every acknowledged event present exactly once,
offsets 0..N-1 without a gap, documents readable.

Usage: campaign.py [--kills N] [--seed S] [--quiet]
Prints: "acknowledged N, recovered N, lost 0, duplicated 0, gaps 0, kills K, torn tails T"
and exits non-zero on any loss, duplicate, gap or unreadable stream.
"""
import argparse
import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BINARY = os.environ.get("DS_BINARY", os.path.join(ROOT, "build", "durable-stream"))
PATHS = ["crash/a", "crash/b", "crash/nested/c"]


class Server:
    def __init__(self, data_dir, fsync):
        self.data_dir = data_dir
        self.fsync = fsync
        self.proc = None
        self.port = None
        self.log = open(os.path.join(data_dir, "server.log"), "ab")

    def start(self):
        self.proc = subprocess.Popen(
            [BINARY, "--port", "0", "--data-dir", self.data_dir, "--fsync", self.fsync,
             "--log-level", "info"],
            stdout=subprocess.PIPE, stderr=self.log)
        line = self.proc.stdout.readline().decode()
        if not line.startswith("listening on http://"):
            raise RuntimeError("server did not start: %r" % line)
        self.port = int(line.strip().rsplit(":", 1)[1])

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        if self.proc:
            self.proc.wait()
            self.proc.stdout.close()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=20)
            self.proc.stdout.close()


def read_history(port, path):
    """Non-live GET of the whole stream; returns the list of (offset, event dict)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("GET", "/agents/" + path)
    resp = conn.getresponse()
    body = resp.read().decode("utf-8")
    conn.close()
    if resp.status != 200:
        raise RuntimeError("GET %s -> %d %s" % (path, resp.status, body[:200]))
    events = []
    for block in body.split("\n\n"):
        data = [l[6:] for l in block.split("\n") if l.startswith("data: ")]
        if data:
            ev = json.loads(data[0])
            events.append((ev["offset"], ev))
    return events


class Writer(threading.Thread):
    def __init__(self, wid, ackd, lock, rng, stop_evt, port_ref):
        super().__init__(daemon=True)
        self.wid, self.ackd, self.lock, self.rng = wid, ackd, lock, rng
        self.stop_evt, self.port_ref = stop_evt, port_ref
        self.seq = 0
        self.attempts = 0

    def run(self):
        conn = None
        while not self.stop_evt.is_set():
            port = self.port_ref[0]
            path = PATHS[self.rng.randrange(len(PATHS))]
            big = self.rng.random() < 0.05
            payload = {"w": self.wid, "s": self.seq,
                       "pad": ("x" * self.rng.randrange(200_000, 600_000)) if big else "e%d" % self.seq}
            body = json.dumps({"type": "crash:event", "payload": payload})
            self.attempts += 1
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                conn.request("POST", "/agents/" + path, body=body,
                             headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                resp.read()
                if resp.status == 204:
                    with self.lock:
                        self.ackd.append((path, self.wid, self.seq, resp.getheader("Stream-Offset")))
                elif resp.status >= 500:
                    pass  # not acknowledged: may or may not be stored, never counted as lost
                else:
                    raise RuntimeError("unexpected status %d" % resp.status)
            except (OSError, http.client.HTTPException):
                if conn:
                    conn.close()
                conn = None
                time.sleep(0.01)
            self.seq += 1  # a unique id per attempt: a retried payload is a new event
        if conn:
            conn.close()


class Subscriber(threading.Thread):
    """A live SSE reader that reconnects with Last-Event-ID; checks in-order delivery."""

    def __init__(self, path, port_ref, stop_evt, errors):
        super().__init__(daemon=True)
        self.path, self.port_ref, self.stop_evt, self.errors = path, port_ref, stop_evt, errors
        self.last = None
        self.received = 0

    def run(self):
        while not self.stop_evt.is_set():
            try:
                s = socket.create_connection(("127.0.0.1", self.port_ref[0]), timeout=2)
                hdr = "GET /agents/%s?live=sse HTTP/1.1\r\nHost: x\r\n" % self.path
                if self.last is not None:
                    hdr += "Last-Event-ID: %s\r\n" % self.last
                s.sendall((hdr + "\r\n").encode())
                buf = b""
                while not self.stop_evt.is_set():
                    try:
                        chunk = s.recv(65536)
                    except socket.timeout:
                        continue
                    if not chunk:
                        break
                    buf += chunk
                    while b"\nid: " in buf or buf.startswith(b"id: "):
                        i = buf.find(b"id: ")
                        j = buf.find(b"\n", i)
                        if j < 0:
                            break
                        off = int(buf[i + 4:j])
                        expect = 0 if self.last is None else self.last + 1
                        if off != expect:
                            self.errors.append("subscriber %s: got %d, expected %d" % (self.path, off, expect))
                        self.last = off
                        self.received += 1
                        buf = buf[j:]
                s.close()
            except OSError:
                time.sleep(0.05)


def verify(port, ackd, report):
    lost = dup = gaps = 0
    seen = {}
    total = 0
    for path in PATHS:
        hist = read_history(port, path)
        total += len(hist)
        for i, (off, ev) in enumerate(hist):
            if int(off) != i:
                gaps += 1
            key = (path, ev["payload"]["w"], ev["payload"]["s"])
            if key in seen:
                dup += 1
            seen[key] = off
    for (path, w, s, off) in ackd:
        got = seen.get((path, w, s))
        if got is None:
            lost += 1
        elif got != off:
            report.append("event %s/%d/%d acknowledged at %s, found at %s" % (path, w, s, off, got))
            lost += 1
    return total, lost, dup, gaps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kills", type=int, default=200)
    ap.add_argument("--seed", type=int, default=int(time.time()))
    ap.add_argument("--writers", type=int, default=6)
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    data_dir = tempfile.mkdtemp(prefix="ds-crash-")
    ackd, lock, errors, report = [], threading.Lock(), [], []
    srv = Server(data_dir, "interval")
    srv.start()
    port_ref = [srv.port]
    stop_evt = threading.Event()
    writers = [Writer(i, ackd, lock, random.Random(args.seed * 31 + i), stop_evt, port_ref)
               for i in range(args.writers)]
    subs = [Subscriber(PATHS[i % len(PATHS)], port_ref, stop_evt, errors) for i in range(3)]
    for t in writers + subs:
        t.start()
    torn = 0
    kinds = {"between": 0, "big-append": 0, "fsync-always": 0, "during-recovery": 0}
    for k in range(args.kills):
        kind = rng.choice(list(kinds))
        kinds[kind] += 1
        if kind == "during-recovery":
            # tear a file by hand, restart, and kill again while it recovers
            srv.kill()
            victim = os.path.join(data_dir, "streams", PATHS[rng.randrange(len(PATHS))] + ".yaml")
            if os.path.exists(victim):
                with open(victim, "ab") as f:
                    f.write(b"---\ntype: crash:event\npayload:\n  w: 99\n  s: " + b"\0" * rng.randrange(0, 50))
                torn += 1
            srv.start()
            port_ref[0] = srv.port
            time.sleep(rng.uniform(0, 0.01))
        elif kind == "fsync-always":
            srv.kill()
            srv.fsync = "always"
            srv.start()
            port_ref[0] = srv.port
            time.sleep(rng.uniform(0.02, 0.15))
        else:
            time.sleep(rng.uniform(0.02, 0.2) if kind == "between" else rng.uniform(0.0, 0.05))
        srv.kill()
        srv.fsync = "interval"
        srv.start()
        port_ref[0] = srv.port
        if not args.quiet and (k + 1) % 20 == 0:
            print("kills %d, acknowledged so far %d" % (k + 1, len(ackd)), flush=True)
    time.sleep(0.3)
    stop_evt.set()
    for t in writers + subs:
        t.join(timeout=30)
    # Verify on the running server, then once more after a clean restart (cold reads).
    total, lost, dup, gaps = verify(srv.port, ackd, report)
    srv.stop()
    srv.start()
    total2, lost2, dup2, gaps2 = verify(srv.port, ackd, report)
    srv.stop()
    with open(os.path.join(data_dir, "server.log"), "rb") as f:
        log = f.read().decode("utf-8", "replace")
    truncations = sum(1 for l in log.splitlines() if "trunc" in l.lower())
    recovered = len(ackd) - max(lost, lost2)
    print("acknowledged %d, recovered %d, lost %d, duplicated %d, gaps %d, kills %d (%s), "
          "stored %d, torn tails injected %d, truncation log lines %d, subscriber order errors %d, seed %d"
          % (len(ackd), recovered, max(lost, lost2), max(dup, dup2), max(gaps, gaps2), args.kills,
             ", ".join("%s %d" % kv for kv in kinds.items()), total2, torn, truncations,
             len(errors), args.seed))
    for line in (report + errors)[:20]:
        print("  " + line)
    ok = max(lost, lost2) == 0 and max(dup, dup2) == 0 and max(gaps, gaps2) == 0 and not errors \
        and total == total2 and (torn == 0 or truncations > 0)
    if ok:
        import shutil
        shutil.rmtree(data_dir, ignore_errors=True)
    else:
        print("data kept in " + data_dir)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
