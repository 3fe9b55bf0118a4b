"""The program that runs first inside the sandbox's child interpreter (`python -I -S -B -c`).

It receives its settings as JSON in argv from `posttrain.tasks.sandbox`, applies the resource
limits, the network namespace, no-new-privileges, the uid drop and Landlock, reports which
isolation it got, then runs the model's program. Kept as source text: it executes in a fresh
interpreter, never in the trainer's process.
"""

LAUNCHER = r"""
import ctypes, json, os, pkgutil, resource, runpy, sys
cfg = json.loads(sys.argv[1])
rep = {"uid": None, "netns": False, "landlock": 0}
def fail(msg):
    os.write(2, ("posttrain-sandbox setup failed: " + msg + "\n").encode())
    os._exit(cfg["setup_exit"])
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
for name, soft, hard in cfg["rlimits"]:
    try:
        resource.setrlimit(getattr(resource, name), (soft, hard))
    except (OSError, ValueError) as e:
        fail("setrlimit %s: %s" % (name, e))
if cfg["netns"] and libc.unshare(0x40000000) == 0:  # CLONE_NEWNET: only a down loopback
    rep["netns"] = True
if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS, also required by Landlock
    fail("PR_SET_NO_NEW_PRIVS")

class PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed", ctypes.c_uint64), ("fd", ctypes.c_int32)]

def landlock():
    abi = libc.syscall(444, None, 0, 1) if cfg["landlock"] else -1
    if abi < 1:
        return None, 0
    fs = (1 << 13) - 1 | (1 << 13 if abi >= 2 else 0) | (1 << 14 if abi >= 3 else 0)
    fs |= 1 << 15 if abi >= 5 else 0
    attr = (ctypes.c_uint64 * 3)(fs, 3 if abi >= 4 else 0, 3 if abi >= 6 else 0)
    rs = libc.syscall(444, ctypes.byref(attr), 24 if abi >= 6 else 16 if abi >= 4 else 8, 0)
    if rs < 0:
        return None, 0
    file_rights = (1 << 1) | (1 << 2) | (1 << 14 if abi >= 3 else 0)
    def allow(path, rights):
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            return
        if not os.path.isdir(path):
            rights &= file_rights
        rule = PathBeneath(rights & fs, fd)
        ok = libc.syscall(445, rs, 1, ctypes.byref(rule), 0) == 0
        os.close(fd)
        if not ok:
            fail("landlock_add_rule %s" % path)
    read = (1 << 2) | (1 << 3)  # READ_FILE | READ_DIR, never EXECUTE
    for d in sys.path:  # the stdlib, but not the site-packages inside it
        if os.path.isfile(d):  # a zipped stdlib
            allow(d, read)
        elif os.path.isdir(d):
            allow(d, 1 << 3)
            for e in os.scandir(d):
                if e.name not in ("site-packages", "dist-packages"):
                    allow(e.path, read)
    with open("/proc/self/maps") as f:  # directories of the shared libraries in use
        libs = {l.split(None, 5)[-1].strip() for l in f if ".so" in l}
    for d in sorted({os.path.dirname(p) for p in libs if p.startswith("/")}):
        if d.split("/")[1] not in ("dev", "proc", "sys"):  # never a device or kernel tree
            allow(d, read)
    allow("/etc/ld.so.cache", read)
    allow("/dev/urandom", read)
    allow("/dev/null", read | (1 << 1))
    allow(".", fs & ~1 & ~(1 << 6) & ~(1 << 11))  # not EXECUTE, MAKE_CHAR, MAKE_BLOCK
    return rs, abi

rs, abi = landlock()
if cfg["uid"] is not None:
    if rs is not None:  # keep only "read any file": Landlock confines reads to the rules
        libc.prctl(8, 1, 0, 0, 0)  # PR_SET_KEEPCAPS
    else:  # the stdlib may be unreadable for this uid (e.g. under /root): load the usual
        import bisect, collections, functools, heapq, itertools, math, operator, random, re, string
    try:
        os.setgroups([])
        os.setresgid(cfg["uid"], cfg["uid"], cfg["uid"])
        os.setresuid(cfg["uid"], cfg["uid"], cfg["uid"])
    except OSError as e:  # e.g. a user namespace that does not map this uid
        fail("uid drop: %s" % e)
    if rs is not None:
        hdr = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, self
        caps = (ctypes.c_uint32 * 6)(1 << 2, 1 << 2, 0, 0, 0, 0)  # CAP_DAC_READ_SEARCH
        if libc.capset(hdr, caps) != 0:
            fail("capset")
    rep["uid"] = os.getuid()
if rs is not None:
    if libc.syscall(446, rs, 0) != 0:
        fail("landlock_restrict_self")
    os.close(rs)
    rep["landlock"] = abi
if cfg["require_isolation"] and not (rep["landlock"] and (rep["netns"] or rep["landlock"] >= 4)):
    fail("isolation required but unavailable: %s" % json.dumps(rep))
os.write(2, b"\x00posttrain-sandbox-ready " + json.dumps(rep).encode() + b"\n")
del cfg, rep, rs, abi, libc, fail, landlock
try:
    runpy.run_path("main.py", run_name="__main__")
except MemoryError:
    os._exit(86)  # _MEMORY_EXIT
"""
