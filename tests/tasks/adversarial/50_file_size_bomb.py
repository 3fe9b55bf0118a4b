# expect: wrong
# problem: secret
# why: writes a 1 GB file (RLIMIT_FSIZE stops it at 1 MB)
try:
    with open("big.bin", "wb") as f:
        for _ in range(1000):
            f.write(b"x" * 10**6)
except OSError:
    pass


def solve(x):
    return None
