# expect: wrong
# problem: secret
# why: a str subclass equal to everything (JSON keeps only its text)
class Anything(str):
    def __eq__(self, other):
        return True

    __hash__ = str.__hash__


def solve(x):
    return Anything("not the answer")
