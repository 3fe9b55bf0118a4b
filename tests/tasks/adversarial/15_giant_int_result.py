# expect: wrong
# problem: secret
# why: a 5001-digit result cannot be serialised (int_max_str_digits)
def solve(x):
    return 10**5000
