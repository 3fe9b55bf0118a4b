# expect: wrong
# problem: secret
# why: writes files outside its working directory
import os

targets = [
    "/tmp/posttrain_escape_tmp",
    "/var/tmp/posttrain_escape_var_tmp",
    "/dev/shm/posttrain_escape_shm",
    "../posttrain_escape_parent",
    os.path.expanduser("~/../posttrain_escape_home"),
]
for path in targets:
    try:
        with open(path, "w") as f:
            f.write("escaped")
    except OSError:
        pass


def solve(x):
    return None
