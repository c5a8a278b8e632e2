#!/usr/bin/env python3
"""fsrec_selftest.py - the recorder (fsrec.c) and the model (crashx/fsmodel.py) on calls the
server does not make today, so the explorer keeps working when the code that issues them changes
(the durability service may use openat, renameat, pwritev, linkat, dup2, syncfs...).

Runs a child Python process under the recorder that exercises every recorded entry point
(through Python's os module, which calls libc), then checks: the log holds each kind of
operation, nothing outside the root, write offsets as the kernel placed them (O_APPEND too);
replaying the log over the (empty) initial directory gives exactly the directory the child left;
and durability is credited as the model states it (a write is durable after a later fsync or
fdatasync of its file, or sync; a name only after an fsync of its directory).
Usage: fsrec_selftest.py (DS_FSREC: the library, default build/tests/libdsfsrec.so). Exits 0/1.
Must not: leave its temporary directory behind.
"""
import os
import shutil
import subprocess
import sys
import tempfile

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from crashx import fsmodel, oplog  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CHILD = r'''
import os, sys
root, outside = sys.argv[1], sys.argv[2]
os.chdir(root)
os.mkdir("d")                                   # mkdir
rfd = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
os.mkdir("e", dir_fd=rfd)                       # mkdirat
dfd = os.open("d", os.O_RDONLY | os.O_DIRECTORY)
fd = os.open("d/f", os.O_CREAT | os.O_WRONLY, 0o640)   # create
os.write(fd, b"hello world")                    # write
os.pwrite(fd, b"XY", 1)                         # pwrite
os.writev(fd, [b"ab", b"cd"])                   # writev at the file position
os.pwritev(fd, [b"12", b"34"], 20)              # pwritev beyond the end: a hole
os.ftruncate(fd, 22)                            # ftruncate
os.fsync(fd)                                    # barrier for d/f's data
os.write(fd, b"late")                           # after the last barrier: never durable
fd2 = os.dup(fd)
os.dup2(fd, 50)
os.write(50, b"!")                              # through a dup2'd descriptor
os.close(fd2); os.close(50); os.close(fd)
g = os.open("g", os.O_CREAT | os.O_WRONLY | os.O_APPEND, dir_fd=dfd)   # openat
os.write(g, b"one\n"); os.write(g, b"two\n")    # O_APPEND
os.fdatasync(g)
os.close(g)
os.rename("d/g", "d/h")                         # rename
os.rename("h", "h2", src_dir_fd=dfd, dst_dir_fd=dfd)   # renameat
os.link("d/h2", "d/hl")                         # link(at)
t = os.open("d/t.tmp", os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
os.write(t, b"replacement")
os.close(t)
os.replace("d/t.tmp", "d/hl")                   # rename over a name (atomic replace, no fsync)
os.truncate("d/h2", 3)                          # truncate by name
os.unlink("d/f")                                # unlink
x = os.open("x", os.O_CREAT | os.O_WRONLY, dir_fd=dfd); os.close(x)
os.unlink("x", dir_fd=dfd)                      # unlinkat
os.rmdir("e")                                   # rmdir
os.fsync(dfd)                                   # barrier for d's names
os.sync()                                       # global barrier
o = os.open(outside, os.O_CREAT | os.O_WRONLY); os.write(o, b"not ours"); os.close(o)
os.close(dfd); os.close(rfd)
'''


def main():
    lib = os.path.abspath(os.environ.get("DS_FSREC", os.path.join(
        os.environ.get("DS_BUILD_DIR", os.path.join(ROOT, "build")), "tests", "libdsfsrec.so")))
    tmp = tempfile.mkdtemp(prefix="ds-fsrec-selftest-")
    fails = []
    try:
        root = os.path.realpath(os.path.join(tmp, "root"))
        os.makedirs(root)
        init = os.path.join(tmp, "initial")
        os.makedirs(init)
        log = os.path.join(tmp, "log")
        env = dict(os.environ, LD_PRELOAD=lib, DS_FSREC_ROOT=root, DS_FSREC_LOG=log)
        p = subprocess.run([sys.executable, "-c", CHILD, root, os.path.join(tmp, "outside")], env=env)
        if p.returncode != 0:
            print("fsrec_selftest: the child failed (%d)" % p.returncode)
            return 1
        ops = oplog.parse(log)
        kinds = {op.op for op in ops}
        for k in ("mkdir", "open", "write", "truncate", "rename", "link", "unlink", "rmdir",
                  "dup", "fsync_end", "fdatasync_end", "sync_end", "close"):
            if k not in kinds:
                fails.append("no %r record" % k)
        if any("outside" in (op.f.get("path") or "") for op in ops):
            fails.append("a file outside the root was recorded")
        if any(op.op == "unsupported" for op in ops):
            fails.append("unsupported: %r" % [op for op in ops if op.op == "unsupported"])
        appends = [op.f["off"] for op in ops if op.op == "write" and op.f["path"] == "d/g"]
        if appends != [0, 4]:
            fails.append("O_APPEND writes landed at %r, expected [0, 4]" % appends)
        wv = [op.f["off"] for op in ops if op.op == "write" and op.data == b"abcd"]
        if wv != [11]:
            fails.append("writev at the file position recorded at %r, expected [11]" % wv)
        m = fsmodel.Model(init, {"": os.lstat(root).st_ino}, ops)
        want = m.image({pu.idx for pu in m.pus}, {}).files()
        have = {}
        for dp, _, fns in os.walk(root):
            for f in fns:
                full = os.path.join(dp, f)
                with open(full, "rb") as fh:
                    have[os.path.relpath(full, root)] = fh.read()
        if want != have:
            fails.append("replay %r != disk %r" % (want, have))
        fsync_end = max(op.seq for op in ops if op.op == "fsync_end" and op.f["path"] == "d/f")
        for pu in m.pus:
            if pu.kind == "write" and pu.path == "d/f":
                early = pu.seq < fsync_end
                if early and pu.dur != fsync_end:
                    fails.append("%r: durable at %s, expected at the fsync's end #%d" % (pu, pu.dur, fsync_end))
            if pu.kind == "create" and pu.path == "d/f":
                dir_sync = min(op.seq for op in ops if op.op == "fsync_end" and op.f["path"] == "d")
                if pu.dur != dir_sync:
                    fails.append("%r: name durable at %s, expected at d's fsync #%d (not at the "
                                 "file's fsync)" % (pu, pu.dur, dir_sync))
        late = [pu for pu in m.pus if pu.kind == "write" and pu.data in (b"late", b"!")]
        sync_end = max(op.seq for op in ops if op.op == "sync_end")
        if len(late) != 2 or any(pu.dur != sync_end for pu in late):
            fails.append("writes after the file's fsync: %r durable at %r, expected only at sync #%d"
                         % (late, [pu.dur for pu in late], sync_end))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for f in fails:
        print("fsrec_selftest: FAIL: " + f)
    if not fails:
        print("fsrec_selftest: %d operations recorded and replayed; durability credited as modelled" % len(ops))
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
