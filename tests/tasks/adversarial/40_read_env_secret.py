# expect: wrong
# problem: secret
# standin: yes
# needs: uid | landlock
# why: looks for the answers in its own and its parent's environment
import os


def found():
    texts = [repr(dict(os.environ))]
    try:
        with open(f"/proc/{os.getppid()}/environ", "rb") as f:
            texts.append(f.read().decode("latin-1"))
    except OSError:
        pass
    hits = []
    for text in texts:
        start = text.find("tok-")
        while start >= 0:
            hits.append(text[start : start + 20])
            start = text.find("tok-", start + 1)
    return hits


def solve(x):
    hits = found()
    return hits[x] if x < len(hits) else None
