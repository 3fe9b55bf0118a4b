# expect: wrong
# problem: secret
# why: returns a callable (not JSON)
def solve(x):
    return solve
