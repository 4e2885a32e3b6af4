"""_cgi: the one CGI head formatter, status-line table and builder of the
params a web server sends, which Request.respond, the adapters, the test
client, the dev server and the client's command line all use."""

from __future__ import annotations

import http

import pytest

from trio_fastcgi import Role
from trio_fastcgi._cgi import STATUS_LINES, format_cgi_head, request_params, status_line
from trio_fastcgi.asgi import _cgi_head as asgi_head
from trio_fastcgi.wsgi import _cgi_head as wsgi_head

# -- heads ------------------------------------------------------------------------


def test_status_line_has_the_reason_phrase_of_a_known_status() -> None:
    assert status_line(404) == "Status: 404 Not Found"
    assert status_line(http.HTTPStatus.IM_A_TEAPOT) == "Status: 418 I'm a Teapot"
    assert status_line(599) == "Status: 599"
    assert len(STATUS_LINES) == len({status.value for status in http.HTTPStatus})


def test_format_cgi_head_from_pairs_or_a_mapping() -> None:
    expected = b"Status: 201 Created\r\nX-A: 1\r\nX-B: two\r\n\r\n"
    assert format_cgi_head(201, [("X-A", "1"), ("X-B", "two")]) == expected
    assert format_cgi_head(201, (("X-A", "1"), ("X-B", "two"))) == expected
    assert format_cgi_head(201, {"X-A": "1", "X-B": "two"}) == expected
    assert format_cgi_head(201, iter([("X-A", "1"), ("X-B", "two")])) == expected
    assert format_cgi_head(http.HTTPStatus.CREATED, []) == b"Status: 201 Created\r\n\r\n"


def test_format_cgi_head_takes_a_whole_wsgi_status_as_given() -> None:
    assert format_cgi_head("299 Odd", [("X", "é")]) == b"Status: 299 Odd\r\nX: \xe9\r\n\r\n"
    assert format_cgi_head(299, []) == b"Status: 299\r\n\r\n"


@pytest.mark.parametrize(
    ("name", "value"),
    [("", "x"), ("A:B", "x"), ("A\nB", "x"), ("A\rB", "x"), ("A", "x\ny"), ("A", "x\ry")],
)
def test_format_cgi_head_refuses_a_header_that_would_break_the_head(name: str, value: str) -> None:
    with pytest.raises(ValueError, match="invalid header"):
        format_cgi_head(200, [(name, value)])


def test_format_cgi_head_refuses_what_is_not_latin1_text() -> None:
    with pytest.raises(TypeError):
        format_cgi_head(200, [(b"A", "x")])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        format_cgi_head(200, [("A", 1)])  # type: ignore[list-item]
    with pytest.raises(UnicodeEncodeError):
        format_cgi_head(200, [("A", "\u2603")])


def test_the_adapters_write_the_same_head_as_request_respond() -> None:
    text = [("Content-Type", "text/plain"), ("X-Latin", "caf\xe9")]
    raw = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in text]
    head = format_cgi_head(200, text)
    assert asgi_head(200, raw) == head
    assert asgi_head(200, [(bytearray(n), memoryview(v)) for n, v in raw]) == head
    assert wsgi_head("200 OK", text) == head


@pytest.mark.parametrize(
    ("name", "value"),
    [("", "x"), ("A:B", "x"), ("A\r", "x"), ("A\nB", "x"), ("A", "x\ry"), ("A", "x\n")],
)
def test_the_asgi_head_refuses_each_header_the_formatter_refuses(name: str, value: str) -> None:
    with pytest.raises(ValueError, match="invalid header") as text_error:
        format_cgi_head(200, [(name, value)])
    with pytest.raises(ValueError, match="invalid header") as bytes_error:
        asgi_head(200, [(name.encode("latin-1"), value.encode("latin-1"))])
    assert str(bytes_error.value) == str(text_error.value)


def test_the_asgi_head_status_line() -> None:
    assert asgi_head(404, []) == format_cgi_head(404, []) == b"Status: 404 Not Found\r\n\r\n"
    assert asgi_head(299, []) == b"Status: 299\r\n\r\n"


def test_the_adapters_refuse_what_the_formatter_refuses() -> None:
    with pytest.raises(ValueError, match="invalid header"):
        asgi_head(200, [(b"A", b"x\r\nInjected: 1")])
    with pytest.raises(ValueError, match="invalid header"):
        wsgi_head("200 OK", [("A:", "x")])
    with pytest.raises(TypeError):
        wsgi_head("200 OK", [["A", "x"]])  # PEP 3333: tuples
    with pytest.raises(TypeError):
        wsgi_head("200 OK", [("A", b"x")])  # PEP 3333: native strings


# -- params -----------------------------------------------------------------------


def params(**kwargs: object) -> dict[str, str]:
    """request_params with the required arguments filled in, decoded."""
    arguments: dict[str, object] = {
        "server": ("127.0.0.1", 8000),
        "software": "test/1",
        **kwargs,
    }
    method = arguments.pop("method", "GET")
    uri = arguments.pop("uri", "/")
    built = request_params(method, uri, **arguments)  # type: ignore[arg-type]
    return {name.decode("latin-1"): value.decode("latin-1") for name, value in built.items()}


