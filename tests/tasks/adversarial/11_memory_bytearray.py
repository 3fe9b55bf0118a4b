# expect: memory
# problem: secret
# why: asks for 10 GB at once
buf = bytearray(10**10)


def solve(x):
    return None
