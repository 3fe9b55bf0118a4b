# expect: wrong
# problem: secret
# why: tries to become root again
import os


def solve(x):
    try:
        os.setuid(0)
        os.setgid(0)
        return "root"
    except OSError:
        return None
