# expect: timeout
# problem: secret
# why: ignores every catchable signal (SIGTERM, SIGXCPU, ...)
import signal

for sig in signal.valid_signals():
    try:
        signal.signal(sig, signal.SIG_IGN)
    except (OSError, ValueError):
        pass


def solve(x):
    while True:
        pass
