# expect: timeout
# problem: secret
# why: prints without end
while True:
    print("spam spam spam spam spam spam spam spam")
