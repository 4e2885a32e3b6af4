"""Test your handlers in memory: no socket, no web server.

:func:`open_test_client` serves your handler with :func:`trio_fastcgi.serve_connection`
on one end of a :func:`trio.testing.memory_stream_pair` and drives the other
end with :mod:`trio_fastcgi.client`, so every request goes through the real
FastCGI connection code. Requests carry the CGI params a web server would send
(``REQUEST_METHOD``, ``SCRIPT_NAME``, ``PATH_INFO``, ``QUERY_STRING``,
``REQUEST_URI``, ``CONTENT_LENGTH``, ``CONTENT_TYPE``, ``HTTP_*`` headers,
``SERVER_NAME``/``SERVER_PORT``, ``REMOTE_ADDR``, ...), and responses come
back parsed. An example test (pytest with ``trio_mode = true``)::

    import urllib.parse

    import trio_fastcgi
    from trio_fastcgi.testing import open_test_client


    async def hello(request: trio_fastcgi.Request) -> None:
        query = urllib.parse.parse_qs(request.params["QUERY_STRING"])
        await request.respond(f"hello {query.get('name', ['world'])[0]}")


    async def test_hello() -> None:
        async with open_test_client(hello) as client:
            response = await client.get("/", query={"name": "trio"})
        assert response.status == 200
        assert response.text == "hello trio"
        assert response.header("content-type") == "text/plain; charset=utf-8"

By default an exception that escapes the handler is raised again in the test
(after the server has answered it with a 500), so its traceback is not lost in
a log; pass ``raise_server_exceptions=False`` to test the 500 itself.

To unit-test code that takes a :class:`~trio_fastcgi.Request` without any
connection at all (a helper of your handler, or an adapter), make one with
:func:`make_request`.
"""

from __future__ import annotations

import contextlib
import json as json_module
import sys
import urllib.parse
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping, Sequence
from functools import partial
from typing import Any, Final, TypeAlias, final

import attrs
import trio
import trio.testing

from ._cgi import request_params
from ._config import DEFAULT_INPUT_BUFFER_SIZE, Config, ServerOptions
from ._events import OutputEvent, Stderr, Stdout
from ._exceptions import EndRequestWith
from ._request import Request
from ._served_connection import Handler, Spawn, request_spawner
from ._server import serve_connection
from ._streams import Outbox
from ._version import __version__
from ._wire import ProtocolStatus, Role
from .client import (
    ActiveRequest,
    CGIResponse,
    Client,
    ParamsArg,
    Response,
    _unwrap,
    open_client,
    parse_cgi_response,
)

if sys.version_info >= (3, 11):
    from typing import Unpack
else:
    from exceptiongroup import BaseExceptionGroup  # type: ignore[import-not-found,unused-ignore]
    from typing_extensions import Unpack

__all__ = [
    "RequestOutput",
    "TestClient",
    "TestResponse",
    "make_request",
    "open_test_client",
]

#: Headers as a mapping or ``(name, value)`` pairs; repeated names are joined
#: with ", " as web servers do.
HeadersArg: TypeAlias = Mapping[str, str] | Iterable[tuple[str, str]]
#: A query as a string (sent as is) or pairs/mapping (URL-encoded).
QueryArg: TypeAlias = str | Mapping[str, str] | Iterable[tuple[str, str]]
BodyArg: TypeAlias = bytes | str | AsyncIterable[bytes]

_NO_RESPONSE_STATUS: Final = 502


