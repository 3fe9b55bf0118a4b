# expect: memory
# problem: secret
# why: grows a list of 50 MB buffers until RLIMIT_AS
hoard = []
while True:
    hoard.append(bytearray(50 * 10**6))
