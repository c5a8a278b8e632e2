#!/usr/bin/python3
"""subs_scale.py - a glob subscription over many streams: what it costs the server.

Provides: the measurement behind bench/subs_scale.sh. Against a data directory holding N
streams (seeded once by this script with pipelined `POST /agents/scale/dNNNN/sNNN`, kept in
--seed-dir and reused by later runs), it starts the server, creates a pull-wake
subscription with `"pattern":"**"` and measures
  * put_s: the time the `PUT __ds/subscriptions/all` takes to answer;
  * append_ms: the answer time of appends that create new matching streams (each one is a
    stream the subscription has not seen; median and max over --appends), and that the
    first one wakes the subscription (its wake event is found in the wake stream);
  * append_existing_ms: the same for the first append (POST /agents/...) to streams that
    existed before the PUT;
  * health_max_ms: the slowest `GET /health` of a prober that asks every 20 ms during the
    PUT and the appends (how long the event loop was blocked);
  * startup_s: after a SIGTERM restart, the time from exec to the `listening` line, and
    ready_s to the first 200 of `GET` on the subscription (the subscription is loaded);
  * claim_ok: after the restart a worker can claim the pending wake and sees the new streams;
  * rss_kb: VmRSS after start-up, after the PUT, after the appends, after the restart.
Prints a table and one `RESULT key=value ...` line.
Usage: subs_scale.py --binary B --seed-dir D [--streams N] [--appends K] [--work W]
Must not: leave a server running or touch anything outside --seed-dir and --work.
"""
import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

A = None


def log(msg):
    print(msg, flush=True)


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


class Server:
    def __init__(self, data, work, fsync=None):
        self.data, self.work = data, work
        self.out_path = os.path.join(work, "server.out")
        self.err_path = os.path.join(work, "server.err")
        args = [A.binary, "--port", "0", "--data-dir", data]
        if fsync:
            args += ["--fsync", fsync]
        t0 = time.monotonic()
        # run in the work directory: no ./config.lua of the checkout applies
        self.proc = subprocess.Popen(args, cwd=work, stdout=open(self.out_path, "w"),
                                     stderr=open(self.err_path, "a"))
        self.port = None
        while time.monotonic() - t0 < 900:
            with open(self.out_path) as f:
                s = f.read()
            if "listening on http://" in s:
                self.port = int(s.split("listening on http://", 1)[1].split()[0].rsplit(":", 1)[1])
                break
            if self.proc.poll() is not None:
                raise SystemExit("server exited at start-up:\n" + open(self.err_path).read()[-3000:])
            time.sleep(0.005)
        if self.port is None:
            raise SystemExit("server did not start within 900 s")
        self.startup_s = time.monotonic() - t0

    def stop(self):
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout=900)
        if rc != 0:
            raise SystemExit("server exited with %d:\n%s" % (rc, open(self.err_path).read()[-3000:]))
        return time.monotonic() - t0

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def req(self, method, path, body=None, headers=None, timeout=900):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        h = dict(headers or {})
        if body is not None:
            if not isinstance(body, (bytes, str)):
                body = json.dumps(body)
            h.setdefault("Content-Type", "application/json")
        t0 = time.monotonic()
        c.request(method, path, body, h)
        r = c.getresponse()
        data = r.read()
        dt = time.monotonic() - t0
        c.close()
        return r.status, data, dt


