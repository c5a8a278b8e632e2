"""oplog.py - reads the recorder's log (tests/crash/fsrec.c) into Op records.

Provides: parse(path) -> [Op], in log (= sequence) order. Each Op has seq, tid, ns (CLOCK_MONOTONIC
nanoseconds), op (the record kind: open, openro, write, truncate, rename, link, unlink, mkdir,
rmdir, close, dup, fsync_begin/_end, fdatasync_begin/_end, sync_file_range_begin/_end,
sync_begin/_end, req, ack, unsupported...), its key=value fields (paths decoded) and data (the
bytes written, or an ack's response head).
Must not: interpret the operations (fsmodel.py does).
"""
import re

_PCT = re.compile(r"%([0-9A-F]{2})")
_INT_KEYS = {"fd", "ino", "flags", "dir", "size", "off", "nbytes", "rc", "x", "req", "from", "nr"}


class Op:
    __slots__ = ("seq", "tid", "ns", "op", "f", "data")

    def __init__(self, seq, tid, ns, op, f, data):
        self.seq, self.tid, self.ns, self.op, self.f, self.data = seq, tid, ns, op, f, data

    def __repr__(self):
        return "#%d %s %s%s" % (self.seq, self.op, " ".join("%s=%s" % kv for kv in self.f.items()),
                                " (%d bytes)" % len(self.data) if self.data else "")


def _decode(v):
    if v == ".":
        return ""
    return _PCT.sub(lambda m: chr(int(m.group(1), 16)), v)


def parse(path):
    ops = []
    with open(path, "rb") as fh:
        raw = fh.read()
    pos = 0
    n = len(raw)
    while pos < n:
        nl = raw.index(b"\n", pos)
        head = raw[pos:nl].decode("latin-1")
        parts = head.split(" ")
        seq, tid, ns, op = int(parts[0]), int(parts[1]), int(parts[2]), parts[3]
        f = {}
        for kv in parts[4:]:
            k, _, v = kv.partition("=")
            if k in ("path", "path2"):
                f[k] = _decode(v)
            elif k == "mode":
                f[k] = int(v, 8) if v else 0
            elif k in _INT_KEYS or k == "len":
                f[k] = int(v)
            else:
                f[k] = v
        ln = f.pop("len", 0)
        data = raw[nl + 1:nl + 1 + ln]
        if raw[nl + 1 + ln:nl + 2 + ln] != b"\n":
            raise ValueError("fsrec log: record #%d is cut short (log truncated?)" % seq)
        pos = nl + 2 + ln
        if ops and seq != ops[-1].seq + 1:
            raise ValueError("fsrec log: sequence jumps from %d to %d" % (ops[-1].seq, seq))
        ops.append(Op(seq, tid, ns, op, f, data))
    return ops
