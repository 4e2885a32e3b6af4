"""The documentation's code, run.

- The tutorial (docs/tutorial.rst) is replayed command by command: its
  console blocks are parsed, every ``$`` command is run in a temporary
  directory holding the tutorial's files (examples/tutorial/ and
  docs/deploy/nginx-tcp.conf), against a real nginx, and every output the
  page shows is compared with what the command printed. A command the test
  does not know how to run fails the test, so the page cannot grow an
  untested step.
- The example the sans-IO reference page shows gives the events its comment
  says.
- Every public name of the package is documented in the reference.
"""

from __future__ import annotations

import ast
import functools
import http.client
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import types
import urllib.parse
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pytest
import trio
import trio.testing

import trio_fastcgi
from examples import authorizer, sansio_demo, testing_howto, text_filter
from tests.integration.configs import render_text
from tests.integration.harness import IS_ROOT, http_client, running
from tests.integration.procs import (
    ManagedProcess,
    free_port,
    require_binary,
    wait_for_tcp,
)
from trio_fastcgi import Role
from trio_fastcgi.testing import open_test_client

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
TUTORIAL = DOCS / "tutorial.rst"
TUTORIAL_FILES = [
    REPO / "examples" / "tutorial" / "hello.py",
    REPO / "examples" / "tutorial" / "app.py",
    REPO / "examples" / "tutorial" / "test_app.py",
    REPO / "examples" / "tutorial" / "run-nginx.sh",
    DOCS / "deploy" / "nginx-tcp.conf",
]

# -- the sans-IO example ------------------------------------------------------------


def test_sansio_demo_gives_the_documented_events() -> None:
    events, reply = sansio_demo.main()
    assert events == [
        trio_fastcgi.BeginRequest(1, trio_fastcgi.Role.RESPONDER, keep_conn=False),
        trio_fastcgi.Params(1, ((b"REQUEST_METHOD", b"GET"),)),
        trio_fastcgi.Stdin(1, b""),
    ]
    # The comment in the example shows the same events.
    source = (REPO / "examples" / "sansio_demo.py").read_text()
    for event in events:
        assert repr(event) in source.replace("\n    #            ", " ")
    # STDOUT with the response, the empty STDOUT, then END_REQUEST (id 1).
    assert reply.startswith(b"\x01\x06\x00\x01")
    assert reply.endswith(b"\x01\x03\x00\x01\x00\x08\x00\x00" + bytes(8))
    assert b"hello\n" in reply


# -- the testing how-to's tests, and through them the role examples ----------------

test_howto_greeting = testing_howto.test_greeting
test_howto_upper = testing_howto.test_upper
test_howto_exceptions_reach_the_test = testing_howto.test_exceptions_reach_the_test
test_howto_exceptions_become_500 = testing_howto.test_exceptions_become_500
test_howto_authorizer = testing_howto.test_authorizer
test_howto_filter = testing_howto.test_filter
test_howto_abort_cancels_the_countdown = testing_howto.test_abort_cancels_the_countdown
test_howto_over_tcp = testing_howto.test_over_tcp


def test_howto_runs_every_example_test() -> None:
    defined = {name for name in vars(testing_howto) if name.startswith("test_")}
    run_here = {
        value.__name__ for name, value in globals().items() if name.startswith("test_howto_")
    }
    assert defined <= run_here


async def test_authorizer_example_takes_apache_credentials() -> None:
    async with open_test_client(authorizer.authorizer, roles={Role.AUTHORIZER}) as client:
        allowed = await client.authorize(
            "/private/", params={"REMOTE_USER": "alice", "REMOTE_PASSWD": "wonderland"}
        )
        denied = await client.authorize(
            "/private/", params={"REMOTE_USER": "alice", "REMOTE_PASSWD": "nope"}
        )
        anonymous = await client.authorize("/private/")
    assert allowed.status == 200
    assert allowed.variables == {"AUTH_USER": "alice"}
    assert denied.status == anonymous.status == 401


