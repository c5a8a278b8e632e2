#!/usr/bin/python3
"""soak.py - mixed-load soak of a running durable-stream server, sampling its RSS and descriptors.

Provides: a load driver (Python standard library only) that, for --duration seconds, runs
  * appenders: POST /agents/soak/s<i> small events at a steady rate;
  * live subscribers joining and leaving: GET ?live=sse on a random stream, read 1-4 s, hang up;
  * catch-ups: GET a stream's history from a recent offset (or from the start of a short stream);
  * agent requests: a user message on echo paths and on openai paths (the fake upstream),
    each waited for until request-ended / request-cancelled appears;
and samples /proc/<pid>/status VmRSS and /proc/<pid>/fd every --sample seconds. Before the
load it warms up (touches every stream and agent path once, so store descriptors and caches
exist) and records the descriptor baseline with no client connected; after the load it waits
for every client connection to go and records descriptors again.
Prints one line per sample and a summary; exits 1 when RSS at the end differs from RSS at
--rss-ref seconds by more than --rss-tolerance %, when descriptors are not back to baseline,
or when any request failed unexpectedly. Writes samples as CSV to --csv when given.
Usage: soak.py --port P --pid PID [--duration 600] [--sample 10] [--rss-ref 120]
Must not: start or stop the server (bench/soak.sh does), or use anything but 127.0.0.1.
"""
import argparse
import http.client
import json
import os
import random
import socket
import sys
import threading
import time

STOP = threading.Event()
LOCK = threading.Lock()
COUNT = {"appends": 0, "subscribers": 0, "sse_events": 0, "catchups": 0, "agent_echo": 0,
         "agent_openai": 0, "agent_cancelled": 0, "errors": 0}
ERRORS = []
LAST = {}  # stream index -> offset of its last acknowledged append


def bump(k, n=1):
    with LOCK:
        COUNT[k] += n


def fail(msg):
    with LOCK:
        COUNT["errors"] += 1
        if len(ERRORS) < 20:
            ERRORS.append(msg)


def conn(port, timeout=30):
    return http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)


def post(c, path, typ, payload):
    body = json.dumps({"type": typ, "payload": payload})
    c.request("POST", "/agents/" + path, body, {"Content-Type": "application/json"})
    r = c.getresponse()
    data = r.read()
    return r.status, r.getheader("Stream-Offset"), data


def get(c, target):
    c.request("GET", target)
    r = c.getresponse()
    return r.status, r.read()


def appender(port, i, rate):
    c = conn(port)
    n = 0
    while not STOP.is_set():
        try:
            st, off, data = post(c, "soak/s%d" % i, "soak:tick",
                                 {"n": n, "w": "x" * random.randint(10, 300), "t": time.time()})
            if st != 204:
                fail("append %d: %s" % (st, data[:100]))
            else:
                bump("appends")
                with LOCK:
                    LAST[i] = int(off)
            n += 1
        except (OSError, http.client.HTTPException) as e:
            fail("append: %r" % e)
            c.close()
            c = conn(port)
        STOP.wait(1.0 / rate)
    c.close()


def subscriber(port, nstreams):
    while not STOP.is_set():
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        try:
            s.sendall(("GET /agents/soak/s%d?offset=now&live=sse HTTP/1.1\r\nHost: x\r\n\r\n"
                       % random.randrange(nstreams)).encode())
            bump("subscribers")
            end = time.time() + random.uniform(1, 4)
            s.settimeout(0.5)
            while time.time() < end and not STOP.is_set():
                try:
                    d = s.recv(65536)
                except socket.timeout:
                    continue
                if not d:
                    break
                bump("sse_events", d.count(b"\ndata:") + d.startswith(b"data:"))
        except OSError as e:
            fail("subscriber: %r" % e)
        finally:
            s.close()
        STOP.wait(random.uniform(0.1, 0.5))


def catchup(port, nstreams):
    c = conn(port)
    while not STOP.is_set():
        try:
            # the last few hundred events of a stream (offsets count events)
            i = random.randrange(nstreams)
            with LOCK:
                last = LAST.get(i, 0)
            frm = max(0, last - random.randint(1, 300))
            st, data = get(c, "/agents/soak/s%d?offset=%d" % (i, frm))
            if st != 200:
                fail("catch-up: %d" % st)
            bump("catchups")
        except (OSError, http.client.HTTPException) as e:
            fail("catch-up: %r" % e)
            c.close()
            c = conn(port)
        STOP.wait(0.2)
    c.close()


