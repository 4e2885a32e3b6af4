"""The trio-fastcgi command: --bind parsing, app detection, options, listening
on fd 0, systemd sockets and unix sockets, FCGI_WEB_SERVER_ADDRS."""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
import trio

from tests.integration.procs import free_port, require_binary, wait_for_tcp, wait_for_unix
from trio_fastcgi import Role
from trio_fastcgi._app import CLIError, detect_interface, load_app
from trio_fastcgi._bind import (
    Bind,
    BindError,
    default_binds,
    is_listening_socket,
    open_binds,
    parse_bind,
    systemd_fds,
)
from trio_fastcgi._cli import app_options, build_parser, main, server_options
from trio_fastcgi.client import open_tcp_client, open_unix_client

REPO = Path(__file__).resolve().parents[1]


# -- --bind ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("127.0.0.1:9000", Bind("tcp", host="127.0.0.1", port=9000)),
        ("localhost:0", Bind("tcp", host="localhost", port=0)),
        (":9000", Bind("tcp", host="0.0.0.0", port=9000)),
        ("[::1]:9001", Bind("tcp", host="::1", port=9001)),
        ("[::]:80", Bind("tcp", host="::", port=80)),
        ("unix:/run/app.sock", Bind("unix", path="/run/app.sock")),
        ("unix:relative.sock", Bind("unix", path="relative.sock")),
        ("fd://0", Bind("fd", fd=0)),
        ("fd://3", Bind("fd", fd=3)),
    ],
)
def test_parse_bind_accepts(spec: str, expected: Bind) -> None:
    assert parse_bind(spec) == expected


@pytest.mark.parametrize(
    "spec",
    ["", "9000", "host:", "host:port", "host:70000", "::1:9000", "[::1]", "[::1]9000",
     "[]:80", "unix:", "fd://", "fd://x", "fd://-1"],
)  # fmt: skip
def test_parse_bind_rejects(spec: str) -> None:
    with pytest.raises(BindError):
        parse_bind(spec)


def test_bind_str_round_trips() -> None:
    for spec in ("127.0.0.1:9000", "[::1]:9001", "unix:/x.sock", "fd://0"):
        assert str(parse_bind(spec)) == spec


def test_open_binds_tcp_and_unix(tmp_path: Path) -> None:
    path = tmp_path / "app.sock"
    bound = open_binds([parse_bind("127.0.0.1:0"), parse_bind(f"unix:{path}")], socket_mode=0o600)
    try:
        assert bound[0].sock.getsockname()[0] == "127.0.0.1"
        assert bound[0].describe().startswith("127.0.0.1:")
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert all(is_listening_socket(b.sock.fileno()) for b in bound)
    finally:
        for b in bound:
            b.close()
            b.remove_file()
    assert not path.exists()


def test_open_binds_refuses_a_file_that_is_not_a_socket(tmp_path: Path) -> None:
    path = tmp_path / "precious.txt"
    path.write_text("keep me")
    with pytest.raises(FileExistsError):
        open_binds([parse_bind(f"unix:{path}")])
    assert path.read_text() == "keep me"


def test_open_binds_replaces_a_stale_unix_socket(tmp_path: Path) -> None:
    path = tmp_path / "stale.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens
    bound = open_binds([parse_bind(f"unix:{path}")])
    for b in bound:
        b.close()
        b.remove_file()