async def test_text_filter_example_decodes_across_records() -> None:
    # 1 + 2 * 40000 bytes: a two-byte character straddles the first record
    # boundary (65,528 bytes), and must still come out whole.
    data = ("a" + "é" * 40000).encode()
    async with open_test_client(text_filter.text_to_html, roles={Role.FILTER}) as client:
        response = await client.filter("/notes.txt", data)
    assert "\ufffd" not in response.text
    assert response.text.count("é") == 40000


async def test_text_filter_example_refuses_a_short_file() -> None:
    async with open_test_client(
        text_filter.text_to_html, roles={Role.FILTER}, raise_server_exceptions=False
    ) as client:
        response = await client.filter("/notes.txt", b"short", params={"FCGI_DATA_LENGTH": "100"})
    assert response.app_status == 1  # IncompleteInput escaped the handler


# -- the front page's example ----------------------------------------------------------


def _code_blocks(rst: str, language: str) -> list[str]:
    blocks = re.findall(rf"^\.\. code-block:: {language}\n\n((?:   .*\n|\n)+)", rst, re.MULTILINE)
    return ["\n".join(line[3:] for line in block.splitlines()) for block in blocks]


async def test_front_page_example_serves(nursery: trio.Nursery) -> None:
    (code,) = _code_blocks((DOCS / "index.rst").read_text(), "python")
    module = ast.parse(code)
    *definitions, last = module.body
    # The last line serves, on loopback only (FastCGI has no authentication).
    assert ast.unparse(last) == (
        "trio.run(functools.partial(trio_fastcgi.serve_tcp, handler, 9000, host='127.0.0.1'))"
    )
    namespace: dict[str, object] = {}
    exec(compile(ast.Module(definitions, []), "index.rst", "exec"), namespace)
    handler = namespace["handler"]
    assert callable(handler)
    # Serve it as that line does, on a free port instead of 9000.
    listeners = await nursery.start(
        functools.partial(trio_fastcgi.serve_tcp, handler, 0, host="127.0.0.1")
    )
    port = listeners[0].socket.getsockname()[1]
    async with trio_fastcgi.client.open_tcp_client("127.0.0.1", port) as client:
        response = await client.request({"REQUEST_METHOD": "GET", "REQUEST_URI": "/"})
    assert response.parse_cgi().body == b"Hello, world!\n"


# -- the README's two set-up commands ---------------------------------------------------

README = REPO / "README.md"


def readme_commands() -> tuple[str, str]:
    """The README's set-up commands: its only ``sh`` blocks, one line each; the
    first installs and runs the hello example, the second installs and runs the
    tests."""
    blocks = re.findall(r"^```sh\n(.*?)^```$", README.read_text(), re.MULTILINE | re.DOTALL)
    assert len(blocks) == 2, blocks
    lines = [block.strip() for block in blocks]
    assert all("\n" not in line for line in lines), lines
    return lines[0], lines[1]


# Both create the virtual environment without ensurepip (Debian without
# python3-venv) and install into it with the outer pip (Debian's system Python
# refuses installs: externally-managed-environment).
_README_VENV = "python3 -m venv --without-pip .venv && python3 -m pip --python .venv/bin/python "


def test_readme_example_command_installs_the_checkout_and_runs_hello() -> None:
    example, _ = readme_commands()
    assert example == (
        f"{_README_VENV}install -e . && .venv/bin/python -m trio_fastcgi dev examples.hello:handler"
    )
    # tests/test_packaging.py runs it in a copy of the checkout.


def test_readme_test_command_is_the_one_ci_runs() -> None:
    _, tests = readme_commands()
    assert tests.startswith(_README_VENV)
    assert tests.endswith(" && .venv/bin/python -m pytest")
    ci_lines = (REPO / ".ci" / "run").read_text().splitlines()
    assert tests in ci_lines


def test_readme_links_the_docs_and_the_tutorial() -> None:
    links = set(re.findall(r"\]\(([^)]+)\)", README.read_text()))
    assert {"docs/index.rst", "docs/tutorial.rst"} <= links
    for link in links:
        if not link.startswith("http"):
            assert (REPO / link).exists(), link


# -- the reference covers the public API ----------------------------------------------

