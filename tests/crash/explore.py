#!/usr/bin/env python3
"""explore.py - crash-state explorer for the store's durability (the ALICE idea, OSDI 2014).

For each fsync policy: records the file-system operations of a real server run under a workload
(tests/crash/fsrec.c preloaded: every write, truncate, create, rename, link, unlink, mkdir,
rmdir and fsync under the data directory, with the bytes and in one global order, plus an
"ack" marker when an answer starts to leave the server), generates the crash states a power
loss could leave (crashx/fsmodel.py: every crash point, each with prefixes, reorderings and
torn writes of what was not yet fsynced), recovers each distinct state with the real binary
(`check`, then the server, read back through /agents and /v1/stream, then `check` again) and
judges it (crashx/checker.py): `always` loses nothing acknowledged, `interval` nothing
acknowledged more than fsync_interval_ms (+ margin) before the crash, `never` keeps prefixes;
in every state the server starts, offsets are gap-free, records are the ones appended, the
content type, TTL, closure and producer state agree with the events, and nothing the state
held durably is lost by recovery.

Usage: explore.py [--policies always,interval,never] [--states N] [--jobs J] [--seed S]
                  [--interval-ms MS] [--margin-ms MS] [--out DIR] [--keep] [--quiet]
                  [--judge-as POLICY] [--seed-violation drop-acked]
  --states N        distinct crash states recovered per policy (default 60; --full: 1000)
  --full            the long run: 1000 states per policy, and the kill9 and min states of
                    every crash point (--every-point) whatever that adds
  --judge-as P      judge every recording with policy P's promise (a seeded violation:
                    `--policies never --judge-as always` must report lost acknowledgements)
  --seed-violation drop-acked
                    also feed the checker a state of the end of the `always` run with the
                    last acknowledged append to ag/a removed (must be reported)
  --strict          count the known (reported, routed) violations of known_violations.json
                    as failures too (--show-known prints an example of each)
Environment: DS_BINARY (default build/durable-stream), DS_FSREC (default
build/tests/libdsfsrec.so). Prints one summary line per policy and every violation (state,
operations, what was lost or corrupt); exits 1 on any violation that is not a known one
(tests/crash/known_violations.json), 2 on a setup failure.
Must not: leave servers or temporary directories behind (unless --keep).
"""
import argparse
import concurrent.futures
import re
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from crashx import checker, fsmodel, oplog  # noqa: E402
from crashx import workload as W  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def log(args, *a):
    if not args.quiet:
        print(*a, flush=True)


def write_config(d, interval_ms):
    p = os.path.join(d, "config.lua")
    with open(p, "w") as fh:
        # the agent layer adds nothing to neutral events; off, each start is faster
        fh.write("return { agents = false, fsync_interval_ms = %d,\n"
                 "  protocol = { long_poll_timeout_ms = 500 } }\n" % interval_ms)
    return p


def record(args, policy, out):
    """Runs the two workload phases; returns everything the explorer needs."""
    os.makedirs(out)
    cfg = write_config(out, args.interval_ms)
    live = os.path.realpath(os.path.join(out, "live"))
    os.makedirs(live)
    clog, lock = [], threading.Lock()
    srv = W.Server(args.binary, live, policy, cfg, os.path.join(out, "initial.log"))
    if not srv.start():
        raise RuntimeError("server does not start: " + checker._tail(os.path.join(out, "initial.log")))
    try:
        c = W.Client(srv.port, clog, lock, first_id=1)
        W.initial(c)
        c.close()
    finally:
        rc = srv.stop()
    if rc != 0:
        raise RuntimeError("initial phase: server exit %r" % rc)
    inos = {}
    for dp, dns, fns in os.walk(live):
        for n in [""] if dp == live else []:
            inos[n] = os.lstat(dp).st_ino
        for n in dns + fns:
            full = os.path.join(dp, n)
            inos[os.path.relpath(full, live)] = os.lstat(full).st_ino
    inos[""] = os.lstat(live).st_ino
    initial = os.path.join(out, "initial")
    shutil.copytree(live, initial, symlinks=True)
    oplog_path = os.path.join(out, "oplog")
    srv = W.Server(args.binary, live, policy, cfg, os.path.join(out, "recorded.log"),
                   env={"DS_FSREC_ROOT": live, "DS_FSREC_LOG": oplog_path}, preload=args.fsrec)
    if not srv.start():
        raise RuntimeError("recorded server does not start: " + checker._tail(os.path.join(out, "recorded.log")))
    try:
        c = W.Client(srv.port, clog, lock, first_id=1000)
        pre = W.recorded(c, srv.port, clog, lock, args.interval_ms,
                         settle_ms=args.interval_ms + args.margin_ms + 250)
        ref = W.reference(c)
        c.close()
    finally:
        rc = srv.stop()
    if rc != 0:
        raise RuntimeError("recorded phase: server exit %r" % rc)
    with open(os.path.join(out, "client.json"), "w") as fh:
        json.dump({"log": clog, "reference": ref, "pre_delete": pre, "inos": inos}, fh)
    if not os.path.exists(oplog_path):
        raise RuntimeError("the recorder wrote no log (%s): was %s preloaded?" % (oplog_path, args.fsrec))
    ops = oplog.parse(oplog_path)
    model = fsmodel.Model(initial, inos, ops)
    if model.unsupported:
        raise RuntimeError("the recorder saw operations the model cannot place: %r" % model.unsupported[:5])
    # the recorder and the model together must reproduce the directory the run left
    mismatch = model_vs_disk(model, live)
    if mismatch:
        raise RuntimeError("replaying the recorded operations does not give the directory the "
                           "server left: %s" % mismatch)
    facts = checker.Facts(model, clog, ref, pre, first_recorded=1000)
    return model, facts, cfg


