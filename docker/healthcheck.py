#!/usr/bin/env python3
"""Container health check: is something in this container listening on TCP PORT?

usage: dni-healthcheck [PORT]   (default 5555, a worker's control port)

Reads /proc/net/tcp{,6} instead of connecting, so the check never touches the
worker's ZeroMQ sockets.  Exit 0 if listening, 1 if not.
"""
import sys

LISTEN = "0A"


def listening(port: int) -> bool:
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state = fields[1], fields[3]
            if state == LISTEN and int(local.rsplit(":", 1)[1], 16) == port:
                return True
    return False


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 5555
    sys.exit(0 if listening(port) else 1)