def agent_request(c, path, k):
    """Sends one prompt on path and waits for its end; returns the end type."""
    st, off, data = post(c, path, "iterate:agent:action:send-user-message:called",
                         {"content": "soak prompt %d [[tokens:6]]" % k})
    if st != 204:
        raise RuntimeError("prompt: %d %s" % (st, data[:100]))
    deadline = time.time() + 30
    while time.time() < deadline:
        st, body = get(c, "/agents/%s?offset=%s" % (path, off))
        for line in body.decode("utf-8", "replace").split("\n"):
            if not line.startswith("data: "):
                continue
            ev = json.loads(line[6:])
            if ev.get("type") == "iterate:llm-loop:request-ended":
                return "ended"
            if ev.get("type") == "iterate:llm-loop:request-cancelled":
                return "cancelled: " + json.dumps(ev.get("payload"))[:200]
        time.sleep(0.05)
    raise RuntimeError("no end for the prompt on %s" % path)


def agents(port, paths, model):
    c = conn(port)
    k = 0
    while not STOP.is_set():
        path = paths[k % len(paths)]
        k += 1
        try:
            end = agent_request(c, path, k)
            if end == "ended":
                bump("agent_" + model)
            else:
                bump("agent_cancelled")
                fail("%s request on %s: %s" % (model, path, end))
        except (OSError, http.client.HTTPException, RuntimeError) as e:
            fail("%s agent: %r" % (model, e))
            c.close()
            c = conn(port)
        STOP.wait(1.0)
    c.close()


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


UPSTREAM_PORT = [0]


def upstream_inodes():
    """Socket inodes of TCP connections to the fake upstream (libcurl's connection cache
    keeps idle ones for reuse; they are pooled, not leaked)."""
    out = set()
    if not UPSTREAM_PORT[0]:
        return out
    for tab in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(tab) as f:
                next(f)
                for line in f:
                    cols = line.split()
                    if int(cols[2].split(":")[1], 16) == UPSTREAM_PORT[0]:
                        out.add(cols[9])
        except OSError:
            pass
    return out


def fds(pid):
    """(descriptors not counting pooled upstream connections, sockets among them, pooled)"""
    total = sockets = pooled = 0
    up = upstream_inodes()
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            link = os.readlink("/proc/%d/fd/%s" % (pid, fd))
        except OSError:
            continue
        if link.startswith("socket:"):
            if link[8:-1] in up:
                pooled += 1
                continue
            sockets += 1
        total += 1
    return total, sockets, pooled


def connections(port):
    c = conn(port, 5)
    st, body = get(c, "/debug/stats")
    c.close()
    return json.loads(body)["connections"]


