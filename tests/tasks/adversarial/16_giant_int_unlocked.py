# expect: wrong
# problem: secret
# why: lifts the digit limit in the child; the parent's parse still refuses it
import sys

sys.set_int_max_str_digits(0)


def solve(x):
    return 10**5000
