# expect: wrong
# problem: secret
# why: closes stdout/stderr and every other descriptor
import os

for fd in range(1, 32):
    try:
        os.close(fd)
    except OSError:
        pass


def solve(x):
    return None
