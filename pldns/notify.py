"""systemd readiness notification (sd_notify protocol), without a new dependency.

With `Type=notify`, systemd passes $NOTIFY_SOCKET; we send READY=1 once the listeners are
bound and a table is loaded, STOPPING=1 when shutdown starts. Without the variable: no-op.
"""

from __future__ import annotations

import os
import socket


def notify(state: str) -> bool:
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    if path.startswith("@"):
        path = "\0" + path[1:]  # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(path)
            sock.sendall(state.encode())
        return True
    except OSError:
        return False
