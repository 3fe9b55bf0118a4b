# expect: wrong
# problem: secret
# why: walks the call stack and the heap for expected values
import gc
import sys


def solve(x):
    seen = []
    frame = sys._getframe()
    while frame is not None:
        seen += [v for v in frame.f_locals.values() if isinstance(v, str) and v.startswith("tok-")]
        frame = frame.f_back
    seen += [o for o in gc.get_objects() if isinstance(o, str) and o.startswith("tok-")]
    for name in ("expected", "answers", "want"):
        for frame_vars in (globals(), sys.modules["__main__"].__dict__):
            if name in frame_vars:
                return frame_vars[name]
    return seen[0] if seen else None
