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
import http.client
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import types
import urllib.parse
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import trio_fastcgi
from examples import sansio_demo
from tests.integration.procs import (
    ManagedProcess,
    free_port,
    require_binary,
    wait_for_tcp,
)

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
    "python3 -m pip install trio-fastcgi": "the suite runs on the installed checkout",
    "sudo apt-get install nginx": "CI installs nginx (.ci/run)",
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
