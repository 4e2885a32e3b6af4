"""Harness of the end-to-end tests: the application served in-process, a
record tap that shows what a web server really sent, and real web server
processes run from the templates in docs/deploy/."""

from __future__ import annotations

import hashlib
import os
import random
import struct
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import httpx
import trio

import trio_fastcgi
from tests.integration.apps.echo import CONNECTION_ID, EchoApp
from tests.integration.procs import ManagedProcess, wait_for_tcp

REPO_ROOT = Path(__file__).resolve().parents[2]
IS_ROOT = os.geteuid() == 0


async def serve_app_tcp(nursery: trio.Nursery, app: EchoApp, **options: object) -> int:
    """Serve *app* with :func:`trio_fastcgi.serve_tcp` on a free loopback port."""
    listeners = await nursery.start(
        partial(trio_fastcgi.serve_tcp, app, 0, host="127.0.0.1", **options)  # type: ignore[arg-type]
    )
    return int(listeners[0].socket.getsockname()[1])


@dataclass
class RecordInfo:
    """One FastCGI record seen on the wire (content kept for management and
    BEGIN/ABORT/END records only)."""

    type: int
    request_id: int
    content: bytes


@dataclass
class _Scanner:
    """Splits a byte stream into record headers without buffering bodies."""

    records: list[RecordInfo]
    _header: bytes = b""
    _keep: bytearray | None = None
    _left: int = 0
    _padding: int = 0
    _current: RecordInfo | None = None

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self._current is None:
                need = 8 - len(self._header)
                self._header += bytes(view[:need])
                view = view[need:]
                if len(self._header) < 8:
                    return
                version, rtype, rid, length, padding = struct.unpack(">BBHHBx", self._header)
                assert version == 1, f"bad FastCGI version byte {version}"
                self._header = b""
                self._current = RecordInfo(rtype, rid, b"")
                self._keep = bytearray() if rid == 0 or rtype in (1, 2, 3) else None
                self._left, self._padding = length, padding
            take = min(self._left + self._padding, len(view))
            if self._keep is not None and self._left:
                self._keep += view[: min(take, self._left)]
            consumed_content = min(take, self._left)
            self._left -= consumed_content
            self._padding -= take - consumed_content
            view = view[take:]
            if self._left == 0 and self._padding == 0:
                if self._keep is not None:
                    self._current.content = bytes(self._keep)
                self.records.append(self._current)
                self._current = None


@dataclass
class Wire:
    """Records each side sent on every tapped connection."""

    from_server: list[RecordInfo] = field(default_factory=list)
    from_app: list[RecordInfo] = field(default_factory=list)

    def types_from_server(self) -> set[int]:
        return {record.type for record in self.from_server}


class RecordTap(trio.abc.HalfCloseableStream):
    """Passes a socket stream through, noting every FastCGI record header."""

    def __init__(self, stream: trio.SocketStream, wire: Wire) -> None:
        self._stream = stream
        self._in = _Scanner(wire.from_server)
        self._out = _Scanner(wire.from_app)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        data = await self._stream.receive_some(max_bytes)
        self._in.feed(data)
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)
        self._out.feed(bytes(data))

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self._stream.send_eof()

    async def aclose(self) -> None:
        await self._stream.aclose()


@dataclass
class Served:
    port: int
    connections: int = 0
    wire: Wire = field(default_factory=Wire)


async def serve_app_counted(
    nursery: trio.Nursery, app: EchoApp, *, tap: bool = False, **options: object
) -> Served:
    """Serve *app* with :func:`trio_fastcgi.serve_connection` behind our own
    accept loop, counting connections (and with *tap*, recording records)."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    served = Served(port=int(listeners[0].socket.getsockname()[1]))

    async def on_connection(stream: trio.SocketStream) -> None:
        served.connections += 1
        CONNECTION_ID.set(served.connections)
        wrapped: trio.abc.Stream = RecordTap(stream, served.wire) if tap else stream
        await trio_fastcgi.serve_connection(app, wrapped, **options)  # type: ignore[arg-type]

    await nursery.start(trio.serve_listeners, on_connection, listeners)
    return served


@asynccontextmanager
async def running(
    argv: Sequence[str],
    *,
    port: int,
    log_path: Path,
    env: dict[str, str] | None = None,
) -> AsyncIterator[ManagedProcess]:
    """Run a web server in the foreground until the block ends; stop it by PID."""
    process = ManagedProcess(argv, log_path=log_path, env=env)
    try:
        try:
            await trio.to_thread.run_sync(partial(wait_for_tcp, port, process=process.process))
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"{argv[0]} did not start: {exc}\n{process.log()}") from exc
        yield process
    finally:
        await trio.to_thread.run_sync(process.stop)


def http_client(port: int, **kwargs: object) -> httpx.AsyncClient:
    """An HTTP client for the web server on 127.0.0.1:*port*."""
    return httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}",
        timeout=30.0,
        **kwargs,  # type: ignore[arg-type]
    )


async def upload_2mb(client: httpx.AsyncClient) -> None:
    """A 2 MB multipart form posted to ``/upload`` arrives whole: the app
    (Django's and Flask's test apps) answers the field, the file's name, size
    and SHA-256."""
    data = random.Random(13).randbytes(2 * 1024 * 1024 + 17)
    answer = await client.post(
        "/upload",
        data={"name": "fixture"},
        files={"file": ("blob.bin", data, "application/octet-stream")},
    )
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "name": "fixture",
        "filename": "blob.bin",
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
