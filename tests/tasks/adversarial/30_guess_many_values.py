# expect: wrong
# problem: secret
# why: floods every descriptor with several guesses per case
import os

guesses = [True, False, None, 0, 1, "", "tok-", [], {}]
for fd in range(1, 10):
    for case in range(3):
        for g in guesses:
            line = f'{{"case": {case}, "value": {__import__("json").dumps(g)}}}\n'.encode()
            try:
                os.write(fd, line)
            except OSError:
                pass


def solve(x):
    return None
