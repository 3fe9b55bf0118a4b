# expect: wrong
# problem: secret
# why: recursion limit lifted, recursion through C: segfault
import sys

sys.setrecursionlimit(10**7)


def solve(x):
    return list(map(solve, [x]))
