"""Free TCP ports on loopback for the tests' servers, never the same one twice in a process.

The kernel hands out an ephemeral port, and the socket is closed before the test's server binds
it; asking twice in a row can then give the same port (seen: a service's blue and green slots on
one address). Ports already handed out are skipped.
"""

from __future__ import annotations

import socket
import threading

_given: set[int] = set()
_lock = threading.Lock()


def free_port() -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        with _lock:
            if port not in _given:
                _given.add(port)
                return port
