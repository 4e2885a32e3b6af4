"""The request object a handler receives."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Final, TypeVar, final, overload

import trio

from ._cgi import HeaderItems, format_cgi_head, header_items
from ._events import Stderr, Stdout
from ._streams import InputStream, OutputStream
from ._util import NoPublicConstructor
from ._wire import ProtocolStatus, Role

if TYPE_CHECKING:
    from ._events import OutputEvent
    from ._streams import Outbox

#: How the connection ends a request: ``end(request, app_status,
#: protocol_status, output)`` sends *output* and its FCGI_END_REQUEST, once.
RequestEnder = Callable[["Request", int, ProtocolStatus, Sequence["OutputEvent"]], Awaitable[None]]


def _length_param(value: str | bytes | None) -> int | None:
    """A decimal length parameter, or None if absent or empty (nginx sends
    ``CONTENT_LENGTH=""`` for requests without a body)."""
    if value is None or not value.isdigit() or not value.isascii():
        return None
    return int(value)


_D = TypeVar("_D")
_AUTHORIZER: Final = Role.AUTHORIZER
_REQUEST_COMPLETE: Final = ProtocolStatus.REQUEST_COMPLETE


def _decode(value: bytes) -> str:
    return value.decode("utf-8", "surrogateescape")


@final
class Params(Mapping[str, str]):
    """A request's params decoded like :data:`os.environ` (UTF-8 with
    ``surrogateescape``), one value at a time as they are looked up: a
    handler that reads three params does not decode forty. A repeated name
    keeps its last value."""

    __slots__ = ("_raw",)

    def __init__(self, raw_params: Iterable[tuple[bytes, bytes]]) -> None:
        self._raw = dict(raw_params)

    def __getitem__(self, name: str) -> str:
        if type(name) is not str:
            raise KeyError(name)
        return _decode(self._raw[name.encode("utf-8", "surrogateescape")])

    @overload
    def get(self, name: str, /) -> str | None: ...
    @overload
    def get(self, name: str, default: str | _D, /) -> str | _D: ...
    def get(self, name: str, default: object = None, /) -> object:
        """The value of param *name*, or *default* if there is none."""
        if type(name) is not str:
            return default
        value = self._raw.get(name.encode("utf-8", "surrogateescape"))
        return default if value is None else _decode(value)

    def __contains__(self, name: object) -> bool:
        return type(name) is str and name.encode("utf-8", "surrogateescape") in self._raw

    def __iter__(self) -> Iterator[str]:
        return map(_decode, self._raw)

    def __len__(self) -> int:
        return len(self._raw)

    def __repr__(self) -> str:
        return f"Params({dict(self.items())!r})"


@final
class Request(metaclass=NoPublicConstructor):
    """One FastCGI request, as the handler sees it.

    Attributes:
      request_id: the FastCGI request id (nginx always uses 1).
      role: the :class:`Role` the web server asked for.
      keep_conn: whether the web server keeps the connection open afterwards.
      raw_params: the params exactly as received: ``(name, value)`` byte
        strings, in order, duplicates kept.
      stdout: where the CGI response goes (``FCGI_STDOUT``).

    Requests are made by the server, one per ``FCGI_BEGIN_REQUEST``; calling
    the class raises :exc:`TypeError`. To unit-test a handler or an adapter
    without a connection, use :func:`trio_fastcgi.testing.make_request`.
    """

    request_id: int
    role: Role
    keep_conn: bool
    raw_params: tuple[tuple[bytes, bytes], ...]
    stdout: OutputStream
    cancel_scope: trio.CancelScope
    _params: Params | None
    _aborted: bool
    _input_buffer_size: int
    _outbox: Outbox
    _stdin: InputStream | None
    #: The web server ended stdin before it was made (see stdin): it is made
    #: ended. Only read while _stdin is None.
    _stdin_ended: bool
    _data: InputStream | None
    _stderr: OutputStream | None
    _finished: bool
    # Class-level defaults: only some requests set them.
    #: Called instead of cancelling the request's scope when the request is
    #: stopped (see _cancel): a handler that tells its application first.
    _cancel_hook: Callable[[], None] | None = None
    #: Called once when the request ends (see _finish).
    _on_end: Callable[[], None] | None = None
    #: The connection's way to end the request (see _end_with); None for a
    #: request made without one.
    _end: RequestEnder | None = None

    @classmethod
    def _create(
        cls,
        *,
        request_id: int,
        role: Role,
        keep_conn: bool,
        raw_params: tuple[tuple[bytes, bytes], ...],
        outbox: Outbox,
        input_buffer_size: int,
    ) -> Request:
        self = object.__new__(cls)
        self.request_id = request_id
        self.role = role
        self.keep_conn = keep_conn
        self.raw_params = raw_params
        self._params = None
        self._aborted = False
        # Streams are made on first use, which keeps a Responder request cheap:
        # stdin when input arrives or the handler reads it (a GET's stdin only
        # ever ends), data for a Filter, stderr for the few handlers that write
        # to it.
        self._input_buffer_size = input_buffer_size
        self._outbox = outbox
        self._stdin = None
        self._stdin_ended = False
        self._data = None
        self._stderr = None
        self._finished = False
        self.stdout = OutputStream._create(request_id, Stdout, outbox)
        self.cancel_scope = trio.CancelScope()
        return self

    @property
    def stdin(self) -> InputStream:
        """The request body (``FCGI_STDIN``). Empty for an Authorizer."""
        stdin = self._stdin
        if stdin is None:
            stdin = self._stdin = self._make_stdin()
        return stdin

    def _make_stdin(self) -> InputStream:
        stdin = InputStream._create(
            "stdin", buffer_size=self._input_buffer_size, expected_length=self.content_length
        )
        if self.role is _AUTHORIZER or self._stdin_ended:
            stdin._feed_eof()
        if self._finished:
            stdin._discard()
        return stdin

    def _offer_stdin(self, data: bytes) -> bool:
        """The connection's side of stdin: :meth:`InputStream._offer`, without
        making the stream for its end alone."""
        stdin = self._stdin
        if stdin is None:
            if not data:
                self._stdin_ended = True
                return True
            stdin = self.stdin
        return stdin._offer(data)

    @property
    def data(self) -> InputStream:
        """The Filter role's file (``FCGI_DATA``); empty for other roles."""
        if self._data is None:
            filtering = self.role is Role.FILTER
            length = _length_param(self._raw(b"FCGI_DATA_LENGTH")) if filtering else None
            self._data = InputStream._create(
                "data", buffer_size=self._input_buffer_size, expected_length=length
            )
            if not filtering:
                self._data._feed_eof()
            elif self._finished:
                self._data._discard()
        return self._data

    @property
    def stderr(self) -> OutputStream:
        """Error output for the web server's log (``FCGI_STDERR``)."""
        if self._stderr is None:
            self._stderr = OutputStream._create(self.request_id, Stderr, self._outbox)
            self._stderr._closed = self._finished
        return self._stderr

    def _finish(self) -> None:
        """The request ends (its handler is done, or it ended early): drop
        unread input, refuse further output."""
        self._finished = True
        if self._stdin is not None:
            self._stdin._discard()
        if self._data is not None:
            self._data._discard()
        self.stdout._closed = True
        if self._stderr is not None:
            self._stderr._closed = True
        if self._on_end is not None:
            self._on_end()

    async def _end_with(self, last: bytes) -> None:
        """Send *last*, end stdout and end the request with app status 0, in
        one write, while its handler goes on: what an ASGI application's
        complete response does."""
        output = self.stdout._last_events(last)
        if self._end is not None:
            await self._end(self, 0, _REQUEST_COMPLETE, output)
        else:  # no connection: send, then refuse further output
            try:
                await self._outbox.send_many(output)
            finally:
                self._finish()

    def _cancel(self) -> None:
        """Stop the request: what an abort or the end of its connection does.
        Cancels its scope, unless its handler set a _cancel_hook to be told
        instead."""
        hook = self._cancel_hook
        if hook is None:
            self.cancel_scope.cancel()
        else:
            hook()

    def _close_input(self) -> None:
        """The connection is gone: wake any reader with ClosedResourceError."""
        self.stdin._close()
        if self._data is not None:
            self._data._close()

    def __repr__(self) -> str:
        return f"<Request {self.request_id} {self.role.name}>"

    def _raw(self, name: bytes) -> bytes | None:
        """The last raw value of param *name*, without decoding every param."""
        for key, value in reversed(self.raw_params):
            if key == name:
                return value
        return None

    @property
    def params(self) -> Mapping[str, str]:
        """The params decoded like :data:`os.environ`: UTF-8 with
        ``surrogateescape``, so no byte is lost. A repeated name keeps its last
        value; :attr:`raw_params` has them all."""
        params = self._params
        if params is None:
            params = self._params = Params(self.raw_params)
        return params

    @property
    def aborted(self) -> bool:
        """True once the web server sent ``FCGI_ABORT_REQUEST`` for this request."""
        return self._aborted

    @property
    def content_length(self) -> int | None:
        """``CONTENT_LENGTH`` as an int, or None if absent or empty."""
        return None if self.role is _AUTHORIZER else _length_param(self._raw(b"CONTENT_LENGTH"))

    @property
    def data_length(self) -> int | None:
        """``FCGI_DATA_LENGTH``, the size of the Filter role's data stream."""
        return _length_param(self._raw(b"FCGI_DATA_LENGTH"))

    @property
    def data_last_mod(self) -> int | None:
        """``FCGI_DATA_LAST_MOD``, the Filter role's file mtime (Unix time)."""
        return _length_param(self._raw(b"FCGI_DATA_LAST_MOD"))

    async def respond(
        self,
        body: bytes | str = b"",
        *,
        status: int = 200,
        headers: HeaderItems = (),
        content_type: str | None = "text/plain; charset=utf-8",
    ) -> None:
        """Write a whole CGI response (status, headers, body) and end stdout.

        A ``str`` body is encoded as UTF-8. *content_type* is added unless it
        is None or *headers* already name a Content-Type. Writing after it, or
        calling it again, raises :exc:`trio.ClosedResourceError`.
        """
        items = list(header_items(headers))
        if content_type is not None and not any(
            name.lower() == "content-type" for name, _ in items
        ):
            items.append(("Content-Type", content_type))
        payload = body.encode() if isinstance(body, str) else body
        await self.stdout._send_last(format_cgi_head(status, items) + payload)
        self.stdout._closed_reason = (
            "respond() already ended the response; to send one in parts, "
            "write to request.stdout instead"
        )

    async def authorize(self, variables: Mapping[str, str] | None = None) -> None:
        """Authorizer role: allow the request (status 200).

        Each of *variables* goes out as a ``Variable-NAME`` header, which the
        web server turns into the param ``NAME`` of the request it goes on to
        serve.
        """
        headers = [(f"Variable-{name}", value) for name, value in (variables or {}).items()]
        await self.respond(status=200, headers=headers, content_type=None)
