# expect: timeout
# problem: secret
# why: never returns from module level
while True:
    pass
