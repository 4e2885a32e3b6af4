"""A bounded byte buffer between two tasks: one puts chunks in, one takes bytes out.

It knows how received bytes wait for their reader: a producer that gets ahead
waits for room (backpressure), a reader with nothing to read waits for data or
the end. The streams built on it (the client's
:class:`~trio_fastcgi.client.ResponseStream`) keep their own rules on top:
which errors to raise, and who may read at once.
"""

from __future__ import annotations

from collections import deque
from typing import final

import trio


@final
class ByteBuffer:
    """Chunks of bytes in arrival order, bounded by *max_size* bytes.

    There is room for *n* more bytes while the buffer is empty or the *n*
    bytes fit within *max_size*; so a chunk larger than *max_size* is still
    taken, whole, by an empty buffer. Chunks are stored as given, never copied
    on the way in.

    The producer calls :meth:`append` (which never waits) and
    :meth:`wait_room_for` (which does), and ends with :meth:`put_eof`, or with
    :meth:`break_off` if it fails. It may wait before adding
    (``await wait_room_for(len(data)); append(data)``: never over the bound
    but for one chunk in an empty buffer) or after (``append(data); await
    wait_room_for()``: the reader sees the chunk at once, and the buffer may
    go over by that one chunk). The consumer calls :meth:`wait_readable`
    (or :meth:`wait_full_or_ended`, to read everything in few large takes)
    and :meth:`take`, and :meth:`discard` or :meth:`close` once it stops
    reading. Neither side is guarded against concurrent use: the stream on
    top decides who may read.
    """

    __slots__ = (
        "_broken_off",
        "_bulk",
        "_chunks",
        "_closed",
        "_discarding",
        "_eof",
        "_producer_waiting",
        "_readable",
        "_size",
        "_writable",
        "max_size",
    )

    def __init__(self, max_size: int) -> None:
        if max_size < 1:
            raise ValueError(f"max_size must be at least 1, not {max_size!r}")
        #: Bytes the buffer holds before :meth:`room_for` says no.
        self.max_size: int = max_size
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._eof = False
        self._broken_off = False
        self._discarding = False
        self._closed = False
        # A consumer waits in wait_full_or_ended; the producer waits for room.
        self._bulk = False
        self._producer_waiting = False
        # Made when a side first waits: most request bodies never make one.
        self._readable: trio.lowlevel.ParkingLot | None = None
        self._writable: trio.lowlevel.ParkingLot | None = None

    def __repr__(self) -> str:
        return f"<ByteBuffer {self._size}/{self.max_size} bytes{' eof' if self._eof else ''}>"

    @property
    def size(self) -> int:
        """Bytes buffered and not taken yet."""
        return self._size

    @property
    def at_eof(self) -> bool:
        """True once the producer ended the stream with :meth:`put_eof`."""
        return self._eof

    @property
    def ended(self) -> bool:
        """True once nothing more will be added: :meth:`put_eof` or :meth:`break_off`."""
        return self._eof or self._broken_off

    @property
    def discarding(self) -> bool:
        """True once the consumer called :meth:`discard` or :meth:`close`."""
        return self._discarding

    @property
    def closed(self) -> bool:
        """True once the consumer called :meth:`close`."""
        return self._closed

    # -- the producer's side -----------------------------------------------------

    def room_for(self, nbytes: int = 0) -> bool:
        """Whether *nbytes* more may be added without going over :attr:`max_size`.

        Always true for an empty buffer (so while discarding, which keeps it
        empty) and after :meth:`break_off` (later bytes are dropped anyway).
        """
        size = self._size
        return size == 0 or size + nbytes <= self.max_size or self._broken_off

    def append(self, data: bytes) -> None:
        """Add *data* now, even past :attr:`max_size` (pair it with
        :meth:`wait_room_for`). Dropped once discarding or broken off; ``b""``
        adds nothing (it does not end the stream: see :meth:`put_eof`).

        Raises:
          RuntimeError: after :meth:`put_eof`.
        """
        if self._eof:
            raise RuntimeError("append() after put_eof()")
        if not data or self._discarding or self._broken_off:
            return
        self._chunks.append(data)
        self._size += len(data)
        if self._readable and not self._bulk:
            self._readable.unpark_all()

    async def wait_room_for(self, nbytes: int = 0) -> None:
        """Wait until :meth:`room_for` *nbytes* is true; no checkpoint if it is already.

        With the default ``0``, after an :meth:`append`: wait until the
        consumer has brought the buffer back within :attr:`max_size`.
        """
        while not self.room_for(nbytes):
            # Nothing more comes until bytes are taken: a consumer waiting for
            # a full buffer takes them now.
            self._producer_waiting = True
            if self._readable:
                self._readable.unpark_all()
            try:
                await self._producer_lot().park()
            finally:
                self._producer_waiting = False

    def put_eof(self) -> None:
        """End the stream: once the buffered bytes are taken, :meth:`take` gives
        ``b""`` and :attr:`at_eof` is true. Ignored after :meth:`break_off`."""
        if self._broken_off:
            return
        self._eof = True
        self._wake_both()

    def break_off(self) -> None:
        """End the stream without an EOF (the producer failed): what is buffered
        can still be taken, later bytes are dropped, and both sides wake up."""
        self._broken_off = True
        self._wake_both()

    # -- the consumer's side -----------------------------------------------------

    async def wait_readable(self) -> None:
        """Wait until there are bytes to take, the stream has ended, or the buffer
        was closed; no checkpoint if that is already so."""
        while not (self._chunks or self._eof or self._broken_off or self._closed):
            await self._consumer_lot().park()

    @property
    def full_or_ended(self) -> bool:
        """True once the stream ended, or the producer waits for room with bytes
        buffered (nothing more comes until they are taken), or the buffer was
        closed. An empty buffer that has not ended is never full or ended."""
        return (
            self._eof
            or self._broken_off
            or self._closed
            or (self._producer_waiting and self._size > 0)
        )

    async def wait_full_or_ended(self) -> None:
        """Wait until :attr:`full_or_ended`; no checkpoint if that is already so.
        Unlike :meth:`wait_readable`, chunks arriving meanwhile do not wake the
        consumer: one wake-up per buffer-full, for a consumer that reads it all."""
        self._bulk = True
        try:
            while not self.full_or_ended:
                await self._consumer_lot().park()
        finally:
            self._bulk = False

    def take(self, max_bytes: int | None = None, *, coalesce: bool = False) -> bytes:
        """The oldest chunk, or its first *max_bytes* (the rest stays first in
        line); ``b""`` when nothing is buffered. Never waits.

        With *coalesce*, the chunks after it too, joined, as long as they fit
        whole within *max_bytes* (all of them if it is None): fewer, larger
        reads, at the cost of a copy.
        """
        chunks = self._chunks
        if not chunks:
            return b""
        data = chunks.popleft()
        if max_bytes is not None and len(data) > max_bytes:
            chunks.appendleft(data[max_bytes:])
            data = data[:max_bytes]
        elif coalesce and chunks:
            parts = [data]
            size = len(data)
            while chunks and (max_bytes is None or size + len(chunks[0]) <= max_bytes):
                parts.append(chunks.popleft())
                size += len(parts[-1])
            data = b"".join(parts)
        self._size -= len(data)
        if self._writable:
            self._writable.unpark_all()
        return data

    def discard(self) -> None:
        """Drop what is buffered and everything added later (nobody will read
        it); a waiting producer goes on at once."""
        self._discarding = True
        self._chunks.clear()
        self._size = 0
        if self._writable:
            self._writable.unpark_all()

    def close(self) -> None:
        """:meth:`discard`, and wake a waiting :meth:`wait_readable` (its stream
        was closed under it: the stream then raises what it raises)."""
        self._closed = True
        self.discard()
        if self._readable:
            self._readable.unpark_all()

    def _consumer_lot(self) -> trio.lowlevel.ParkingLot:
        if self._readable is None:
            self._readable = trio.lowlevel.ParkingLot()
        return self._readable

    def _producer_lot(self) -> trio.lowlevel.ParkingLot:
        if self._writable is None:
            self._writable = trio.lowlevel.ParkingLot()
        return self._writable

    def _wake_both(self) -> None:
        if self._readable:
            self._readable.unpark_all()
        if self._writable:
            self._writable.unpark_all()
