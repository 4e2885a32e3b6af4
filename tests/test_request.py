"""Request and its streams: made only by the library, or by testing.make_request."""

from __future__ import annotations

import pytest
import trio
import trio.testing

import trio_fastcgi
from trio_fastcgi import InputStream, OutputStream, Request, Role
from trio_fastcgi._util import NoPublicConstructor
from trio_fastcgi.testing import make_request


@pytest.mark.parametrize(
    ("cls", "args", "kwargs"),
    [
        (
            Request,
            (),
            {
                "request_id": 1,
                "role": Role.RESPONDER,
                "keep_conn": True,
                "raw_params": (),
                "outbox": None,
                "input_buffer_size": 1024,
            },
        ),
        (InputStream, ("stdin",), {"buffer_size": 1024, "expected_length": None}),
        (OutputStream, (1, trio_fastcgi.Stdout, None), {}),
        (Request, (), {}),
    ],
)
def test_public_constructor_raises_type_error(
    cls: type[object], args: tuple[object, ...], kwargs: dict[str, object]
) -> None:
    with pytest.raises(
        TypeError, match=rf"^trio_fastcgi\.{cls.__name__} has no public constructor"
    ):
        cls(*args, **kwargs)


def test_request_and_streams_use_the_metaclass() -> None:
    assert type(Request) is NoPublicConstructor
    assert type(InputStream) is NoPublicConstructor
    assert type(OutputStream) is NoPublicConstructor


async def test_made_requests_are_instances_of_their_classes() -> None:
    request, _ = make_request(role=Role.FILTER)
    assert type(request) is Request
    assert isinstance(request, Request)
    assert isinstance(request.stdin, InputStream)
    assert isinstance(request.data, InputStream)
    assert isinstance(request.stdin, trio.abc.ReceiveStream)
    assert isinstance(request.stdout, OutputStream)
    assert isinstance(request.stderr, OutputStream)
    assert isinstance(request.stdout, trio.abc.SendStream)
    assert isinstance(request.cancel_scope, trio.CancelScope)
    assert repr(request) == "<Request 1 FILTER>"


async def test_streams_of_one_request_are_separate_objects() -> None:
    first, _ = make_request()
    second, _ = make_request()
    assert first.stdin is not second.stdin
    assert first.stdout is not second.stdout
    assert first.stderr is first.stderr  # made once, on first use
    assert first.data is first.data


async def test_finish_drops_input_and_refuses_output() -> None:
    request, output = make_request({"CONTENT_LENGTH": "4"}, body=b"body")
    request._finish()
    assert request.stdout.closed
    assert request.stderr.closed  # made after the end: closed from the start
    with pytest.raises(trio.ClosedResourceError):
        await request.stdout.send_all(b"late")
    with pytest.raises(trio.ClosedResourceError):
        await request.stderr.send_all(b"late")
    assert output.events == []


@pytest.mark.parametrize("woken", [False, True], ids=["not started", "woken with data"])
async def test_a_cancelled_reader_of_closed_input_gets_cancelled(woken: bool) -> None:
    """The connection ends (cancel, then close the input) while a reader is
    not running: it already had data to wake for, or had not read yet (a
    request in a task of its handler's, which the connection does not wait
    for). It gets Cancelled, as at any checkpoint, not ClosedResourceError."""
    stdin = InputStream._create("stdin", buffer_size=1024, expected_length=None)
    outcome: list[str] = []

    async def read() -> None:
        with scope:
            try:
                await stdin.receive_some()
            except BaseException as exc:
                outcome.append(type(exc).__name__)
                raise

    scope = trio.CancelScope()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        if woken:
            await trio.testing.wait_all_tasks_blocked()  # the reader waits
            assert stdin._offer(b"data")  # wakes it; it has not run yet
        scope.cancel()
        stdin._close()
    assert outcome == ["Cancelled"]
