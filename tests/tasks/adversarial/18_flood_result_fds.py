# expect: wrong
# problem: secret
# why: writes 10 MB straight to every descriptor (stdout cap: output_limit)
import os

for fd in range(1, 10):
    try:
        os.write(fd, b"x" * 10**7)
    except OSError:
        pass


def solve(x):
    return None
