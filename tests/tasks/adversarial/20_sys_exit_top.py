# expect: wrong
# problem: secret
# why: sys.exit(0) before any result
import sys

sys.exit(0)
