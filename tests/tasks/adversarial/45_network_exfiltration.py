# expect: wrong
# problem: secret
# why: tries loopback and remote connections
import socket

hits = []
for host, port in (("127.0.0.1", 22), ("127.0.0.1", 80), ("8.8.8.8", 53)):
    try:
        s = socket.create_connection((host, port), timeout=0.1)
        hits.append(f"{host}:{port}")
        s.close()
    except OSError:
        pass
try:
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.sendto(b"exfiltrate", ("8.8.8.8", 53))
except OSError:
    pass


def solve(x):
    return None
