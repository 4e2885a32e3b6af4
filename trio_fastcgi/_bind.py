"""Where the ``trio-fastcgi`` command listens: ``--bind`` specs, the inherited fd 0
and systemd socket activation.

Listening sockets are plain :mod:`socket` objects opened before any Trio run, so
that the pre-fork supervisor can open them once and every worker process
inherits the same ones.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from typing import Final, Literal

import attrs

from ._listeners import (
    DEFAULT_BACKLOG,
    bind_unix_socket,
    listen_error,
    remove_socket_file,
)

#: The first fd systemd passes (``SD_LISTEN_FDS_START``).
SD_LISTEN_FDS_START: Final = 3
DEFAULT_BIND: Final = "127.0.0.1:9000"


class BindError(ValueError):
    """A ``--bind`` value that cannot be understood."""


@attrs.frozen
class Bind:
    """One parsed ``--bind`` value."""

    kind: Literal["tcp", "unix", "fd"]
    host: str = ""
    port: int = 0
    path: str = ""
    fd: int = -1

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        if self.kind == "fd":
            return f"fd://{self.fd}"
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _port(text: str, spec: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise BindError(f"bad port in {spec!r}: expected a number 0-65535")
    return int(text)


def parse_bind(spec: str) -> Bind:
    """Parse ``HOST:PORT``, ``[IPV6]:PORT``, ``:PORT``, ``unix:/path`` or ``fd://N``.

    Raises:
      BindError: the value has none of these forms.
    """
    if spec.startswith("unix:"):
        path = spec[len("unix:") :]
        if not path:
            raise BindError(f"{spec!r}: unix: needs a path")
        return Bind("unix", path=path)
    if spec.startswith("fd://"):
        text = spec[len("fd://") :]
        if not text.isdigit():
            raise BindError(f"{spec!r}: fd:// needs a file descriptor number")
        return Bind("fd", fd=int(text))
    if spec.startswith("["):
        host, sep, rest = spec[1:].partition("]")
        if not sep or not rest.startswith(":") or not host:
            raise BindError(f"{spec!r}: expected [IPV6]:PORT")
        return Bind("tcp", host=host, port=_port(rest[1:], spec))
    host, sep, port = spec.rpartition(":")
    if not sep:
        raise BindError(f"{spec!r}: expected HOST:PORT, [IPV6]:PORT, unix:/path or fd://N")
    if ":" in host:
        raise BindError(f"{spec!r}: put an IPv6 address in brackets, like [::1]:9000")
    return Bind("tcp", host=host or "0.0.0.0", port=_port(port, spec))


def is_listening_socket(fd: int) -> bool:
    """True if *fd* is a listening stream socket (libfcgi's test for fd 0)."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        return False
    try:
        return bool(
            sock.type == socket.SOCK_STREAM
            and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        )
    except OSError:
        return False
    finally:
        sock.detach()


def systemd_fds(environ: Mapping[str, str], pid: int | None = None) -> list[int]:
    """The fds systemd socket activation passed (``LISTEN_FDS``), if meant for
    this process (``LISTEN_PID``); empty otherwise."""
    count = environ.get("LISTEN_FDS", "")
    listen_pid = environ.get("LISTEN_PID", "")
    if not count.isdigit():
        return []
    if listen_pid and listen_pid != str(os.getpid() if pid is None else pid):
        return []
    return list(range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + int(count)))


def _adopt_fd(fd: int) -> socket.socket:
    if not is_listening_socket(fd):
        raise BindError(f"fd {fd} is not a listening stream socket")
    sock = socket.socket(fileno=fd)
    os.set_inheritable(fd, False)
    return sock


def _open_tcp(host: str, port: int, backlog: int) -> list[socket.socket]:
    infos = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE | socket.AI_NUMERICSERV
    )
    sockets: list[socket.socket] = []
    seen: set[tuple[int, object]] = set()
    try:
        for family, type_, proto, _, address in infos:
            if (family, address) in seen:
                continue
            seen.add((family, address))
            sock = socket.socket(family, type_, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(backlog)
            if port == 0:
                # Several families with port 0 would each get a different port.
                break
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


@attrs.frozen
class BoundSocket:
    """A listening socket and the unix path to remove when done, if any."""

    sock: socket.socket
    bind: Bind
    unix_inode: int | None = None

    def describe(self) -> str:
        if self.bind.kind == "tcp":
            address = self.sock.getsockname()
            host = address[0]
            host = f"[{host}]" if ":" in host else host
            return f"{host}:{address[1]}"
        return str(self.bind)

    def close(self) -> None:
        """Close the socket; remove its unix socket file if it is still ours."""
        self.sock.close()

    def remove_file(self) -> None:
        if self.unix_inode is not None:
            remove_socket_file(self.bind.path, self.unix_inode)


def open_binds(
    binds: list[Bind], *, socket_mode: int | None = 0o660, backlog: int = DEFAULT_BACKLOG
) -> list[BoundSocket]:
    """Open a listening socket for each bind (several for a host name that
    resolves to more than one address). Closes what it opened if one fails."""
    opened: list[BoundSocket] = []
    try:
        for bind in binds:
            try:
                if bind.kind == "unix":
                    sock = bind_unix_socket(bind.path, mode=socket_mode, backlog=backlog)
                    opened.append(BoundSocket(sock, bind, os.stat(bind.path).st_ino))
                elif bind.kind == "fd":
                    opened.append(BoundSocket(_adopt_fd(bind.fd), bind))
                else:
                    for sock in _open_tcp(bind.host, bind.port, backlog):
                        opened.append(BoundSocket(sock, bind))
            except OSError as exc:
                path = bind.path if bind.kind == "unix" else None
                error = listen_error(str(bind), exc, path=path)
                if error is None:
                    raise
                raise error from exc
    except BaseException:
        for bound in opened:
            bound.close()
            bound.remove_file()
        raise
    return opened


def default_binds(environ: Mapping[str, str]) -> list[Bind]:
    """What to listen on when no ``--bind`` is given: systemd's sockets, else
    the listening socket on fd 0 (a web server spawned us), else
    ``127.0.0.1:9000``."""
    fds = systemd_fds(environ)
    if fds:
        return [Bind("fd", fd=fd) for fd in fds]
    if is_listening_socket(0):
        return [Bind("fd", fd=0)]
    return [parse_bind(DEFAULT_BIND)]
