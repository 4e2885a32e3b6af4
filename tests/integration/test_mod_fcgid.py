"""Apache httpd with mod_fcgid starting the ``trio-fastcgi`` command itself
(listening socket on fd 0), end to end: GET, a POST over mod_fcgid's default
128 KiB limit, one process for sequential requests, and an idle process
stopped and replaced by a new one.

Apache runs from the template docs/deploy/apache-fcgid.conf, exactly as the
docs show it.
"""

from __future__ import annotations

import os
import pwd
import random
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from importlib import metadata
from pathlib import Path

import httpx
import pytest
from packaging.requirements import Requirement

from tests.integration.apps.echo import GREETING
from tests.integration.configs import render, spawned_app_values
from tests.integration.harness import IS_ROOT, REPO_ROOT, http_client, running
from tests.integration.procs import IN_CI, ManagedProcess, free_port, wait_until_gone
from tests.integration.test_apache import APACHE_MODULES, apache_argv

pytestmark = pytest.mark.integration

KiB = 1024
#: The user test_apache.apache_argv runs httpd's children as under root.
APACHE_USER, APACHE_GROUP = "nobody", "nogroup"
IDLE_TIMEOUT = 2


def _imports_as_apache_user(python: str, pythonpath: str) -> bool:
    probe = "import trio_fastcgi._cli, tests.integration.apps.spawned_app"
    try:
        result = subprocess.run(
            [python, "-c", probe],
            env={"PYTHONPATH": pythonpath},
            cwd="/",
            capture_output=True,
            check=False,
            user=APACHE_USER if IS_ROOT else None,
            group=APACHE_GROUP if IS_ROOT else None,
        )
    except PermissionError:
        return False
    return result.returncode == 0


def _requirements() -> set[str]:
    """Distribution names trio_fastcgi needs at run time, recursively (the
    installed ``trio-fastcgi`` itself is left out: its code is copied from
    this checkout)."""
    todo = ["trio-fastcgi"]
    names: set[str] = set()
    while todo:
        requirement = Requirement(todo.pop())
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        if requirement.name in names:
            continue
        names.add(requirement.name)
        todo += metadata.requires(requirement.name) or []
    return names - {"trio-fastcgi"}


def _copy_for_apache_user(target: Path) -> str:
    """Copies of this checkout's code and of trio_fastcgi's dependencies in
    *target*; returns the PYTHONPATH that finds them."""
    code, site = target / "code", target / "site"
    ignore = shutil.ignore_patterns("__pycache__", "djangoproject")
    shutil.copytree(REPO_ROOT / "trio_fastcgi", code / "trio_fastcgi", ignore=ignore)
    # A compiled build (TRIO_FASTCGI_COMPILE=1) keeps its runtime beside the package.
    for library in REPO_ROOT.glob("trio_fastcgi__mypyc.*"):
        shutil.copy2(library, code / library.name)
    shutil.copytree(
        REPO_ROOT / "tests" / "integration" / "apps", code / "tests/integration/apps", ignore=ignore
    )
    for package in (code / "tests", code / "tests" / "integration"):
        (package / "__init__.py").touch()
    for name in _requirements():
        distribution = metadata.distribution(name)
        for file in distribution.files or []:
            source = Path(str(distribution.locate_file(file)))
            if ".." in file.parts or "__pycache__" in file.parts or not source.is_file():
                continue
            (site / file).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, site / file)
    subprocess.run(["chmod", "-R", "a+rX", str(target)], check=True)
    return os.pathsep.join([str(code), str(site)])