@attrs.frozen
class TestResponse:
    """A response, parsed, with the raw FastCGI result beside it.

    Attributes:
      status: the CGI ``Status`` (200 if none; 302 for a bare ``Location``).
        When the application wrote no stdout at all (e.g. it refused the
        request), 502, as a web server would answer.
      headers: the CGI response headers, in order.
      body: the body after the headers.
      stdout, stderr, app_status, protocol_status, request_id: the FastCGI
        result (:class:`trio_fastcgi.client.Response`).
    """

    __test__ = False  # not a pytest test class

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    stdout: bytes
    stderr: bytes
    app_status: int
    protocol_status: ProtocolStatus
    request_id: int

    @classmethod
    def from_response(cls, response: Response) -> TestResponse:
        """Parse a client :class:`~trio_fastcgi.client.Response`.

        Raises:
          trio_fastcgi.client.CGIResponseError: stdout is not empty and not a
            CGI response.
        """
        if response.stdout:
            cgi = parse_cgi_response(response.stdout)
        else:
            cgi = CGIResponse(_NO_RESPONSE_STATUS, [], b"")
        return cls(
            status=cgi.status,
            headers=cgi.headers,
            body=cgi.body,
            stdout=response.stdout,
            stderr=response.stderr,
            app_status=response.app_status,
            protocol_status=response.protocol_status,
            request_id=response.request_id,
        )

    @property
    def text(self) -> str:
        """The body decoded as UTF-8."""
        return self.body.decode("utf-8")

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json_module.loads(self.body)

    def header(self, name: str, default: str | None = None) -> str | None:
        """The first header called *name* (case-insensitive), or *default*."""
        return CGIResponse(self.status, self.headers, self.body).header(name, default)

    @property
    def variables(self) -> dict[str, str]:
        """Authorizer role: the ``Variable-NAME`` headers as ``{NAME: value}``
        (what Apache and lighttpd pass on to the request they serve)."""
        prefix = "variable-"
        return {
            name[len(prefix) :]: value
            for name, value in self.headers
            if name.lower().startswith(prefix)
        }


def _header_items(headers: HeadersArg | None) -> list[tuple[str, str]]:
    if headers is None:
        return []
    return list(headers.items() if isinstance(headers, Mapping) else headers)


def _query_string(query: QueryArg | None) -> str:
    if query is None:
        return ""
    if isinstance(query, str):
        return query
    items = query.items() if isinstance(query, Mapping) else query
    return urllib.parse.urlencode(list(items))


