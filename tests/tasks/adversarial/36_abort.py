# expect: wrong
# problem: secret
# why: os.abort() before any result
import os

os.abort()