class Prober(threading.Thread):
    """GET /health every 20 ms on a fresh connection; keeps the slowest answer."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self.port, self.stop_ev, self.max_ms, self.n, self.failed = port, threading.Event(), 0.0, 0, 0

    def run(self):
        while not self.stop_ev.is_set():
            t0 = time.monotonic()
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
                c.request("GET", "/health")
                ok = c.getresponse().status == 200
                c.close()
            except OSError:
                ok = False
            ms = (time.monotonic() - t0) * 1000
            self.n += 1
            self.failed += 0 if ok else 1
            self.max_ms = max(self.max_ms, ms)
            self.stop_ev.wait(0.02)

    def finish(self):
        self.stop_ev.set()
        self.join()
        return self.max_ms


def stream_path(i):
    return "scale/d%04d/s%03d" % (i // 1000, i % 1000)


def seed(data, n):
    """N /agents streams, pipelined over 8 connections (each request creates one stream)."""
    srv = Server(data, A.work, fsync="never")
    t0 = time.monotonic()
    body = b'{"type":"seed","payload":{}}'
    nconn, depth = 8, 64
    nxt = [0]
    lock = threading.Lock()
    errors = []

    def worker():
        s = socket.create_connection(("127.0.0.1", srv.port))
        f = s.makefile("rb")
        inflight = 0
        while True:
            batch = []
            with lock:
                while inflight + len(batch) < depth and nxt[0] < n:
                    batch.append(nxt[0])
                    nxt[0] += 1
            if batch:
                s.sendall(b"".join(
                    b"POST /agents/%s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (stream_path(i).encode(), len(body), body)
                    for i in batch))
                inflight += len(batch)
            if inflight == 0:
                break
            status = f.readline()
            clen = 0
            while True:
                line = f.readline()
                if line in (b"\r\n", b""):
                    break
                k, _, v = line.partition(b":")
                if k.strip().lower() == b"content-length":
                    clen = int(v)
            if clen:
                f.read(clen)
            if not status.startswith(b"HTTP/1.1 2"):
                errors.append(status)
            inflight -= 1
        s.close()

    ts = [threading.Thread(target=worker) for _ in range(nconn)]
    for t in ts:
        t.start()
    last = 0
    while any(t.is_alive() for t in ts):
        time.sleep(1)
        if nxt[0] - last >= 20000 or not any(t.is_alive() for t in ts):
            log("  seeded %d of %d streams (%.0f s)" % (nxt[0], n, time.monotonic() - t0))
            last = nxt[0]
    for t in ts:
        t.join()
    srv.stop()
    if errors:
        raise SystemExit("seeding failed: %d errors, first %r" % (len(errors), errors[0]))
    log("  seeded %d streams in %.1f s" % (n, time.monotonic() - t0))


def main():
    global A
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True)
    ap.add_argument("--seed-dir", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--streams", type=int, default=200000)
    ap.add_argument("--appends", type=int, default=5)
    A = ap.parse_args()
    A.binary = os.path.abspath(A.binary)
    data = os.path.join(A.seed_dir, "data")
    marker = os.path.join(A.seed_dir, "seeded-%d" % A.streams)
    if not os.path.exists(marker):
        log("seeding %d streams into %s (once; later runs reuse them)" % (A.streams, data))
        shutil.rmtree(A.seed_dir, ignore_errors=True)
        os.makedirs(A.seed_dir)
        seed(data, A.streams)
        open(marker, "w").close()
    # what an earlier run added: the subscription, the wake stream, the new streams
    shutil.rmtree(os.path.join(data, "subscriptions"), ignore_errors=True)
    for d in ("fresh", "wake"):
        shutil.rmtree(os.path.join(data, "streams", d), ignore_errors=True)

    r = {"streams": A.streams}
    srv = Server(data, A.work)
    try:
        r["rss_start_kb"] = rss_kb(srv.proc.pid)
        st, _, _ = srv.req("PUT", "/v1/stream/wake/pool", "[]")
        assert st == 201, st
        pr = Prober(srv.port)
        pr.start()
        time.sleep(0.2)
        t0 = time.monotonic()
        try:
            st, b, dt = srv.req("PUT", "/v1/stream/__ds/subscriptions/all",
                                {"type": "pull-wake", "pattern": "**", "wake_stream": "wake/pool"})
            assert st == 201, (st, b)
            r["put_dropped"] = 0
        except (http.client.HTTPException, OSError) as e:
            # a server blocked this long may drop the connection (its own timers fire when
            # the loop resumes): the time until the subscription exists is what counts
            log("  the PUT's connection was dropped (%s); waiting for the subscription" % e)
            r["put_dropped"] = 1
            while srv.req("GET", "/v1/stream/__ds/subscriptions/all")[0] != 200:
                time.sleep(0.05)
            dt = time.monotonic() - t0
        r["put_s"] = dt
        r["rss_put_kb"] = rss_kb(srv.proc.pid)
        times = []
        for i in range(A.appends):
            t0 = time.monotonic()
            try:
                st, b, dt = srv.req("PUT", "/v1/stream/fresh/s%d" % i, {"n": i})
                assert st == 201, (st, b)
            except (http.client.HTTPException, OSError) as e:
                log("  append %d: connection dropped (%s); waiting for the stream" % (i, e))
                while srv.req("HEAD", "/v1/stream/fresh/s%d" % i)[0] != 200:
                    time.sleep(0.05)
                dt = time.monotonic() - t0
            times.append(dt * 1000)
        r["append_ms_median"] = statistics.median(times)
        r["append_ms_max"] = max(times)
        # the first append after the PUT to streams that existed before it (the /agents view)
        times = []
        for i in range(A.appends):
            t0 = time.monotonic()
            try:
                st, b, dt = srv.req("POST", "/agents/" + stream_path(i * 997 % A.streams),
                                    {"type": "after", "payload": {"i": i}})
                assert st == 204, (st, b)
            except (http.client.HTTPException, OSError) as e:
                log("  existing-stream append %d: connection dropped (%s)" % (i, e))
                dt = time.monotonic() - t0
            times.append(dt * 1000)
        r["append_existing_ms_median"] = statistics.median(times)
        r["append_existing_ms_max"] = max(times)
        deadline = time.monotonic() + 600
        while True:
            st, b, _ = srv.req("GET", "/v1/stream/wake/pool?offset=-1")
            evs = [e for e in json.loads(b) if e.get("subscription_id") == "all"]
            if evs:
                break
            if time.monotonic() > deadline:
                raise SystemExit("no wake event for the new stream")
            time.sleep(0.05)
        r["woken"] = 1
        time.sleep(0.3)
        r["health_max_ms"] = pr.finish()
        r["rss_appends_kb"] = rss_kb(srv.proc.pid)
        r["stop_s"] = srv.stop()
        srv = Server(data, A.work)
        r["startup_s"] = srv.startup_s
        t0 = time.monotonic()
        while True:
            st, b, _ = srv.req("GET", "/v1/stream/__ds/subscriptions/all")
            if st == 200:
                break
            time.sleep(0.01)
        r["ready_s"] = srv.startup_s + (time.monotonic() - t0)
        deadline = time.monotonic() + 600
        while True:  # the wake survives the restart: a worker claims it
            st, b, _ = srv.req("POST", "/v1/stream/__ds/subscriptions/all/claim", {"worker": "w1"})
            if st == 200:
                break
            if time.monotonic() > deadline:
                raise SystemExit("claim after restart: %d %r" % (st, b))
            time.sleep(0.05)
        claimed = {s["path"] for s in json.loads(b)["streams"]}
        want = {"fresh/s%d" % i for i in range(A.appends)} | \
            {stream_path(i * 997 % A.streams) for i in range(A.appends)}
        r["claim_ok"] = int(want <= claimed)
        r["rss_restart_kb"] = rss_kb(srv.proc.pid)
        srv.stop()
        srv = None
    finally:
        if srv is not None:
            srv.kill()
    rows = [("streams", "%d" % r["streams"]),
            ("PUT pattern ** answered in", "%.3f s%s" % (r["put_s"], " (connection dropped; time until it existed)" if r["put_dropped"] else "")),
            ("append creating a new matching stream", "median %.1f ms, max %.1f ms (%d appends)"
             % (r["append_ms_median"], r["append_ms_max"], A.appends)),
            ("first append to an existing matching stream (/agents)", "median %.1f ms, max %.1f ms"
             % (r["append_existing_ms_median"], r["append_existing_ms_max"])),
            ("slowest GET /health during PUT + appends", "%.1f ms" % r["health_max_ms"]),
            ("SIGTERM shutdown", "%.2f s" % r["stop_s"]),
            ("start-up to `listening`", "%.3f s" % r["startup_s"]),
            ("start-up to the subscription readable", "%.3f s" % r["ready_s"]),
            ("claim after restart sees the new streams", "yes" if r["claim_ok"] else "NO"),
            ("RSS start / after PUT / after appends / after restart",
             "%d / %d / %d / %d kB" % (r["rss_start_kb"], r["rss_put_kb"], r["rss_appends_kb"],
                                       r["rss_restart_kb"]))]
    for k, v in rows:
        log("  %-55s %s" % (k, v))
    log("RESULT tool=subs_scale " + " ".join(
        "%s=%s" % (k, ("%.4f" % v) if isinstance(v, float) else v) for k, v in r.items()))
    return 0 if r["claim_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