@final
class TestClient:
    """Sends requests to the handler under test. Get one from :func:`open_test_client`.

    Attributes:
      fastcgi: the underlying :class:`trio_fastcgi.client.Client`, for raw
        requests (any params, roles, streaming, abort) and ``get_values``.
    """

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        fastcgi: Client,
        *,
        base_url: str,
        server_errors: dict[int, Exception],
        raise_server_exceptions: bool,
    ) -> None:
        self.fastcgi = fastcgi
        url = urllib.parse.urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"base_url must be http(s)://HOST[:PORT], not {base_url!r}")
        self._scheme = url.scheme
        self._host = url.netloc
        self._server_name = url.hostname
        self._server_port = url.port or (443 if url.scheme == "https" else 80)
        self._server_errors = server_errors
        self._raise_server_exceptions = raise_server_exceptions

    def build_params(
        self,
        method: str,
        path: str,
        *,
        query: QueryArg | None = None,
        headers: HeadersArg | None = None,
        content_length: int | None = None,
        content_type: str | None = None,
        script_name: str = "",
        role: Role = Role.RESPONDER,
        params: Mapping[str, str] | None = None,
    ) -> list[tuple[bytes, bytes]]:
        """The CGI params a web server would send for this request.

        *path* is the URL path, optionally with ``?query``; *query* is added to
        that. ``PATH_INFO`` is the percent-decoded path after *script_name*.
        ``Content-Type``/``Content-Length`` headers become ``CONTENT_TYPE``/
        ``CONTENT_LENGTH``, other headers ``HTTP_*``. *params* are added last
        and replace any of the above. For an Authorizer, ``CONTENT_LENGTH``,
        ``PATH_INFO`` and ``SCRIPT_NAME`` are left out (as the spec says) and
        ``FCGI_ROLE=AUTHORIZER`` is added (as Apache does).
        """
        if not path.startswith("/"):
            raise ValueError(f"path must start with '/', not {path!r}")
        raw_path, _, path_query = path.partition("?")
        extra_query = _query_string(query)
        query_string = "&".join(part for part in (path_query, extra_query) if part)
        header_items = _header_items(headers)
        if not any(name.lower() == "host" for name, _ in header_items):
            header_items.insert(0, ("Host", self._host))
        if content_type is not None:
            header_items.insert(0, ("Content-Type", content_type))
        out = request_params(
            method.upper(),
            raw_path + (f"?{query_string}" if query_string else ""),
            headers=header_items,
            body_length=content_length,
            server=("127.0.0.1", self._server_port),
            server_name=self._server_name.encode("idna"),
            client=("127.0.0.1", 50000),
            script_name=script_name,
            scheme=self._scheme,
            software=f"trio-fastcgi-testclient/{__version__}",
            role=role,
        )
        for name, value in (params or {}).items():
            out[name.encode("utf-8", "surrogateescape")] = value.encode("utf-8", "surrogateescape")
        return list(out.items())

    def _prepare(
        self,
        method: str,
        path: str,
        *,
        query: QueryArg | None,
        headers: HeadersArg | None,
        body: BodyArg | None,
        json: Any,
        form: Mapping[str, str] | Iterable[tuple[str, str]] | None,
        content_type: str | None,
        script_name: str,
        params: Mapping[str, str] | None,
    ) -> tuple[list[tuple[bytes, bytes]], bytes | AsyncIterable[bytes]]:
        given = sum(x is not None for x in (body, json, form))
        if given > 1:
            raise TypeError("give at most one of body, json and form")
        stdin: bytes | AsyncIterable[bytes] = b""
        content_length: int | None = None
        if json is not None:
            stdin = json_module.dumps(json).encode()
            content_type = content_type or "application/json"
        elif form is not None:
            items = form.items() if isinstance(form, Mapping) else form
            stdin = urllib.parse.urlencode(list(items)).encode()
            content_type = content_type or "application/x-www-form-urlencoded"
        elif isinstance(body, str):
            stdin = body.encode()
        elif body is not None:
            stdin = body
        if isinstance(stdin, bytes) and (stdin or body is not None or method.upper() == "POST"):
            content_length = len(stdin)
        param_pairs = self.build_params(
            method,
            path,
            query=query,
            headers=headers,
            content_length=content_length,
            content_type=content_type,
            script_name=script_name,
            params=params,
        )
        return param_pairs, stdin

    def _check_server_error(self, request_id: int) -> None:
        error = self._server_errors.pop(request_id, None)
        if error is not None and self._raise_server_exceptions:
            raise error

    async def request(
        self,
        method: str,
        path: str = "/",
        *,
        query: QueryArg | None = None,
        headers: HeadersArg | None = None,
        body: BodyArg | None = None,
        json: Any = None,
        form: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
        content_type: str | None = None,
        script_name: str = "",
        params: Mapping[str, str] | None = None,
    ) -> TestResponse:
        """Send a Responder request and return the parsed response.

        Args:
          method: the HTTP method (``REQUEST_METHOD``).
          path: the URL path, may include ``?query``.
          query: more query parameters (a string is used as is).
          headers: request headers.
          body: the body: bytes, str (UTF-8), or an async iterable of bytes
            (streamed, sent without ``CONTENT_LENGTH`` unless a header gives
            one, like a chunked upload).
          json: a value sent as a JSON body (``application/json``).
          form: fields sent URL-encoded (``application/x-www-form-urlencoded``).
          content_type: ``CONTENT_TYPE``.
          script_name: ``SCRIPT_NAME``; *path* must lie under it.
          params: extra params, replacing the generated ones of the same name.
        """
        param_pairs, stdin = self._prepare(
            method,
            path,
            query=query,
            headers=headers,
            body=body,
            json=json,
            form=form,
            content_type=content_type,
            script_name=script_name,
            params=params,
        )
        response = await self.fastcgi.request(param_pairs, stdin)
        self._check_server_error(response.request_id)
        return TestResponse.from_response(response)

    async def get(self, path: str = "/", **kwargs: Any) -> TestResponse:
        """:meth:`request` with ``GET``."""
        return await self.request("GET", path, **kwargs)

    async def head(self, path: str = "/", **kwargs: Any) -> TestResponse:
        """:meth:`request` with ``HEAD``."""
        return await self.request("HEAD", path, **kwargs)

    async def post(self, path: str = "/", **kwargs: Any) -> TestResponse:
        """:meth:`request` with ``POST``."""
        return await self.request("POST", path, **kwargs)

    async def put(self, path: str = "/", **kwargs: Any) -> TestResponse:
        """:meth:`request` with ``PUT``."""
        return await self.request("PUT", path, **kwargs)

    async def patch(self, path: str = "/", **kwargs: Any) -> TestResponse:
        """:meth:`request` with ``PATCH``."""
        return await self.request("PATCH", path, **kwargs)

    async def delete(self, path: str = "/", **kwargs: Any) -> TestResponse:
        """:meth:`request` with ``DELETE``."""
        return await self.request("DELETE", path, **kwargs)

    async def options(self, path: str = "/", **kwargs: Any) -> TestResponse:
        """:meth:`request` with ``OPTIONS``."""
        return await self.request("OPTIONS", path, **kwargs)

    async def authorize(
        self,
        path: str = "/",
        *,
        method: str = "GET",
        query: QueryArg | None = None,
        headers: HeadersArg | None = None,
        params: Mapping[str, str] | None = None,
    ) -> TestResponse:
        """Send an Authorizer request (the server needs ``roles`` with
        :attr:`Role.AUTHORIZER <trio_fastcgi.Role.AUTHORIZER>`). Status 200
        means allowed; :attr:`TestResponse.variables` has the variables."""
        param_pairs = self.build_params(
            method, path, query=query, headers=headers, role=Role.AUTHORIZER, params=params
        )
        response = await self.fastcgi.request(param_pairs, role=Role.AUTHORIZER)
        self._check_server_error(response.request_id)
        return TestResponse.from_response(response)

    async def filter(
        self,
        path: str,
        data: bytes,
        *,
        data_last_mod: int = 0,
        method: str = "GET",
        query: QueryArg | None = None,
        headers: HeadersArg | None = None,
        body: bytes | str | None = None,
        params: Mapping[str, str] | None = None,
    ) -> TestResponse:
        """Send a Filter request: *data* is the file to filter (``FCGI_DATA``,
        with ``FCGI_DATA_LENGTH`` and ``FCGI_DATA_LAST_MOD``). The server needs
        ``roles`` with :attr:`Role.FILTER <trio_fastcgi.Role.FILTER>`."""
        param_pairs, stdin = self._prepare(
            method,
            path,
            query=query,
            headers=headers,
            body=body,
            json=None,
            form=None,
            content_type=None,
            script_name="",
            params={
                "FCGI_DATA_LENGTH": str(len(data)),
                "FCGI_DATA_LAST_MOD": str(data_last_mod),
                **(params or {}),
            },
        )
        response = await self.fastcgi.request(param_pairs, stdin, role=Role.FILTER, data=data)
        self._check_server_error(response.request_id)
        return TestResponse.from_response(response)

    @contextlib.asynccontextmanager
    async def open_request(
        self,
        method: str,
        path: str = "/",
        *,
        query: QueryArg | None = None,
        headers: HeadersArg | None = None,
        body: BodyArg | None = None,
        content_type: str | None = None,
        script_name: str = "",
        params: Mapping[str, str] | None = None,
    ) -> AsyncIterator[ActiveRequest]:
        """Like :meth:`request`, but streamed; an async context manager:
        ``async with client.open_request("GET", "/") as active:`` gives the
        :class:`~trio_fastcgi.client.ActiveRequest`, whose stdout can be read
        as it arrives and which can be aborted. Leaving the block early aborts
        the request. Server exceptions are not re-raised here."""
        param_pairs, stdin = self._prepare(
            method,
            path,
            query=query,
            headers=headers,
            body=body,
            json=None,
            form=None,
            content_type=content_type,
            script_name=script_name,
            params=params,
        )
        async with self.fastcgi.open_request(param_pairs, stdin) as active:
            yield active

    async def raw_request(self, params: ParamsArg, stdin: bytes = b"", **kwargs: Any) -> Response:
        """:meth:`trio_fastcgi.client.Client.request`: any params, any role."""
        return await self.fastcgi.request(params, stdin, **kwargs)


