"""The byte I/O under a served connection: a socket driven directly, or any stream.

Trio's :class:`trio.SocketStream` wraps every call in a conflict detector, an
error-translating context manager and a full checkpoint; for a FastCGI request
of a few hundred bytes those cost more than the system calls themselves. A
connection on a real socket therefore owns a plain non-blocking
:class:`socket.socket` and waits with :func:`trio.lowlevel.wait_readable` /
:func:`~trio.lowlevel.wait_writable` only when the kernel says it would block.
Any other stream (memory streams in tests, TLS, your own) goes through its
methods unchanged.

Both kinds raise :class:`trio.BrokenResourceError` when the connection fails.
Only one task may receive and one task may send at a time (the connection's
reader and writer), which is what lets the socket path skip trio's checks.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar, final

import trio

_T = TypeVar("_T")

#: A receive (or accept) that succeeds without waiting is not a schedule point,
#: so a peer that keeps the socket full could starve other tasks: every this
#: many such calls in a row, the caller yields anyway.
EAGER_CALLS_PER_YIELD: Final = 16

#: Pieces handed to one sendmsg(2); Linux takes at most 1,024 (IOV_MAX).
MAX_PARTS_PER_SEND: Final = 512

# accept(2) errors that concern only the connection being accepted (it was
# reset or refused on the way), as in trio's SocketListener: try the next one.
_SKIPPABLE_ACCEPT_ERRNOS: Final = frozenset(
    getattr(errno, name)
    for name in (
        "EPERM",
        "ECONNABORTED",
        "EPROTO",
        "ENETDOWN",
        "ENOPROTOOPT",
        "EHOSTDOWN",
        "ENONET",
        "EHOSTUNREACH",
        "EOPNOTSUPP",
        "ENETUNREACH",
        "ENOSR",
        "ESOCKTNOSUPPORT",
        "EPROTONOSUPPORT",
        "ETIMEDOUT",
        "ECONNRESET",
    )
    if hasattr(errno, name)
)
_INET_FAMILIES: Final = (socket.AF_INET, socket.AF_INET6)


def close_socket(sock: socket.socket) -> None:
    """Close *sock* (if still open) the way trio wants: waiters woken first."""
    if sock.fileno() != -1:
        trio.lowlevel.notify_closing(sock)
        sock.close()


def _prepare(sock: socket.socket) -> socket.socket:
    sock.setblocking(False)
    if sock.family in _INET_FAMILIES:
        # Responses leave in one send each; streamed ones must not wait for ACKs.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class WriteTimeout(trio.BrokenResourceError):
    """The peer took none of our output for the transport's write_timeout."""


