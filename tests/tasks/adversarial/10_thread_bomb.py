# expect: timeout
# problem: secret
# why: starts threads until refused (threads count in RLIMIT_NPROC)
import threading
import time

while True:
    try:
        threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()
    except Exception:
        pass