@final
class _RecordingHandler:
    """Calls *handler* and keeps what it raised, by request id."""

    def __init__(self, handler: Handler, errors: dict[int, Exception]) -> None:
        self.handler = handler
        self.errors = errors
        #: Passed on: the wrapped handler's requests still run in its own tasks.
        self.spawn_request: Spawn | None = request_spawner(handler)

    async def __call__(self, request: Request) -> int | None:
        try:
            return await self.handler(request)
        except EndRequestWith:
            raise
        except Exception as exc:
            self.errors[request.request_id] = exc
            raise


@contextlib.asynccontextmanager
async def open_test_client(
    handler: Handler,
    *,
    base_url: str = "http://testserver",
    raise_server_exceptions: bool = True,
    config: Config | None = None,
    **server_options: Unpack[ServerOptions],
) -> AsyncIterator[TestClient]:
    """Serve *handler* in memory; an async context manager that gives a
    :class:`TestClient` for it: ``async with open_test_client(handler) as client:``.

    Args:
      handler: the handler under test.
      base_url: scheme, host and port the requests pretend to go to
        (``SERVER_NAME``, ``SERVER_PORT``, ``HTTP_HOST``, ``HTTPS``).
      raise_server_exceptions: re-raise an exception that escaped the handler
        from the request call that caused it.
      config: a :class:`~trio_fastcgi.Config` for
        :func:`trio_fastcgi.serve_connection`, as in production.
      server_options: options for :func:`trio_fastcgi.serve_connection`
        (``roles``, ``mpxs_conns``, ``max_reqs``, ...); each replaces that
        field of *config*.

    Requests share one connection and may run concurrently (the client keeps
    within ``max_reqs``, and sends one at a time if ``mpxs_conns`` is false).
    """
    server_errors: dict[int, Exception] = {}
    recording_handler = _RecordingHandler(handler, server_errors)

    max_concurrent: int | None = server_options.get(
        "max_reqs", None if config is None else config.max_reqs
    )
    if server_options.get("mpxs_conns", config is None or config.mpxs_conns) is False:
        max_concurrent = 1
    client_stream, server_stream = trio.testing.memory_stream_pair()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                partial(
                    serve_connection,
                    recording_handler,
                    server_stream,
                    config=config,
                    **server_options,
                )
            )
            async with open_client(client_stream, max_concurrent=max_concurrent) as fastcgi:
                yield TestClient(
                    fastcgi,
                    base_url=base_url,
                    server_errors=server_errors,
                    raise_server_exceptions=raise_server_exceptions,
                )
            nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        raise _unwrap(group) from None