def test_params_of_a_request_like_nginx_stock_params() -> None:
    got = params(
        method="POST",
        uri="/a%20b/c?x=1&y=%2F",
        headers=[("Host", "example.org:8000"), ("Accept", "a")],
        client=("10.0.0.9", 5000),
        body_length=3,
    )
    assert got == {
        "GATEWAY_INTERFACE": "CGI/1.1",
        "SERVER_SOFTWARE": "test/1",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REQUEST_SCHEME": "http",
        "REQUEST_METHOD": "POST",
        "REQUEST_URI": "/a%20b/c?x=1&y=%2F",
        "DOCUMENT_URI": "/a%20b/c",
        "SCRIPT_NAME": "",
        "PATH_INFO": "/a b/c",
        "QUERY_STRING": "x=1&y=%2F",
        "SERVER_ADDR": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_NAME": "example.org",
        "REMOTE_ADDR": "10.0.0.9",
        "REMOTE_PORT": "5000",
        "CONTENT_LENGTH": "3",
        "HTTP_HOST": "example.org:8000",
        "HTTP_ACCEPT": "a",
    }


def test_params_split_the_path_at_the_mount_point() -> None:
    # The test client's script_name.
    got = params(uri="/app/items/caf%C3%A9?x=1", script_name="/app")
    assert (got["SCRIPT_NAME"], got["PATH_INFO"]) == ("/app", "/items/caf\xc3\xa9")
    assert params(uri="/app", script_name="/app")["PATH_INFO"] == ""
    assert params(uri="/app/x", script_name="/app/")["PATH_INFO"] == "/x"
    with pytest.raises(ValueError, match="not under script_name"):
        params(uri="/application", script_name="/app")


def test_params_with_the_whole_path_as_the_script() -> None:
    # The command line's cgi-fcgi-like params: no PATH_INFO.
    got = params(uri="/srv/a%20b.php?a=1", script_name=None)
    assert got["SCRIPT_NAME"] == "/srv/a%20b.php"
    assert "PATH_INFO" not in got


def test_params_headers_repeats_joined_content_fields_last_wins() -> None:
    got = params(
        headers=[
            ("X-A", "1"),
            ("x-a", "2"),
            (" Accept ", "t"),
            ("Content-Type", "a/b"),
            ("Content-Type", "c/d"),
            ("Content-Length", "9"),
        ],
        body_length=3,
    )
    assert got["HTTP_X_A"] == "1, 2"
    assert got["HTTP_ACCEPT"] == "t"
    assert (got["CONTENT_TYPE"], got["CONTENT_LENGTH"]) == ("c/d", "9")
    assert "HTTP_CONTENT_TYPE" not in got


def test_params_drop_unsafe_headers_only_when_asked() -> None:
    headers = [("X_Sneaky", "1"), ("Proxy", "http://evil"), ("X-Fine", "2")]
    # The dev server, like nginx, drops them.
    dropped = params(headers=headers, drop_unsafe_headers=True)
    assert "HTTP_X_SNEAKY" not in dropped
    assert "HTTP_PROXY" not in dropped
    assert dropped["HTTP_X_FINE"] == "2"
    # The test client passes what the test gives.
    kept = params(headers=headers)
    assert (kept["HTTP_X_SNEAKY"], kept["HTTP_PROXY"]) == ("1", "http://evil")


@pytest.mark.parametrize(
    ("host", "server_name"),
    [("example.org:8000", "example.org"), ("[::1]:8000", "[::1]"), ("h", "h"), (None, "::1")],
)
def test_params_server_name_from_the_host_header(host: str | None, server_name: str) -> None:
    headers = [] if host is None else [("Host", host)]
    assert params(headers=headers, server=("::1", 80))["SERVER_NAME"] == server_name
    given = params(headers=headers, server=("::1", 80), server_name="localhost")
    assert given["SERVER_NAME"] == "localhost"


def test_params_of_the_client_and_scheme() -> None:
    assert "REMOTE_ADDR" not in params()
    no_port = params(client=("127.0.0.1", None))
    assert no_port["REMOTE_ADDR"] == "127.0.0.1"
    assert "REMOTE_PORT" not in no_port
    assert "HTTPS" not in params()
    secure = params(scheme="https")
    assert (secure["REQUEST_SCHEME"], secure["HTTPS"]) == ("https", "on")
    assert params(protocol=b"HTTP/1.0")["SERVER_PROTOCOL"] == "HTTP/1.0"


def test_params_of_an_authorizer() -> None:
    got = params(uri="/app/x", script_name="/app", body_length=0, role=Role.AUTHORIZER)
    assert got["FCGI_ROLE"] == "AUTHORIZER"
    for name in ("CONTENT_LENGTH", "PATH_INFO", "SCRIPT_NAME"):
        assert name not in got
    assert "FCGI_ROLE" not in params(role=Role.RESPONDER)


def test_params_encoding_str_as_environ_and_bytes_as_given() -> None:
    # str like os.environ (UTF-8, surrogateescape); header text as latin-1;
    # bytes (h11's, or the command line's own encoding) untouched.
    built = request_params(
        "GET",
        "/caf\xe9/\udcff",
        headers=[("X-A", "\xe9"), (b"X-B", b"\xc3\xa9")],
        server=("127.0.0.1", 80),
        software="t",
    )
    assert built[b"REQUEST_URI"] == b"/caf\xc3\xa9/\xff"
    assert built[b"HTTP_X_A"] == b"\xe9"
    assert built[b"HTTP_X_B"] == b"\xc3\xa9"
    raw = request_params(b"GET", b"/\xff", server=("127.0.0.1", 80), software="t")
    assert raw[b"REQUEST_URI"] == raw[b"PATH_INFO"] == b"/\xff"