_DIRECTIVE = re.compile(
    r"^\s*\.\. (?:auto(?:function|class|exception|data|attribute)|"
    r"(?:py:)?(?:function|class|exception|data))::\s+([\w.]+)",
    re.MULTILINE,
)
_AUTOMODULE = re.compile(r"^\s*\.\. automodule::\s+([\w.]+)", re.MULTILINE)


def _reference_text() -> str:
    return "\n".join(path.read_text() for path in sorted((DOCS / "reference").glob("*.rst")))


def test_reference_documents_every_public_name() -> None:
    documented = set(_DIRECTIVE.findall(_reference_text()))
    public = {
        name
        for name in dir(trio_fastcgi)
        if not name.startswith("_")
        and not isinstance(getattr(trio_fastcgi, name), types.ModuleType)
    }
    assert public  # the package's namespace was read
    assert sorted(public - documented) == []


def test_reference_documents_every_public_module() -> None:
    automodules = set(_AUTOMODULE.findall(_reference_text()))
    public_modules = {
        f"trio_fastcgi.{path.stem}"
        for path in (REPO / "trio_fastcgi").glob("*.py")
        if not path.name.startswith("_")
    }
    assert sorted(public_modules - automodules) == []
    # automodule documents a module's __all__, so each must have one.
    for module_name in public_modules:
        tree = ast.parse((REPO / "trio_fastcgi" / f"{module_name[13:]}.py").read_text())
        assert any(
            isinstance(node, ast.Assign)
            and any(
                isinstance(target, ast.Name) and target.id == "__all__" for target in node.targets
            )
            for node in tree.body
        ), f"{module_name} has no __all__"


# -- the tutorial, replayed -----------------------------------------------------------


@dataclass
class Command:
    line: str
    output: list[str] = field(default_factory=list)


def console_commands(rst: str) -> list[Command]:
    """The ``$`` commands of every ``code-block:: console`` in *rst*, in order,
    each with the output lines shown under it."""
    commands: list[Command] = []
    lines = rst.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        index += 1
        if line.strip() != ".. code-block:: console":
            continue
        indent = len(line) - len(line.lstrip())
        block: list[str] = []
        while index < len(lines):
            text = lines[index]
            if text.strip() and len(text) - len(text.lstrip()) <= indent:
                break
            block.append(text)
            index += 1
        body_indent = min(len(t) - len(t.lstrip()) for t in block if t.strip())
        for text in (t[body_indent:] for t in block):
            if text.startswith("$ "):
                commands.append(Command(text[2:]))
            elif commands and (text or commands[-1].output):
                commands[-1].output.append(text)
        for command in commands:
            while command.output and not command.output[-1]:
                command.output.pop()
    return commands


def test_console_commands_parses_blocks() -> None:
    rst = ".. code-block:: console\n\n   $ echo a\n   a\n\n   b\n   $ true\n\nText\n"
    assert console_commands(rst) == [Command("echo a", ["a", "", "b"]), Command("true")]


# Commands that set up the environment the test already runs in.
NOT_RUN = {
    "mkdir tutorial && cd tutorial": "the test runs in its own temporary directory",
    "python3 -m venv .venv": "the test runs in the suite's environment",
    ". .venv/bin/activate": "the test runs in the suite's environment",
    "python3 -m pip install ../trio-fastcgi": "the suite runs on the installed checkout",
    "sudo apt-get install nginx python3-venv": "CI installs nginx (.ci/run)",
    "python3 -m pip install pytest pytest-trio": "installed by the test extra",
}


def curl(arguments: list[str]) -> bytes:
    """What ``curl [-d DATA] [--max-time S] URL`` prints: the response body."""
    data: bytes | None = None
    max_time: float | None = None
    url = None
    args = iter(arguments)
    for arg in args:
        if arg == "-d":
            data = next(args).encode()
        elif arg == "--max-time":
            max_time = float(next(args))
        elif not arg.startswith("-") and url is None:
            url = arg
        else:
            raise AssertionError(f"curl option {arg!r} is not emulated by this test")
    assert url is not None
    parts = urllib.parse.urlsplit(url)
    timeout = max_time if max_time is not None else 30.0
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    headers = {"Content-Type": "application/x-www-form-urlencoded"} if data else {}
    deadline = time.monotonic() + timeout
    body = b""
    try:
        connection.request("POST" if data else "GET", target, body=data, headers=headers)
        with connection.getresponse() as response:  # closing it closes the socket
            while chunk := response.read1(65536):
                body += chunk
                if time.monotonic() >= deadline:
                    raise TimeoutError
    except TimeoutError:
        if max_time is None:
            raise
    finally:
        connection.close()
    return body


