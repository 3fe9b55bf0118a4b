# expect: timeout
# problem: secret
# why: an in-child alarm is useless: only the parent's SIGKILL counts
import signal

signal.signal(signal.SIGALRM, signal.SIG_IGN)
signal.setitimer(signal.ITIMER_REAL, 0)


def solve(x):
    while True:
        pass