def wait_quiet(port, pid):
    """Waits until only the stats connection itself is open; returns (fds, sockets)."""
    deadline = time.time() + 30
    while time.time() < deadline:
        if connections(port) <= 1:
            time.sleep(0.2)  # the stats connection itself closes after its answer
            return fds(pid)[:2]
        time.sleep(0.2)
    raise RuntimeError("client connections did not go away")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--duration", type=float, default=600)
    ap.add_argument("--sample", type=float, default=10)
    ap.add_argument("--rss-ref", type=float, default=120)
    ap.add_argument("--rss-tolerance", type=float, default=5)
    ap.add_argument("--streams", type=int, default=4)
    ap.add_argument("--append-rate", type=float, default=10, help="appends/s per appender")
    ap.add_argument("--subscribers", type=int, default=4)
    ap.add_argument("--openai", action="store_true", help="also drive agent requests on openai paths")
    ap.add_argument("--csv")
    ap.add_argument("--no-agents", action="store_true", help="leave out agent requests (isolating a load)")
    ap.add_argument("--agent-paths", type=int, default=300, help="paths per agent model, used in turn")
    ap.add_argument("--no-echo", action="store_true", help="leave out echo agent requests")
    ap.add_argument("--no-catchup", action="store_true", help="leave out catch-up reads (isolating a load)")
    ap.add_argument("--upstream-port", type=int, default=0)
    a = ap.parse_args()
    UPSTREAM_PORT[0] = a.upstream_port

    echo_paths = ["soak/agent/echo%d" % i for i in range(a.agent_paths)]
    openai_paths = ["soak/agent/openai%d" % i for i in range(a.agent_paths)] if a.openai else []
    # warm-up: every stream and agent path exists and has been read once
    c = conn(a.port)
    for i in range(a.streams):
        post(c, "soak/s%d" % i, "soak:tick", {"n": -1})
        get(c, "/agents/soak/s%d" % i)
    for p in echo_paths:
        post(c, p, "iterate:agent:config:set", {"model": "echo"})
        agent_request(c, p, 0)
    for p in openai_paths:
        post(c, p, "iterate:agent:config:set", {"model": "openai"})
        agent_request(c, p, 0)
    c.close()
    base_fds, base_socks = wait_quiet(a.port, a.pid)
    print("baseline: rss %d kB, fds %d (sockets %d)" % (rss_kb(a.pid), base_fds, base_socks), flush=True)

    threads = [threading.Thread(target=appender, args=(a.port, i, a.append_rate)) for i in range(a.streams)]
    threads += [threading.Thread(target=subscriber, args=(a.port, a.streams)) for _ in range(a.subscribers)]
    if not a.no_catchup:
        threads += [threading.Thread(target=catchup, args=(a.port, a.streams))]
    if not a.no_agents and not a.no_echo:
        threads += [threading.Thread(target=agents, args=(a.port, echo_paths, "echo"))]
    if openai_paths and not a.no_agents:
        threads += [threading.Thread(target=agents, args=(a.port, openai_paths, "openai"))]
    for t in threads:
        t.daemon = True
        t.start()
    t0 = time.time()
    samples = []
    nxt = t0
    while True:
        now = time.time()
        if now - t0 >= a.duration + 0.001:
            break
        if now >= nxt:
            f, s, _ = fds(a.pid)
            r = rss_kb(a.pid)
            el = now - t0
            samples.append((el, r, f, s))
            with LOCK:
                cnt = dict(COUNT)
            anon = 0
            with open("/proc/%d/status" % a.pid) as st:
                for line in st:
                    if line.startswith("RssAnon:"):
                        anon = int(line.split()[1])
            print("t=%5.0fs anon=%d kB rss=%d kB fds=%d sockets=%d appends=%d subs=%d catchups=%d echo=%d openai=%d errors=%d"
                  % (el, anon, r, f, s, cnt["appends"], cnt["subscribers"], cnt["catchups"], cnt["agent_echo"],
                     cnt["agent_openai"], cnt["errors"]), flush=True)
            nxt += a.sample
        time.sleep(min(0.5, max(0.01, nxt - time.time())))
    f, s, _ = fds(a.pid)
    samples.append((time.time() - t0, rss_kb(a.pid), f, s))
    STOP.set()
    for t in threads:
        t.join(40)
    end_fds, end_socks = wait_quiet(a.port, a.pid)
    # closes in flight (lingering sockets, upstream keep-alives timing out) settle within seconds
    deadline = time.time() + 20
    while (end_fds, end_socks) != (base_fds, base_socks) and time.time() < deadline:
        time.sleep(0.5)
        end_fds, end_socks = fds(a.pid)[:2]
    pooled = fds(a.pid)[2]
    if (end_fds, end_socks) != (base_fds, base_socks):
        os.system("ls -l /proc/%d/fd; ss -tanp | grep 'pid=%d,'" % (a.pid, a.pid))
    if a.csv:
        with open(a.csv, "w") as out:
            out.write("seconds,rss_kb,fds,sockets\n")
            for el, r, f, s in samples:
                out.write("%.0f,%d,%d,%d\n" % (el, r, f, s))
    ref = min(samples, key=lambda x: abs(x[0] - a.rss_ref))
    last = samples[-1]
    drift = (last[1] - ref[1]) * 100.0 / ref[1]
    print("counts: " + json.dumps(COUNT))
    print("RSS at %.0fs: %d kB; at %.0fs: %d kB; drift %+.2f%% (limit %.1f%%)"
          % (ref[0], ref[1], last[0], last[1], drift, a.rss_tolerance))
    print("descriptors (without pooled upstream connections): baseline %d (sockets %d), after clients "
          "left %d (sockets %d), peak %d; pooled upstream connections now %d"
          % (base_fds, base_socks, end_fds, end_socks, max(x[2] for x in samples), pooled))
    ok = True
    if abs(drift) > a.rss_tolerance:
        print("FAIL: RSS drift beyond the limit")
        ok = False
    if end_fds != base_fds or end_socks != base_socks:
        print("FAIL: descriptors not back to baseline")
        ok = False
    if pooled > 4:
        print("FAIL: %d idle upstream connections" % pooled)
        ok = False
    if COUNT["errors"]:
        print("FAIL: %d errors, first: %s" % (COUNT["errors"], "; ".join(ERRORS[:5])))
        ok = False
    if COUNT["appends"] == 0 or (not a.no_agents and ((COUNT["agent_echo"] == 0 and not a.no_echo) or (openai_paths and COUNT["agent_openai"] == 0))):
        print("FAIL: some load did not run")
        ok = False
    print("soak: " + ("PASS" if ok else "FAIL"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
