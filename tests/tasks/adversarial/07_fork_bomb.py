# expect: timeout
# problem: secret
# why: forks until refused, keeps trying (RLIMIT_NPROC + group kill)
import os

while True:
    try:
        os.fork()
    except OSError:
        pass
