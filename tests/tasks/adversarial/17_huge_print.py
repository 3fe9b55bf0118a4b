# expect: wrong
# problem: secret
# why: 20 MB of prints (sent to stderr, drained, capped)
print("x" * 20 * 10**6)


def solve(x):
    return None
