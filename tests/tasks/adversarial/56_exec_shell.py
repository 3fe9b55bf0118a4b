# expect: wrong
# problem: secret
# why: replaces itself with a shell
import os

try:
    os.execv("/bin/sh", ["sh", "-c", "touch /tmp/posttrain_pwned_exec"])
except OSError:
    pass


def solve(x):
    return None
