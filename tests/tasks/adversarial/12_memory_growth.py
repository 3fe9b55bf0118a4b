# expect: memory
# problem: secret
# why: grows a list of 50 MB buffers until RLIMIT_AS stops it
hoard = []
while True:
    hoard.append(bytes(50 * 10**6))  # calloc: no page is touched, so this is quick