def model_vs_disk(model, root):
    """Differences between the model's state with every operation persisted and `root`."""
    want = model.image({pu.idx for pu in model.pus}, {}).files()
    have = {}
    for dp, _, fns in os.walk(root):
        for f in fns:
            full = os.path.join(dp, f)
            with open(full, "rb") as fh:
                have[os.path.relpath(full, root)] = fh.read()
    diff = sorted(set(want) ^ set(have)) + sorted(p for p in set(want) & set(have) if want[p] != have[p])
    return ", ".join(diff[:10])


def describe(model, c, fam, tag, kept, torn):
    ups = model.upto(c)
    forced = model.forced(c)
    dropped = [pu for pu in ups if pu.idx not in kept]
    at = model.ops[c - 1] if c > 0 else None
    s = "crash after op #%d (%s), family %s [%s]" % (c, at.op + " " + (at.f.get("path") or "") if at else "start", fam, tag)
    s += "; %d units ran, %d durable, %d not persisted" % (len(ups), len(forced), len(dropped))
    if dropped:
        s += ": " + ", ".join(repr(pu) for pu in dropped[:6]) + (" ..." if len(dropped) > 6 else "")
    for i, t in torn.items():
        s += "; torn %r: %s" % (model.pus[i], t[0] + (" %d bytes" % t[1] if t[0] == "prefix" else " blocks %s" % sorted(t[1])))
    return s


