"""serve_tcp / serve_unix / serve_inherited / serve_listeners over real sockets."""

from __future__ import annotations

import functools
import gc
import os
import socket
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup  # type: ignore[import-not-found,unused-ignore]

from tests.helpers import AUTHORIZER, FILTER, FakeWebServer
from trio_fastcgi import (
    ProtocolStatus,
    Request,
    serve_connection,
    serve_inherited,
    serve_listeners,
    serve_tcp,
    serve_unix,
)


async def hello(request: Request) -> None:
    await request.respond(f"hello {request.params.get('NAME', 'world')}")


_OPEN: list[trio.abc.Stream] = []


@pytest.fixture(autouse=True)
def _close_client_streams() -> Iterator[None]:
    """Close the streams the test opened. Synchronous on purpose: pytest-trio
    runs an async fixture only for tests that name it, never an autouse one,
    so an async version of this never ran and the sockets stayed open until
    exit (the ResourceWarnings after the summary)."""
    yield

    async def close_all() -> None:
        while _OPEN:
            await _OPEN.pop().aclose()

    trio.run(close_all)


async def connect(listeners: list[trio.SocketListener]) -> FakeWebServer:
    sockname = listeners[0].socket.getsockname()
    stream: trio.abc.Stream
    if listeners[0].socket.family == socket.AF_UNIX:
        stream = await trio.open_unix_socket(sockname)
    else:
        stream = await trio.open_tcp_stream(sockname[0], sockname[1])
    _OPEN.append(stream)
    return FakeWebServer(stream)


async def test_serve_tcp_over_a_real_socket(nursery: trio.Nursery) -> None:
    listeners = await nursery.start(functools.partial(serve_tcp, hello, 0, host="127.0.0.1"))
    web = await connect(listeners)
    sock = web.stream.socket  # type: ignore[attr-defined]
    for rid in (1, 2):
        await web.request(rid, params={"NAME": f"tcp{rid}"})
        assert (await web.read_response(rid)).body == f"hello tcp{rid}".encode()
    await web.request(1, keep_conn=False)
    await web.read_response(1)
    await web.read_eof()
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


async def test_closed_connections_are_freed_without_the_garbage_collector(
    nursery: trio.Nursery,
) -> None:
    """A connection that closed leaves nothing for the cycle collector: with
    nginx's new connection per request, each one left 19 objects in reference
    cycles (its writer held its bound methods), which made the collector run
    and pause the server 10 ms at a time under load."""
    from trio_fastcgi._served_connection import ServedConnection
    from trio_fastcgi._writer import Writer

    def alive() -> set[int]:
        # gc.get_objects() lists what the collector tracks, collector off or
        # not: compiled classes too, which cannot be weakly referenced.
        return {id(o) for o in gc.get_objects() if type(o) in (ServedConnection, Writer)}

    listeners = await nursery.start(functools.partial(serve_tcp, hello, 0, host="127.0.0.1"))
    gc.collect()
    earlier = alive()  # other tests' (a test's traceback may hold some)
    gc.disable()
    try:
        for rid in (1, 2, 3):
            web = await connect(listeners)
            await web.request(rid, keep_conn=False)
            assert (await web.read_response(rid)).body == b"hello world"
            await web.read_eof()
            await web.stream.aclose()  # the server drains until our end of file
        await trio.testing.wait_all_tasks_blocked()
        assert alive() - earlier == set()
    finally:
        gc.enable()


async def test_serve_tcp_ipv6_loopback(nursery: trio.Nursery) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        listeners = await nursery.start(functools.partial(serve_tcp, hello, 0, host="::1"))
    except OSError as exc:
        pytest.skip(f"::1 unavailable: {exc}")
    web = await connect(listeners)
    await web.request(1)
    assert (await web.read_response(1)).body == b"hello world"


async def test_serve_tcp_rejects_unknown_option() -> None:
    with pytest.raises(TypeError, match="unknown server option"):
        await serve_tcp(hello, 0, max_connections=3)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="max_reqs"):
        await serve_tcp(hello, 0, max_reqs=0)


async def test_serve_unix(nursery: trio.Nursery, tmp_path: Path) -> None:
    path = tmp_path / "app.sock"
    async with trio.open_nursery() as inner:
        listeners = await inner.start(functools.partial(serve_unix, hello, path, mode=0o600))
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        web = await connect(listeners)
        await web.request(1)
        assert (await web.read_response(1)).body == b"hello world"
        inner.cancel_scope.cancel()
    assert not path.exists()  # removed on exit


