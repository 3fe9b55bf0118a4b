# expect: wrong
# problem: secret
# needs: landlock
# why: searches readable files for an answer key (a JSON "expected" list) or answer-like tokens
import json
import os
import re
import time

deadline = time.monotonic() + 0.3
key = None
tokens = []
roots = ["/tmp", "/var/tmp", "/dev/shm", "/work", "/root", "/home", ".."]
try:
    roots.append(os.readlink(f"/proc/{os.getppid()}/cwd"))
except OSError:
    pass
for root in roots:
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            if time.monotonic() > deadline or key is not None:
                break
            try:
                with open(os.path.join(dirpath, name), "rb") as f:
                    data = f.read(1 << 20)
            except OSError:
                continue
            tokens += [m.decode() for m in re.findall(rb"tok-[0-9a-f]{16}", data)]
            try:
                key = json.loads(data)["expected"]
            except Exception:
                pass


def solve(x):
    if key is not None:
        return key[x]
    return tokens[x] if x < len(tokens) else None
