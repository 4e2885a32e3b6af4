"""A real Django project behind a real nginx, through ``trio-fastcgi``.

The project (tests/integration/apps/djangoproject/) has the admin, a sqlite
database in the test's temporary directory, a multipart upload view, a
StreamingHttpResponse view and a view returning
``request.build_absolute_uri()``. nginx runs from the docs' templates on a
random (so non-default) port: the admin login checks Django's CSRF against the
Host nginx passes, port included, for every nginx template the docs show.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trio

from tests.integration.apps.payload import stream_bytes
from tests.integration.configs import DEPLOY_DIR, render_text
from tests.integration.harness import IS_ROOT, REPO_ROOT, http_client, running, upload_2mb
from tests.integration.procs import (
    ManagedProcess,
    free_port,
    require_binary,
    wait_for_tcp,
    wait_for_unix,
)

pytestmark = pytest.mark.integration

PROJECT_DIR = Path(__file__).parent / "apps" / "djangoproject"
TEMPLATES = {
    "nginx-tcp.conf": DEPLOY_DIR / "nginx-tcp.conf",
    "nginx-keepalive.conf": DEPLOY_DIR / "nginx-keepalive.conf",
    "nginx-unix.conf": DEPLOY_DIR / "nginx-unix.conf",
    "nginx-upstream.conf": REPO_ROOT / "docs" / "howto" / "nginx-upstream.conf",
}
USERNAME = "admin"
PASSWORD = "correct horse battery staple"
MiB = 1024 * 1024


class AppDidNotStart(RuntimeError):
    """``trio-fastcgi`` exited before it listened; the message holds its log."""


WSGI_ARGS = ["project.wsgi:application"]
WSGI = pytest.param(WSGI_ARGS, id="wsgi")
ASGI = pytest.param(["project.asgi:application", "--asgi-loop=auto"], id="asgi")


@dataclass
class Site:
    """nginx in front of the Django project: a client and its port."""

    client: httpx.AsyncClient
    port: int
    app: ManagedProcess


def django_env(data_dir: Path) -> dict[str, str]:
    return {
        **os.environ,
        # manage.py runs in the project's directory; the views import a helper
        # from the repository.
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])
        ),
        "DJANGO_TEST_DATA": str(data_dir),
        "DJANGO_SETTINGS_MODULE": "project.settings",
        "DJANGO_SUPERUSER_PASSWORD": PASSWORD,
    }


def prepare_database(data_dir: Path) -> None:
    """``manage.py migrate`` and a superuser, as a user would set them up."""
    env = django_env(data_dir)
    for command in (
        ["migrate", "--noinput"],
        ["createsuperuser", "--noinput", f"--username={USERNAME}", "--email=a@example.org"],
    ):
        subprocess.run(
            [sys.executable, "manage.py", *command],
            cwd=PROJECT_DIR,
            env=env,
            check=True,
            capture_output=True,
            timeout=120,
        )


def wait_until_listening(process: ManagedProcess, bind: str) -> None:
    try:
        if bind.startswith("unix:"):
            wait_for_unix(bind.removeprefix("unix:"), timeout=30)
        else:
            wait_for_tcp(int(bind.rsplit(":", 1)[1]), timeout=30, process=process.process)
    except (RuntimeError, TimeoutError) as exc:
        raise AppDidNotStart(f"{exc}\n{process.log()}") from exc


@asynccontextmanager
async def django_app(
    tmp_path: Path, app_args: list[str], bind: str, *extra: str
) -> AsyncIterator[ManagedProcess]:
    """``trio-fastcgi`` serving the project, stopped by its PID at the end."""
    argv = [
        sys.executable,
        "-m",
        "trio_fastcgi",
        *app_args,
        f"--app-dir={PROJECT_DIR}",
        f"--bind={bind}",
        *extra,
    ]
    process = ManagedProcess(
        argv, cwd=REPO_ROOT, env=django_env(tmp_path / "data"), log_path=tmp_path / "app.log"
    )
    try:
        await trio.to_thread.run_sync(wait_until_listening, process, bind)
        yield process
    finally:
        await trio.to_thread.run_sync(process.stop)


@asynccontextmanager
async def django_site(
    tmp_path: Path, app_args: list[str], template: str = "nginx-tcp.conf", *extra: str
) -> AsyncIterator[Site]:
    """The project migrated, served by ``trio-fastcgi`` and behind nginx."""
    (tmp_path / "data").mkdir()
    await trio.to_thread.run_sync(prepare_database, tmp_path / "data")
    port = free_port()
    values = {"tmp": str(tmp_path), "port": str(port)}
    if template == "nginx-unix.conf":
        socket_path = tmp_path / "app.sock"
        bind = f"unix:{socket_path}"
        values["app_socket"] = str(socket_path)
    else:
        app_port = free_port()
        bind = f"127.0.0.1:{app_port}"
        if template == "nginx-upstream.conf":  # both upstream servers: this app
            values["app_port_a"] = values["app_port_b"] = str(app_port)
        else:
            values["app_port"] = str(app_port)
    config = tmp_path / template
    config.write_text(render_text(TEMPLATES[template].read_text(), values))
    nginx = [require_binary("nginx"), "-c", str(config), "-e", str(tmp_path / "startup.log")]
    if IS_ROOT:
        nginx += ["-g", "user root;"]  # nobody cannot enter pytest's tmp_path
    async with (
        django_app(tmp_path, app_args, bind, *extra) as app,
        running(nginx, port=port, log_path=tmp_path / "nginx.out"),
        http_client(port) as client,
    ):
        yield Site(client, port, app)


async def admin_login(site: Site) -> None:
    """Log in to the admin as a browser does: GET the form, keep the CSRF
    cookie, POST it back with the token and a same-origin Origin/Referer."""
    client = site.client
    login_url = "/admin/login/?next=/admin/"
    form = await client.get(login_url)
    assert form.status_code == 200, form.text
    match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text)
    assert match, form.text
    assert "csrftoken" in client.cookies
    origin = f"http://127.0.0.1:{site.port}"
    answer = await client.post(
        login_url,
        data={
            "csrfmiddlewaretoken": match.group(1),
            "username": USERNAME,
            "password": PASSWORD,
            "next": "/admin/",
        },
        headers={"Origin": origin, "Referer": origin + login_url},
    )
    assert answer.status_code == 302, answer.text
    assert answer.headers["location"] == "/admin/"
    index = await client.get("/admin/")
    assert index.status_code == 200
    assert "Site administration" in index.text
    assert re.search(rf"Welcome,\s*<strong>{USERNAME}</strong>", index.text), index.text


async def absolute_uri_keeps_the_port(site: Site, prefix: str = "") -> None:
    answer = await site.client.get(f"{prefix}/absolute?x=1")
    assert answer.json() == {
        "absolute_uri": f"http://127.0.0.1:{site.port}{prefix}/absolute?x=1",
        "host": f"127.0.0.1:{site.port}",
        "script_name": prefix,
    }


async def stream_10mb(site: Site) -> None:
    size = 10 * MiB + 5
    digest = hashlib.sha256()
    received = 0
    async with site.client.stream("GET", f"/stream?size={size}&seed=7") as answer:
        assert answer.status_code == 200
        assert "content-length" not in answer.headers
        async for chunk in answer.aiter_bytes():
            digest.update(chunk)
            received += len(chunk)
    expected = hashlib.sha256(b"".join(stream_bytes(size, 7))).hexdigest()
    assert (received, digest.hexdigest()) == (size, expected)


@pytest.mark.parametrize("app_args", [WSGI, ASGI])
async def test_django_behind_nginx(tmp_path: Path, app_args: list[str]) -> None:
    async with django_site(tmp_path, app_args) as site:
        await admin_login(site)
        await absolute_uri_keeps_the_port(site)
        await upload_2mb(site.client)
        await stream_10mb(site)


@pytest.mark.parametrize("template", sorted(TEMPLATES))
async def test_django_csrf_with_every_nginx_template(tmp_path: Path, template: str) -> None:
    """The Host every template passes carries the port, so Django's CSRF
    accepts the admin login and absolute URLs keep the port."""
    async with django_site(tmp_path, WSGI_ARGS, template) as site:
        await admin_login(site)
        await absolute_uri_keeps_the_port(site)


async def test_django_wsgi_two_workers(tmp_path: Path) -> None:
    async with django_site(tmp_path, WSGI_ARGS, "nginx-keepalive.conf", "--workers=2") as site:
        await admin_login(site)
        await absolute_uri_keeps_the_port(site)
        await upload_2mb(site.client)
        await stream_10mb(site)
        # The session made by one worker is valid in the other: a few more
        # admin pages, spread over both by the kernel's accept.
        pages = [(await site.client.get("/admin/auth/user/")).status_code for _ in range(6)]
    assert pages == [200] * 6
    assert len(re.findall(r"is serving", site.app.log())) == 2, site.app.log()


async def test_django_mounted_under_a_prefix(tmp_path: Path) -> None:
    """``--script-name /app``: Django routes the rest of the path and builds
    its URLs (redirects, absolute URLs) under /app."""
    async with django_site(tmp_path, WSGI_ARGS, "nginx-tcp.conf", "--script-name=/app") as site:
        await absolute_uri_keeps_the_port(site, "/app")
        to_login = await site.client.get("/app/admin/")
        index = await site.client.get("/app/")
    assert to_login.status_code == 302
    assert to_login.headers["location"] == "/app/admin/login/?next=/app/admin/"
    assert index.text == "Hello from Django over FastCGI!\n"
