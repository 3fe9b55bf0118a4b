# expect: wrong
# problem: secret
# why: writes bytes that are not UTF-8 where results go
import os

for fd in range(1, 10):
    try:
        os.write(fd, b'\xff\xfe{"case": 0, "value": \xff}\n\x00\x00')
    except OSError:
        pass


def solve(x):
    return None
