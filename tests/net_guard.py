"""Runs a `molting` command with the network refused and recorded: every connection or name lookup
for a host other than this machine is written (as a JSON list) to the file named first.

    python tests/net_guard.py attempts.json train --model tiny-random …
"""
import atexit
import json
import socket
import sys

LOCAL = ("127.0.0.1", "::1", "localhost", None)
attempts: list[str] = []
_connect, _getaddrinfo = socket.socket.connect, socket.getaddrinfo


def connect(self, address):
    if isinstance(address, tuple) and address[0] not in LOCAL:
        attempts.append(f"connect {address[0]}:{address[1]}")
        raise OSError("network refused by tests/net_guard.py")
    return _connect(self, address)


def getaddrinfo(host, *args, **kw):
    if host not in LOCAL:
        attempts.append(f"resolve {host}")
        raise socket.gaierror("network refused by tests/net_guard.py")
    return _getaddrinfo(host, *args, **kw)


socket.socket.connect, socket.getaddrinfo = connect, getaddrinfo
out = sys.argv[1]
# registered before anything else: runs last, after MLflow's own exit handlers (which flush telemetry)
atexit.register(lambda: open(out, "w", encoding="utf-8").write(json.dumps(attempts)))

if __name__ == "__main__":
    from molting_mlflow.cli import main

    main(sys.argv[2:])
