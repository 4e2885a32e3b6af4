"""The least a FastCGI hello needs, shared by the floor backends (floor_*.py).

Not a library: no limits, no error handling, no roles, no management records.
It parses the records nginx sends (BEGIN_REQUEST, PARAMS, STDIN, ABORT_REQUEST),
keeps only the path, counts the body, and encodes the answer of the routes in
common.py as STDOUT records and an END_REQUEST. Each floor backend wraps this in
a different I/O shape, so their differences are the cost of the shape alone.
"""

from __future__ import annotations

import argparse
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio
from common import CHUNK, CHUNKS_PER_MIB, HELLO, ONE_MIB, cgi_head, headers_for

BEGIN_REQUEST, ABORT_REQUEST, END_REQUEST, PARAMS, STDIN, STDOUT = 1, 2, 3, 4, 5, 6
KEEP_CONN = 1
HEADER = struct.Struct("!BBHHBx")
#: Largest STDOUT content per record: a multiple of 8, so no padding is needed.
MAX_CONTENT = 65528

HELLO_ANSWER = cgi_head(200, headers_for(len(HELLO))) + HELLO
ONE_MIB_HEAD = cgi_head(200, headers_for(len(ONE_MIB)))
NOT_FOUND = cgi_head(404, headers_for(0))


@dataclass
class Pending:
    """One request being received: its path, body size and keep-connection flag."""

    keep: bool
    params: bytearray = field(default_factory=bytearray)
    path: bytes = b""
    body_size: int = 0


@dataclass
class Done:
    """A request whose STDIN has ended: ready to be answered."""

    request_id: int
    keep: bool
    path: bytes
    body_size: int


class Parser:
    """Feed bytes, get completed requests (and aborted ids) back."""

    def __init__(self) -> None:
        self.buffer = b""
        self.pending: dict[int, Pending] = {}

    def feed(self, data: bytes) -> tuple[list[Done], list[int]]:
        buffer = self.buffer + data if self.buffer else data
        done: list[Done] = []
        aborted: list[int] = []
        pos = 0
        end = len(buffer)
        while end - pos >= 8:
            _, kind, rid, length, padding = HEADER.unpack_from(buffer, pos)
            stop = pos + 8 + length
            if stop + padding > end:
                break
            if kind == STDIN:
                pending = self.pending[rid]
                if length:
                    pending.body_size += length
                else:
                    del self.pending[rid]
                    done.append(Done(rid, pending.keep, pending.path, pending.body_size))
            elif kind == PARAMS:
                pending = self.pending[rid]
                if length:
                    pending.params += buffer[pos + 8 : stop]
                else:
                    pending.path = find_path(bytes(pending.params))
            elif kind == BEGIN_REQUEST:
                self.pending[rid] = Pending(bool(buffer[pos + 10] & KEEP_CONN))
            elif kind == ABORT_REQUEST:
                self.pending.pop(rid, None)
                aborted.append(rid)
            pos = stop + padding
        self.buffer = buffer[pos:]
        return done, aborted


def find_path(params: bytes) -> bytes:
    """PATH_INFO (or DOCUMENT_URI) from the name-value pairs."""
    pos = 0
    found = b""
    while pos < len(params):
        sizes = []
        for _ in range(2):
            if params[pos] < 128:
                sizes.append(params[pos])
                pos += 1
            else:
                sizes.append(int.from_bytes(params[pos : pos + 4], "big") & 0x7FFFFFFF)
                pos += 4
        name = params[pos : pos + sizes[0]]
        value = params[pos + sizes[0] : pos + sizes[0] + sizes[1]]
        pos += sizes[0] + sizes[1]
        if name == b"PATH_INFO":
            return value
        if name == b"DOCUMENT_URI":
            found = value
    return found


def stdout_records(rid: int, data: bytes) -> list[bytes]:
    out = []
    for start in range(0, len(data), MAX_CONTENT):
        piece = data[start : start + MAX_CONTENT]
        out.append(HEADER.pack(1, STDOUT, rid, len(piece), 0))
        out.append(piece)
    return out


def end_records(rid: int) -> bytes:
    """The empty STDOUT closing the stream, then END_REQUEST (status 0, complete)."""
    return HEADER.pack(1, STDOUT, rid, 0, 0) + HEADER.pack(1, END_REQUEST, rid, 8, 0) + bytes(8)


def answer(request: Done) -> bytes:
    """Every record of the answer to *request*, END_REQUEST included."""
    rid = request.request_id
    if request.path == b"/hello":
        parts = stdout_records(rid, HELLO_ANSWER)
    elif request.path == b"/1m":
        parts = stdout_records(rid, ONE_MIB_HEAD)
        for _ in range(CHUNKS_PER_MIB):
            parts += stdout_records(rid, CHUNK)
    elif request.path == b"/post":
        body = str(request.body_size).encode()
        parts = stdout_records(rid, cgi_head(200, headers_for(len(body))) + body)
    else:
        parts = stdout_records(rid, NOT_FOUND)
    parts.append(end_records(rid))
    return b"".join(parts)


def abort_answer(rid: int) -> bytes:
    return HEADER.pack(1, END_REQUEST, rid, 8, 0) + bytes(8)


async def serve_trio(
    connection: Callable[[trio.socket.SocketType], Awaitable[None]], args: argparse.Namespace
) -> None:
    """Accept on the run's address for ever, one ``connection(sock)`` task each."""
    listener = trio.socket.socket()
    listener.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEADDR, 1)
    await listener.bind((args.host, args.port))
    listener.listen(4096)
    async with trio.open_nursery() as nursery:
        while True:
            sock, _ = await listener.accept()
            nursery.start_soon(connection, sock)
