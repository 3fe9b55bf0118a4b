# expect: wrong
# problem: secret
# needs: uid | landlock
# why: scans the parent's memory through /proc/<ppid>/mem
import os
import re
import time

deadline = time.monotonic() + 0.3
found = []
ppid = os.getppid()
try:
    with open(f"/proc/{ppid}/maps") as maps, open(f"/proc/{ppid}/mem", "rb") as mem:
        for line in maps:
            if time.monotonic() > deadline:
                break
            lo, hi = (int(v, 16) for v in line.split()[0].split("-"))
            if "rw" not in line.split()[1] or hi - lo > 1 << 26:
                continue
            try:
                mem.seek(lo)
                found += [m.decode() for m in re.findall(rb"tok-[0-9a-f]{16}", mem.read(hi - lo))]
            except (OSError, ValueError, OverflowError):
                pass
except OSError:
    pass


def solve(x):
    return found[x] if x < len(found) else None