# -- a Request without a connection ------------------------------------------------


@final
class RequestOutput(Outbox):
    """What a request made by :func:`make_request` sent, as the web server
    would have received it.

    Attributes:
      events: every output event the request sent, in order
        (:class:`~trio_fastcgi.Stdout` and :class:`~trio_fastcgi.Stderr`;
        an empty one ends its stream).
    """

    def __init__(self) -> None:
        self.events: list[OutputEvent] = []

    async def send(self, event: OutputEvent) -> None:
        """Record *event* (a checkpoint, as a send to a connection is)."""
        await trio.lowlevel.checkpoint()
        self.events.append(event)

    async def send_many(self, events: Sequence[OutputEvent]) -> None:
        """Record *events*, in order, in one checkpoint (one write on a connection)."""
        await trio.lowlevel.checkpoint()
        self.events.extend(events)

    @property
    def stdout(self) -> bytes:
        """Everything written to ``FCGI_STDOUT``: the CGI head and the body."""
        return b"".join(event.data for event in self.events if type(event) is Stdout)

    @property
    def stderr(self) -> bytes:
        """Everything written to ``FCGI_STDERR``."""
        return b"".join(event.data for event in self.events if type(event) is Stderr)

    @property
    def stdout_ended(self) -> bool:
        """True once stdout was ended (by :meth:`~trio_fastcgi.Request.respond`,
        or by closing :attr:`~trio_fastcgi.Request.stdout`)."""
        return any(type(event) is Stdout and not event.data for event in self.events)

    @property
    def stderr_ended(self) -> bool:
        """True once :attr:`~trio_fastcgi.Request.stderr` was closed."""
        return any(type(event) is Stderr and not event.data for event in self.events)

    def response(self) -> CGIResponse:
        """:attr:`stdout` parsed as a CGI response (status, headers, body).

        Raises:
          trio_fastcgi.client.CGIResponseError: stdout is not a CGI response.
        """
        return parse_cgi_response(self.stdout)


