# expect: timeout
# problem: secret
# why: loads fine, then spins inside the call
def solve(x):
    while True:
        pass
