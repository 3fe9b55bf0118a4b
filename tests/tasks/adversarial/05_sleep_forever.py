# expect: timeout
# problem: secret
# why: no CPU use at all: only the wall clock can stop it
import time


def solve(x):
    time.sleep(3600)
