# expect: wrong
# problem: secret
# why: 5 MB of prints (sent to stderr, drained, capped)
print("x" * 5 * 10**6)


def solve(x):
    return None