def test_open_binds_closes_what_it_opened_on_failure(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        path = tmp_path / "first.sock"
        with pytest.raises(OSError, match="in use"):
            open_binds([parse_bind(f"unix:{path}"), parse_bind(f"127.0.0.1:{port}")])
        assert not path.exists()


def test_systemd_fds() -> None:
    assert systemd_fds({"LISTEN_FDS": "2", "LISTEN_PID": "42"}, pid=42) == [3, 4]
    assert systemd_fds({"LISTEN_FDS": "2", "LISTEN_PID": "43"}, pid=42) == []
    assert systemd_fds({"LISTEN_FDS": "1"}, pid=42) == [3]
    assert systemd_fds({}, pid=42) == []
    assert systemd_fds({"LISTEN_FDS": "many"}, pid=42) == []


def test_is_listening_socket() -> None:
    with socket.socket() as sock:
        assert not is_listening_socket(sock.fileno())
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        assert is_listening_socket(sock.fileno())
    read_end, write_end = os.pipe()
    try:
        assert not is_listening_socket(read_end)
    finally:
        os.close(read_end)
        os.close(write_end)


def test_default_binds_without_systemd_or_fd0() -> None:
    # Under pytest fd 0 is not a listening socket.
    assert default_binds({}) == [Bind("tcp", host="127.0.0.1", port=9000)]
    assert default_binds({"LISTEN_FDS": "1", "LISTEN_PID": str(os.getpid())}) == [Bind("fd", fd=3)]


# -- the application ----------------------------------------------------------------


def test_detect_interface_of_examples() -> None:
    assert detect_interface(load_app("examples.hello:handler", str(REPO))) == "native"
    assert detect_interface(load_app("examples.flask_app:app", str(REPO))) == "wsgi"
    assert detect_interface(load_app("examples.starlette_app:app", str(REPO))) == "asgi"


def test_detect_interface_of_plain_callables() -> None:
    async def native(request: object) -> None: ...

    async def asgi(scope: object, receive: object, send: object) -> None: ...

    def wsgi(environ: object, start_response: object) -> list[bytes]:
        return []

    class ASGIObject:
        async def __call__(self, scope: object, receive: object, send: object) -> None: ...

    assert detect_interface(native) == "native"
    assert detect_interface(asgi) == "asgi"
    assert detect_interface(wsgi) == "wsgi"
    assert detect_interface(ASGIObject()) == "asgi"


@pytest.mark.parametrize(
    "app",
    [lambda: None, lambda a, b, c: None, 42, dict, lambda *args: None],
)
def test_detect_interface_refuses_what_it_cannot_tell(app: object) -> None:
    with pytest.raises(CLIError):
        detect_interface(app)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_colon", "expected MODULE:APP"),
        ("examples.hello:", "expected MODULE:APP"),
        ("examples.no_such_module:app", "cannot import"),
        ("examples.hello:missing", "no attribute"),
    ],
)
def test_load_app_errors(spec: str, message: str) -> None:
    with pytest.raises(CLIError, match=message):
        load_app(spec, str(REPO))


# -- options ------------------------------------------------------------------------


def test_server_options_map_every_core_knob() -> None:
    args = build_parser().parse_args(
        [
            "m:app",
            "--max-conns=7",
            "--max-reqs=3",
            "--no-multiplex",
            "--max-params-size=4096",
            "--input-buffer-size=8192",
            "--idle-timeout=0",
            "--read-timeout=2.5",
            "--write-timeout=9",
            "--hibernate-after=off",
            "--roles=responder,authorizer",
            "--graceful-timeout=4",
        ]
    )
    options = server_options(args, {"FCGI_WEB_SERVER_ADDRS": "127.0.0.1, ::1"})
    assert options == {
        "roles": frozenset({Role.RESPONDER, Role.AUTHORIZER}),
        "max_conns": 7,
        "max_reqs": 3,
        "mpxs_conns": False,
        "max_params_size": 4096,
        "input_buffer_size": 8192,
        "idle_timeout": None,
        "read_timeout": 2.5,
        "write_timeout": 9.0,
        "hibernate_after": None,
        "grace_period": 4.0,
        "web_server_addrs": ["127.0.0.1", "::1"],
    }


def test_server_options_defaults_allow_every_peer() -> None:
    args = build_parser().parse_args(["m:app"])
    options = server_options(args, {})
    assert options["web_server_addrs"] == []
    assert options["mpxs_conns"] is True
    assert options["roles"] == frozenset({Role.RESPONDER})
    assert options["hibernate_after"] == 2.0


def test_server_options_reject_a_bad_web_server_address() -> None:
    args = build_parser().parse_args(["m:app"])
    with pytest.raises(CLIError, match="not-an-ip"):
        server_options(args, {"FCGI_WEB_SERVER_ADDRS": "127.0.0.1,not-an-ip"})


@pytest.mark.parametrize(
    "bad",
    [
        ["--roles=responder,porter"],
        ["--workers=-1"],
        ["--idle-timeout=-3"],
        ["--socket-mode=999"],
        ["--bind=nowhere"],
        ["--interface=cgi"],
        ["--graceful-timeout=soon"],
    ],
)
def test_parser_rejects_bad_values(bad: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["m:app", *bad])
    assert info.value.code == 2
    assert "error" in capsys.readouterr().err