def _raw_params(
    params: Mapping[str, str] | Iterable[tuple[bytes, bytes]],
) -> tuple[tuple[bytes, bytes], ...]:
    if isinstance(params, Mapping):
        items: list[tuple[bytes, bytes]] = []
        for name, value in params.items():
            if type(name) is not str or type(value) is not str:
                raise TypeError(
                    f"a params mapping must map str to str, not {name!r} to {value!r}; "
                    "give raw params as (bytes, bytes) pairs"
                )
            items.append(
                (name.encode("utf-8", "surrogateescape"), value.encode("utf-8", "surrogateescape"))
            )
        return tuple(items)
    pairs = tuple(params)
    for pair in pairs:
        if not (
            type(pair) is tuple
            and len(pair) == 2
            and type(pair[0]) is bytes
            and type(pair[1]) is bytes
        ):
            raise TypeError(f"raw params must be (bytes, bytes) pairs, not {pair!r}")
    return pairs


def make_request(
    params: Mapping[str, str] | Iterable[tuple[bytes, bytes]] = (),
    *,
    body: bytes = b"",
    data: bytes = b"",
    role: Role = Role.RESPONDER,
    request_id: int = 1,
    keep_conn: bool = True,
    input_buffer_size: int = DEFAULT_INPUT_BUFFER_SIZE,
) -> tuple[Request, RequestOutput]:
    """A :class:`~trio_fastcgi.Request` with no connection behind it, for
    unit tests of code that takes one, and a :class:`RequestOutput` that
    records what it sends.

    The request has exactly the *params* given (a ``{name: value}`` mapping,
    encoded as UTF-8 with ``surrogateescape``, or raw ``(name, value)`` byte
    pairs, kept in order with duplicates): nothing is added, so give
    ``CONTENT_LENGTH`` yourself if the code reads it (a *body* of another
    length then raises :class:`~trio_fastcgi.IncompleteInput` when read, as a
    body cut short does). Its stdin holds *body*
    and is already ended, as is a Filter's data stream, which holds *data*.
    Unlike a request the server makes, nothing cancels or finishes it: call
    the code under test, then look at the output. Example (pytest with
    ``trio_mode = true``)::

        import trio_fastcgi
        from trio_fastcgi.testing import make_request


        async def shout(request: trio_fastcgi.Request) -> None:
            text = await request.stdin.receive_all()
            await request.respond(text.upper(), headers={"X-Shouted": "yes"})


        async def test_shout() -> None:
            request, output = make_request({"REQUEST_METHOD": "POST"}, body=b"hi")
            await shout(request)
            assert output.stdout_ended
            response = output.response()
            assert response.status == 200
            assert response.header("X-Shouted") == "yes"
            assert response.body == b"HI"

    For a whole request through the real connection code (params a web
    server would send, errors turned into 500s), use :func:`open_test_client`.

    Raises:
      TypeError: *params* are neither ``str`` to ``str`` nor ``(bytes, bytes)``
        pairs, or *body* or *data* is not ``bytes``.
      ValueError: *request_id* is not in 1..65535, a *body* for an
        Authorizer (which has no stdin), or *data* for a role other than
        Filter.
    """
    role = Role(role)
    if type(body) is not bytes or type(data) is not bytes:
        raise TypeError("body and data must be bytes")
    if type(request_id) is not int or not 0 < request_id <= 0xFFFF:
        raise ValueError(f"request_id must be an int in 1..65535, not {request_id!r}")
    if body and role is Role.AUTHORIZER:
        raise ValueError("an Authorizer request has no stdin: give no body")
    if data and role is not Role.FILTER:
        raise ValueError(f"only a Filter request has a data stream, not a {role.name}")
    if input_buffer_size < 1:
        raise ValueError(f"input_buffer_size must be at least 1, not {input_buffer_size!r}")
    output = RequestOutput()
    request = Request._create(
        request_id=request_id,
        role=role,
        keep_conn=keep_conn,
        raw_params=_raw_params(params),
        outbox=output,
        input_buffer_size=input_buffer_size,
    )
    for stream, content in ((request.stdin, body), (request.data, data)):
        if not stream.at_eof:
            if content:
                stream._offer(content)  # the first chunk fits whatever the buffer size
            stream._offer(b"")
    return request, output
