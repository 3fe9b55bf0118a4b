# expect: wrong
# problem: secret
# why: a 60 000-deep JSON line on every descriptor (parent parse is bounded)
import os

line = b'{"case": 0, "value": ' + b"[" * 60000 + b"]" * 60000 + b"}\n"
for fd in range(1, 10):
    try:
        os.write(fd, line[:60000] + b"\n")
    except OSError:
        pass


def solve(x):
    return None
