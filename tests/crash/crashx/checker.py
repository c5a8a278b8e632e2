"""checker.py - recovers one crash state with the real binary and judges it.

Provides:
  recover(binary, image_dir, policy, config) -> result: runs `durable-stream check DIR` (a
    second opinion, before the server touches the files), starts the server on the state, reads
    every stream of the workload through both views and the subscription, lists stream files
    the workload never created, probes (a producer append with the next Producer-Seq, an
    /agents append, an /agents append re-creating the deleted path), stops it with SIGTERM and
    runs `check` again (after recovery the directory must be clean);
  Facts(recording): what was acknowledged, when (ack marker sequence and time), from the
    client log joined with the recorder's ack markers;
  judge(result, facts, c, ...) -> violations: every state the server starts must hold prefixes
    of the reference (gap-free, same bytes, same content type / TTL / closure as the events),
    at least what the state's durable part holds (the `min` state at the same crash point),
    and the policy's promise for the facts acknowledged before the crash:
      always    every fact whose acknowledgement was sent before the crash point;
      interval  every fact acknowledged more than fsync_interval_ms + margin before the crash
                (the margin absorbs a late timer on a loaded machine: a latency bound, so it is
                generous and configurable);
      never     nothing beyond prefixes;
    and in the kill9 state (everything that ran persisted: kill -9 of the process) every fact
    acknowledged before the crash point, under every policy.
Must not: know the server's internals or file format (it reads through the HTTP API and the
`check` command only, except for listing which stream files exist).
"""
import base64
import http.client
import json
import os
import re
import subprocess

from . import workload as W

SAN = re.compile(r"Sanitizer|runtime error:")


