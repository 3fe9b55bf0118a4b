# expect: wrong
# problem: secret
# why: os._exit(0) from inside the call
import os


def solve(x):
    os._exit(0)
