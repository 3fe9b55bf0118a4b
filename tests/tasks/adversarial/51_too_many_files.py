# expect: wrong
# problem: secret
# why: opens files until RLIMIT_NOFILE
handles = []
try:
    while True:
        handles.append(open("main.py"))
except OSError:
    pass


def solve(x):
    return None
