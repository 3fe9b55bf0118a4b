# expect: wrong
# problem: secret
# why: a detached grandchild outlives the run holding the pipes
import os
import time

if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        time.sleep(3600)
    os._exit(0)


def solve(x):
    return None
