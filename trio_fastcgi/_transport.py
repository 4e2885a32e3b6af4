"""The byte I/O under a served connection: a socket driven directly, or any stream.

Trio's :class:`trio.SocketStream` wraps every call in a conflict detector, an
error-translating context manager and a full checkpoint; for a FastCGI request
of a few hundred bytes those cost more than the system calls themselves. A
connection on a real socket therefore owns a plain non-blocking
:class:`socket.socket` (:class:`SocketTransport`) and waits with
:func:`trio.lowlevel.wait_readable` / :func:`~trio.lowlevel.wait_writable` only
when the kernel says it would block (or, for a receive, when the last read
took less than it could: the socket was empty then, and the recv(2) that
would say so is skipped). Any other stream (memory streams in tests,
TLS, your own) goes through its methods unchanged (:class:`StreamTransport`).

Timeouts belong to the waits: :meth:`Transport.receive_some` takes the
:class:`~._alarm.Alarm` that bounds its wait by the connection's deadline, and
a send that can make no progress for ``write_timeout`` seconds fails. A scope
is opened only around an actual wait, so a receive that timed out has received
nothing, and bytes that were received are always returned.

Both kinds raise :class:`trio.BrokenResourceError` when the connection fails.
Only one task may receive and one task may send at a time (the connection's
reader and writer), which is what lets the socket path skip trio's checks.
"""

from __future__ import annotations

import abc
import errno
import os
import socket
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final, TypeVar, final

import trio

from ._compiled import mypyc_attr

if TYPE_CHECKING:
    from ._alarm import Alarm

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


class WriteTimeout(trio.BrokenResourceError):
    """The peer took none of our output for the transport's write_timeout."""


# Tests drive the writer through transports of their own.
@mypyc_attr(allow_interpreted_subclasses=True)
class Transport(abc.ABC):
    """Receive, send, half-close and close for one connection.

    A send that cannot make progress for :attr:`write_timeout` seconds (the
    peer stopped reading) raises :class:`WriteTimeout`.
    """

    __slots__ = ("peer", "write_timeout")

    def __init__(self, peer: object = None) -> None:
        #: The peer's address as accept(2) gave it, if known.
        self.peer = peer
        #: Seconds a send may wait for the peer to take data; None: forever.
        self.write_timeout: float | None = None

    @property
    def socket(self) -> socket.socket | None:
        """The socket driven directly, or None for a generic stream."""
        return None

    @abc.abstractmethod
    async def receive_some(self, max_bytes: int, alarm: Alarm | None = None) -> bytes:
        """Some bytes, ``b""`` at end of file. If it must wait, *alarm*
        watches the wait: when it rings, the wait is cancelled (through the
        alarm's scope) and nothing was received."""

    @abc.abstractmethod
    async def send_all(self, data: bytes) -> None:
        """Send all of *data*."""

    @abc.abstractmethod
    async def send_parts(self, parts: list[bytes | memoryview]) -> None:
        """Send the concatenation of *parts* (the list is consumed)."""

    @abc.abstractmethod
    def send_nowait(self, parts: list[bytes | memoryview]) -> None:
        """Send as much of *parts* as can go without waiting, and remove what
        was sent from the list. Not a checkpoint."""

    @abc.abstractmethod
    async def send_eof(self) -> bool:
        """Half-close; False if the stream cannot do that."""

    def send_eof_nowait(self) -> bool | None:
        """Half-close if that needs no wait, as :meth:`send_eof`; None if it
        would have to wait (nothing was done). Not a checkpoint."""
        return None

    @abc.abstractmethod
    async def close(self) -> None:
        """Close the connection (at once: no task may be using it any more)."""

    async def _within_write_timeout(
        self, wait: Callable[[_T], Awaitable[None]], argument: _T
    ) -> None:
        """``await wait(argument)``, a send or a wait for room;
        :class:`WriteTimeout` if it takes longer than write_timeout."""
        if self.write_timeout is None:
            await wait(argument)
            return
        with trio.move_on_after(self.write_timeout):
            await wait(argument)
            return
        raise WriteTimeout(f"the peer took no data for {self.write_timeout:g} s")


