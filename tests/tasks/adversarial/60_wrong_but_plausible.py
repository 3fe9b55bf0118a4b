# expect: wrong
# problem: secret
# why: an honest wrong answer, for contrast
def solve(x):
    return f"tok-{x:016x}"
