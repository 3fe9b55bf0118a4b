# expect: wrong
# problem: secret
# why: raise SystemExit before any result
raise SystemExit
