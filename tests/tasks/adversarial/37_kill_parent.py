# expect: wrong
# problem: secret
# standin: yes
# needs: uid | landlock>=6
# why: SIGKILL / SIGTERM to the parent and its process group
import os
import signal

ppid = os.getppid()
for sig in (signal.SIGTERM, signal.SIGKILL):
    try:
        os.kill(ppid, sig)
    except OSError:
        pass
    try:
        os.killpg(os.getpgid(ppid), sig)
    except OSError:
        pass


def solve(x):
    return None
