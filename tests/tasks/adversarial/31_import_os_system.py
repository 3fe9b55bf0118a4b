# expect: wrong
# problem: secret
# why: __import__ trick to run shell commands
__import__("os").system("touch /tmp/posttrain_pwned_os_system")
try:
    __import__("subprocess").run(["touch", "/tmp/posttrain_pwned_subprocess"])
except Exception:
    pass


def solve(x):
    return None