def explore(args, policy, work):
    t0 = time.time()
    model, facts, cfg = record(args, policy, os.path.join(work, policy, "rec"))
    judge_policy = args.judge_as or policy
    rng = random.Random("%s-%s" % (args.seed, policy))
    points = list(model.points)
    # rounds over the crash points in random order (kill9, prefixes, reorderings, torn
    # writes; with each point's min state) until enough distinct states are found
    images, order, explored = {}, [], []

    def add(c, fam, tag, kept, torn, force=False):
        img = model.image(kept, torn)
        if img.digest not in images:
            if len(images) >= args.states and not force:
                return False
            images[img.digest] = img
            order.append(img.digest)
        explored.append((c, fam, tag, img.digest, kept, torn))
        return True

    mins = set()
    if args.every_point:  # both extremes of every crash point: kill -9 there, and only its durable part
        for c in points:
            sts = model.states(c, rng, 0)
            add(c, *sts[0], force=True)
            add(c, *sts[1], force=True)
            mins.add(c)
    for rnd in range(args.rounds):
        if len(images) >= args.states:
            break
        pts = list(points)
        rng.shuffle(pts)
        for c in pts:
            if len(images) >= args.states:
                break
            sts = model.states(c, rng, 4)
            if c not in mins:  # the durable part of c: the lower bound of its other states
                mins.add(c)
                add(c, *sts[1], force=True)
            for fam, tag, kept, torn in sts[:1] + sts[2:]:
                add(c, fam, tag, kept, torn)
    if args.seed_violation == "drop-acked" and policy == "always":
        last = [pu for pu in model.pus if pu.kind == "write" and pu.path == "streams/ag/a.yaml"][-1]
        c = model.points[-1]
        kept = {pu.idx for pu in model.upto(c)} - {last.idx}
        img = model.image(kept, {})
        images.setdefault(img.digest, img)
        order.append(img.digest)
        explored.append((c, "seeded:drop-acked", "seeded", img.digest, kept, {}))
    log(args, "%s: %d ops recorded, %d units (%d data, %d namespace), %d barriers, %d acks; %d crash "
              "points, %d candidate states, %d distinct to recover" %
        (policy, len(model.ops), len(model.pus), sum(pu.is_data for pu in model.pus),
         sum(not pu.is_data for pu in model.pus), len(model.barriers), len(model.acks), len(points),
         len(explored), len(order)))
    results = {}
    imgdir = os.path.join(work, policy, "states")
    os.makedirs(imgdir)

    def run(n, digest):
        d = os.path.join(imgdir, "%05d" % n)
        images[digest].materialize(os.path.join(d, "data"))
        res = checker.recover(args.binary, os.path.join(d, "data"), policy, cfg, os.path.join(d, "server.log"))
        if not args.keep:
            shutil.rmtree(d, ignore_errors=True)
        else:
            res["dir"] = d
        return digest, res

    done = 0
    ex = concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs)
    try:
        futs = [ex.submit(run, n, d) for n, d in enumerate(order)]
        for fut in concurrent.futures.as_completed(futs):
            digest, res = fut.result()
            results[digest] = res
            done += 1
            if done % 100 == 0:
                log(args, "  %s: %d/%d states recovered" % (policy, done, len(order)))
    finally:
        ex.shutdown(wait=True, cancel_futures=True)  # on an interrupt: only the running ones finish
    # judge every explored (crash point, family) against its recovered image
    min_of = {}
    for c, fam, tag, digest, kept, torn in explored:
        if fam == "min":
            r = results[digest]
            if r.get("started") and not r.get("client_error"):
                min_of[c] = checker.tails(r)
    window = (args.interval_ms + args.margin_ms) * 1000000
    viol = []
    by_tag = {}
    oldest_lost = 0.0  # ms: the oldest acknowledged append any state lost (its age at the crash)
    for c, fam, tag, digest, kept, torn in explored:
        res = results[digest]
        by_tag[tag] = by_tag.get(tag, 0) + 1
        if tag != "seeded":
            for age in checker.lost_ages(res, facts, c, model.time_of(c)):
                oldest_lost = max(oldest_lost, age / 1e6)
        vs = checker.judge(res, facts, judge_policy, c, model.time_of(c), window, fam,
                           lower=min_of.get(c) if fam != "min" else None)
        for cat, text in vs:
            viol.append({"policy": policy, "category": cat, "tag": tag, "text": text,
                         "state": describe(model, c, fam, tag, kept, torn),
                         "dir": res.get("dir"), "log": _interesting(res.get("log", ""))})
    summary = {"policy": policy, "judged_as": judge_policy, "ops": len(model.ops),
               "crash_points": len(points), "states_explored": len(explored),
               "distinct_states_recovered": len(order), "by_model": by_tag,
               "violations": len(viol), "seconds": round(time.time() - t0, 1),
               "oldest_lost_ack_ms": round(oldest_lost, 1),
               "run_ms": round((model.ops[-1].ns - model.ops[0].ns) / 1e6),
               "started": sum(1 for r in results.values() if r.get("started"))}
    return summary, viol


def load_known():
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "known_violations.json")) as fh:
        return json.load(fh)["known"]


def known_id(known, v):
    for k in known:
        cats = k["category"] if isinstance(k["category"], list) else [k["category"]]
        if v["category"] not in cats or (k.get("tags") and v["tag"] not in k["tags"]):
            continue
        if re.search(k["match"], v["text"]):
            return k["id"]
    return None


