"""Listening sockets: unix sockets with a safe unlink, the inherited fd 0, and
which of them other hosts can reach."""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import socket
import stat
import sys
from typing import Final

import trio

#: fd 0 is where a web server or spawn-fcgi leaves the listening socket.
FCGI_LISTENSOCK_FILENO: Final = 0
DEFAULT_BACKLOG: Final = 1024
#: The longest unix socket path bind(2) takes: sun_path has 108 bytes on Linux
#: and 104 on macOS and the BSDs, less one for a terminating NUL.
MAX_UNIX_PATH: Final = 107 if sys.platform.startswith("linux") else 103


class ListenError(OSError):
    """A listening socket could not be opened; the message names the address
    and, for the usual causes, what to do."""

    def __str__(self) -> str:
        return str(self.strerror)


def listen_error(where: str, exc: OSError, *, path: str | None = None) -> ListenError | None:
    """A :class:`ListenError` for failing to listen on *where* (a unix socket
    at *path*, if it is one) with *exc*, or None if *exc* says it all already."""
    if exc.errno == errno.EADDRINUSE:
        reason = "the address is already in use (is another server running there?)"
    elif exc.errno == errno.ENOENT and path is not None:
        reason = f"the directory {os.path.dirname(os.path.abspath(path))} does not exist"
    elif exc.errno in (errno.EACCES, errno.EPERM):
        hint = "the directory is not writable" if path else "ports below 1024 need privileges"
        reason = f"permission denied ({hint})"
    elif exc.errno == errno.EADDRNOTAVAIL:
        reason = "no interface of this host has that address"
    else:
        return None
    return ListenError(exc.errno, f"cannot listen on {where}: {reason}")


def exposed_address(family: int, sockname: object) -> str | None:
    """The address a socket of *family* bound to *sockname* listens on, as
    text, if other hosts can reach it (an IP address that is not loopback);
    otherwise None."""
    if family not in (socket.AF_INET, socket.AF_INET6) or not isinstance(sockname, tuple):
        return None
    host, port = sockname[0], sockname[1]
    address = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_loopback:
        return None
    return f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"


def protect_std_fds() -> None:
    """Reopen fds 1 and 2 on /dev/null if the process started with them closed.

    The FastCGI spec has web servers spawn applications with stdout and stderr
    closed. The next socket the process opens would then get fd 1 or 2, and a
    stray ``print()`` would write into the FastCGI stream and corrupt it.
    """
    for fd in (1, 2):
        try:
            os.fstat(fd)
        except OSError as exc:
            if exc.errno != errno.EBADF:
                raise
            null = os.open(os.devnull, os.O_WRONLY)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)


def unlink_stale_socket(path: str) -> None:
    """Remove *path* if it is a unix socket nobody listens on any more."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise FileExistsError(errno.EEXIST, "exists and is not a socket", path)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except OSError:
        os.unlink(path)  # nobody answered: a leftover of a dead process
    else:
        raise OSError(errno.EADDRINUSE, "another process is listening on", path)
    finally:
        probe.close()


def bind_unix_socket(
    path: str | os.PathLike[str], *, mode: int | None = None, backlog: int = DEFAULT_BACKLOG
) -> socket.socket:
    """A stdlib socket listening on a new unix socket file at *path*.

    A stale socket file left by a dead process is replaced; a live one, or a
    file that is not a socket, is an error. *mode* sets the file's permission
    bits (the web server's user needs write permission); None keeps the
    umask's.

    The file is created with no more permissions than *mode*: Linux gives the
    file that bind(2) creates the socket's own mode, less the umask, so the
    socket is given *mode* first (fchmod), and the chmod after bind only adds
    back what the umask took away. No umask change, which is process-wide and
    would race with other threads. Where fchmod does not carry over, nobody
    can connect before listen(2) anyway, which comes after the chmod.
    """
    path = os.fspath(path)
    if len(os.fsencode(path)) > MAX_UNIX_PATH:
        # Checked first: the stale-socket probe would fail on such a path and
        # take the file for stale.
        raise OSError(
            errno.ENAMETOOLONG,
            f"longer than the {MAX_UNIX_PATH} bytes a unix socket path may have",
            path,
        )
    unlink_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        if mode is not None:
            with contextlib.suppress(OSError):
                os.fchmod(sock.fileno(), mode)
        sock.bind(path)
        if mode is not None:
            os.chmod(path, mode)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


async def open_unix_listener(
    path: str | os.PathLike[str], *, mode: int | None = None, backlog: int | None = None
) -> trio.SocketListener:
    """Listen on a unix socket at *path*, created as :func:`bind_unix_socket` does.

    A stale socket file left by a dead process is replaced; a live one, or a
    file that is not a socket, is an error. *mode* sets the file's permission
    bits (the web server's user needs write permission); None keeps the
    umask's.
    """
    await trio.lowlevel.checkpoint()
    sock = bind_unix_socket(
        path, mode=mode, backlog=DEFAULT_BACKLOG if backlog is None else backlog
    )
    try:
        return trio.SocketListener(trio.socket.from_stdlib_socket(sock))
    except BaseException:
        sock.close()
        raise


def remove_socket_file(path: str | os.PathLike[str], inode: int) -> None:
    """Remove the socket file at *path* if it still is the one with *inode*
    (another server may have replaced it since)."""
    with contextlib.suppress(OSError):
        if os.lstat(path).st_ino == inode:
            os.unlink(path)


def inherited_listener(fd: int = FCGI_LISTENSOCK_FILENO) -> trio.SocketListener:
    """Wrap the listening socket (TCP or unix) that the parent left on *fd*.

    Raises:
      OSError: *fd* is not a socket (ENOTSOCK).
      ValueError: it is a socket but not a listening stream socket.
    """
    sock = socket.socket(fileno=fd)
    if sock.type != socket.SOCK_STREAM or not sock.getsockopt(
        socket.SOL_SOCKET, socket.SO_ACCEPTCONN
    ):
        sock.detach()
        raise ValueError(f"fd {fd} is not a listening stream socket")
    return trio.SocketListener(trio.socket.from_stdlib_socket(sock))