def test_help_lists_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for option in [
        "--interface", "--bind", "--socket-mode", "--workers", "--max-requests",
        "--graceful-timeout", "--log-level", "--max-conns", "--max-reqs", "--no-multiplex",
        "--mpxs-conns", "--max-params-size", "--input-buffer-size", "--idle-timeout",
        "--read-timeout", "--roles", "--threads", "--script-name", "--lifespan", "--app-dir",
        "SIGHUP", "FCGI_WEB_SERVER_ADDRS", "trio-fastcgi dev",
    ]:  # fmt: skip
        assert option in text, option
    # Every option the parser knows is in the help.
    for action in build_parser()._actions:
        for flag in action.option_strings:
            assert flag in text, flag


def test_main_reports_a_bad_app_without_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["examples.hello:nothing_here", "--workers=0", "--app-dir", str(REPO)])
    assert info.value.code == 2
    assert "no attribute 'nothing_here'" in capsys.readouterr().err


# -- listening, end to end (subprocesses) ---------------------------------------------


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "trio_fastcgi", *args, "--app-dir", str(REPO)]


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(10)


def start(
    processes: list[subprocess.Popen[bytes]], argv: list[str], **kwargs: object
) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(argv, cwd=REPO, stderr=subprocess.PIPE, **kwargs)  # type: ignore[call-overload]
    processes.append(process)
    return process  # type: ignore[no-any-return]


async def hello_over_tcp(port: int, process: subprocess.Popen[bytes]) -> bytes:
    with trio.fail_after(20):
        while True:
            if process.poll() is not None:
                _, err = process.communicate()
                raise AssertionError(f"the server exited: {err.decode(errors='replace')}")
            try:
                async with open_tcp_client("127.0.0.1", port) as client:
                    response = await client.request({"REQUEST_URI": "/probe"})
                    return response.parse_cgi().body
            except OSError:
                await trio.sleep(0.05)  # not listening yet: the process is starting


def stop(process: subprocess.Popen[bytes]) -> str:
    process.terminate()
    _, err = process.communicate(timeout=20)
    return err.decode(errors="replace")


@pytest.mark.integration
async def test_cli_serves_on_inherited_fd0(processes: list[subprocess.Popen[bytes]]) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    # No --bind: fd 0 is a listening socket, as when a web server spawns us.
    process = start(processes, command("examples.hello:handler", "--workers=0"), stdin=listener)
    listener.close()
    assert await hello_over_tcp(port, process) == b"Hello from trio-fastcgi! You asked for /probe\n"
    assert process.poll() is None
    assert stop(process).count("Traceback") == 0
    assert process.returncode == 0


@pytest.mark.integration
async def test_cli_serves_systemd_socket(processes: list[subprocess.Popen[bytes]]) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    fd = listener.fileno()
    # What systemd does: the socket on fd 3, LISTEN_PID the server's own pid
    # (the wrapper execs into the server, keeping its pid).
    wrapper = (
        "import os, sys; os.dup2(int(sys.argv[1]), 3); "
        "os.environ.update(LISTEN_FDS='1', LISTEN_PID=str(os.getpid())); "
        "os.execv(sys.argv[2], sys.argv[2:])"
    )
    argv = [sys.executable, "-c", wrapper, str(fd), *command("examples.hello:handler")]
    process = start(processes, argv, pass_fds=[fd])
    listener.close()
    assert await hello_over_tcp(port, process) == b"Hello from trio-fastcgi! You asked for /probe\n"
    err = stop(process)
    assert "fd://3" in err
    assert process.returncode == 0


