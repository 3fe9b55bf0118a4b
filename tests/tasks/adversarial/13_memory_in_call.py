# expect: memory
# problem: secret
# why: a list of 10**10 items inside the call
def solve(x):
    return [0] * 10**10
