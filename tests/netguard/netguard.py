"""A socket guard: any connection to a non-loopback address raises and is logged.

Installed in-process by ``tests/conftest.py`` and, for subprocesses (``dvc repro`` and the stages
it starts), by ``sitecustomize.py`` in this folder when the folder is on ``PYTHONPATH``. Violations
are appended to ``$MEMEOPS_NETGUARD_LOG`` so a test can assert that nothing tried.
"""

from __future__ import annotations

import ipaddress
import os
import socket

_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", ""}


class NetworkBlocked(OSError):
    pass


def _is_loopback(host: object) -> bool:
    if not isinstance(host, str):
        return False
    if host in _LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def _record(what: str) -> None:
    log = os.environ.get("MEMEOPS_NETGUARD_LOG")
    if log:
        with open(log, "a", encoding="utf-8") as fh:
            fh.write(f"pid={os.getpid()} {what}\n")


def install() -> None:
    """Patch socket connect and name resolution; idempotent."""
    if getattr(socket, "_memeops_guarded", False):
        return
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo

    def check(sock: socket.socket, address: object) -> None:
        if sock.family == getattr(socket, "AF_UNIX", None):
            return
        host = address[0] if isinstance(address, tuple) and address else address
        if not _is_loopback(host):
            _record(f"connect {address!r}")
            raise NetworkBlocked(f"memeops netguard: connection to {address!r} blocked (only loopback is allowed)")

    def connect(self: socket.socket, address: object) -> None:
        check(self, address)
        return real_connect(self, address)

    def connect_ex(self: socket.socket, address: object) -> int:
        check(self, address)
        return real_connect_ex(self, address)

    def getaddrinfo(host, *args, **kwargs):
        name = host.decode() if isinstance(host, bytes) else host
        if name is not None and not _is_loopback(name):
            _record(f"resolve {name!r}")
            raise NetworkBlocked(f"memeops netguard: name resolution of {name!r} blocked")
        return real_getaddrinfo(host, *args, **kwargs)

    socket.socket.connect = connect  # type: ignore[method-assign]
    socket.socket.connect_ex = connect_ex  # type: ignore[method-assign]
    socket.getaddrinfo = getaddrinfo  # type: ignore[assignment]
    socket._memeops_guarded = True  # type: ignore[attr-defined]
