# expect: wrong
# problem: secret
# why: unbounded recursion (RecursionError inside the call)
def solve(x):
    return solve(x + 1) + 1
