"""fsmodel.py - the file-system model: which states a power loss could leave.

Provides: Model(initial_dir, ops) replays the recorded operations (oplog.Op) over the initial
snapshot the way the kernel executed them ("volatile" replay) and turns them into persistence
units (PU): data units (write at an offset, truncate) on an inode, and namespace units (create,
link, unlink, rename, mkdir, rmdir) on names. For every unit it computes `dur`, the sequence
number from which it is guaranteed durable, from the recorded barriers:
  * a data unit on inode I is durable once an fsync/fdatasync of I (or sync/syncfs) that was
    *called after the unit completed* has returned (a barrier running concurrently with the
    write is not credited: its begin is numbered before the call, the write after it);
  * a namespace unit (a directory entry) is durable once its directory (both directories of a
    rename) has been fsynced the same way. fsyncing a new file does NOT make its name durable:
    no implicit directory fsync (the pessimistic reading of ext4 data=ordered; ext4 happens
    to commit the name with the file, XFS and others need not);
  * sync_file_range is recorded but credits nothing (it does not flush the size or the
    name), so code that relies on it shows up as unsynced.
A crash state at point c (every operation numbered <= c has run) persists every durable unit,
plus any set of the others that keeps the namespace consistent (a name's units persist in order;
an entry needs its directory; rmdir needs the entries it removed), where a persisted write may
be torn. States(c) generates them in families, each tagged with the weakest model it needs:
  ordered    in-order write-back: everything unsynced before some point k persisted, the rest
             not; the first write after k may be torn (a byte prefix of it persisted).
  reorder    unsynced units persisted out of order: one unit dropped (it would have reached the
             disk later than all the others), or a random subset; kept writes may be torn.
  writeback  as reorder, but also data units of one file out of order (a later write kept, an
             earlier one not: a hole of zeros), or a torn write persisting its size without
             its data (some 4 KiB blocks read back as zeros): ext4 data=writeback, ext2.
Image(kept, torn) builds the resulting directory tree (names -> contents), with a content hash
so identical states are checked once.
Must not: know what the files mean (that is the checker's business).
"""
import hashlib
import os
import random
import stat

BLOCK = 4096
INF = float("inf")
O_CREAT, O_TRUNC = 0o100, 0o1000


class ModelError(Exception):
    """The log does not match the model (an operation the model cannot place)."""


class PU:
    __slots__ = ("idx", "kind", "seq", "ns", "ino", "off", "data", "size", "path", "path2",
                 "dirs", "deps", "dur", "tid")

    def __init__(self, kind, op, **kw):
        self.kind, self.seq, self.ns, self.tid = kind, op.seq, op.ns, op.tid
        self.ino = self.off = self.data = self.size = self.path = self.path2 = None
        self.dirs, self.deps, self.dur = (), (), INF
        for k, v in kw.items():
            setattr(self, k, v)

    @property
    def is_data(self):
        return self.kind in ("write", "trunc")

    def __repr__(self):
        if self.kind == "write":
            what = "write %s +%d @%d" % (self.path, len(self.data), self.off)
        elif self.kind == "trunc":
            what = "truncate %s to %d" % (self.path, self.size)
        else:
            what = "%s %s%s" % (self.kind, self.path, " -> " + self.path2 if self.path2 else "")
        return "#%d %s" % (self.seq, what)


def parent(p):
    return p.rsplit("/", 1)[0] if "/" in p else ""