@final
class SocketTransport(Transport):
    """A connected stream socket, driven directly (made non-blocking here)."""

    __slots__ = ("_drained", "_eager", "_sock")

    def __init__(
        self, sock: socket.socket, peer: object = None, *, tcp: bool | None = None
    ) -> None:
        """*tcp*: whether *sock* is a TCP socket, if the caller knows (an
        acceptor knows its listener's family: ``sock.family`` costs as much as
        the rest of this); None: ask the socket."""
        super().__init__(peer)
        sock.setblocking(False)
        if tcp is None:
            tcp = sock.family in _INET_FAMILIES
        if tcp:
            # Responses leave in one send each; streamed ones must not wait for ACKs.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock
        self._eager = 0
        self._drained = False

    @property
    def socket(self) -> socket.socket:
        """The socket."""
        return self._sock

    async def receive_some(self, max_bytes: int, alarm: Alarm | None = None) -> bytes:
        sock = self._sock
        if not self._drained:
            try:
                data = sock.recv(max_bytes)
            except BlockingIOError:
                pass
            except OSError as exc:
                raise trio.BrokenResourceError(exc) from exc
            else:
                self._drained = len(data) < max_bytes
                self._eager += 1
                if self._eager >= EAGER_CALLS_PER_YIELD:
                    self._eager = 0
                    await trio.lowlevel.checkpoint()
                return data
        # The socket is empty, or was at the last receive, which took less
        # than it could: then no recv(2) is tried that would fail (input
        # that came meanwhile is reported by the wait at once).
        self._eager = 0
        # Cancellation can only strike inside wait_readable, before recv: a
        # receive that timed out has taken nothing from the socket.
        if alarm is not None:
            alarm.watch()
        try:
            while True:
                await trio.lowlevel.wait_readable(sock)
                try:
                    data = sock.recv(max_bytes)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    raise trio.BrokenResourceError(exc) from exc
                self._drained = len(data) < max_bytes
                return data
        finally:
            if alarm is not None:
                alarm.unwatch()

    async def send_all(self, data: bytes) -> None:
        """Send all of *data*; waits only while the kernel's buffer is full."""
        try:
            sent = self._sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            raise trio.BrokenResourceError(exc) from exc
        if sent < len(data):
            await self.send_parts([memoryview(data)[sent:]])

    def send_nowait(self, parts: list[bytes | memoryview]) -> None:
        """One send(2) (or sendmsg(2) for several pieces) that does not wait."""
        sock = self._sock
        try:
            if len(parts) == 1:
                sent = sock.send(parts[0])
            else:
                sent = sock.sendmsg(parts[:MAX_PARTS_PER_SEND])
        except BlockingIOError:
            return
        except OSError as exc:
            raise trio.BrokenResourceError(exc) from exc
        _consume(parts, sent)

    async def send_parts(self, parts: list[bytes | memoryview]) -> None:
        """Send the concatenation of *parts* (consumed) without joining them
        first: one scatter-gather write per wait."""
        sock = self._sock
        while True:
            self.send_nowait(parts)
            if not parts:
                return
            # Only this slow path (the kernel's buffer is full) pays for the
            # timeout's cancel scope.
            try:
                await self._within_write_timeout(trio.lowlevel.wait_writable, sock)
            except OSError as exc:
                raise trio.BrokenResourceError(exc) from exc

    async def send_eof(self) -> bool:
        return self.send_eof_nowait()

    def send_eof_nowait(self) -> bool:
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            raise trio.BrokenResourceError(exc) from exc
        return True

    async def close(self) -> None:
        close_socket(self._sock)


@final
class StreamTransport(Transport):
    """Any :class:`trio.abc.Stream`, through its own methods. It cannot say
    when it would block, so each whole send is bounded by write_timeout, which
    comes to the same for a peer that stopped reading."""

    __slots__ = ("_stream",)

    def __init__(self, stream: trio.abc.Stream) -> None:
        super().__init__()
        self._stream = stream

    async def receive_some(self, max_bytes: int, alarm: Alarm | None = None) -> bytes:
        # trio's streams take nothing from their buffer when a receive is
        # cancelled, so a receive that timed out has received nothing.
        if alarm is None:
            return bytes(await self._stream.receive_some(max_bytes))
        alarm.watch()
        try:
            return bytes(await self._stream.receive_some(max_bytes))
        finally:
            alarm.unwatch()

    def send_nowait(self, parts: list[bytes | memoryview]) -> None:
        """Sends nothing: a stream cannot tell whether a send would block."""

    async def send_all(self, data: bytes) -> None:
        await self._within_write_timeout(self._stream.send_all, data)

    async def send_parts(self, parts: list[bytes | memoryview]) -> None:
        payload = b"".join(parts)
        parts.clear()
        await self.send_all(payload)

    async def send_eof(self) -> bool:
        stream = self._stream
        if not isinstance(stream, trio.abc.HalfCloseableStream):
            return False
        await stream.send_eof()
        return True

    async def close(self) -> None:
        await trio.aclose_forcefully(self._stream)


def _consume(parts: list[bytes | memoryview], sent: int) -> None:
    """Remove the first *sent* bytes from *parts*."""
    done = 0
    while done < len(parts) and sent >= len(parts[done]):
        sent -= len(parts[done])
        done += 1
    del parts[:done]
    if sent:
        parts[0] = memoryview(parts[0])[sent:]


def open_transport(stream: trio.abc.Stream, *, borrow: bool = False) -> Transport:
    """Drive *stream*: a plain :class:`trio.SocketStream` directly, through its
    socket, which it gives up; with *borrow*, through a duplicate of the
    socket's file descriptor, so the stream stays usable (whoever borrowed
    closes the transport, then the stream). Any other stream through its own
    methods."""
    if type(stream) is trio.SocketStream:
        trio_sock = stream.socket
        fileno = os.dup(trio_sock.fileno()) if borrow else trio_sock.detach()
        family, type_, proto = trio_sock.family, trio_sock.type, trio_sock.proto
        return SocketTransport(socket.socket(family, type_, proto, fileno=fileno))
    return StreamTransport(stream)


@final
class Acceptor:
    """Accepts connections straight from a :class:`trio.SocketListener`'s socket.

    It works on a duplicate of the listening socket: closing it leaves the
    listener open, and closing the listener does not close it.
    """

    __slots__ = ("_eager", "_sock", "_tcp")

    def __init__(self, listener: trio.SocketListener) -> None:
        listening = listener.socket
        self._sock = socket.socket(
            listening.family, listening.type, listening.proto, fileno=os.dup(listening.fileno())
        )
        self._sock.setblocking(False)
        self._tcp = listening.family in _INET_FAMILIES
        self._eager = 0

    async def accept(self) -> SocketTransport:
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
                transport = SocketTransport(connection, peer, tcp=self._tcp)
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