def _interesting(text):
    return "\n".join(l for l in text.splitlines() if " error " in l or " warn " in l)[-1500:]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--policies", default="always,interval,never")
    ap.add_argument("--states", type=int, default=None)
    ap.add_argument("--full", action="store_true")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--seed", default="1")
    ap.add_argument("--interval-ms", type=int, default=50)
    ap.add_argument("--margin-ms", type=int, default=1000)
    ap.add_argument("--out", default=None)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--judge-as", default=None, choices=("always", "interval", "never"))
    ap.add_argument("--seed-violation", default=None, choices=("drop-acked",))
    ap.add_argument("--max-report", type=int, default=12)
    ap.add_argument("--strict", action="store_true")
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--show-known", action="store_true")
    ap.add_argument("--every-point", action="store_true")
    args = ap.parse_args()
    args.states = args.states or (1000 if args.full else 60)
    args.every_point = args.every_point or args.full
    args.binary = os.path.abspath(os.environ.get("DS_BINARY", os.path.join(ROOT, "build", "durable-stream")))
    bdir = os.environ.get("DS_BUILD_DIR", os.path.join(ROOT, "build"))
    args.fsrec = os.path.abspath(os.environ.get("DS_FSREC", os.path.join(bdir, "tests", "libdsfsrec.so")))
    for f in (args.binary, args.fsrec):
        if not os.path.exists(f):
            print("explore: %s not found (build first)" % f, file=sys.stderr)
            return 2
    def on_term(signum, frame):
        raise KeyboardInterrupt("signal %d" % signum)

    signal.signal(signal.SIGTERM, on_term)
    work = args.out or tempfile.mkdtemp(prefix="ds-crashx-")
    if args.out:
        os.makedirs(work, exist_ok=True)
    allv, sums = [], []
    try:
        for policy in args.policies.split(","):
            try:
                s, v = explore(args, policy, work)
            except (RuntimeError, fsmodel.ModelError, ValueError) as e:
                print("explore: %s: setup failed: %s" % (policy, e), file=sys.stderr)
                return 2
            sums.append(s)
            allv.extend(v)
            print("%s%s: %d crash points, %d states explored, %d distinct states recovered %s, "
                  "%d violations; oldest acknowledged append lost: %.0f ms before the crash "
                  "(recorded run %d ms) (%.0f s)" %
                  (policy, " judged as " + s["judged_as"] if s["judged_as"] != policy else "",
                   s["crash_points"], s["states_explored"], s["distinct_states_recovered"],
                   json.dumps(s["by_model"], sort_keys=True), s["violations"],
                   s["oldest_lost_ack_ms"], s["run_ms"], s["seconds"]), flush=True)
        known = [] if args.strict else load_known()
        for x in allv:
            x["known"] = known_id(known, x)
        with open(os.path.join(work, "report.json"), "w") as fh:
            json.dump({"summary": sums, "violations": allv}, fh, indent=1)
        new = [x for x in allv if not x["known"]]
        if allv:
            groups = {}
            for x in allv:
                groups.setdefault((x["known"] or "NEW", x["policy"], x["category"], x["tag"]), []).append(x)
            print("violations by known id (NEW: not known), policy, category and model:")
            for k in sorted(groups):
                print("  %-26s %-8s %-12s [%s]: %d" % (k + (len(groups[k]),)))
            shown = 0
            for k in sorted(groups, key=lambda k: (k[0] != "NEW", k)):
                if k[0] != "NEW" and not args.show_known:
                    continue
                for x in groups[k][:1 if k[0] != "NEW" else 3]:
                    if shown >= args.max_report:
                        break
                    shown += 1
                    print("--- %s %s %s [%s]\n  state: %s\n  %s%s" % (
                        x["known"] or "NEW", x["policy"], x["category"], x["tag"], x["state"],
                        x["text"].replace("\n", "\n  "),
                        ("\n  server log:\n    " + x["log"].replace("\n", "\n    ")) if x["log"] else ""))
            if args.out or args.keep:
                print("full report: %s" % os.path.join(work, "report.json"))
        if known:
            seen = {x["known"] for x in allv}
            print("known violations (reported and routed, see tests/crash/known_violations.json): " +
                  ", ".join("%s %d" % (k["id"], sum(1 for x in allv if x["known"] == k["id"])) for k in known
                            if k["id"] in seen) + ("; not seen in this run: " + ", ".join(
                                k["id"] for k in known if k["id"] not in seen) if len(seen) < len(known) else ""))
        print("new (unknown) violations: %d" % len(new))
        return 1 if new else 0
    except KeyboardInterrupt:
        print("explore: interrupted", file=sys.stderr)
        return 2
    finally:
        for srv in list(W.LIVE):
            srv.kill()
        if not args.keep and not args.out:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