@final
class Transport:
    """Receive, send, half-close and close for one connection.

    A send that cannot make progress for ``write_timeout`` seconds (the peer
    stopped reading) raises :class:`WriteTimeout`.
    """

    __slots__ = ("_eager", "_sock", "_stream", "peer", "write_timeout")

    def __init__(
        self,
        sock: socket.socket | None = None,
        stream: trio.abc.Stream | None = None,
        peer: object = None,
    ) -> None:
        self._sock = sock
        self._stream = stream
        self._eager = 0
        #: The peer's address as accept(2) gave it, if known.
        self.peer = peer
        #: Seconds a send may wait for the peer to take data; None: forever.
        self.write_timeout: float | None = None

    @classmethod
    def from_socket(cls, sock: socket.socket, peer: object = None) -> Transport:
        """Own a connected stream socket (made non-blocking here)."""
        return cls(sock=_prepare(sock), peer=peer)

    @classmethod
    def from_stream(cls, stream: trio.abc.Stream) -> Transport:
        """Drive *stream*; a plain :class:`trio.SocketStream` gives up its socket."""
        if type(stream) is trio.SocketStream:
            trio_sock = stream.socket
            family, type_, proto = trio_sock.family, trio_sock.type, trio_sock.proto
            sock = socket.socket(family, type_, proto, fileno=trio_sock.detach())
            return cls.from_socket(sock)
        return cls(stream=stream)

    @property
    def socket(self) -> socket.socket | None:
        """The socket driven directly, or None for a generic stream."""
        return self._sock

    async def receive_some(self, max_bytes: int) -> bytes:
        """Some bytes, or ``b""`` at end of file."""
        sock = self._sock
        if sock is None:
            assert self._stream is not None
            return bytes(await self._stream.receive_some(max_bytes))
        try:
            data = sock.recv(max_bytes)
        except BlockingIOError:
            pass
        except OSError as exc:
            raise trio.BrokenResourceError(exc) from exc
        else:
            self._eager += 1
            if self._eager >= EAGER_CALLS_PER_YIELD:
                self._eager = 0
                await trio.lowlevel.checkpoint()
            return data
        self._eager = 0
        while True:
            await trio.lowlevel.wait_readable(sock)
            try:
                return sock.recv(max_bytes)
            except BlockingIOError:
                continue
            except OSError as exc:
                raise trio.BrokenResourceError(exc) from exc

    async def send_all(self, data: bytes) -> None:
        """Send all of *data*; waits only while the kernel's buffer is full."""
        sock = self._sock
        if sock is None:
            await self._within_write_timeout(self._stream_send_all, data)
            return
        try:
            sent = sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            raise trio.BrokenResourceError(exc) from exc
        if sent < len(data):
            await self.send_parts([memoryview(data)[sent:]])

    async def send_parts(self, parts: list[bytes | memoryview]) -> None:
        """Send the concatenation of *parts* (consumed) without joining them
        first: one scatter-gather write per wait on a socket."""
        sock = self._sock
        if sock is None:
            payload = b"".join(parts)
            parts.clear()
            await self._within_write_timeout(self._stream_send_all, payload)
            return
        try:
            while parts:
                try:
                    sent = sock.sendmsg(parts[:MAX_PARTS_PER_SEND])
                except BlockingIOError:
                    sent = 0
                done = 0
                while done < len(parts) and sent >= len(parts[done]):
                    sent -= len(parts[done])
                    done += 1
                del parts[:done]
                if parts:
                    if sent:
                        parts[0] = memoryview(parts[0])[sent:]
                    # Only this slow path (the kernel's buffer is full) pays
                    # for the timeout's cancel scope.
                    await self._within_write_timeout(trio.lowlevel.wait_writable, sock)
        except OSError as exc:
            raise trio.BrokenResourceError(exc) from exc

    async def _stream_send_all(self, data: bytes) -> None:
        assert self._stream is not None
        await self._stream.send_all(data)

    async def _within_write_timeout(
        self, wait: Callable[[_T], Awaitable[None]], argument: _T
    ) -> None:
        """``await wait(argument)``, a send or a wait for room;
        :class:`WriteTimeout` if it takes longer than write_timeout. A generic
        stream cannot say when it would block, so its whole send is bounded,
        which comes to the same for a peer that stopped reading."""
        if self.write_timeout is None:
            await wait(argument)
            return
        with trio.move_on_after(self.write_timeout):
            await wait(argument)
            return
        raise WriteTimeout(f"the peer took no data for {self.write_timeout:g} s")

    async def send_eof(self) -> bool:
        """Half-close; False if the stream cannot do that."""
        sock = self._sock
        if sock is None:
            stream = self._stream
            if not isinstance(stream, trio.abc.HalfCloseableStream):
                return False
            await stream.send_eof()
            return True
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            raise trio.BrokenResourceError(exc) from exc
        return True

    async def close(self) -> None:
        """Close the connection (at once: no task may be using it any more)."""
        sock = self._sock
        if sock is None:
            assert self._stream is not None
            await trio.aclose_forcefully(self._stream)
            return
        close_socket(sock)


@final
class Acceptor:
    """Accepts connections straight from a :class:`trio.SocketListener`'s socket.

    It works on a duplicate of the listening socket: closing it leaves the
    listener open, and closing the listener does not close it.
    """

    __slots__ = ("_eager", "_sock")

    def __init__(self, listener: trio.SocketListener) -> None:
        listening = listener.socket
        self._sock = socket.socket(
            listening.family, listening.type, listening.proto, fileno=os.dup(listening.fileno())
        )
        self._sock.setblocking(False)
        self._eager = 0

    async def accept(self) -> Transport:
        """The next connection; waits while there is none.

        Connections that failed on the way in are skipped; other errors (out of
        file descriptors, ...) are raised.
        """
        sock = self._sock
        while True:
            try:
                connection, peer = sock.accept()
            except BlockingIOError:
                self._eager = 0
                await trio.lowlevel.wait_readable(sock)
                continue
            except OSError as exc:
                if exc.errno not in _SKIPPABLE_ACCEPT_ERRNOS:
                    raise
                continue
            try:
                transport = Transport.from_socket(connection, peer)
            except OSError:
                connection.close()  # reset before we could set it up
                continue
            self._eager += 1
            if self._eager >= EAGER_CALLS_PER_YIELD:
                self._eager = 0
                await trio.lowlevel.checkpoint()
            return transport

    def close(self) -> None:
        """Close the duplicate listening socket."""
        close_socket(self._sock)