def _wait_for_log(process: ManagedProcess, text: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = process.log()
        if text in log:
            return log
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not in the log:\n{process.log()}")


class TutorialSession:
    """Runs the tutorial's commands the way a reader would, in *directory*."""

    def __init__(self, directory: Path, stack: ExitStack) -> None:
        self.directory = directory
        self.stack = stack
        self.app_port = free_port()
        self.http_port = free_port()
        self.dev_port = free_port()
        self.app: ManagedProcess | None = None
        self.env = dict(os.environ, PYTHONUNBUFFERED="1")
        nginx_dir = str(Path(require_binary("nginx")).parent)
        self.env["PATH"] = os.pathsep.join([nginx_dir, self.env.get("PATH", "")])

    def ports(self, text: str) -> str:
        """The page's ports replaced by the free ports of this test."""
        return (
            text.replace("127.0.0.1:9000", f"127.0.0.1:{self.app_port}")
            .replace("127.0.0.1:8080", f"127.0.0.1:{self.http_port}")
            .replace("127.0.0.1:8000", f"127.0.0.1:{self.dev_port}")
        )

    def start(self, name: str, argv: list[str], port: int, env: dict[str, str]) -> ManagedProcess:
        process = ManagedProcess(
            argv, cwd=self.directory, env=env, log_path=self.directory / f"{name}.log"
        )
        self.stack.callback(process.stop)
        try:
            wait_for_tcp(port, process=process.process)
        except (RuntimeError, TimeoutError) as exc:
            raise AssertionError(f"{argv} did not start: {exc}\n{process.log()}") from exc
        return process

    def run(self, command: Command) -> None:
        line = command.line
        if line in NOT_RUN:
            assert not command.output, f"output of {line!r} would not be checked"
            return
        expected = [self.ports(text) for text in command.output]
        argv = shlex.split(self.ports(line))
        if line in ("python3 hello.py", "python3 app.py"):
            if self.app is not None:
                self.app.stop()  # "Stop hello.py with Ctrl+C"
            argv = [sys.executable, argv[1], str(self.app_port)]
            self.app = self.start(argv[1], argv, self.app_port, self.env)
            log = _wait_for_log(self.app, expected[0])
            assert log.splitlines()[: len(expected)] == expected
        elif line == "sh run-nginx.sh":
            env = dict(self.env, HTTP_PORT=str(self.http_port), APP_PORT=str(self.app_port))
            nginx = self.start("run-nginx", ["sh", "run-nginx.sh"], self.http_port, env)
            assert nginx.log().splitlines()[: len(expected)] == expected
        elif argv[:2] == ["trio-fastcgi", "dev"]:
            argv = [sys.executable, "-m", "trio_fastcgi", *argv[1:], "--port", str(self.dev_port)]
            self.start("dev", argv, self.dev_port, self.env)
        elif argv[:3] == ["python3", "-m", "trio_fastcgi.client"]:
            result = subprocess.run(
                [sys.executable, *argv[1:]],
                cwd=self.directory,
                env=self.env,
                capture_output=True,
                timeout=30,
                check=False,
            )
            assert result.returncode == 0, result.stderr
            assert result.stdout.decode().replace("\r\n", "\n").splitlines() == expected
        elif argv[0] == "curl":
            body = curl(argv[1:])
            if "--max-time" in argv:
                # The countdown streams through nginx: curl got its first
                # lines, and gave up long before the end.
                assert body.startswith(b"5...\n")
                assert b"liftoff" not in body
                # The tutorial shows the application's log line instead.
                assert self.app is not None
                _wait_for_log(self.app, "countdown cancelled: the client went away")
                assert "INFO root: countdown cancelled: the client went away" in TUTORIAL_TEXT
            else:
                assert body.decode().splitlines() == expected
        elif line == "python3 -m pytest test_app.py":
            result = subprocess.run(
                [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "test_app.py"],
                cwd=self.directory,
                env=self.env,
                capture_output=True,
                timeout=120,
                check=False,
            )
            assert result.returncode == 0, result.stdout.decode()
            assert " 3 passed" in result.stdout.decode()
        else:
            raise AssertionError(f"the tutorial's command {line!r} is not run by this test")

    def graceful_stop(self) -> None:
        """Step 8: Ctrl+C during a countdown; the countdown still completes."""
        app = self.app
        assert app is not None
        connection = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=15)
        try:
            connection.request("GET", "/countdown")
            response = connection.getresponse()
            body = response.read1(65536)  # "5...": the request is in flight
            os.kill(app.pid, signal.SIGINT)
            body += response.read()
        finally:
            connection.close()
        assert body == b"5...\n4...\n3...\n2...\n1...\nliftoff!\n"
        assert app.process.wait(30) == 0
        log = app.log()
        for expected in (
            "INFO root: SIGINT: finishing the requests in flight",
            "INFO trio_fastcgi: graceful shutdown: no longer accepting; 1 connection(s) open",
            "INFO root: stopped",
        ):
            assert expected in log
            assert expected in TUTORIAL_TEXT


