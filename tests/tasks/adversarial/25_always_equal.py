# expect: wrong
# problem: secret
# why: an object equal to everything (cannot survive JSON)
class Anything:
    def __eq__(self, other):
        return True

    def __ne__(self, other):
        return False


def solve(x):
    return Anything()
