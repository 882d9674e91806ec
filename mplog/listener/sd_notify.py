"""Tell a service manager how ``mplog listen`` is doing: the ``sd_notify`` protocol.

systemd (``Type=notify``) and other service managers pass a unix datagram socket in
``$NOTIFY_SOCKET``; the service sends newline-separated ``KEY=VALUE`` assignments to it,
one datagram each time: ``READY=1`` once it serves, ``STOPPING=1`` when it begins to stop,
``STATUS=...`` free text. A path that starts with ``@`` names a socket in the abstract
namespace (the ``@`` stands for a leading NUL byte). The protocol is one ``sendto()``; a
library (``systemd-python`` needs libsystemd's headers to build) is not worth it here.
"""

from __future__ import annotations

import os
import socket

__all__ = ["notify"]

_SEND_TIMEOUT = 1.0  # seconds: a service manager that does not read must not stop the listener


def notify(*assignments: str) -> bool:
    """Send ``KEY=VALUE`` assignments to ``$NOTIFY_SOCKET`` in one datagram.

    Returns:
        True when it was sent; False with no socket to send to or when sending failed
        (a listener runs the same without a service manager).
    """
    address = os.environ.get("NOTIFY_SOCKET", "")
    if address.startswith("@"):
        address = "\0" + address[1:]
    elif not address.startswith("/"):
        return False  # unset, or a kind of address this does not speak (vsock:)
    message = "\n".join(assignments).encode("utf-8", "replace")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.settimeout(_SEND_TIMEOUT)
            sock.connect(address)
            sock.sendall(message)
    except OSError:
        return False
    return True