def _interpreter_for_apache_user(shared: Path) -> dict[str, str]:
    """The ``{{python}}``/``{{app}}``/``{{pythonpath}}`` values that work for
    the user mod_fcgid runs the command as. Under root that is nobody, who
    may not be able to enter this interpreter's or this checkout's directory
    (a pyenv under /root): then a system Python of the same version runs
    world-readable copies of the code and its dependencies."""
    values = spawned_app_values(sys.executable)
    if _imports_as_apache_user(values["python"], values["pythonpath"]):
        return values
    pythonpath = _copy_for_apache_user(shared)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    for python in (sys.executable, f"/usr/bin/python{version}"):
        if os.path.exists(python) and _imports_as_apache_user(python, pythonpath):
            return {**values, "python": python, "pythonpath": pythonpath}
    message = f"no Python {version} that {APACHE_USER} can run"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A scratch directory the Apache user can enter (pytest's tmp_path is
    private to root): mod_fcgid's process manager makes its sockets there."""
    directory = Path(tempfile.mkdtemp(prefix="trio-fastcgi-fcgid-"))
    directory.chmod(0o755)
    try:
        yield directory
    finally:
        shutil.rmtree(directory)


@asynccontextmanager
async def apache_fcgid(shared: Path) -> AsyncIterator[tuple[httpx.AsyncClient, ManagedProcess]]:
    """Run httpd from apache-fcgid.conf; yield an HTTP client and the process."""
    if not (APACHE_MODULES / "mod_fcgid.so").exists():
        message = f"mod_fcgid is not installed in {APACHE_MODULES}"
        pytest.fail(message) if IN_CI else pytest.skip(message)
    port = free_port()
    values = _interpreter_for_apache_user(shared / "python")
    tmp = shared / "httpd"
    tmp.mkdir()
    config = render(
        "apache-fcgid.conf",
        tmp,
        tmp=tmp,
        port=port,
        apache_modules=APACHE_MODULES,
        idle_timeout=IDLE_TIMEOUT,
        **values,
    )
    async with (
        running(apache_argv(config), port=port, log_path=tmp / "httpd.out") as process,
        http_client(port) as client,
    ):
        yield client, process


def _status_field(pid: int, name: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return line.split()[1]
    raise AssertionError(f"no {name} in /proc/{pid}/status")


async def test_mod_fcgid_spawns_the_command_on_fd0(shared_dir: Path) -> None:
    body = random.Random(31).randbytes(512 * KiB)
    async with apache_fcgid(shared_dir) as (client, httpd):
        whoami = await client.get("/app/whoami")
        assert whoami.status_code == 200, whoami.text
        info = whoami.json()
        # mod_fcgid's process manager (a child of httpd) started the command,
        # which serves in that process: no trio-fastcgi supervisor between.
        manager = info["ppid"]
        assert int(_status_field(manager, "PPid")) == httpd.pid
        if IS_ROOT:
            assert _status_field(info["pid"], "Uid") == str(pwd.getpwnam(APACHE_USER).pw_uid)
        hello = await client.get("/app/hello")
        params = await client.get("/app/params", params={"a": "b"})
        echoed = await client.post("/app/echo", content=body)
        again = await client.get("/app/whoami")
    assert info["fd0_family"] == "AF_UNIX"
    assert hello.content == GREETING
    received = params.json()
    assert received["SCRIPT_NAME"] == "/app"
    assert received["PATH_INFO"] == "/params"
    assert received["QUERY_STRING"] == "a=b"
    # Over the 128 KiB FcgidMaxRequestLen default: the template raises it.
    assert echoed.status_code == 200
    assert echoed.content == body
    assert again.json()["pid"] == info["pid"]


async def test_mod_fcgid_replaces_an_idle_process(shared_dir: Path) -> None:
    async with apache_fcgid(shared_dir) as (client, _):
        first = (await client.get("/app/whoami")).json()
        # FcgidIdleTimeout: mod_fcgid stops the idle process (polled, bounded:
        # its exit has no event we could wait on here).
        await wait_until_gone(first["pid"], "the idle process mod_fcgid should stop", 30.0)
        second = await client.get("/app/whoami")
        echoed = await client.post("/app/echo", content=b"after the respawn")
    assert second.status_code == 200, second.text
    assert second.json()["pid"] != first["pid"]
    assert second.json()["ppid"] == first["ppid"]
    assert echoed.content == b"after the respawn"