async def test_serve_unix_replaces_stale_socket_only(nursery: trio.Nursery, tmp_path: Path) -> None:
    stale = tmp_path / "stale.sock"
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(stale))
    dead.close()  # the file stays, nobody listens
    listeners = await nursery.start(serve_unix, hello, stale)
    web = await connect(listeners)
    await web.request(1)
    assert (await web.read_response(1)).body == b"hello world"
    # A live socket is not stolen, and a regular file is not deleted.
    with pytest.raises(OSError, match="another process is listening"):
        await serve_unix(hello, stale)
    regular = tmp_path / "file"
    regular.write_text("keep me")
    with pytest.raises(FileExistsError):
        await serve_unix(hello, regular)
    assert regular.read_text() == "keep me"


async def test_serve_inherited_listening_socket(nursery: trio.Nursery) -> None:
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen()
    port = listening.getsockname()[1]
    fd = os.dup(listening.fileno())
    listening.close()
    await nursery.start(serve_inherited, hello, fd)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    _OPEN.append(stream)
    web = FakeWebServer(stream)
    await web.request(1)
    assert (await web.read_response(1)).body == b"hello world"


async def test_serve_inherited_rejects_non_listening_socket() -> None:
    sock = socket.socket()
    try:
        with pytest.raises(ValueError, match="not a listening stream socket"):
            await serve_inherited(hello, sock.fileno())
    finally:
        sock.close()


def _close_stdout_and_stderr() -> None:
    os.close(1)
    os.close(2)


async def test_serve_inherited_from_spawned_process_with_closed_stdout(tmp_path: Path) -> None:
    # Like lighttpd's bin-path: the listening socket is fd 0, stdout/stderr are
    # closed. A print() in the handler must not corrupt the FastCGI stream.
    script = tmp_path / "app.py"
    script.write_text(
        "import trio, trio_fastcgi\n"
        "async def handler(request):\n"
        "    import os; os.write(1, b'stray output from a C library or child')\n"
        "    await request.respond('spawned ok')\n"
        "trio.run(trio_fastcgi.serve_inherited, handler)\n"
    )
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen()
    port = listening.getsockname()[1]
    process = await trio.lowlevel.open_process(
        [sys.executable, str(script)],
        stdin=listening.fileno(),
        stdout=None,
        stderr=None,
        close_fds=True,
        preexec_fn=_close_stdout_and_stderr,
    )
    listening.close()
    try:
        with trio.fail_after(20):
            async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
                web = FakeWebServer(stream)
                await web.request(1)
                stdout = (await web.read_response(1)).stdout
        assert stdout.endswith(b"\r\n\r\nspawned ok")
    finally:
        process.terminate()
        with trio.fail_after(10):
            await process.wait()


async def test_protect_std_fds_keeps_sockets_off_fds_1_and_2(tmp_path: Path) -> None:
    result = tmp_path / "result"
    code = (
        "import os, socket, sys\n"
        "from trio_fastcgi._listeners import protect_std_fds\n"
        "protect_std_fds()\n"
        "sock = socket.socket()\n"
        "null = os.stat(os.devnull).st_rdev\n"
        "ok = sock.fileno() > 2 and all(os.fstat(fd).st_rdev == null for fd in (1, 2))\n"
        "open(sys.argv[1], 'w').write(str(ok))\n"
    )
    process = await trio.lowlevel.open_process(
        [sys.executable, "-c", code, str(result)], preexec_fn=_close_stdout_and_stderr
    )
    with trio.fail_after(20):
        assert await process.wait() == 0
    assert result.read_text() == "True"


async def test_max_conns_stops_accepting(nursery: trio.Nursery) -> None:
    listeners = await nursery.start(
        functools.partial(serve_tcp, hello, 0, host="127.0.0.1", max_conns=1)
    )
    first = await connect(listeners)
    await first.request(1)
    await first.read_response(1)
    second = await connect(listeners)  # accepted by the kernel backlog only
    await second.request(1)
    with trio.move_on_after(0.5) as waited:
        await second.read_response(1)
    assert waited.cancelled_caught
    await first.stream.aclose()
    with trio.fail_after(10):
        assert (await second.read_response(1)).body == b"hello world"


async def test_graceful_shutdown_finishes_in_flight_requests(
    autojump_clock: trio.testing.MockClock,
) -> None:
    shutdown = trio.Event()
    started = trio.Event()

    async def slow(request: Request) -> None:
        started.set()
        await trio.sleep(5)
        await request.respond("finished")

    client, server = trio.testing.memory_stream_pair()
    listener = _OneStreamListener(server)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            functools.partial(
                serve_listeners, slow, [listener], shutdown_event=shutdown, grace_period=60
            )
        )
        web = FakeWebServer(client)
        await web.request(1)
        await started.wait()
        shutdown.set()
        assert (await web.read_response(1)).body == b"finished"
        await web.read_eof()  # idle after its request: closed
    assert listener.closed


