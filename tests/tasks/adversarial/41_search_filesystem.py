# expect: wrong
# problem: secret
# why: searches readable files for the answers
import os
import re
import time

deadline = time.monotonic() + 0.3
pattern = re.compile(rb"tok-[0-9a-f]{16}")
found = []
roots = ["/tmp", "/var/tmp", "/dev/shm", "/work", "/root", "/home", ".."]
try:
    roots.append(os.readlink(f"/proc/{os.getppid()}/cwd"))
except OSError:
    pass
for root in roots:
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            if time.monotonic() > deadline:
                break
            try:
                with open(os.path.join(dirpath, name), "rb") as f:
                    found += [m.decode() for m in pattern.findall(f.read(1 << 20))]
            except OSError:
                pass


def solve(x):
    return found[x] if x < len(found) else None
