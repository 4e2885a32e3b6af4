"""Events the library builds without attrs' ``__init__`` (the core's input
events, a request's output and END_REQUEST) are the same values as the public
constructors make."""

from __future__ import annotations

from collections.abc import Callable

import attrs
import pytest

from trio_fastcgi import (
    BeginRequest,
    Data,
    EndRequest,
    Params,
    ProtocolStatus,
    Role,
    Stderr,
    Stdin,
    Stdout,
)
from trio_fastcgi._event_builders import (
    _make_begin_request,
    _make_data,
    _make_end_request,
    _make_params,
    _make_stderr,
    _make_stdin,
    _make_stdout,
)
from trio_fastcgi._events import Event

CASES: list[tuple[Callable[..., Event], type[Event], tuple[object, ...]]] = [
    (_make_begin_request, BeginRequest, (7, Role.FILTER, True)),
    (_make_params, Params, (8, ((b"A", b"1"), (b"", b"")))),
    (_make_stdin, Stdin, (9, b"body")),
    (_make_data, Data, (65535, b"")),
    (_make_stdout, Stdout, (1, b"Status: 200 OK\r\n\r\n")),
    (_make_stderr, Stderr, (2, b"warning")),
    (_make_end_request, EndRequest, (3, 4294967295, ProtocolStatus.OVERLOADED)),
]


@pytest.mark.parametrize(("make", "cls", "args"), CASES)
def test_make_event_equals_public_constructor(
    make: Callable[..., Event], cls: type[Event], args: tuple[object, ...]
) -> None:
    built = make(*args)
    public = cls(*args)
    assert type(built) is cls
    assert built == public
    assert hash(built) == hash(public)
    assert repr(built) == repr(public)
    assert built.request_id == args[0]  # type: ignore[attr-defined]


@pytest.mark.parametrize(("make", "cls", "args"), CASES)
def test_make_event_is_frozen(
    make: Callable[..., Event], cls: type[Event], args: tuple[object, ...]
) -> None:
    built = make(*args)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        built.request_id = 1  # type: ignore[attr-defined]
    with pytest.raises(AttributeError):
        built.extra = 1  # type: ignore[attr-defined]