async def test_graceful_shutdown_cancels_after_grace_period(
    autojump_clock: trio.testing.MockClock,
) -> None:
    shutdown = trio.Event()
    cancelled = []

    async def stuck(request: Request) -> None:
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            cancelled.append(trio.current_time())
            raise

    client, server = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            functools.partial(
                serve_listeners,
                stuck,
                [_OneStreamListener(server)],
                shutdown_event=shutdown,
                grace_period=10,
            )
        )
        web = FakeWebServer(client)
        await web.request(1)
        await trio.testing.wait_all_tasks_blocked()
        start = trio.current_time()
        shutdown.set()
    # serve_listeners returned by itself after the grace period.
    assert len(cancelled) == 1
    assert cancelled[0] - start == pytest.approx(10)


async def test_web_server_addrs_refuses_other_peers(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    listeners = await nursery.start(
        functools.partial(serve_tcp, hello, 0, host="127.0.0.1", web_server_addrs=["127.0.0.2"])
    )
    web = await connect(listeners)
    await web.request(1)
    await web.read_eof()
    assert "refused connection from 127.0.0.1" in caplog.text
    allowed = await nursery.start(
        functools.partial(
            serve_tcp, hello, 0, host="127.0.0.1", web_server_addrs=["::ffff:127.0.0.1"]
        )
    )
    web = await connect(allowed)
    await web.request(1)
    assert (await web.read_response(1)).body == b"hello world"


async def test_web_server_addrs_from_environment(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FCGI_WEB_SERVER_ADDRS", "10.0.0.1, 10.0.0.2")
    listeners = await nursery.start(functools.partial(serve_tcp, hello, 0, host="127.0.0.1"))
    web = await connect(listeners)
    await web.request(1)
    await web.read_eof()


class _OneStreamListener(trio.abc.Listener[trio.abc.Stream]):
    """Hands out one in-memory stream, then waits; records whether it was closed."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self._stream: trio.abc.Stream | None = stream
        self.closed = False

    async def accept(self) -> trio.abc.Stream:
        if self._stream is None:
            await trio.sleep_forever()
        stream, self._stream = self._stream, None
        assert stream is not None
        await trio.lowlevel.checkpoint()
        return stream

    async def aclose(self) -> None:
        self.closed = True
        await trio.lowlevel.checkpoint()


@pytest.mark.parametrize(
    ("host", "web_server_addrs", "warns"),
    [("0.0.0.0", [], True), ("127.0.0.1", [], False), ("0.0.0.0", ["127.0.0.1"], False)],
)
async def test_serving_other_hosts_without_web_server_addrs_warns(
    host: str, web_server_addrs: list[str], warns: bool, caplog: pytest.LogCaptureFixture
) -> None:
    # FastCGI has no authentication: an address others can reach, open to any
    # peer, is worth a WARNING that names it and says what to do.
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(serve_tcp, hello, 0, host=host, web_server_addrs=web_server_addrs)
        )
        port = listeners[0].socket.getsockname()[1]
        nursery.cancel_scope.cancel()
    warnings = [r for r in caplog.records if r.levelname == "WARNING" and "FastCGI on" in r.message]
    if warns:
        assert len(warnings) == 1
        assert f"0.0.0.0:{port}" in warnings[0].message
        assert "web_server_addrs" in warnings[0].message
        assert "127.0.0.1 or a unix socket" in warnings[0].message
    else:
        assert warnings == []


async def test_ctrl_c_reaches_the_caller_as_keyboard_interrupt() -> None:
    # Not inside the nurseries' exception group: `except KeyboardInterrupt:`
    # around trio.run(serve_tcp, ...) works, as the examples do it.
    async def interrupted(request: Request) -> None:
        raise KeyboardInterrupt

    async def serve_and_request() -> None:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                functools.partial(serve_tcp, interrupted, 0, host="127.0.0.1")
            )
            web = await connect(listeners)
            await web.request(1)
            await trio.sleep_forever()

    with pytest.raises(BaseExceptionGroup) as caught:  # from this test's own nursery
        await serve_and_request()
    (raised,) = caught.value.exceptions  # what serve_tcp raised
    assert type(raised) is KeyboardInterrupt


# -- messages that name the fix (issue 14) --------------------------------------------


def sync_handler(request: Request) -> None:
    """The mistake: a plain def, whose call gives no awaitable."""


class SyncCallable:
    def __call__(self, request: Request) -> None: ...


class AsyncCallable:
    async def __call__(self, request: Request) -> None: ...


def sync_wrapper_of_async(request: Request) -> object:
    return hello(request)


sync_wrapper_of_async = functools.wraps(hello)(sync_wrapper_of_async)


@pytest.mark.parametrize("handler", [sync_handler, SyncCallable(), functools.partial(sync_handler)])
async def test_serve_refuses_a_sync_handler_up_front(handler: object) -> None:
    message = "a native handler must be `async def`"
    with pytest.raises(TypeError, match=message):
        await serve_tcp(handler, 0, host="127.0.0.1")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=message):
        await serve_listeners(handler, [])  # type: ignore[arg-type]
    _, server = trio.testing.memory_stream_pair()
    with pytest.raises(TypeError, match=message):
        await serve_connection(handler, server)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not callable"):
        await serve_tcp("handler", 0, host="127.0.0.1")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "handler",
    [
        hello,
        AsyncCallable(),
        functools.partial(hello),
        sync_wrapper_of_async,
        AsyncCallable().__call__,
    ],
)
async def test_serve_accepts_async_handlers_and_their_wrappers(
    handler: object, nursery: trio.Nursery
) -> None:
    listeners = await nursery.start(
        functools.partial(serve_tcp, handler, 0, host="127.0.0.1")  # type: ignore[arg-type]
    )
    web = await connect(listeners)
    await web.request(1)
    response = await web.read_response(1)
    assert response.app_status == 0


async def test_refused_authorizer_warns_naming_the_role_and_the_option(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client, server = trio.testing.memory_stream_pair()
    web = FakeWebServer(client)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_connection, hello, server)
        await web.request(1, role=AUTHORIZER)
        refused = await web.read_response(1)
        await web.request(2, role=FILTER, data=b"x")
        refused_filter = await web.read_response(2)
        await web.request(3)
        served = await web.read_response(3)
        nursery.cancel_scope.cancel()
    assert refused.protocol_status == ProtocolStatus.UNKNOWN_ROLE
    assert refused_filter.protocol_status == ProtocolStatus.UNKNOWN_ROLE
    assert served.body == b"hello world"
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1  # per connection, the first refusal only
    assert "refused request 1: the web server asked for the Authorizer role" in warnings[0]
    assert "roles={Role.RESPONDER, Role.AUTHORIZER}" in warnings[0]
    assert "--roles responder,authorizer" in warnings[0]


async def test_refused_filter_names_its_option(caplog: pytest.LogCaptureFixture) -> None:
    client, server = trio.testing.memory_stream_pair()
    web = FakeWebServer(client)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_connection, hello, server)
        await web.request(1, role=FILTER, data=b"x")
        await web.read_response(1)
        nursery.cancel_scope.cancel()
    assert "Filter role, which is not enabled; turn it on with roles=" in caplog.text
    assert "--roles responder,filter" in caplog.text


async def test_writing_after_respond_says_respond_ended_the_response() -> None:
    errors: list[str] = []

    async def twice(request: Request) -> None:
        await request.respond("first")
        for late in (request.respond("again"), request.stdout.send_all(b"more")):
            try:
                await late
            except trio.ClosedResourceError as exc:
                errors.append(str(exc))

    client, server = trio.testing.memory_stream_pair()
    web = FakeWebServer(client)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_connection, twice, server)
        await web.request(1)
        response = await web.read_response(1)
        nursery.cancel_scope.cancel()
    assert response.body == b"first"
    assert len(errors) == 2
    assert all(e.startswith("respond() already ended the response") for e in errors)


async def test_the_accept_loop_is_protected_from_ctrl_c() -> None:
    """Ctrl+C never lands between accepting a socket and starting its task
    (which printed "coroutine '_Server._serve_one' was never awaited"): the
    accept loop, and what it calls, runs protected, and KeyboardInterrupt
    comes at a checkpoint of the main task instead."""
    from trio_fastcgi._config import Config
    from trio_fastcgi._server import _Server
    from trio_fastcgi._transport import Transport

    protected: list[bool] = []

    class Stop(Exception):
        pass

    async def accept() -> Transport:
        protected.append(trio.lowlevel.currently_ki_protected())
        raise Stop

    server = _Server(hello, Config())
    async with trio.open_nursery() as nursery:
        with pytest.raises(Stop):
            await server._accept_each(accept, nursery)
    assert protected == [True]
    assert not trio.lowlevel.currently_ki_protected()  # only the loop is