class Model:
    def __init__(self, initial_dir, initial_inos, ops):
        """initial_dir: the snapshot taken before the recorded run; initial_inos: path -> real
        inode number of the live directory the run started on (to check the replay)."""
        self.ops = ops
        self.inodes = {}     # id -> {"kind": "file"|"dir", "real": ino, "mode": int}
        self.init_names = {}  # path -> id ("" is the root)
        self.init_content = {}  # id -> bytes
        self._nid = 0
        root = self._new("dir", initial_inos.get(""), 0o755)
        self.init_names[""] = root
        for dp, dns, fns in os.walk(initial_dir):
            rel = os.path.relpath(dp, initial_dir)
            rel = "" if rel == "." else rel
            for d in sorted(dns):
                p = (rel + "/" + d).lstrip("/")
                st = os.lstat(os.path.join(dp, d))
                self.init_names[p] = self._new("dir", initial_inos.get(p), stat.S_IMODE(st.st_mode))
            for f in sorted(fns):
                p = (rel + "/" + f).lstrip("/")
                full = os.path.join(dp, f)
                st = os.lstat(full)
                i = self._new("file", initial_inos.get(p), stat.S_IMODE(st.st_mode))
                self.init_names[p] = i
                with open(full, "rb") as fh:
                    self.init_content[i] = fh.read()
        self.pus, self.barriers, self.acks, self.reqs = [], [], [], {}
        self.unsupported = []
        self._replay()
        self._durability()
        self._deps()
        self.points = self._crash_points()

    def _new(self, kind, real, mode):
        self._nid += 1
        self.inodes[self._nid] = {"kind": kind, "real": real, "mode": mode}
        return self._nid

    # ---- volatile replay: what the kernel did, in order ----

    def _replay(self):
        names = dict(self.init_names)
        fds = {}
        open_barriers = {}
        for op in self.ops:
            f, k = op.f, op.op
            if k == "unsupported":
                self.unsupported.append(op)
                continue
            if k in ("open", "openro"):
                p = f["path"]
                i = names.get(p)
                if i is None:
                    if k == "openro" or not f["flags"] & O_CREAT:
                        raise ModelError("%r opens %s, which the model does not have" % (op, p))
                    i = self._new("dir" if f.get("dir") else "file", f.get("ino"), f.get("mode", 0o644) & 0o7777)
                    names[p] = i
                    self._ns(op, "create", p, None, i, names)
                else:
                    self._check_real(op, i)
                    if k == "open" and f["flags"] & O_TRUNC and self.inodes[i]["kind"] == "file":
                        self.pus.append(PU("trunc", op, ino=i, size=0, path=p))
                fds[f["fd"]] = i
            elif k == "write":
                i = self._fd(op, fds)
                if f["off"] < 0:
                    raise ModelError("%r: the recorder could not tell where the write landed" % op)
                self.pus.append(PU("write", op, ino=i, off=f["off"], data=op.data, path=f["path"]))
            elif k == "truncate":
                i = self._fd(op, fds) if f.get("fd", -1) >= 0 else names.get(f["path"])
                if i is None:
                    raise ModelError("%r: unknown file" % op)
                self.pus.append(PU("trunc", op, ino=i, size=f["size"], path=f["path"]))
            elif k == "close":
                fds.pop(f["fd"], None)
            elif k == "dup":
                fds[f["fd"]] = fds.get(f["from"])
            elif k == "mkdir":
                p = f["path"]
                i = self._new("dir", f.get("ino"), f.get("x", 0o755) & 0o7777)
                names[p] = i
                self._ns(op, "mkdir", p, None, i, names)
            elif k == "rmdir":
                p = f["path"]
                i = names.pop(p, None)
                self._ns(op, "rmdir", p, None, i, names)
            elif k == "unlink":
                p = f["path"]
                i = names.pop(p, None)
                if i is None:
                    raise ModelError("%r: unlink of a name the model does not have" % op)
                self._ns(op, "unlink", p, None, i, names)
            elif k == "link":
                i = names.get(f["path"])
                names[f["path2"]] = i
                self._ns(op, "link", f["path2"], None, i, names)
            elif k == "rename":
                a, b = f["path"], f["path2"]
                i = names.get(a)
                if i is None:
                    raise ModelError("%r: rename of a name the model does not have" % op)
                self._ns(op, "rename", a, b, i, names)
                moved = {p: v for p, v in names.items() if p == a or p.startswith(a + "/")}
                for p in moved:
                    del names[p]
                for p, v in moved.items():
                    names[b + p[len(a):]] = v
                self._check_real(op, i)
            elif k.endswith("_begin"):
                kind = k[:-6]
                ino = None if kind == "sync" else self._fd(op, fds)
                open_barriers[(op.tid, f.get("fd"), kind)] = (ino, op)
            elif k.endswith("_end"):
                kind = k[:-4]
                ino, b = open_barriers.pop((op.tid, f.get("fd"), kind))
                if kind in ("fsync", "fdatasync", "sync") and f.get("rc", 0) == 0:
                    self.barriers.append((ino, b.seq, op.seq, kind, b))
            elif k == "ack":
                self.acks.append(op)
            elif k == "req":
                self.reqs.setdefault(f["req"], op)
        self.final_names = names
        for n, pu in enumerate(self.pus):
            pu.idx = n

    def _fd(self, op, fds):
        i = fds.get(op.f["fd"])
        if i is None:
            raise ModelError("%r: descriptor not opened under the root" % op)
        self._check_real(op, i)
        return i

    def _check_real(self, op, i):
        real = op.f.get("ino")
        node = self.inodes[i]
        if real is None:
            return
        if node["real"] is None:
            node["real"] = real
        elif node["real"] != real:
            raise ModelError("%r: the model's inode for %s is %s, the kernel's %s" %
                             (op, op.f.get("path"), node["real"], real))

    def _ns(self, op, kind, p, p2, i, names):
        dirs = {names.get(parent(p))}
        if p2 is not None:
            dirs.add(names.get(parent(p2)))
        if None in dirs:
            raise ModelError("%r: a directory the model does not have" % op)
        self.pus.append(PU(kind, op, ino=i, path=p, path2=p2, dirs=tuple(dirs)))

    # ---- durability ----

    def _durability(self):
        by_ino = {}
        glob = []
        for ino, b, e, kind, _ in self.barriers:
            (glob if ino is None else by_ino.setdefault(ino, [])).append((b, e))

        def first_end(ino, seq):
            best = INF
            for b, e in by_ino.get(ino, ()):
                if b > seq and e < best:
                    best = e
            for b, e in glob:
                if b > seq and e < best:
                    best = e
            return best

        for pu in self.pus:
            if pu.is_data:
                pu.dur = first_end(pu.ino, pu.seq)
            else:
                pu.dur = max(first_end(d, pu.seq) for d in pu.dirs)

    def _deps(self):
        last = {}  # name -> idx of the last namespace unit that touched it
        for pu in self.pus:
            if pu.is_data:
                continue
            touched = [pu.path] + ([pu.path2] if pu.path2 is not None else [])
            deps = {last[n] for n in touched if n in last}
            for n in touched:
                if parent(n) in last:
                    deps.add(last[parent(n)])
            if pu.kind == "rmdir":
                pre = pu.path + "/"
                deps |= {v for n, v in last.items() if n.startswith(pre)}
            if pu.kind == "rename":
                for pre in (pu.path + "/", pu.path2 + "/"):
                    deps |= {v for n, v in last.items() if n.startswith(pre)}
            pu.deps = tuple(sorted(deps))
            for n in touched:
                last[n] = pu.idx
            if pu.kind == "rename":
                for n in [n for n in last if n.startswith(pu.path + "/")]:
                    last[pu.path2 + n[len(pu.path):]] = pu.idx

    def _crash_points(self):
        pts = [0]
        for op in self.ops:
            if op.op in ("open", "write", "truncate", "rename", "link", "unlink", "mkdir", "rmdir",
                         "ack") or op.op.endswith("_end"):
                pts.append(op.seq)
        return sorted(set(pts))

    def time_of(self, c):
        """CLOCK_MONOTONIC ns of crash point c (the moment operation c completed)."""
        if c <= 0:
            return self.ops[0].ns if self.ops else 0
        return self.ops[c - 1].ns

    # ---- crash states ----

    def upto(self, c):
        return [pu for pu in self.pus if pu.seq <= c]

    def forced(self, c):
        """Durable units at c, with everything they need (a durable entry's earlier units)."""
        out = set()
        stack = [pu.idx for pu in self.pus if pu.dur <= c]
        while stack:
            i = stack.pop()
            if i in out:
                continue
            out.add(i)
            stack.extend(self.pus[i].deps)
        return out

    def close_over(self, c, chosen, forced):
        """The consistent set: forced units, plus chosen ones whose dependencies persist."""
        out = set()
        for pu in self.pus:
            if pu.seq > c:
                break
            if pu.idx in forced or (pu.idx in chosen and all(d in out for d in pu.deps)):
                out.add(pu.idx)
        return out

    def states(self, c, rng, budget):
        """Yields (family, tag, kept, torn) for crash point c: kill9, min, some prefixes (the
        first cut write torn), drop-one and random subsets with torn writes, at most `budget`."""
        ups = self.upto(c)
        forced = self.forced(c)
        unsynced = [pu for pu in ups if pu.idx not in forced]
        allk = {pu.idx for pu in ups}
        out = [("kill9", "ordered", allk, {}), ("min", "ordered", set(forced), {})]
        if unsynced:
            ks = list(range(len(unsynced)))
            rng.shuffle(ks)
            for j in ks[:max(1, budget // 4)]:
                kept = self.close_over(c, {u.idx for u in unsynced[:j]}, forced)
                out.append(("prefix", "ordered", kept, {}))
                w = unsynced[j]
                if w.kind == "write" and len(w.data) > 1:
                    t = self.tear(w, rng, "prefix")
                    out.append(("prefix+torn", "ordered", kept | {w.idx}, {w.idx: t}))
                    out.append(("prefix+torn-blocks", "writeback", kept | {w.idx},
                                {w.idx: self.tear(w, rng, "blocks")}))
            for u in rng.sample(unsynced, min(len(unsynced), max(1, budget // 4))):
                kept = self.close_over(c, allk - {u.idx}, forced)
                out.append(("drop-one", "reorder", kept, {}))
            # atomic replace without fsync: the rename persisted, the new file's data not
            # (XFS and others; ext4's auto_da_alloc happens to flush it)
            for r in [u for u in unsynced if u.kind == "rename"]:
                lost = {u.idx for u in unsynced if u.is_data and u.ino == r.ino and u.seq < r.seq}
                if lost:
                    out.append(("rename-before-data", "reorder",
                                self.close_over(c, allk - lost, forced), {}))
            for _ in range(max(1, budget // 4)):
                chosen = {u.idx for u in unsynced if rng.random() < 0.5}
                kept = self.close_over(c, chosen, forced)
                torn, tag = {}, "reorder"
                for u in unsynced:
                    if u.idx in kept and u.kind == "write" and len(u.data) > 1 and rng.random() < 0.3:
                        mode = rng.choice(("prefix", "blocks"))
                        torn[u.idx] = self.tear(u, rng, mode)
                        if mode == "blocks":
                            tag = "writeback"
                out.append(("random", tag, kept, torn))
        return [(f, "writeback" if t != "writeback" and self.data_reordered(ups, k, tn) else t, k, tn)
                for f, t, k, tn in out]

    def data_reordered(self, ups, kept, torn):
        """True when some file keeps a later data unit but not all of an earlier one (dropped
        or torn): the file then has a hole (zeros), a cut document or stale bytes before data
        written after it, which in-order data write-back (ext4 data=ordered) cannot produce: a
        writeback-model state."""
        dropped_first = {}
        for pu in ups:
            if not pu.is_data:
                continue
            if pu.idx not in kept or pu.idx in torn:
                dropped_first.setdefault(pu.ino, pu.seq)
            elif pu.ino in dropped_first:
                return True
        return False

    @staticmethod
    def tear(w, rng, mode):
        n = len(w.data)
        if mode == "prefix":
            cuts = {n // 2, 1, n - 1}
            blk = ((w.off + n - 1) // BLOCK) * BLOCK - w.off  # last block boundary inside
            if 0 < blk < n:
                cuts.add(blk)
            return ("prefix", rng.choice(sorted(cuts)))
        first, last = w.off // BLOCK, (w.off + n - 1) // BLOCK
        blocks = list(range(first, last + 1))
        keep = {b for b in blocks if rng.random() < 0.5}
        if len(keep) == len(blocks):
            keep.discard(rng.choice(blocks))
        return ("blocks", frozenset(keep))

    # ---- images ----

    def image(self, kept, torn):
        names = dict(self.init_names)
        content = {}
        size_only = {}

        def buf(i):
            if i not in content:
                content[i] = bytearray(self.init_content.get(i, b""))
            return content[i]

        for pu in self.pus:
            if pu.idx not in kept:
                continue
            if pu.kind == "write":
                b = buf(pu.ino)
                data, off = pu.data, pu.off
                t = torn.get(pu.idx)
                if t and t[0] == "prefix":
                    data = data[:t[1]]
                end = off + len(data)
                if len(b) < end:
                    b.extend(b"\0" * (end - len(b)))
                if t and t[0] == "blocks":
                    for j in range(len(data)):
                        if (off + j) // BLOCK in t[1]:
                            b[off + j] = data[j]
                else:
                    b[off:end] = data
            elif pu.kind == "trunc":
                b = buf(pu.ino)
                if len(b) > pu.size:
                    del b[pu.size:]
                else:
                    b.extend(b"\0" * (pu.size - len(b)))
            elif pu.kind in ("create", "link", "mkdir"):
                names[pu.path] = pu.ino
                if self.inodes[pu.ino]["kind"] == "file":
                    buf(pu.ino)
            elif pu.kind in ("unlink", "rmdir"):
                names.pop(pu.path, None)
            elif pu.kind == "rename":
                a, b2 = pu.path, pu.path2
                moved = {p: v for p, v in names.items() if p == a or p.startswith(a + "/")}
                for p in moved:
                    del names[p]
                if not moved:
                    moved = {a: pu.ino}
                for p, v in moved.items():
                    names[b2 + p[len(a):]] = v
        return Image(self, names, content)


class Image:
    """A crash state as a directory tree: names -> inodes, with file contents."""

    def __init__(self, model, names, content):
        self.model, self.names, self.content = model, names, content
        # a name whose directory is missing cannot be reached (the consistency rules keep
        # this from happening; drop it rather than invent the directory)
        self.names = {p: i for p, i in names.items()
                      if p == "" or self._reachable(p, names)}
        h = hashlib.sha1()
        first = {}
        for p in sorted(self.names):
            i = self.names[p]
            node = model.inodes[i]
            if node["kind"] == "dir":
                h.update(b"d %s\n" % p.encode())
            else:
                data = self.data(i)
                h.update(b"f %s %s %s\n" % (p.encode(), hashlib.sha1(data).hexdigest().encode(),
                                          first.setdefault(i, p).encode()))
        self.digest = h.hexdigest()

    @staticmethod
    def _reachable(p, names):
        while "/" in p:
            p = parent(p)
            if p not in names:
                return False
        return True

    def data(self, i):
        if i in self.content:
            return bytes(self.content[i])
        return self.model.init_content.get(i, b"")

    def files(self):
        return {p: self.data(i) for p, i in self.names.items()
                if self.model.inodes[i]["kind"] == "file"}

    def materialize(self, dest):
        os.makedirs(dest, exist_ok=True)
        made = {}
        for p in sorted(self.names):
            if p == "":
                continue
            i = self.names[p]
            node = self.model.inodes[i]
            full = os.path.join(dest, p)
            if node["kind"] == "dir":
                os.makedirs(full, exist_ok=True)
                os.chmod(full, node["mode"] or 0o755)
            elif i in made:
                os.link(made[i], full)
            else:
                with open(full, "wb") as fh:
                    fh.write(self.data(i))
                os.chmod(full, node["mode"] or 0o644)
                made[i] = full
