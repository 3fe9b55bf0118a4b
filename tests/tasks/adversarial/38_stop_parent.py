# expect: wrong
# problem: secret
# standin: yes
# needs: uid | landlock>=6
# why: SIGSTOP to the parent (would hang it) and signals to its group
import os
import signal

ppid = os.getppid()
for sig in (signal.SIGSTOP, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
    try:
        os.kill(ppid, sig)
    except OSError:
        pass


def solve(x):
    return None
