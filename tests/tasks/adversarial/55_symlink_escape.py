# expect: wrong
# problem: secret
# why: symlinks out of its directory to read host files
import os

leaked = []
for target in ("/etc/shadow", "/etc/passwd", "/proc/1/environ"):
    name = "link" + str(len(leaked)) + str(abs(hash(target)))
    try:
        os.symlink(target, name)
        with open(name) as f:
            leaked.append(f.read(100))
    except OSError:
        pass


def solve(x):
    return leaked[x] if x < len(leaked) else None
