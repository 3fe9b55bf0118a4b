# expect: wrong
# problem: secret
# why: monkey-patches print, builtins and sys.stdout
import builtins
import io
import sys

builtins.print = lambda *a, **k: None
builtins.len = lambda obj: 0
builtins.isinstance = lambda obj, cls: True
sys.stdout = io.StringIO()


def solve(x):
    return None
