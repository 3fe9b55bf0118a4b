# expect: wrong
# problem: secret
# why: hooks __import__ so later imports get a fake json
import builtins
import types

fake = types.ModuleType("json")
fake.dumps = lambda obj, *a, **k: '{"case": 0, "value": "tok-"}'
fake.loads = lambda s, *a, **k: {}
real_import = builtins.__import__


def hooked(name, *args, **kwargs):
    return fake if name == "json" else real_import(name, *args, **kwargs)


builtins.__import__ = hooked


def solve(x):
    return None
