# expect: memory
# problem: secret
# why: a 10**10-bit integer (1.25 GB)
def solve(x):
    return 1 << 10**10