TUTORIAL_TEXT = TUTORIAL.read_text()


@pytest.mark.integration
def test_frameworks_howto_commands_work(tmp_path: Path) -> None:
    """docs/howto/frameworks.rst: the trio-fastcgi commands serve the Flask
    and Starlette examples, and the FastCGI client gets what the page shows."""
    commands = console_commands((DOCS / "howto" / "frameworks.rst").read_text())
    assert len(commands) == 4  # the page was parsed
    port = free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with ExitStack() as stack:
        for number, command in enumerate(commands):
            argv = shlex.split(command.line.replace("127.0.0.1:9000", f"127.0.0.1:{port}"))
            if argv[0] == "trio-fastcgi":
                server = ManagedProcess(
                    [sys.executable, "-m", "trio_fastcgi", *argv[1:]],
                    cwd=REPO,
                    env=env,
                    log_path=tmp_path / f"server-{number}.log",
                )
                stack.callback(server.stop)
                wait_for_tcp(port, process=server.process)
            elif argv[:3] == ["python3", "-m", "trio_fastcgi.client"]:
                result = subprocess.run(
                    [sys.executable, *argv[1:]],
                    env=env,
                    capture_output=True,
                    timeout=60,
                    check=False,
                )
                assert result.returncode == 0, result.stderr
                assert result.stdout.decode().splitlines() == command.output
                server.stop()  # the next command starts another server on the port
            else:
                raise AssertionError(f"command {command.line!r} is not run by this test")


@pytest.fixture
def tutorial_dir(tmp_path: Path) -> Path:
    for path in TUTORIAL_FILES:
        shutil.copy(path, tmp_path / path.name)
    return tmp_path


@pytest.mark.integration
def test_tutorial_runs_as_written(tutorial_dir: Path) -> None:
    commands = console_commands(TUTORIAL_TEXT)
    assert len(commands) >= 10  # the page was parsed
    with ExitStack() as stack:
        session = TutorialSession(tutorial_dir, stack)
        for command in commands:
            session.run(command)
        session.graceful_stop()


# Puts the socket it is given on fd 3 and sets LISTEN_FDS/LISTEN_PID the way
# systemd does, then executes the command line (keeping its pid).
_SOCKET_ACTIVATION = """
import os, sys
os.dup2(int(sys.argv[1]), 3)
os.environ["LISTEN_FDS"] = "1"
os.environ["LISTEN_PID"] = str(os.getpid())
os.execvp(sys.argv[2], sys.argv[2:])
"""


def _unit_value(unit: str, key: str) -> str:
    values = [line.split("=", 1)[1] for line in unit.splitlines() if line.startswith(f"{key}=")]
    assert len(values) == 1, key
    return values[0]


