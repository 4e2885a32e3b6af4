"""A FastCGI Authorizer: HTTP Basic authentication for a web server.

The web server asks this application whether a request may go ahead; the
application never sees the request's body or serves its content. Run it with
the Authorizer role enabled, e.g. ``python examples/authorizer.py`` (port
9001), and point Apache's mod_authnz_fcgi or lighttpd's ``"mode" =>
"authorizer"`` at it (docs/deploy/apache-authorizer.conf,
docs/deploy/lighttpd-authorizer.conf).

- Apache (as an authentication provider) sends the user name and password as
  ``REMOTE_USER`` and ``REMOTE_PASSWD``; lighttpd passes the client's
  ``Authorization`` header as ``HTTP_AUTHORIZATION``. Both are handled.
- Allowed: status 200, and ``AUTH_USER`` passed on to the request the web
  server then serves (as a param or environment variable of that request).
- Denied: 401 with a ``WWW-Authenticate`` challenge, which goes to the client.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac

import trio

import trio_fastcgi

# user name -> SHA-256 of the password (a real deployment would use a slow
# password hash such as hashlib.scrypt, and a user database).
USERS = {"alice": hashlib.sha256(b"wonderland").hexdigest()}


def basic_credentials(header: str) -> tuple[str, str] | None:
    """User name and password from an ``Authorization: Basic ...`` header."""
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, sep, password = base64.b64decode(encoded, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (user, password) if sep else None


def check_password(user: str, password: str) -> bool:
    expected = USERS.get(user)
    given = hashlib.sha256(password.encode()).hexdigest()
    return expected is not None and hmac.compare_digest(expected, given)


async def authorizer(request: trio_fastcgi.Request) -> None:
    params = request.params
    if "REMOTE_PASSWD" in params:  # Apache mod_authnz_fcgi, authenticator
        credentials: tuple[str, str] | None = (
            params.get("REMOTE_USER", ""),
            params["REMOTE_PASSWD"],
        )
    else:  # lighttpd, and Apache in authorizer mode
        credentials = basic_credentials(params.get("HTTP_AUTHORIZATION", ""))
    if credentials is not None and check_password(*credentials):
        await request.authorize(variables={"AUTH_USER": credentials[0]})
        return
    await request.respond(
        "Authentication required\n",
        status=401,
        headers={"WWW-Authenticate": 'Basic realm="example"'},
    )


if __name__ == "__main__":
    trio.run(
        functools.partial(
            trio_fastcgi.serve_tcp,
            authorizer,
            9001,
            host="127.0.0.1",
            roles={trio_fastcgi.Role.AUTHORIZER},
        )
    )