def _check(binary, d):
    p = subprocess.run([binary, "check", d], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
    return {"rc": p.returncode, "out": p.stdout.decode("utf-8", "replace")[-4000:]}


def _stream_files(d):
    root = os.path.join(d, "streams")
    out = []
    for dp, _, fns in os.walk(root):
        for f in fns:
            if f.endswith(".yaml"):
                out.append(os.path.relpath(os.path.join(dp, f), root)[:-5])
    return sorted(out)


def recover(binary, image_dir, policy, config, log_path, probes=True):
    res = {"check_before": _check(binary, image_dir)}
    srv = W.Server(binary, image_dir, policy, config, log_path)
    res["started"] = srv.start()
    if not res["started"]:
        res["log"] = _tail(log_path)
        return res
    c = W.Client(srv.port, [], _NoLock(), first_id=1)
    try:
        res["streams"] = {p: W.read_stream(c, p) for p in W.STREAMS}
        res["sub"] = W.read_sub(c)
        res["files"] = _stream_files(image_dir)
        res["unknown"] = [p for p in res["files"] if p not in W.STREAMS]
        if probes:
            res["probes"] = _probes(c, res["streams"], res["files"])
    except (OSError, http.client.HTTPException, ValueError, KeyError, TypeError) as e:
        res["client_error"] = "%s: %s" % (type(e).__name__, e)
    finally:
        c.close()
        res["exit"] = srv.stop()
    res["log"] = _tail(log_path)
    res["check_after"] = _check(binary, image_dir)
    return res


class _NoLock:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def _tail(path):
    try:
        with open(path, "rb") as fh:
            return fh.read()[-20000:].decode("utf-8", "replace")
    except OSError:
        return ""


def _probes(c, streams, files):
    out = {}
    j = streams.get("p/json", {})
    if j.get("status") == 200 and j.get("v1_status") == 200 and j["headers"].get("stream-closed") != "true":
        seqs = [it["s"] for it in j.get("v1_items", []) if isinstance(it, dict) and it.get("p") == W.PRODUCER]
        nxt = max(seqs) + 1 if seqs else 0
        st, h, d = c.req("POST", W.PREFIX + "p/json", json.dumps({"p": W.PRODUCER, "s": nxt, "probe": 1}),
                         {"Content-Type": "application/json", "Producer-Id": W.PRODUCER,
                          "Producer-Epoch": "0", "Producer-Seq": str(nxt)})
        out["producer"] = {"seq": nxt, "status": st, "next": h.get("stream-next-offset"),
                           "have": len(j.get("v1_items", [])), "body": d[:200].decode("utf-8", "replace")}
    a = streams.get("ag/a", {})
    if a.get("status") in (200, 404) and a.get("agents_status", 200) == 200:
        st, h, d = c.req("POST", "/agents/ag/a", json.dumps({"type": "crash:probe", "payload": {}}),
                         {"Content-Type": "application/json"})
        out["append"] = {"status": st, "offset": h.get("stream-offset"),
                         "have": len(a.get("agents", [])) if a.get("status") == 200 else 0,
                         "body": d[:200].decode("utf-8", "replace")}
    if streams.get("p/del", {}).get("status") == 404 and "p/del" not in files:  # really absent
        st, h, d = c.req("POST", "/agents/p/del", json.dumps({"type": "crash:probe", "payload": {}}),
                         {"Content-Type": "application/json"})
        st2, h2, _ = c.req("HEAD", W.PREFIX + "p/del", None, {})
        out["recreate"] = {"status": st, "offset": h.get("stream-offset"), "head": st2,
                           "ctype": h2.get("content-type"), "closed": h2.get("stream-closed"),
                           "body": d[:200].decode("utf-8", "replace")}
    return out


# ---- what was acknowledged ----

class Fact:
    __slots__ = ("kind", "path", "value", "req", "ack_seq", "ack_ns", "what")

    def __init__(self, kind, path, value, req, ack_seq, ack_ns, what):
        self.kind, self.path, self.value, self.req = kind, path, value, req
        self.ack_seq, self.ack_ns, self.what = ack_seq, ack_ns, what

    def __repr__(self):
        return "%s %s %s (request %d, ack #%d)" % (self.kind, self.path, self.value, self.req, self.ack_seq)


class _Initial:
    """The ack of a request answered before the snapshot (it is part of every state)."""
    seq, ns = 0, -1 << 62

    def __init__(self):
        self.data = None


class Facts:
    def __init__(self, model, clientlog, reference, pre_delete, first_recorded):
        acks = {}
        for op in model.acks:
            if op.f["req"] >= 0:
                acks.setdefault(op.f["req"], op)
        self.facts, self.deletes = [], {}
        self.reference = reference
        self.bin_records = {}
        for e in clientlog:
            if e["what"] in (None, "read"):
                continue
            ack = acks.get(e["id"])
            if e["status"] >= 300:
                continue
            if e["id"] < first_recorded:  # before the snapshot: held by every state
                ack = _Initial()
            elif ack is None:
                raise RuntimeError("request %d (%s %s) was answered %d but the recorder saw no "
                                   "ack for it" % (e["id"], e["method"], e["url"], e["status"]))
            st = int(ack.data.split(b" ", 2)[1]) if ack.data else e["status"]
            if st != e["status"]:
                raise RuntimeError("request %d: recorder saw %d, client %d" % (e["id"], st, e["status"]))
            mk = lambda kind, path, value: self.facts.append(
                Fact(kind, path, value, e["id"], ack.seq, ack.ns, "%s %s" % (e["method"], e["url"])))
            h = e["headers"]
            path = e["path"]
            if e["what"] in ("append", "create"):
                n = e["msgs"] or 0
                if e["url"].startswith("/agents/"):
                    hi = int(h["stream-offset"]) + 1
                else:
                    hi = int(h["stream-next-offset"])
                mk("exists", path, True)
                if n:
                    mk("tail", path, hi)
                if W.STREAMS[path]["kind"] == "bin" and n:
                    self.bin_records.setdefault(path, []).append((hi - 1, base64.b64decode(e["body"])))
                if e["req_headers"].get("Stream-Closed") == "true":
                    mk("closed", path, True)
            elif e["what"] == "sub-create":
                mk("sub", path, True)
            elif e["what"] == "sub-claim":
                mk("sub-claim", path, json.loads(base64.b64decode(e["resp"]))["wake_id"])
            elif e["what"] == "sub-ack":
                for sp, off in e["msgs"].items():
                    mk("sub-acked", sp, int(off))
            elif e["what"] == "delete":
                req = model.reqs.get(e["id"])
                self.deletes[path] = req.seq if req else ack.seq
                mk("deleted", path, True)
        for p in self.bin_records:
            self.bin_records[p] = [b for _, b in sorted(self.bin_records[p])]
        self.pre_delete = pre_delete
        self.refs = dict(reference["streams"])
        for p, r in pre_delete.items():
            self.refs[p] = r

    def voided(self, f, c):
        """A fact about a path is void from the moment a delete of that path was received."""
        d = self.deletes.get(f.path)
        return f.kind != "deleted" and d is not None and d <= c and f.ack_seq < d


def promised(policy, f, c, t_c, window_ns):
    if policy == "always":
        return f.ack_seq <= c
    if policy == "interval":
        return f.ack_ns <= t_c - window_ns
    return False


def tails(res):
    """Recovered next offset of every present, readable stream."""
    out = {}
    for p, r in (res.get("streams") or {}).items():
        if r.get("status") == 200 and r["headers"].get("stream-next-offset"):
            out[p] = int(r["headers"]["stream-next-offset"])
    return out


def judge(res, facts, policy, c, t_c, window_ns, family, lower=None):
    """Violations of one crash state (a list of (category, text))."""
    v = []
    if not res.get("started"):
        return [("start", "the server does not start: " + res.get("log", "")[-600:])]
    if res.get("client_error"):
        v.append(("http", "reading the state failed: " + res["client_error"]))
    if SAN.search(res.get("log", "")):
        v.append(("sanitizer", res["log"][-1500:]))
    if res.get("exit") != 0:
        v.append(("exit", "SIGTERM exit status %r" % res.get("exit")))
    ca = res.get("check_after", {})
    if ca.get("rc") not in (0, None):
        v.append(("check", "`check` after recovery exits %s:\n%s" % (ca.get("rc"), _findings(ca.get("out", "")))))
    v.extend(_second_opinion(res))
    if res.get("unknown"):
        v.append(("unknown", "stream files nobody created: %r" % res["unknown"]))
    streams = res.get("streams") or {}
    files = set(res.get("files") or ())
    for p, r in streams.items():
        ref = facts.refs.get(p)
        if r.get("status") == 404 and p in files:
            v.append(("hidden-damage", "%s: /v1 answers 404 'Stream not found' while its file exists "
                                       "(the server cannot open it: /agents says %s)"
                      % (p, r.get("agents_error") or "?")))
        v.extend(_judge_stream(p, r, ref, facts))
    have = tails(res)
    # facts: kill -9 (every policy) and the policy's power-loss promise
    for f in facts.facts:
        if f.ack_seq > c or facts.voided(f, c):
            continue
        must = family == "kill9" or promised(policy, f, c, t_c, window_ns)
        if not must:
            continue
        why = "kill -9" if family == "kill9" and not promised(policy, f, c, t_c, window_ns) else policy
        bad = _fact_broken(f, streams, res.get("sub"), have)
        if bad:
            cat = "lost-delete" if f.kind == "deleted" else "lost-ack"
            v.append((cat, "[%s promise] %r: %s" % (why, f, bad)))
    # durable data survives: at least what the durable part of this crash point recovers to
    if lower:
        for p, n in lower.items():
            if W.STREAMS[p].get("server"):
                continue  # the server appends to it again after the restart
            if p in have and have[p] < n:
                v.append(("lost-durable", "%s recovers to %d records, but its durable part alone "
                                          "recovers to %d" % (p, have[p], n)))
    pr = res.get("probes") or {}
    if "producer" in pr:
        x = pr["producer"]
        if x["status"] == 204:
            v.append(("producer", "producer state ahead of the events: Producer-Seq %d (the next "
                                  "after the last stored one) is answered 204 as a duplicate, so a "
                                  "retried append would be acknowledged without being stored (%s)"
                      % (x["seq"], x["body"])))
        elif x["status"] != 200:
            v.append(("producer", "producer state disagrees with the events: Producer-Seq %d "
                                  "(the next after the last stored one) answers %d %s"
                      % (x["seq"], x["status"], x["body"])))
        elif x["next"] and int(x["next"]) != x["have"] + 1:
            v.append(("gap", "p/json: probe append got next offset %s after %d records"
                      % (x["next"], x["have"])))
    if "append" in pr:
        x = pr["append"]
        if x["status"] != 204 or int(x["offset"] or -1) != x["have"]:
            v.append(("gap", "ag/a: an append after recovery answers %d at offset %s, %d records "
                             "readable (%s)" % (x["status"], x["offset"], x["have"], x["body"])))
    if "recreate" in pr:
        x = pr["recreate"]
        if x["status"] != 204 or x["offset"] != "0" * 16 or x["ctype"] != "application/json" or x["closed"]:
            v.append(("recreate", "re-creating the deleted p/del through /agents: %d offset %s, "
                                  "then content type %s closed %s (%s): state of the old stream "
                                  "leaked into the new one" % (x["status"], x["offset"], x["ctype"],
                                                               x["closed"], x["body"])))
    return v


_DOC_DAMAGE = re.compile(r"^(?:.*/)?streams/(.+)\.yaml: byte \d+: (document \d+|not a stream file)", re.M)


def _second_opinion(res):
    """`check` (before the server touched the state) and the server must agree on which
    streams hold damaged documents: a torn tail or stale sidecars are repaired at start-up, a
    damaged document is not."""
    said = set(_DOC_DAMAGE.findall(res.get("check_before", {}).get("out", "")))
    said = {m[0] for m in said}
    seen = set()
    files = set(res.get("files") or ())
    for p, r in (res.get("streams") or {}).items():
        own_v1 = not W.STREAMS[p].get("fork")  # a fork's /v1 view fails at its source's damage
        if r.get("status") == 200 and ((own_v1 and r.get("v1_status") != 200)
                                       or r.get("agents_status", 200) != 200
                                       or any(i == "error" for i, _ in r.get("agents", []))):
            seen.add(p)
        elif r.get("status") == 404 and p in files:  # a file the server cannot open
            seen.add(p)
    if said == seen:
        return []
    return [("second-opinion", "`check` finds damaged documents in %s, the server in %s"
             % (sorted(said) or "no stream", sorted(seen) or "no stream"))]


def lost_ages(res, facts, c, t_c):
    """Ages (ns at the crash) of the acknowledged appends a recovered state does not hold,
    whether or not the policy promised them: under `interval` the largest one is the loss
    window actually observed."""
    if not res.get("started"):
        return []
    have = tails(res)
    return [t_c - f.ack_ns for f in facts.facts
            if f.kind == "tail" and f.ack_seq <= c and not facts.voided(f, c)
            and _fact_broken(f, res.get("streams") or {}, res.get("sub"), have)]


def _fact_broken(f, streams, sub, have):
    r = streams.get(f.path) if f.kind not in ("sub", "sub-claim") else None
    if f.kind == "exists":
        return None if r and r.get("status") == 200 else "stream absent (%s)" % (r or {}).get("status")
    if f.kind == "tail":
        n = have.get(f.path)
        return None if n is not None and n >= f.value else "recovered next offset %s < %d" % (n, f.value)
    if f.kind == "closed":
        return None if r and r["headers"].get("stream-closed") == "true" else "not closed"
    if f.kind == "deleted":
        return None if r and r.get("status") in (404, 410) else "deleted stream is back"
    if f.kind == "sub":
        return None if sub and sub.get("status") == 200 else "subscription absent (%s)" % (sub or {}).get("status")
    if f.kind == "sub-claim":
        return None  # a claim's lease is not part of any durability promise the README makes
    if f.kind == "sub-acked":
        if not sub or sub.get("status") != 200:
            return "subscription absent"
        for s in sub["body"].get("streams", []):
            if s["path"] == f.path:
                return None if int(s["acked_offset"]) >= f.value else "acked offset %s < %d" % (s["acked_offset"], f.value)
        return "stream not in subscription"
    return None


def _judge_stream(p, r, ref, facts):
    v = []
    st = r.get("status")
    if st in (404, 410) or ref is None:
        return v
    if st != 200:
        return [("http", "%s: HEAD answers %s" % (p, st))]
    h, rh = r["headers"], ref["headers"]
    kind = W.STREAMS[p]["kind"]
    if h.get("content-type") != rh.get("content-type"):
        return [("meta", "%s: content type %s, its events are %s" % (p, h.get("content-type"), rh.get("content-type")))]
    if h.get("stream-ttl") != rh.get("stream-ttl"):
        v.append(("meta", "%s: Stream-TTL %s, expected %s" % (p, h.get("stream-ttl"), rh.get("stream-ttl"))))
    nxt = int(h.get("stream-next-offset") or -1)
    if r.get("v1_status") != 200:
        v.append(("corrupt", "%s: /v1 read fails (%s): %s" % (p, r.get("v1_status"), r.get("v1_error"))))
        return v
    if kind == "bin":
        got = base64.b64decode(r["v1_bytes"])
        recs = facts.bin_records.get(p, [])
        want = b"".join(recs[:nxt]) if 0 <= nxt <= len(recs) else None
        if want is None or got != want:
            v.append(("corrupt", "%s: %d bytes at next offset %d are not the first %d records "
                                 "appended (%d known)" % (p, len(got), nxt, nxt, len(recs))))
        n = nxt
    else:
        items, ritems = r["v1_items"], ref.get("v1_items", [])
        server = W.STREAMS[p].get("server")  # events the server appends (again after a restart)
        if server:
            ritems = items
        if items != ritems[:len(items)]:
            v.append(("corrupt", "%s: /v1 records are not a prefix of what was appended: %s" %
                      (p, _first_diff(items, ritems))))
        if len(items) != nxt:
            v.append(("gap", "%s: /v1 read returns %d records, next offset %d" % (p, len(items), nxt)))
        if r.get("agents_status") != 200:
            v.append(("corrupt", "%s: /agents read fails (%s): %s" % (p, r.get("agents_status"), r.get("agents_error"))))
        else:
            ev, rev = r["agents"], ref.get("agents", [])
            if any(i == "error" for i, _ in ev):
                v.append(("corrupt", "%s: /agents read ends in an error: %r" % (p, [x for i, x in ev if i == "error"])))
            ev = [tuple(x) for x in ev if x[0] != "error"]
            rev = ev if server else [tuple(x) for x in rev]
            if ev != rev[:len(ev)]:
                v.append(("corrupt", "%s: /agents events are not a prefix of the reference: %s" % (p, _first_diff(ev, rev))))
            ids = [int(i) for i, _ in ev]
            if ids and ids != list(range(ids[0], ids[0] + len(ids))):
                v.append(("gap", "%s: /agents offsets are not contiguous: %r" % (p, ids)))
            if ids and ids[-1] + 1 != nxt:
                v.append(("gap", "%s: last /agents offset %d, next offset %d" % (p, ids[-1], nxt)))
        n = len(items)
    rn = int(rh.get("stream-next-offset") or 0)
    if h.get("stream-closed") == "true" and n != rn:
        v.append(("meta", "%s: closed, but holds %d of its %d records: the closure got ahead of "
                          "the events" % (p, n, rn)))
    return v


def _findings(out):
    """check's finding lines, with the state's directory taken out (so equal findings compare
    equal across states)."""
    lines = [re.sub(r"^\S*/data/", "", l) for l in out.splitlines() if ": byte " in l]
    return "\n".join(lines[:8]) or out[-600:]


def _first_diff(a, b):
    for i, x in enumerate(a):
        if i >= len(b):
            return "record %d (%r) is beyond the %d appended" % (i, x, len(b))
        if x != b[i]:
            return "record %d is %r, expected %r" % (i, x, b[i])
    return "?"
