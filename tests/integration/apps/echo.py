"""The application the end-to-end tests serve behind real web servers.

Routes go by the last segment of the request path, so the same handler works
behind any URL prefix a web server config adds:

- ``hello``: a fixed greeting.
- ``echo``: the request body back, once it has all arrived.
- ``blob?size=N&seed=S``: N pseudo-random bytes from seed S (see :func:`blob`).
- ``params``: the request's params as JSON.
- ``sleep``: waits until cancelled, and records how the cancellation came.
- ``gate``: waits until ``stats.gate_size`` requests are in the handler at
  once, then answers them all.

A request in the Authorizer role is checked against one user, ``alice`` with
password ``wonderland`` (HTTP Basic, or Apache's ``REMOTE_USER`` /
``REMOTE_PASSWD``); on success it passes ``AUTH_TOKEN`` and ``AUTH_USER`` to
the web server as ``Variable-`` headers. A request without credentials gets
401 with a Basic challenge, wrong credentials get 403.
"""

from __future__ import annotations

import base64
import binascii
import contextvars
import json
import random
import urllib.parse
from dataclasses import dataclass, field

import trio

import trio_fastcgi

GREETING = b"hello from trio-fastcgi\n"
USER, PASSWORD, TOKEN = "alice", "wonderland", "token-for-alice"
_BLOB_CHUNK = 1024 * 1024

#: Which connection a request arrived on; set by whoever serves the connection
#: (see tests/integration/harness.py). Request tasks inherit it.
CONNECTION_ID: contextvars.ContextVar[int] = contextvars.ContextVar("connection_id", default=0)


def blob(size: int, seed: int) -> bytes:
    """The body of ``blob?size=<size>&seed=<seed>``."""
    return random.Random(seed).randbytes(size)


@dataclass
class Cancellation:
    aborted: bool
    connection: int


@dataclass
class AppStats:
    """What the application saw, for tests to assert on."""

    requests: int = 0
    roles: list[trio_fastcgi.Role] = field(default_factory=list)
    active: dict[int, int] = field(default_factory=dict)
    max_active_on_one_connection: int = 0
    connections_with_keep_conn: set[int] = field(default_factory=set)
    sleeping: trio.Event = field(default_factory=trio.Event)
    cancellations: list[Cancellation] = field(default_factory=list)
    cancelled: trio.Event = field(default_factory=trio.Event)
    authorizer_params: list[dict[str, str]] = field(default_factory=list)
    gate_size: int = 1
    at_gate: int = 0
    gate_open: trio.Event = field(default_factory=trio.Event)


class EchoApp:
    """An ``async def handler(request)`` with routes for the tests."""

    def __init__(self) -> None:
        self.stats = AppStats()

    async def __call__(self, request: trio_fastcgi.Request) -> int:
        stats = self.stats
        connection = CONNECTION_ID.get()
        stats.requests += 1
        stats.roles.append(request.role)
        if request.keep_conn:
            stats.connections_with_keep_conn.add(connection)
        stats.active[connection] = active = stats.active.get(connection, 0) + 1
        stats.max_active_on_one_connection = max(stats.max_active_on_one_connection, active)
        try:
            if request.role is trio_fastcgi.Role.AUTHORIZER:
                return await self.authorize(request)
            return await self.respond(request)
        finally:
            stats.active[connection] -= 1

    async def respond(self, request: trio_fastcgi.Request) -> int:
        params = request.params
        path = urllib.parse.urlsplit(params.get("REQUEST_URI", "")).path
        route = path.rsplit("/", 1)[-1]
        query = dict(urllib.parse.parse_qsl(params.get("QUERY_STRING", "")))
        if route == "hello":
            await request.respond(GREETING)
        elif route == "echo":
            await self.echo(request)
        elif route == "blob":
            await self.send_blob(request, int(query["size"]), int(query["seed"]))
        elif route == "params":
            await request.respond(json.dumps(dict(params)), content_type="application/json")
        elif route == "sleep":
            await self.sleep(request)
        elif route == "gate":
            await self.gate(request)
        else:
            await request.respond(f"no route {path!r}\n", status=404)
        return 0

    async def echo(self, request: trio_fastcgi.Request) -> None:
        # The whole body first, then the response: nginx stops sending the
        # request body once it has passed the response head on to the client,
        # so an echo that answers while still reading can deadlock behind it.
        body = await request.stdin.receive_all()
        await request.respond(body, content_type="application/octet-stream")

    async def send_blob(self, request: trio_fastcgi.Request, size: int, seed: int) -> None:
        await request.stdout.send_all(
            b"Status: 200 OK\r\nContent-Type: application/octet-stream\r\n"
            + f"Content-Length: {size}\r\n\r\n".encode()
        )
        data = blob(size, seed)
        for start in range(0, size, _BLOB_CHUNK):
            await request.stdout.send_all(data[start : start + _BLOB_CHUNK])
        await request.stdout.aclose()

    async def sleep(self, request: trio_fastcgi.Request) -> None:
        self.stats.sleeping.set()
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            self.stats.cancellations.append(
                Cancellation(aborted=request.aborted, connection=CONNECTION_ID.get())
            )
            self.stats.cancelled.set()
            raise

    async def gate(self, request: trio_fastcgi.Request) -> None:
        stats = self.stats
        stats.at_gate += 1
        if stats.at_gate >= stats.gate_size:
            stats.gate_open.set()
        await stats.gate_open.wait()
        await request.respond(f"through the gate with {stats.gate_size - 1} others\n")

    async def authorize(self, request: trio_fastcgi.Request) -> int:
        params = request.params
        self.stats.authorizer_params.append(dict(params))
        user, password = params.get("REMOTE_USER"), params.get("REMOTE_PASSWD")
        if password is None:
            user, password = _basic_credentials(params.get("HTTP_AUTHORIZATION", ""))
        if (user, password) == (USER, PASSWORD):
            await request.authorize(variables={"AUTH_TOKEN": TOKEN, "AUTH_USER": USER})
        elif user is None:
            await request.respond(
                "credentials required\n",
                status=401,
                headers={"WWW-Authenticate": 'Basic realm="trio-fastcgi"'},
            )
        else:
            await request.respond("forbidden\n", status=403)
        return 0


def _basic_credentials(header: str) -> tuple[str | None, str | None]:
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None, None
    try:
        decoded = base64.b64decode(encoded, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None, None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else (None, None)