@pytest.mark.integration
async def test_cli_unix_socket_with_mode(
    processes: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    path = tmp_path / "app.sock"
    process = start(
        processes,
        command("examples.hello:handler", f"--bind=unix:{path}", "--socket-mode=640"),
    )
    await trio.to_thread.run_sync(wait_for_unix, path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    async with open_unix_client(path) as client:
        response = await client.request({"REQUEST_URI": "/unix"})
    assert response.parse_cgi().body == b"Hello from trio-fastcgi! You asked for /unix\n"
    stop(process)
    assert process.returncode == 0
    assert not path.exists()  # removed on exit


@pytest.mark.integration
async def test_cli_web_server_addrs_refuses_other_peers(
    processes: list[subprocess.Popen[bytes]],
) -> None:
    port = free_port()
    env = {**os.environ, "FCGI_WEB_SERVER_ADDRS": "192.0.2.10"}
    process = start(
        processes,
        command("examples.hello:handler", f"--bind=127.0.0.1:{port}", "--workers=0"),
        env=env,
    )
    await trio.to_thread.run_sync(partial(wait_for_tcp, port, process=process))
    # The server closes the connection at once without a byte.
    with trio.fail_after(20):
        async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
            assert await stream.receive_some(100) == b""
    err = stop(process)
    assert "127.0.0.1" in err
    allowed = {**os.environ, "FCGI_WEB_SERVER_ADDRS": "192.0.2.10,127.0.0.1"}
    process = start(
        processes,
        command("examples.hello:handler", f"--bind=127.0.0.1:{port}", "--workers=0"),
        env=allowed,
    )
    assert await hello_over_tcp(port, process) == b"Hello from trio-fastcgi! You asked for /probe\n"
    stop(process)


def test_loader_honours_forced_interface() -> None:
    from trio_fastcgi.asgi import ASGIHandler
    from trio_fastcgi.wsgi import WSGIHandler

    parser = build_parser()
    for interface, expected in (("wsgi", WSGIHandler), ("asgi", ASGIHandler)):
        args = parser.parse_args(
            ["examples.hello:handler", f"--interface={interface}", "--app-dir", str(REPO)]
        )
        handler, lifespan = app_options(args, 1, access_log=False).load()
        assert isinstance(handler, expected)
        if isinstance(handler, WSGIHandler):
            assert handler.limiter.total_tokens == 40  # --threads default
        assert (lifespan is not None) == (interface == "asgi")
    args = parser.parse_args(
        ["examples.hello:handler", "--interface=wsgi", "--threads=3", "--workers=2"]
    )
    handler, _ = app_options(args, args.workers, access_log=False).load()
    assert isinstance(handler, WSGIHandler)
    assert handler.limiter.total_tokens == 3
    assert handler.multiprocess is True
    args = parser.parse_args(["examples.hello:handler", "--interface=native", "--app-dir", "."])
    handler, lifespan = app_options(args, 1, access_log=False).load()
    assert handler is load_app("examples.hello:handler", str(REPO))
    assert lifespan is None


def test_open_binds_ipv6_loopback() -> None:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    bound = open_binds([parse_bind("[::1]:0")])
    try:
        assert bound[0].sock.family == socket.AF_INET6
        assert bound[0].describe().startswith("[::1]:")
    finally:
        for b in bound:
            b.close()


@pytest.mark.integration
def test_console_script_is_installed() -> None:
    # pip puts console scripts next to the interpreter (a venv's bin/ may not
    # be on PATH).
    beside = Path(sys.executable).parent / "trio-fastcgi"
    script = str(beside) if beside.exists() else require_binary("trio-fastcgi")
    result = subprocess.run([script, "--version"], capture_output=True, text=True, check=True)
    assert result.stdout.startswith("trio-fastcgi ")


@pytest.mark.integration
async def test_cli_spawned_with_stdout_and_stderr_closed(
    processes: list[subprocess.Popen[bytes]],
) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    # As the FastCGI spec has web servers do: fd 0 the listening socket, fds 1
    # and 2 closed. Nothing written to "stderr" may end up in a response.
    closer = "import os, sys; os.close(1); os.close(2); os.execv(sys.argv[1], sys.argv[1:])"
    argv = [sys.executable, "-c", closer, *command("examples.hello:handler", "--workers=2")]
    process = start(processes, argv, stdin=listener)
    listener.close()
    for _ in range(20):
        assert await hello_over_tcp(port, process) == (
            b"Hello from trio-fastcgi! You asked for /probe\n"
        )
    stop(process)
    assert process.returncode == 0


def test_dev_without_h11_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "h11", None)  # as if not installed
    monkeypatch.delitem(sys.modules, "trio_fastcgi._dev", raising=False)
    with pytest.raises(SystemExit) as info:
        main(["dev", "examples.hello:handler"])
    assert "pip install h11" in str(info.value.code)


PID_APP = """
import os
import re

async def handler(request):
    await request.respond(f"{os.getpid()}")
"""


@pytest.mark.integration
@pytest.mark.parametrize("workers", [None, "--workers=0", "--workers=2"])
async def test_cli_on_fd0_serves_in_the_spawned_process_by_default(
    processes: list[subprocess.Popen[bytes]], tmp_path: Path, workers: str | None
) -> None:
    (tmp_path / "pidapp.py").write_text(PID_APP)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    argv = [sys.executable, "-m", "trio_fastcgi", "pidapp:handler", "--app-dir", str(tmp_path)]
    if workers is not None:
        argv.append(workers)
    # As mod_fcgid, spawn-fcgi or lighttpd's bin-path start us: fd 0 listens.
    process = start(processes, argv, stdin=listener)
    listener.close()
    pid = int(await hello_over_tcp(port, process))
    err = stop(process)
    assert process.returncode == 0, err
    if workers == "--workers=2":
        assert pid != process.pid  # a worker under the supervisor answered
        assert re.search(r"WARNING .*listening on fd 0.*--workers 2 .*doubles the memory", err)
    else:
        assert pid == process.pid
        assert "supervisor" not in err
        assert "WARNING" not in err


# -- messages that say what to do (issue 14) -------------------------------------------


@pytest.mark.parametrize(
    ("habit", "message"),
    [
        (["--port", "9000"], "--port is not an option: use --bind 127.0.0.1:9000"),
        (["--port=9001"], "--port is not an option: use --bind 127.0.0.1:9001"),
        (["--host", "0.0.0.0"], "--host is not an option: use --bind 0.0.0.0:9000"),
        (
            ["--host=0.0.0.0", "--port", "8080"],
            "--host and --port are not options: use --bind 0.0.0.0:8080",
        ),
        (["--host", "::1", "--port", "9"], "--host and --port are not options: use --bind [::1]:9"),
        (["--uds", "/run/app.sock"], "--uds is not an option: use --bind unix:/run/app.sock"),
        (["--fd", "3"], "--fd is not an option: use --bind fd://3"),
        (["--reload"], "--reload is an option of `trio-fastcgi dev`"),
    ],
)
def test_other_servers_options_point_to_ours(
    habit: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["examples.hello:handler", *habit])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"trio-fastcgi: error: {message}" in err
    assert "unrecognized arguments" not in err


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("bad", "'bad': expected MODULE:APP, like myapp:app"),
        ("bad.py:app", "'bad.py:app': use the module name, not the file name: bad:app"),
        ("bad.py", "use the module name, not the file name: bad:app"),
        ("src/bad.py:handler", "not the file name: bad:handler --app-dir src"),
    ],
)
def test_app_spec_is_checked_before_anything_starts(
    spec: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main([spec, "--workers=2", "--bind=127.0.0.1:0"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert "worker(s)" not in err  # the supervisor never started


def test_app_spec_without_colon_fails_before_the_supervisor_logs() -> None:
    result = subprocess.run(
        [*command("bad", "--workers=2", "--bind=127.0.0.1:0")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "expected MODULE:APP" in result.stderr
    assert "worker(s)" not in result.stderr
    assert "Traceback" not in result.stderr


SYNC_APP = """
def handler(request):
    return None
"""


@pytest.mark.parametrize("interface", [None, "--interface=native"])
def test_sync_native_handler_is_refused_when_loading(
    interface: str | None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "syncapp.py").write_text(SYNC_APP)
    argv = ["syncapp:handler", "--workers=0", "--bind=127.0.0.1:0", "--app-dir", str(tmp_path)]
    if interface is not None:
        argv.append(interface)
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert "a native handler must be `async def`" in capsys.readouterr().err


def test_detect_interface_says_a_native_handler_must_be_async() -> None:
    def handler(request: object) -> None: ...

    with pytest.raises(CLIError, match="a native handler must be `async def`"):
        detect_interface(handler)


# -- --pid, --log-config --------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize("workers", ["--workers=0", "--workers=2"])
async def test_pid_file_holds_the_server_pid_and_goes_on_exit(
    processes: list[subprocess.Popen[bytes]], tmp_path: Path, workers: str
) -> None:
    pid_path = tmp_path / "run" / "app.pid"
    pid_path.parent.mkdir()
    port = free_port()
    process = start(
        processes,
        command("examples.hello:handler", f"--bind=127.0.0.1:{port}", workers, f"--pid={pid_path}"),
    )
    assert await hello_over_tcp(port, process) == b"Hello from trio-fastcgi! You asked for /probe\n"
    assert pid_path.read_text() == f"{process.pid}\n"
    err = stop(process)
    assert process.returncode == 0, err
    assert not pid_path.exists()


def test_pid_file_that_cannot_be_written_is_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "dir" / "app.pid"
    result = subprocess.run(
        command("examples.hello:handler", "--bind=127.0.0.1:0", f"--pid={missing}"),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.rstrip().splitlines()[-1] == (
        f"trio-fastcgi: error: --pid {missing}: cannot write the PID file: "
        "No such file or directory"
    )
    assert "listening" not in result.stderr


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("broken.json", "{not json", "not valid JSON: Expecting property name"),
        ("list.json", "[1, 2]", "expected an object (a dictConfig dictionary)"),
        ("broken.toml", "version = ", "not valid TOML: "),
        ("noversion.json", "{}", "dictionary doesn't specify a version"),
        (
            "badhandler.json",
            json.dumps({"version": 1, "handlers": {"h": {"class": "no.such.Handler"}}}),
            "Unable to configure handler 'h'",
        ),
        (None, "", "cannot read it: No such file or directory"),
    ],
)
def test_bad_log_config_is_one_line(
    tmp_path: Path, name: str | None, content: str, message: str
) -> None:
    path = tmp_path / (name or "missing.json")
    if name is not None:
        path.write_text(content)
    result = subprocess.run(
        command("examples.hello:handler", "--bind=127.0.0.1:0", f"--log-config={path}"),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.rstrip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"trio-fastcgi: error: --log-config {path}: ")
    assert message in lines[0]


LOG_CONFIG = {
    "version": 1,
    "formatters": {"tagged": {"format": "TAGGED %(levelname)s %(name)s %(message)s"}},
    "handlers": {
        "file": {"class": "logging.FileHandler", "filename": "PATH", "formatter": "tagged"}
    },
    "root": {"level": "INFO", "handlers": ["file"]},
}


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["json", "toml"])
async def test_log_config_replaces_the_default_logging(
    processes: list[subprocess.Popen[bytes]], tmp_path: Path, kind: str
) -> None:
    log_path = tmp_path / "server.log"
    config_path = tmp_path / f"logging.{kind}"
    if kind == "json":
        config = json.loads(json.dumps(LOG_CONFIG).replace("PATH", str(log_path)))
        config_path.write_text(json.dumps(config))
    else:
        config_path.write_text(
            "version = 1\n"
            "[formatters.tagged]\n"
            'format = "TAGGED %(levelname)s %(name)s %(message)s"\n'
            "[handlers.file]\n"
            'class = "logging.FileHandler"\n'
            f"filename = {json.dumps(str(log_path))}\n"
            'formatter = "tagged"\n'
            "[root]\n"
            'level = "INFO"\n'
            'handlers = ["file"]\n'
        )
    port = free_port()
    process = start(
        processes,
        command(
            "examples.hello:handler",
            f"--bind=127.0.0.1:{port}",
            "--workers=1",
            f"--log-config={config_path}",
        ),
    )
    assert await hello_over_tcp(port, process) == b"Hello from trio-fastcgi! You asked for /probe\n"
    err = stop(process)
    assert process.returncode == 0, err
    logged = log_path.read_text()
    # Loggers made before the config was read still log (not disabled).
    assert re.search(r"^TAGGED INFO trio_fastcgi.cli trio-fastcgi .* with 1 worker", logged, re.M)
    assert "TAGGED INFO trio_fastcgi.workers supervisor" in logged
    assert "INFO trio_fastcgi.cli" not in err  # not the default stderr logging


@pytest.mark.integration
@pytest.mark.parametrize("workers", ["--workers=0", "--workers=1"])
async def test_cli_freezes_what_it_loaded_before_serving(
    processes: list[subprocess.Popen[bytes]], tmp_path: Path, workers: str
) -> None:
    """The application and the modules are moved out of the cycle
    collector's way before the first request (see freeze_what_is_loaded)."""
    (tmp_path / "frozen.py").write_text(
        "import gc\n"
        "async def handler(request):\n"
        "    await request.respond(str(gc.get_freeze_count()))\n"
    )
    port = free_port()
    argv = [sys.executable, "-m", "trio_fastcgi", "frozen:handler", f"--bind=127.0.0.1:{port}"]
    process = start(processes, [*argv, workers, "--app-dir", str(tmp_path)])
    frozen = int(await hello_over_tcp(port, process))
    # The modules and the application: thousands of objects (none without the freeze).
    assert frozen > 5_000
    stop(process)
    assert process.returncode == 0
