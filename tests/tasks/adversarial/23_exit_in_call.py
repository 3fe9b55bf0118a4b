# expect: wrong
# problem: secret
# why: sys.exit(0) from inside the call
import sys


def solve(x):
    sys.exit(0)
