# expect: wrong
# problem: secret
# why: dereferences NULL through ctypes
import ctypes

ctypes.string_at(0)
