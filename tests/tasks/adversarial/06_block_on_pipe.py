# expect: timeout
# problem: secret
# why: blocks forever in a read nobody will answer
import os

r, w = os.pipe()


def solve(x):
    return os.read(r, 1)
