"""Apache httpd in front of the application, end to end: mod_proxy_fcgi as a
Responder, and mod_authnz_fcgi with the application as the Authorizer.

Apache runs from the templates in docs/deploy/ (apache-responder.conf,
apache-authorizer.conf), exactly as the docs show them.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import trio

from tests.integration.apps.echo import GREETING, PASSWORD, TOKEN, USER, EchoApp
from tests.integration.configs import render
from tests.integration.harness import IS_ROOT, http_client, running, serve_app_tcp
from tests.integration.procs import IN_CI, free_port, require_binary
from trio_fastcgi import Role

pytestmark = pytest.mark.integration

APACHE_MODULES = Path("/usr/lib/apache2/modules")


def apache_argv(config: Path) -> list[str]:
    argv = [require_binary("apache2", "httpd"), "-f", str(config), "-DFOREGROUND"]
    if not APACHE_MODULES.is_dir():
        message = f"no Apache modules in {APACHE_MODULES}"
        pytest.fail(message) if IN_CI else pytest.skip(message)
    if IS_ROOT:
        # httpd refuses to serve as root; its children only talk TCP here.
        argv += ["-C", "User nobody", "-C", "Group nogroup"]
    return argv


@asynccontextmanager
async def apache(tmp_path: Path, template: str, app_port: int) -> AsyncIterator[httpx.AsyncClient]:
    """Run httpd from a docs/deploy template; yield an HTTP client for it."""
    port = free_port()
    config = render(
        template,
        tmp_path,
        tmp=tmp_path,
        port=port,
        app_port=app_port,
        apache_modules=APACHE_MODULES,
    )
    async with (
        running(apache_argv(config), port=port, log_path=tmp_path / "httpd.out"),
        http_client(port) as client,
    ):
        yield client


async def test_apache_proxy_fcgi_get(nursery: trio.Nursery, app: EchoApp, tmp_path: Path) -> None:
    app_port = await serve_app_tcp(nursery, app)
    async with apache(tmp_path, "apache-responder.conf", app_port) as client:
        hello = await client.get("/app/hello")
        params = await client.get("/app/params", params={"x": "y z"})
    assert hello.status_code == 200
    assert hello.content == GREETING
    assert params.status_code == 200
    received = params.json()
    assert received["REQUEST_METHOD"] == "GET"
    assert received["QUERY_STRING"] == "x=y+z"
    assert received["REQUEST_URI"].startswith("/app/params")
    assert app.stats.roles == [Role.RESPONDER, Role.RESPONDER]


async def test_apache_proxy_fcgi_post_body(
    nursery: trio.Nursery, app: EchoApp, tmp_path: Path
) -> None:
    app_port = await serve_app_tcp(nursery, app)
    body = random.Random(3).randbytes(512 * 1024)
    async with apache(tmp_path, "apache-responder.conf", app_port) as client:
        response = await client.post("/app/echo", content=body)
        empty = await client.post("/app/echo", content=b"")
    assert response.status_code == 200
    assert response.content == body
    assert empty.status_code == 200
    assert empty.content == b""


async def test_apache_authnz_fcgi_authorizer_protects_location(
    nursery: trio.Nursery, app: EchoApp, tmp_path: Path
) -> None:
    app_port = await serve_app_tcp(nursery, app, roles={Role.AUTHORIZER, Role.RESPONDER})
    async with apache(tmp_path, "apache-authorizer.conf", app_port) as client:
        anonymous = await client.get("/private/params")
        wrong = await client.get("/private/params", auth=(USER, "not-the-password"))
        unknown = await client.get("/private/params", auth=("mallory", PASSWORD))
        good = await client.get("/private/params", auth=(USER, PASSWORD))
    # Apache asks for credentials itself; the application only sees requests
    # that carry some.
    assert anonymous.status_code == 401
    assert wrong.status_code == 401
    assert unknown.status_code == 401
    assert good.status_code == 200
    params = good.json()
    # The Variable-AUTH_TOKEN header of the Authorizer's 200 reached the
    # protected request, which the same application served as a Responder.
    assert params["AUTH_TOKEN"] == TOKEN
    assert params["REMOTE_USER"] == USER
    assert app.stats.roles.count(Role.AUTHORIZER) == 3
    checks = app.stats.authorizer_params
    assert [check["REMOTE_USER"] for check in checks] == [USER, "mallory", USER]
    assert {check["FCGI_APACHE_ROLE"] for check in checks} == {"AUTHENTICATOR"}
    assert {check["FCGI_ROLE"] for check in checks} == {"AUTHORIZER"}
    assert not any("CONTENT_LENGTH" in check for check in checks)
    assert app.stats.roles.count(Role.RESPONDER) == 1


async def test_apache_authnz_fcgi_generic_authorizer_answers_the_client(
    nursery: trio.Nursery, app: EchoApp, tmp_path: Path
) -> None:
    """mod_authnz_fcgi's check_user_id mode is the FastCGI spec's Authorizer:
    the application's non-200 response reaches the client unchanged."""
    app_port = await serve_app_tcp(nursery, app, roles={Role.AUTHORIZER, Role.RESPONDER})
    async with apache(tmp_path, "apache-authorizer.conf", app_port) as client:
        anonymous = await client.get("/checked/params")
        wrong = await client.get("/checked/params", auth=(USER, "not-the-password"))
        good = await client.get("/checked/params", auth=(USER, PASSWORD))
    assert anonymous.status_code == 401
    # Apache adds its own challenge for AuthName next to the application's.
    assert 'Basic realm="trio-fastcgi"' in anonymous.headers["www-authenticate"]
    assert anonymous.content == b"credentials required\n"
    assert wrong.status_code == 403
    assert wrong.content == b"forbidden\n"
    assert good.status_code == 200
    params = good.json()
    assert params["AUTH_TOKEN"] == TOKEN
    assert params["REMOTE_USER"] == USER
    checks = app.stats.authorizer_params
    assert len(checks) == 3
    # Apache 2.4 calls this mode AUTHENTICATOR too (its check_user_id hook).
    assert [check.get("FCGI_APACHE_ROLE") for check in checks] == ["AUTHENTICATOR"] * 3
    # ... and passes Basic credentials as REMOTE_USER / REMOTE_PASSWD as well.
    assert [check.get("REMOTE_PASSWD") for check in checks] == [None, "not-the-password", PASSWORD]
    assert "HTTP_AUTHORIZATION" not in checks[0]
