# expect: timeout
# problem: secret
# why: each child leaves the process group with setsid()
import os

while True:
    try:
        if os.fork() == 0:
            os.setsid()
    except OSError:
        pass
