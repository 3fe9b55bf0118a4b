# expect: wrong
# problem: secret
# why: returns a 1 MB string (result line over the stdout cap)
def solve(x):
    return "tok-" + "0" * 10**6
