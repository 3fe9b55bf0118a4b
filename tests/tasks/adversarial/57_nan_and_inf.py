# expect: wrong
# problem: secret
# why: returns NaN / infinity
def solve(x):
    return [float("nan"), float("inf"), -float("inf")][x % 3]
