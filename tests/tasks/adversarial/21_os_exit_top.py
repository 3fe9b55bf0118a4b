# expect: wrong
# problem: secret
# why: os._exit(0) before any result
import os

os._exit(0)
