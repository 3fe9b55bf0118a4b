# expect: wrong
# problem: secret
# why: an atexit hook writes fake result lines after the harness
import atexit
import os


def fake():
    for fd in range(1, 10):
        for case in range(3):
            try:
                os.write(fd, b'{"case": %d, "value": "tok-0000000000000000"}\n' % case)
            except OSError:
                pass


atexit.register(fake)


def solve(x):
    return "tok-0000000000000000"