@pytest.mark.integration
def test_systemd_units_serve_under_socket_activation(tmp_path: Path) -> None:
    service = (DOCS / "howto" / "systemd" / "myapp.service").read_text()
    socket_unit = (DOCS / "howto" / "systemd" / "myapp.socket").read_text()
    assert _unit_value(socket_unit, "ListenStream") == "/run/myapp/app.sock"
    assert _unit_value(service, "ExecReload") == "/bin/kill -HUP $MAINPID"
    assert _unit_value(service, "KillMode") == "mixed"
    workdir = Path(_unit_value(service, "WorkingDirectory"))
    exec_start = shlex.split(_unit_value(service, "ExecStart"))
    assert exec_start[0] == str(workdir / ".venv" / "bin" / "trio-fastcgi")
    assert "--bind" not in exec_start
    # /srv/myapp becomes a temporary directory with a myapp.py in it.
    (tmp_path / "myapp.py").write_text(
        "async def app(request):\n    await request.respond('hello from myapp\\n')\n"
    )
    path = str(tmp_path / "app.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen()
    argv = [sys.executable, "-c", _SOCKET_ACTIVATION, str(listener.fileno())]
    argv += [sys.executable, "-m", "trio_fastcgi", *exec_start[1:]]
    server = ManagedProcess(
        argv, cwd=tmp_path, log_path=tmp_path / "service.log", pass_fds=[listener.fileno()]
    )
    listener.close()  # systemd keeps its copy; here the service's copy is enough
    try:

        def request() -> str:
            result = subprocess.run(
                [sys.executable, "-m", "trio_fastcgi.client", path, "/", "--body-only"],
                capture_output=True,
                timeout=60,
                check=False,
            )
            assert result.returncode == 0, (result.stderr, server.log())
            return result.stdout.decode()

        assert request() == "hello from myapp\n"
        os.kill(server.pid, signal.SIGHUP)  # systemctl reload
        for _ in range(3):
            assert request() == "hello from myapp\n"
        _wait_for_log(server, "SIGHUP: starting new workers")
        os.kill(server.pid, signal.SIGTERM)  # systemctl stop (KillMode=mixed)
        assert server.process.wait(60) == 0, server.log()
    finally:
        server.stop()


@pytest.mark.integration
async def test_nginx_upstream_howto_spreads_requests(tmp_path: Path) -> None:
    """docs/howto/nginx-upstream.conf with two servers: both get requests, and
    when one stops, nginx sends everything to the other."""

    def named(name: str) -> trio_fastcgi.Handler:
        async def handler(request: trio_fastcgi.Request) -> None:
            await request.respond(name)

        return handler

    template = (DOCS / "howto" / "nginx-upstream.conf").read_text()
    async with trio.open_nursery() as nursery:
        ports = []
        scopes = []
        for name in ("one", "two"):
            scope = trio.CancelScope()
            app_port = free_port()
            await nursery.start(partial(_serve_in_scope, scope, named(name), app_port))
            ports.append(app_port)
            scopes.append(scope)
        port = free_port()
        config = tmp_path / "nginx.conf"
        config.write_text(
            render_text(
                template,
                {
                    "tmp": str(tmp_path),
                    "port": str(port),
                    "app_port_a": str(ports[0]),
                    "app_port_b": str(ports[1]),
                },
            )
        )
        argv = [require_binary("nginx"), "-c", str(config), "-e", str(tmp_path / "startup.log")]
        if IS_ROOT:
            argv += ["-g", "user root;"]
        async with (
            running(argv, port=port, log_path=tmp_path / "nginx.out"),
            http_client(port) as client,
        ):
            answers = [(await client.get("/")).text for _ in range(6)]
            assert sorted(set(answers)) == ["one", "two"]
            scopes[1].cancel()  # server "two" stops
            await trio.testing.wait_all_tasks_blocked()
            answers = [(await client.get("/")).text for _ in range(6)]
            assert answers == ["one"] * 6
        nursery.cancel_scope.cancel()


async def _serve_in_scope(
    scope: trio.CancelScope,
    handler: trio_fastcgi.Handler,
    port: int,
    *,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    with scope:
        await trio_fastcgi.serve_tcp(handler, port, host="127.0.0.1", task_status=task_status)
