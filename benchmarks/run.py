"""Benchmark trio-fastcgi side by side with other FastCGI backends behind nginx.

Usage (from the repository root)::

    python benchmarks/run.py --rounds 3 --duration 10

Each backend gets its own nginx (one worker, upstream keepalive on one port, a
new FastCGI connection per request on another) in a temporary directory on
127.0.0.1. Its answers are checked byte for byte, then wrk (-t1 -c32) loads
each scenario. Rounds are interleaved (round 1 runs every backend, then round
2, ...) and medians are reported, because the machine is shared and noisy.
Then come the direct measurements (multiplexing, idle connections, a huge
upload) and a py-spy profile of the native backend. Missing peers are skipped
with a line saying why. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import importlib.util
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import astuple, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BACKENDS_DIR = HERE / "backends"
sys.path[:0] = [str(BACKENDS_DIR), str(REPO)]

import compiled_build  # noqa: E402
from common import HELLO, ONE_MIB, POST_SIZE, raise_nofile  # noqa: E402

#: One wrk run's numbers; a backend's runs per scenario; all of them per backend.
Result = dict[str, Any]
Rounds = dict[str, dict[str, list[Result]]]

SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def which(*names: str) -> str | None:
    for name in names:
        found = shutil.which(name, path=SBIN_PATH)
        if found:
            return found
    return None


def log(message: str) -> None:
    print(message, flush=True)


# -- processes ------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_tcp(port: int, process: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"exited with status {process.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


class Proc:
    """A child started in its own session, stopped by its PID (then its group)."""

    def __init__(
        self, argv: list[str], *, log_path: Path, env: dict[str, str] | None = None
    ) -> None:
        self.argv = argv
        self.log_path = log_path
        with open(log_path, "ab") as log_file:
            self.popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=str(log_path.parent),
                start_new_session=True,
            )
        self.pid = self.popen.pid

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 10.0) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                self.popen.wait(timeout)
        # Children (php-fpm, workers) left behind share our new session's group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)


# -- /proc accounting ---------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def process_tree(root: int) -> list[int]:
    """*root* and all its live descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry))
    tree = [root]
    i = 0
    while i < len(tree):
        tree.extend(children.get(tree[i], ()))
        i += 1
    return tree


#: Fields of /proc/<pid>/stat (after the command name): a process's own count,
#: and that of its reaped children, which only the root's is added for.
_MINFLT, _CMINFLT, _UTIME, _STIME, _CUTIME, _CSTIME = 7, 8, 11, 12, 13, 14


def _tree_totals(root: int, counters: list[tuple[int, int]]) -> list[int]:
    """For each (own field, reaped children's field) of *counters*, the sum
    over the tree, with what reaped children of the root counted."""
    totals = [0] * len(counters)
    for pid in process_tree(root):
        fields = _stat_fields(pid)
        if fields is None:
            continue
        for i, (own, reaped) in enumerate(counters):
            totals[i] += int(fields[own]) + (int(fields[reaped]) if pid == root else 0)
    return totals


def cpu_times(root: int) -> tuple[float, float]:
    """(user, system) CPU seconds of the tree, with what reaped children of
    the root used."""
    user, system = _tree_totals(root, [(_UTIME, _CUTIME), (_STIME, _CSTIME)])
    return user / CLK_TCK, system / CLK_TCK


def minor_faults(root: int) -> int:
    """Minor page faults of the tree, with those of reaped children of the
    root: each is a page the kernel maps (and zeroes) on first touch, what a
    heap that grows again after each trim costs."""
    return _tree_totals(root, [(_MINFLT, _CMINFLT)])[0]


def cpu_seconds(root: int) -> float:
    """utime+stime of the tree, plus what reaped children of the root used."""
    return sum(cpu_times(root))


def status_kib(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def reset_peak_rss(root: int) -> bool:
    """Reset VmHWM of the tree (``clear_refs`` 5); False where not allowed."""
    ok = True
    for pid in process_tree(root):
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")
        except OSError:
            ok = False
    return ok


def peak_rss_mib(root: int) -> float:
    """Sum of VmHWM over the tree, in MiB."""
    return sum(status_kib(pid, "VmHWM") for pid in process_tree(root)) / 1024


def rss_mib(root: int) -> float:
    return sum(status_kib(pid, "VmRSS") for pid in process_tree(root)) / 1024


# -- backends -------------------------------------------------------------------


@dataclass
class Started:
    backend: Proc | None  # None: nginx serves by itself
    nginx: Proc
    keepalive_port: int
    new_conn_port: int
    backend_port: int

    @property
    def measured_pid(self) -> int:
        return (self.backend or self.nginx).pid

    def stop(self) -> None:
        self.nginx.stop()
        if self.backend is not None:
            self.backend.stop()


@dataclass
class Backend:
    key: str
    label: str
    #: Returns None if runnable, else why not.
    check: Callable[[], str | None]
    #: Starts the FastCGI backend on a port in a work dir; returns its process.
    start: Callable[[Path, int], Proc] | None
    #: The nginx is the backend (no FastCGI).
    alone: bool = False
    version: Callable[[], str] = lambda: ""
    skip_reason: str | None = field(default=None, init=False)


def python_env(*, compiled: bool = False) -> dict[str, str]:
    """The environment of a Python backend: this checkout's trio_fastcgi, or
    with *compiled* its compiled copy (compiled_build.py)."""
    env = dict(os.environ)
    package = compiled_build.compiled_tree() if compiled else REPO
    env["PYTHONPATH"] = os.pathsep.join(
        [str(BACKENDS_DIR), str(package), *filter(None, [env.get("PYTHONPATH")])]
    )
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def python_backend(script: str, *extra: str, compiled: bool = False) -> Callable[[Path, int], Proc]:
    def start(work: Path, port: int) -> Proc:
        argv = [sys.executable, str(BACKENDS_DIR / script), "--port", str(port), *extra]
        return Proc(argv, log_path=work / "backend.log", env=python_env(compiled=compiled))

    return start


def compiled_check() -> str | None:
    """None once the compiled copy is built, else why it cannot be."""
    reason = compiled_build.missing()
    if reason is None:
        compiled_build.compiled_tree()
    return reason


#: The trio-fastcgi rows that also run compiled: (key, label, script).
TRIO_ROWS = [
    ("trio-native", "trio-fastcgi, native handler", "trio_native.py"),
    ("trio-wsgi", "trio-fastcgi WSGI adapter", "trio_wsgi.py"),
    ("trio-asgi", "trio-fastcgi ASGI adapter", "trio_asgi.py"),
]
#: The suffix of a compiled row's key: trio-native-mypyc and so on.
MYPYC = "-mypyc"


def module_missing(*modules: str) -> str | None:
    for module in modules:
        try:
            if importlib.util.find_spec(module) is None:
                return f"Python module {module} is not installed"
        except ModuleNotFoundError:
            return f"Python module {module} is not installed"
    return None


def pip_version(dist: str) -> Callable[[], str]:
    def version() -> str:
        from importlib import metadata

        try:
            return f"{dist} {metadata.version(dist)}"
        except metadata.PackageNotFoundError:
            return f"{dist} (not installed)"

    return version


def command_version(argv: list[str], pattern: str = r".*") -> Callable[[], str]:
    def version() -> str:
        binary = which(argv[0])
        if binary is None:
            return f"{argv[0]} (not installed)"
        out = subprocess.run(
            [binary, *argv[1:]], capture_output=True, text=True, check=False, timeout=30
        )
        text = (out.stdout + out.stderr).strip()
        match = re.search(pattern, text)
        return match.group(0) if match else text.splitlines()[0]

    return version


def cli_check() -> str | None:
    if importlib.util.find_spec("trio_fastcgi._cli") is None:
        return "not available yet (trio_fastcgi._cli does not exist)"
    return None


def cli_compiled_check() -> str | None:
    """None once the command runs from the compiled copy, else why it cannot."""
    reason = compiled_check()
    if reason is not None:
        return reason
    # Not from the checkout's root, which ``-m`` would put first on the path.
    version = subprocess.run(
        [sys.executable, "-m", "trio_fastcgi", "--version"],
        cwd=BACKENDS_DIR,
        env=python_env(compiled=True),
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    if "compiled with mypyc" not in version:
        return f"the command does not run compiled: {version.strip()!r}"
    return None


def cli_workers(*, compiled: bool = False) -> Callable[[Path, int], Proc]:
    """The ``trio-fastcgi`` command: a supervisor and 2 worker processes sharing
    the listening socket, serving the native handler of trio_native.py (with
    *compiled*, from the compiled copy)."""

    def start(work: Path, port: int) -> Proc:
        argv = [
            sys.executable,
            "-m",
            "trio_fastcgi",
            "--workers",
            "2",
            "--bind",
            f"127.0.0.1:{port}",
            "--app-dir",
            str(BACKENDS_DIR),
            "--log-level",
            "warning",
            "trio_native:handler",
        ]
        return Proc(argv, log_path=work / "backend.log", env=python_env(compiled=compiled))

    return start


def go_check() -> str | None:
    if which("go") is None:
        return "Go is not installed (Debian package golang-go)"
    return None


_GO_BINARY: dict[str, Path] = {}


def start_go(work: Path, port: int) -> Proc:
    binary = _GO_BINARY.get("path")
    if binary is None or not binary.exists():
        raise RuntimeError("the Go backend was not built")
    return Proc(
        [str(binary), "-host", "127.0.0.1", "-port", str(port)], log_path=work / "backend.log"
    )


def build_go(build_dir: Path) -> str | None:
    """Build backends/gofcgi offline (standard library only); None or an error."""
    go = which("go")
    if go is None:
        return "Go is not installed"
    target = build_dir / "gofcgi"
    env = dict(os.environ)
    env.update(
        GOPROXY="off",
        GOFLAGS="-mod=mod",
        GOCACHE=str(build_dir / "gocache"),
        GOPATH=str(build_dir / "gopath"),
        GO111MODULE="off",
    )
    out = subprocess.run(
        [go, "build", "-o", str(target), "main.go"],
        cwd=BACKENDS_DIR / "gofcgi",
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    if out.returncode != 0:
        return f"go build failed: {out.stderr.strip()}"
    _GO_BINARY["path"] = target
    return None


def php_check() -> str | None:
    if which("php-fpm", "php-fpm8.2") is None and not _php_fpm_candidates():
        return "php-fpm is not installed (Debian package php-fpm)"
    return None


def _php_fpm_candidates() -> list[str]:
    return sorted(str(p) for p in Path("/usr/sbin").glob("php-fpm*"))


def php_binary() -> str:
    found = which("php-fpm") or which("php-fpm8.2")
    if found:
        return found
    return _php_fpm_candidates()[-1]


PHP_FPM_CONF = """\
[global]
pid = {work}/php-fpm.pid
error_log = {work}/php-fpm-error.log
daemonize = no

[bench]
listen = 127.0.0.1:{port}
listen.backlog = 4096
pm = static
pm.max_children = 4
{user}
"""


def start_php(work: Path, port: int) -> Proc:
    # Running as root, php-fpm needs -R and a pool user; otherwise it runs as us.
    as_root = os.geteuid() == 0
    user = "user = root\ngroup = root" if as_root else ""
    conf = work / "php-fpm.conf"
    conf.write_text(PHP_FPM_CONF.format(work=work, port=port, user=user))
    argv = [php_binary(), "--nodaemonize", "--fpm-config", str(conf)]
    if as_root:
        argv.append("--allow-to-run-as-root")
    return Proc(argv, log_path=work / "backend.log")


def nginx_alone_check() -> str | None:
    return None


def uwsgi_binary() -> str | None:
    """The ``uwsgi`` entry point of the pyuwsgi wheel (or a system uWSGI)."""
    beside = Path(sys.executable).with_name("uwsgi")
    return str(beside) if beside.exists() else which("uwsgi")


def uwsgi_check() -> str | None:
    if uwsgi_binary() is None:
        return "uWSGI is not installed (pip install pyuwsgi)"
    return None


def start_uwsgi(work: Path, port: int) -> Proc:
    """uWSGI's FastCGI socket, 1 process, 1 thread, serving common.wsgi_app."""
    binary = uwsgi_binary()
    assert binary is not None
    argv = [
        binary,
        "--fastcgi-socket",
        f"127.0.0.1:{port}",
        "--module",
        "common:wsgi_app",
        "--pythonpath",
        str(BACKENDS_DIR),
        "--processes",
        "1",
        "--threads",
        "1",
        "--listen",
        "1024",
        "--die-on-term",
        "--disable-logging",
    ]
    return Proc(argv, log_path=work / "backend.log", env=python_env())


#: The floor backends: the least a FastCGI hello needs, in four I/O shapes.
FLOORS = [
    ("floor-trio-socket", "floor (a): trio, task per connection", "floor_trio_socket.py"),
    ("floor-asyncio", "floor (b): asyncio Protocol", "floor_asyncio.py"),
    ("floor-trio-shape", "floor (c): trio, design card shape", "floor_trio_shape.py"),
    ("floor-trio-lazy", "floor (d): design card shape, lazy writer", "floor_trio_lazy.py"),
]
#: The floor of our own shape, the native handler's target is a ratio to it.
FLOOR = "floor-trio-lazy"


def make_backends() -> list[Backend]:
    nginx_version = command_version(["nginx", "-v"], r"nginx/\S+")
    return [
        *(
            Backend(
                key,
                label,
                lambda: None,
                python_backend(script),
                version=pip_version("trio-fastcgi"),
            )
            for key, label, script in TRIO_ROWS
        ),
        *(
            Backend(
                key + MYPYC,
                f"{label}, compiled (mypyc)",
                compiled_check,
                python_backend(script, compiled=True),
                version=pip_version("trio-fastcgi"),
            )
            for key, label, script in TRIO_ROWS
        ),
        Backend(
            "trio-workers2",
            "trio-fastcgi --workers 2",
            cli_check,
            cli_workers(),
            version=pip_version("trio-fastcgi"),
        ),
        Backend(
            "trio-workers2" + MYPYC,
            "trio-fastcgi --workers 2, compiled (mypyc)",
            cli_compiled_check,
            cli_workers(compiled=True),
            version=pip_version("trio-fastcgi"),
        ),
        Backend(
            "fcgisgi-asgi",
            "fcgisgi (asyncio, ASGI)",
            lambda: module_missing("fcgisgi"),
            python_backend("fcgisgi_asgi.py"),
            version=pip_version("fcgisgi"),
        ),
        Backend(
            "fcgisgi-wsgi",
            "fcgisgi WSGI adapter",
            lambda: module_missing("fcgisgi"),
            python_backend("fcgisgi_wsgi.py"),
            version=pip_version("fcgisgi"),
        ),
        Backend(
            "flup",
            "flup, TCP_NODELAY set",
            lambda: module_missing("flup"),
            python_backend("flup_wsgi.py"),
            version=pip_version("flup"),
        ),
        Backend(
            "gevent-fastcgi",
            "gevent-fastcgi",
            lambda: module_missing("gevent_fastcgi", "gevent"),
            python_backend("gevent_fastcgi_wsgi.py"),
            version=lambda: f"{pip_version('gevent-fastcgi')()}, {pip_version('gevent')()}",
        ),
        Backend(
            "go",
            "Go net/http/fcgi",
            go_check,
            start_go,
            version=command_version(["go", "version"], r"go\d+\.\d+(\.\d+)?"),
        ),
        Backend(
            "php-fpm",
            "php-fpm, 4 children",
            php_check,
            start_php,
            version=lambda: command_version([php_binary(), "-v"], r"PHP \S+")(),
        ),
        Backend(
            "uwsgi",
            "uWSGI, 1 process, 1 thread (WSGI)",
            uwsgi_check,
            start_uwsgi,
            version=lambda: command_version([uwsgi_binary() or "uwsgi", "--version"])(),
        ),
        *(
            Backend(
                key,
                label,
                lambda: None,
                python_backend(script),
                version=(lambda: f"Python {platform.python_version()} asyncio")
                if key == "floor-asyncio"
                else pip_version("trio"),
            )
            for key, label, script in FLOORS
        ),
        Backend(
            "nginx",
            "nginx answering by itself (ceiling)",
            nginx_alone_check,
            None,
            alone=True,
            version=nginx_version,
        ),
    ]


def start_backend(backend: Backend, work: Path) -> Started:
    nginx = which("nginx")
    assert nginx is not None
    keepalive_port, new_conn_port = free_port(), free_port()
    backend_proc: Proc | None = None
    backend_port = 0
    if backend.alone:
        (work / "1m.bin").write_bytes(ONE_MIB)
        template = (HERE / "nginx-alone.conf.template").read_text()
    else:
        assert backend.start is not None
        backend_port = free_port()
        backend_proc = backend.start(work, backend_port)
        try:
            wait_for_tcp(backend_port, backend_proc.popen)
        except (RuntimeError, TimeoutError) as exc:
            backend_proc.stop()
            raise RuntimeError(f"{exc}\n{backend_proc.log_tail()}") from None
        template = (HERE / "nginx.conf.template").read_text()
    replacements = {
        "@DIR@": str(work),
        "@BACKEND_PORT@": str(backend_port),
        "@KEEPALIVE_PORT@": str(keepalive_port),
        "@NEW_CONN_PORT@": str(new_conn_port),
        "@SCRIPT_FILENAME@": str(BACKENDS_DIR / "php" / "bench.php"),
    }
    for name, value in replacements.items():
        template = template.replace(name, value)
    conf = work / "nginx.conf"
    conf.write_text(template)
    nginx_proc = Proc([nginx, "-p", str(work), "-c", str(conf)], log_path=work / "nginx.log")
    try:
        wait_for_tcp(keepalive_port, nginx_proc.popen)
        wait_for_tcp(new_conn_port, nginx_proc.popen)
    except (RuntimeError, TimeoutError) as exc:
        nginx_proc.stop()
        if backend_proc is not None:
            backend_proc.stop()
        raise RuntimeError(f"nginx: {exc}\n{nginx_proc.log_tail()}") from None
    return Started(backend_proc, nginx_proc, keepalive_port, new_conn_port, backend_port)


# -- checking answers ---------------------------------------------------------------

POST_BODY = bytes(range(256)) * (POST_SIZE // 256)
EXPECTED = {
    "/hello": HELLO,
    "/1m": ONE_MIB,
    "/post": str(POST_SIZE).encode(),
}


def check_answers(port: int) -> dict[str, list[str]]:
    """Every route's answer through nginx, byte for byte: problems per route."""
    problems: dict[str, list[str]] = {}
    for path, expected in EXPECTED.items():
        found = check_route(port, path, expected)
        if found:
            problems[path] = found
    return problems


def check_route(port: int, path: str, expected: bytes) -> list[str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        if path == "/post":
            headers = {"Content-Type": "application/octet-stream"}
            conn.request("POST", path, body=POST_BODY, headers=headers)
        else:
            conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
    except (OSError, http.client.HTTPException) as exc:
        return [f"{exc!r}"]
    finally:
        conn.close()
    problems = []
    media_type = (response.getheader("Content-Type") or "").split(";")[0].strip()
    length = response.getheader("Content-Length")
    if response.status != 200:
        problems.append(f"status {response.status}")
    if body != expected:
        problems.append(
            f"body differs ({len(body)} bytes, expected {len(expected)}; "
            f"{body[:40]!r}...{body[-80:]!r})"
        )
    if media_type != "text/plain":
        problems.append(f"Content-Type {response.getheader('Content-Type')!r}")
    if length != str(len(expected)):
        problems.append(f"Content-Length {length!r}")
    return problems


# -- wrk ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    key: str
    label: str
    path: str
    keepalive: bool
    post: bool = False
    #: Report MiB/s (body bytes) instead of req/s.
    bandwidth: bool = False


SCENARIOS = [
    Scenario("hello-ka", "hello, keepalive", "/hello", keepalive=True),
    Scenario("hello-new", "hello, new connection per request", "/hello", keepalive=False),
    Scenario("1m-ka", "1 MiB response (MiB/s)", "/1m", keepalive=True, bandwidth=True),
    Scenario("post-ka", "256 KiB POST", "/post", keepalive=True, post=True),
]

WRK_POST_LUA = f"""\
wrk.method = "POST"
wrk.body = string.rep("x", {POST_SIZE})
wrk.headers["Content-Type"] = "application/octet-stream"
"""

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def parse_wrk(text: str) -> dict[str, Any]:
    result: dict[str, Any] = {}
    match = re.search(r"Requests/sec:\s+([\d.]+)", text)
    result["req_per_s"] = float(match.group(1)) if match else 0.0
    match = re.search(r"(\d+) requests in ([\d.]+)(\w+)", text)
    result["requests"] = int(match.group(1)) if match else 0
    for pct in ("50", "99"):
        match = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.MULTILINE)
        result[f"p{pct}_ms"] = float(match.group(1)) * _UNITS[match.group(2)] if match else None
    errors = 0
    match = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if match:
        errors += sum(int(g) for g in match.groups())
    match = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if match:
        errors += int(match.group(1))
    result["errors"] = errors
    return result


def run_wrk(
    wrk: str, port: int, scenario: Scenario, duration: float, work: Path
) -> tuple[dict[str, Any], str]:
    argv = [
        wrk,
        "-t1",
        "-c32",
        f"-d{duration:g}s",
        "--latency",
        "--timeout",
        "10s",
    ]
    if scenario.post:
        script = work / "post.lua"
        script.write_text(WRK_POST_LUA)
        argv += ["-s", str(script)]
    argv.append(f"http://127.0.0.1:{port}{scenario.path}")
    out = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=duration + 60)
    return parse_wrk(out.stdout), out.stdout + out.stderr


def measure(started: Started, scenario: Scenario, wrk: str, duration: float, work: Path) -> Result:
    port = started.keepalive_port if scenario.keepalive else started.new_conn_port
    pid = started.measured_pid
    peak_reset = reset_peak_rss(pid)
    user_before, system_before = cpu_times(pid)
    faults_before = minor_faults(pid)
    result, raw = run_wrk(wrk, port, scenario, duration, work)
    user_after, system_after = cpu_times(pid)
    faults = minor_faults(pid) - faults_before
    system = system_after - system_before
    cpu = user_after - user_before + system
    result["cpu_s"] = cpu
    requests = result["requests"]
    result["cpu_us_per_req"] = cpu * 1e6 / requests if requests else None
    # The kernel's share (system calls, loopback TCP): callgrind does not count it.
    result["sys_us_per_req"] = system * 1e6 / requests if requests else None
    result["faults_per_req"] = faults / requests if requests else None
    result["peak_rss_mib"] = peak_rss_mib(pid)
    result["peak_rss_reset"] = peak_reset
    if scenario.bandwidth:
        result["mib_per_s"] = result["req_per_s"] * len(ONE_MIB) / 2**20
    if not result["requests"]:
        result["raw"] = raw[-2000:]
    return result


# -- statistics and output ------------------------------------------------------------


def median(values: list[float | None]) -> float | None:
    clean = [v for v in values if v is not None]
    return statistics.median(clean) if clean else None


def summarize(runs: list[Result]) -> dict[str, Any]:
    return {
        "rounds": len(runs),
        "req_per_s": median([r["req_per_s"] for r in runs]),
        "mib_per_s": median([r.get("mib_per_s") for r in runs]),
        "p99_ms": median([r["p99_ms"] for r in runs]),
        "p50_ms": median([r["p50_ms"] for r in runs]),
        "cpu_us_per_req": median([r["cpu_us_per_req"] for r in runs]),
        "sys_us_per_req": median([r.get("sys_us_per_req") for r in runs]),
        "faults_per_req": median([r.get("faults_per_req") for r in runs]),
        "peak_rss_mib": max((r["peak_rss_mib"] for r in runs), default=None),
        "errors": sum(r["errors"] for r in runs),
        "all_req_per_s": [round(r["req_per_s"], 1) for r in runs],
    }


def fmt_rate(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.0f}"


def fmt_num(value: float | None, digits: int = 0, suffix: str = "") -> str:
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}{suffix}"


def throughput_cell(summary: dict[str, Any] | None, scenario: Scenario) -> str:
    if not summary:
        return "n/a"
    rate = summary["mib_per_s"] if scenario.bandwidth else summary["req_per_s"]
    cell = fmt_rate(rate)
    if summary["cpu_us_per_req"] is not None:
        cell += f" ({summary['cpu_us_per_req']:,.0f} µs)"
    if summary["errors"]:
        cell += f" [{summary['errors']} errors]"
    return cell


#: (label, backend, baseline, scenarios, target): comparisons shown as ratios of
#: req/s; the targets of issue 15 are checked separately (TARGETS).
RATIOS = [
    ("native vs fcgisgi ASGI", "trio-native", "fcgisgi-asgi", None, None),
    ("native vs floor (d), lazy writer", "trio-native", FLOOR, None, None),
    ("WSGI adapter vs fcgisgi WSGI", "trio-wsgi", "fcgisgi-wsgi", None, None),
    ("WSGI adapter vs uWSGI", "trio-wsgi", "uwsgi", None, None),
    ("WSGI adapter vs flup", "trio-wsgi", "flup", None, None),
    ("ASGI adapter vs fcgisgi ASGI", "trio-asgi", "fcgisgi-asgi", None, None),
    ("--workers 2 vs Go", "trio-workers2", "go", ["hello-ka", "hello-new"], None),
    ("--workers 2 (mypyc) vs Go", "trio-workers2-mypyc", "go", ["hello-ka", "hello-new"], None),
    ("native vs Go", "trio-native", "go", None, None),
    ("native vs php-fpm (4 children)", "trio-native", "php-fpm", None, None),
    ("floor (d) vs fcgisgi ASGI", FLOOR, "fcgisgi-asgi", None, None),
    ("native (mypyc) vs fcgisgi ASGI", "trio-native-mypyc", "fcgisgi-asgi", None, None),
    ("native (mypyc) vs floor (d)", "trio-native-mypyc", FLOOR, None, None),
    ("native (mypyc) vs native", "trio-native-mypyc", "trio-native", None, None),
    ("ASGI (mypyc) vs fcgisgi ASGI", "trio-asgi-mypyc", "fcgisgi-asgi", None, None),
    ("WSGI (mypyc) vs fcgisgi WSGI", "trio-wsgi-mypyc", "fcgisgi-wsgi", None, None),
    ("WSGI (mypyc) vs uWSGI", "trio-wsgi-mypyc", "uwsgi", None, None),
]

HELLOS = ("hello-ka", "hello-new")
ALL_SCENARIOS = ("hello-ka", "hello-new", "1m-ka", "post-ka")


@dataclass(frozen=True)
class Target:
    """One target of issue 15: *metric* of *backend* over *baseline*, per scenario.

    ``rate`` targets are met at or above the bound, ``cpu`` targets (CPU time
    per request) at or below it.
    """

    label: str
    backend: str
    baseline: str
    bounds: dict[str, float]
    metric: str = "rate"


TARGETS = [
    Target(
        "native handler vs fcgisgi (ASGI)",
        "trio-native",
        "fcgisgi-asgi",
        {"hello-ka": 1.2, "hello-new": 1.2, "1m-ka": 1.0, "post-ka": 1.0},
    ),
    Target(
        "native handler CPU/req vs fcgisgi's",
        "trio-native",
        "fcgisgi-asgi",
        dict.fromkeys(HELLOS, 0.85),
        metric="cpu",
    ),
    Target("native handler vs floor (d)", "trio-native", FLOOR, dict.fromkeys(HELLOS, 0.9)),
    Target(
        "ASGI adapter vs fcgisgi (ASGI)",
        "trio-asgi",
        "fcgisgi-asgi",
        dict.fromkeys(ALL_SCENARIOS, 1.0),
    ),
    Target(
        "WSGI adapter vs fcgisgi WSGI",
        "trio-wsgi",
        "fcgisgi-wsgi",
        dict.fromkeys(ALL_SCENARIOS, 1.5),
    ),
    Target("--workers 2 vs Go", "trio-workers2", "go", dict.fromkeys(HELLOS, 1.0)),
]
# The same targets for the compiled build's rows.
TARGETS += [
    Target(f"{target.label}, compiled", target.backend + MYPYC, *astuple(target)[2:])
    for target in TARGETS
]

#: Which fcgisgi a backend's row is compared with in the per-workload summary.
FCGISGI_OF = {
    "trio-wsgi": "fcgisgi-wsgi",
    "trio-wsgi-mypyc": "fcgisgi-wsgi",
    "uwsgi": "fcgisgi-wsgi",
    "flup": "fcgisgi-wsgi",
}
#: The idle-connection target: RSS of trio-fastcgi holding that many, in MB.
IDLE_RSS_LIMIT_MB = 100.0
#: Peak RSS under the POST load: (backend, the fcgisgi it must not exceed).
POST_RSS_PAIRS = [
    ("trio-native", "fcgisgi-asgi"),
    ("trio-asgi", "fcgisgi-asgi"),
    ("trio-wsgi", "fcgisgi-wsgi"),
]
POST_RSS_PAIRS += [(backend + MYPYC, baseline) for backend, baseline in POST_RSS_PAIRS]


def ratio(rounds: Rounds, backend: str, baseline: str, scenario: str) -> float | None:
    """Median over rounds of backend/baseline (paired by round)."""
    mine = rounds.get(backend, {}).get(scenario, [])
    theirs = rounds.get(baseline, {}).get(scenario, [])
    pairs = [
        a["req_per_s"] / b["req_per_s"]
        for a, b in zip(mine, theirs, strict=False)
        if a["req_per_s"] and b["req_per_s"]
    ]
    return statistics.median(pairs) if pairs else None


def cpu_ratio(rounds: Rounds, backend: str, baseline: str, scenario: str) -> float | None:
    """Median over rounds of backend/baseline CPU time per request (paired by round)."""
    mine = rounds.get(backend, {}).get(scenario, [])
    theirs = rounds.get(baseline, {}).get(scenario, [])
    pairs = [
        a["cpu_us_per_req"] / b["cpu_us_per_req"]
        for a, b in zip(mine, theirs, strict=False)
        if a["cpu_us_per_req"] and b["cpu_us_per_req"]
    ]
    return statistics.median(pairs) if pairs else None


def fmt_ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def workload_report(backends: list[Backend], rounds: Rounds, scenarios: list[Scenario]) -> str:
    """Per workload: each backend's median rate and CPU/req, its ratio to fcgisgi
    (the WSGI one for WSGI servers) and to floor (d)."""
    lines = [
        "Per workload: median req/s (MiB/s for the 1 MiB response), backend CPU µs/req, "
        "ratio of req/s to fcgisgi (its WSGI adapter for WSGI servers) and to floor (d), "
        "the design card's shape with a lazy writer:",
    ]
    for scenario in scenarios:
        lines += [
            "",
            f"{scenario.label}:",
            "",
            "| backend | rate | CPU µs/req (of it, system) | page faults/req "
            "| vs fcgisgi | vs floor (d) |",
            "|---|---|---|---|---|---|",
        ]
        for backend in backends:
            runs = rounds.get(backend.key, {}).get(scenario.key, [])
            if backend.skip_reason or not runs:
                continue
            summary = summarize(runs)
            rate = summary["mib_per_s"] if scenario.bandwidth else summary["req_per_s"]
            fcgisgi = FCGISGI_OF.get(backend.key, "fcgisgi-asgi")
            to_fcgisgi = ratio(rounds, backend.key, fcgisgi, scenario.key)
            to_floor = ratio(rounds, backend.key, FLOOR, scenario.key)
            lines.append(
                f"| {backend.label} | {fmt_rate(rate)} | "
                f"{fmt_num(summary['cpu_us_per_req'])} ({fmt_num(summary['sys_us_per_req'])}) | "
                f"{fmt_num(summary['faults_per_req'], 1)} | "
                f"{'' if backend.key == fcgisgi else fmt_ratio(to_fcgisgi)} | "
                f"{'' if backend.key == FLOOR else fmt_ratio(to_floor)} |"
            )
    return "\n".join(lines)


def verdict(value: float | None, bound: float, *, at_most: bool) -> str:
    if value is None:
        return "n/a"
    met = value <= bound if at_most else value >= bound
    sign = "≤" if at_most else "≥"
    return f"{value:.2f}x {'PASS' if met else 'FAIL'} ({sign}{bound:g})"


def targets_report(rounds: Rounds, extras: dict[str, Any]) -> tuple[str, Counter[str]]:
    """Every target of issue 15 as a ratio with PASS/FAIL, and the tally."""
    tally: Counter[str] = Counter()
    lines = [
        "Targets of issue 15 (ratios paired by round, medians; n/a: a side was not measured):",
        "",
        "| target | " + " | ".join(ALL_SCENARIOS) + " |",
        "|---|" + "---|" * len(ALL_SCENARIOS),
    ]
    for target in TARGETS:
        cells = []
        for key in ALL_SCENARIOS:
            if key not in target.bounds:
                cells.append("")
                continue
            if target.metric == "cpu":
                value = cpu_ratio(rounds, target.backend, target.baseline, key)
            else:
                value = ratio(rounds, target.backend, target.baseline, key)
            cell = verdict(value, target.bounds[key], at_most=target.metric == "cpu")
            tally[cell.split()[1] if value is not None else "n/a"] += 1
            cells.append(cell)
        lines.append(f"| {target.label} | " + " | ".join(cells) + " |")
    lines += ["", "Memory:", ""]
    idle = extras.get("idle", {}).get("trio-native", {})
    if "rss_mib" in idle:
        rss_mb = idle["rss_mib"] * 2**20 / 1e6
        met = rss_mb < IDLE_RSS_LIMIT_MB and idle.get("open", 0) >= extras.get("idle_count", 0)
        tally["PASS" if met else "FAIL"] += 1
        lines.append(
            f"- trio-fastcgi holding {idle.get('open')} idle connections: {rss_mb:.1f} MB RSS "
            f"{'PASS' if met else 'FAIL'} (< {IDLE_RSS_LIMIT_MB:g} MB with all "
            f"{extras.get('idle_count')} open)"
        )
    else:
        tally["n/a"] += 1
        why = extras.get("idle", {}).get("skipped") or "not measured (--no-extras or --only)"
        lines.append(f"- idle connections: n/a, {why}")
    for backend, baseline in POST_RSS_PAIRS:
        mine = rounds.get(backend, {}).get("post-ka", [])
        theirs = rounds.get(baseline, {}).get("post-ka", [])
        if not mine or not theirs:
            tally["n/a"] += 1
            lines.append(f"- peak RSS under the POST load, {backend} vs {baseline}: n/a")
            continue
        a = max(r["peak_rss_mib"] for r in mine)
        b = max(r["peak_rss_mib"] for r in theirs)
        met = a <= b
        tally["PASS" if met else "FAIL"] += 1
        lines.append(
            f"- peak RSS under the POST load, {backend} {a:.1f} MiB vs {baseline} {b:.1f} MiB: "
            f"{'PASS' if met else 'FAIL'} (at most fcgisgi's)"
        )
    lines += [
        "",
        f"Targets: {tally['PASS']} PASS, {tally['FAIL']} FAIL, {tally['n/a']} not measured.",
    ]
    return "\n".join(lines), tally


def report(
    backends: list[Backend],
    rounds: Rounds,
    scenarios: list[Scenario],
    broken: dict[str, dict[str, str]],
) -> str:
    lines = []
    head = "| backend | " + " | ".join(s.label for s in scenarios) + " |"
    lines += [
        "Median req/s (MiB/s for the 1 MiB response) and, in brackets, backend CPU "
        "time per request:",
        "",
        head,
        "|---|" + "---|" * len(scenarios),
    ]
    for backend in backends:
        if backend.skip_reason:
            lines.append(
                f"| {backend.label} | {backend.skip_reason} |" + " |" * (len(scenarios) - 1)
            )
            continue
        cells = []
        for scenario in scenarios:
            runs = rounds.get(backend.key, {}).get(scenario.key, [])
            if scenario.path in broken.get(backend.key, {}):
                cells.append("wrong answer (see below)")
            else:
                cells.append(throughput_cell(summarize(runs) if runs else None, scenario))
        lines.append(f"| {backend.label} | " + " | ".join(cells) + " |")
    notes = [
        f"- {backend.label}: {reason}"
        for backend in backends
        for reason in broken.get(backend.key, {}).values()
    ]
    if notes:
        lines += ["", "Wrong answers (those scenarios were not measured):", "", *notes]
    lines += [
        "",
        "Median p99 latency (ms) seen by wrk, and peak RSS of the backend (MiB, its "
        "processes' VmHWM summed, the highest of any round):",
        "",
        "| backend | " + " | ".join(f"p99 {s.key}" for s in scenarios) + " | peak RSS |",
        "|---|" + "---|" * (len(scenarios) + 1),
    ]
    for backend in backends:
        if backend.skip_reason:
            continue
        summaries = [
            summarize(rounds[backend.key][s.key])
            if rounds.get(backend.key, {}).get(s.key)
            else None
            for s in scenarios
        ]
        p99 = [fmt_num(s["p99_ms"], 2) if s else "n/a" for s in summaries]
        peaks = [s["peak_rss_mib"] for s in summaries if s and s["peak_rss_mib"]]
        lines.append(
            f"| {backend.label} | "
            + " | ".join(p99)
            + f" | {fmt_num(max(peaks) if peaks else None, 1)} |"
        )
    lines += [
        "",
        "Ratios (median over rounds of the per-round ratio of req/s; target in brackets):",
        "",
        "| comparison | " + " | ".join(s.key for s in scenarios) + " |",
        "|---|" + "---|" * len(scenarios),
    ]
    for label, backend_key, baseline, only, target in RATIOS:
        cells = []
        for scenario in scenarios:
            if only is not None and scenario.key not in only:
                cells.append("")
                continue
            value = ratio(rounds, backend_key, baseline, scenario.key)
            if value is None:
                cells.append("n/a")
                continue
            cell = f"{value:.2f}x"
            if target is not None:
                cell += " ✓" if value >= target else f" ✗ (≥{target:g})"
            cells.append(cell)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(
    path: Path,
    backends: list[Backend],
    rounds: Rounds,
    scenarios: list[Scenario],
    title: str,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [b for b in backends if not b.skip_reason and not b.alone and b.key in rounds]
    ceiling = next((b for b in backends if b.alone and b.key in rounds), None)
    fig, axes = plt.subplots(2, 2, figsize=(13, 8.5))
    for ax, scenario in zip(axes.flat, scenarios, strict=False):
        labels, values, errs_lo, errs_hi, colors = [], [], [], [], []
        missing = []
        for backend in shown:
            runs = rounds[backend.key].get(scenario.key, [])
            if not runs:
                missing.append(backend.label)
                continue
            unit = len(ONE_MIB) / 2**20 if scenario.bandwidth else 1.0
            rates = [r["req_per_s"] * unit for r in runs]
            mid = statistics.median(rates)
            labels.append(backend.label)
            values.append(mid)
            errs_lo.append(mid - min(rates))
            errs_hi.append(max(rates) - mid)
            colors.append(
                "tab:blue"
                if backend.key.startswith("trio")
                else "tab:green"
                if backend.key.startswith("floor")
                else "tab:gray"
            )
        y = list(range(len(labels)))[::-1]
        ax.barh(y, values, xerr=[errs_lo, errs_hi], color=colors, capsize=3)
        ax.set_yticks(y, labels, fontsize=8)
        for yi, value, hi in zip(y, values, errs_hi, strict=True):
            ax.text(value + hi, yi, f" {value:,.0f}", va="center", fontsize=7)
        unit_label = "MiB/s" if scenario.bandwidth else "req/s"
        subtitle = f"{scenario.label}"
        if ceiling is not None and rounds[ceiling.key].get(scenario.key):
            cap = statistics.median(
                r["req_per_s"] * (len(ONE_MIB) / 2**20 if scenario.bandwidth else 1.0)
                for r in rounds[ceiling.key][scenario.key]
            )
            subtitle += f"\n(nginx alone: {cap:,.0f} {unit_label})"
        if missing:
            subtitle += f"\nnot measured (wrong answer): {', '.join(missing)}"
        ax.set_title(subtitle, fontsize=10)
        ax.set_xlabel(f"{unit_label}, median of rounds (bars: min-max)", fontsize=8)
        ax.margins(x=0.18)
    for ax in list(axes.flat)[len(scenarios) :]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- extra measurements (direct FastCGI, no nginx) -------------------------------


@contextlib.contextmanager
def direct_backend(
    backend: Backend, work: Path, env_extra: dict[str, str] | None = None, *extra: str
) -> Iterator[tuple[Proc, int]]:
    port = free_port()
    if backend.key in {"trio-native", "fcgisgi-asgi"}:
        script = "trio_native.py" if backend.key == "trio-native" else "fcgisgi_asgi.py"
        env = python_env()
        env.update(env_extra or {})
        argv = [sys.executable, str(BACKENDS_DIR / script), "--port", str(port), *extra]
        proc = Proc(argv, log_path=work / f"{backend.key}-direct.log", env=env)
    else:
        assert backend.start is not None
        proc = backend.start(work, port)
    try:
        wait_for_tcp(port, proc.popen)
        yield proc, port
    finally:
        proc.stop()


def extra_multiplexed(backends: dict[str, Backend], work: Path, duration: float) -> Result:
    """100 requests in flight on one connection, straight to the backend: with
    the project's client (trio_fastcgi.client) and with the minimal raw client
    of fcgi_load (cheaper on the shared CPU, so closer to the server's limit)."""
    import fcgi_load
    import trio

    clients: list[tuple[str, Callable[..., Any]]] = [
        ("raw client", fcgi_load.multiplexed_throughput)
    ]
    if importlib.util.find_spec("trio_fastcgi.client") is not None:
        clients.insert(0, ("trio_fastcgi.client", fcgi_load.multiplexed_with_project_client))
    else:
        log("  multiplexed: trio_fastcgi.client does not exist; raw client only")
    results: dict[str, Any] = {}
    for key in ("trio-native", "fcgisgi-asgi"):
        backend = backends.get(key)
        if backend is None or backend.skip_reason:
            continue
        for client_name, function in clients:
            with direct_backend(backend, work) as (proc, port):
                pid = proc.pid
                reset_peak_rss(pid)
                before = cpu_seconds(pid)
                try:
                    result = trio.run(
                        partial(
                            function,
                            port,
                            concurrency=100,
                            duration=duration,
                            path="/hello",
                            expect=HELLO,
                        )
                    )
                except Exception as exc:  # report whatever broke, keep going
                    result = {"error": repr(exc)}
                else:
                    cpu = cpu_seconds(pid) - before
                    result["cpu_us_per_req"] = cpu * 1e6 / max(result["requests"], 1)
                result["peak_rss_mib"] = peak_rss_mib(pid)
            results[f"{key} / {client_name}"] = result
            log(f"  multiplexed, 100 in flight on one connection, {backend.label}, {client_name}:")
            log(f"    {fmt_result(result)}")
    return results


def fmt_result(result: dict[str, Any]) -> str:
    return ", ".join(
        f"{k}={v:,.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()
    )


def extra_idle(backends: dict[str, Backend], work: Path, count: int) -> Result:
    import fcgi_load
    import trio

    have = raise_nofile(count + 1000)
    if have < count + 100:
        reason = f"fd limit {have} (hard limit included) is below {count + 100}"
        log(f"  idle connections: skipped, {reason}")
        return {"skipped": reason}
    results = {}
    for key in ("trio-native", "fcgisgi-asgi"):
        backend = backends.get(key)
        if backend is None or backend.skip_reason:
            continue
        extra = ["--nofile", str(count + 1000), "--max-conns", str(count + 100)]
        with direct_backend(backend, work, None, *extra) as (proc, port):
            pid = proc.pid
            baseline = rss_mib(pid)

            def sample(pid: int = pid, baseline: float = baseline) -> dict[str, Any]:
                return {
                    "rss_baseline_mib": baseline,
                    "rss_mib": rss_mib(pid),
                    "open_fds": len(os.listdir(f"/proc/{pid}/fd")),
                }

            result = trio.run(
                partial(
                    fcgi_load.hold_idle_connections,
                    port,
                    count=count,
                    expect=HELLO,
                    measure=sample,
                    time_limit=120,
                    # Idle for longer than trio-fastcgi's HIBERNATE_AFTER (2 s),
                    # so what is measured is idle connections, not fresh ones.
                    settle=IDLE_SETTLE_SECONDS,
                )
            )
            if "rss_mib" in result:
                result["kib_per_conn"] = (
                    (result["rss_mib"] - baseline) * 1024 / max(result["open"], 1)
                )
        results[key] = result
        log(f"  {count} idle keep-alive connections, {backend.label}:")
        log(f"    {fmt_result(result)}")
    return results


#: How long the idle connections stay idle before the server's RSS is sampled.
IDLE_SETTLE_SECONDS = 4.0


def extra_upload(backends: dict[str, Backend], work: Path, size: int) -> Result:
    import fcgi_load
    import trio

    backend = backends["trio-native"]
    upload_dir = work / "uploads"
    upload_dir.mkdir(exist_ok=True)
    env = {"BENCH_UPLOAD_DIR": str(upload_dir)}
    with direct_backend(backend, work, env) as (proc, port):
        pid = proc.pid
        result = trio.run(
            lambda: fcgi_load.streamed_upload(
                port,
                size=size,
                sample=lambda: int(rss_mib(pid) * 1024),
                interval=0.1,
                time_limit=300,
            )
        )
    files = list(upload_dir.iterdir())
    result["file_bytes"] = sum(f.stat().st_size for f in files)
    for f in files:
        f.unlink()
    samples = result.pop("samples")
    result["n_samples"] = len(samples)
    for name in ("rss_min", "rss_max", "rss_first", "rss_last"):
        result[name + "_mib"] = round(result.pop(name) / 1024, 1)
    log(f"  streamed upload of {size / 2**30:g} GiB to disk, trio-fastcgi native:")
    log(f"    {fmt_result(result)}")
    return result


def extra_profile(
    backends: dict[str, Backend], work: Path, duration: float, wrk: str, *, keepalive: bool
) -> Result:
    """py-spy (raw stacks, idle included) of the native backend while wrk loads
    /hello through nginx, with or without upstream keepalive."""
    py_spy = which("py-spy")
    if py_spy is None:
        log("  profile: skipped, py-spy is not installed (pip install py-spy)")
        return {}
    backend = backends["trio-native"]
    started = start_backend(backend, work)
    raw_path = work / f"profile-{'keepalive' if keepalive else 'new-conn'}.txt"
    port = started.keepalive_port if keepalive else started.new_conn_port
    try:
        wrk_proc = subprocess.Popen(
            [
                wrk,
                "-t1",
                "-c32",
                f"-d{duration + 4:g}s",
                f"http://127.0.0.1:{port}/hello",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1.0)
        assert started.backend is not None
        out = subprocess.run(
            [
                py_spy,
                "record",
                "--pid",
                str(started.backend.pid),
                "--duration",
                f"{duration:g}",
                "--rate",
                "250",
                "--format",
                "raw",
                "--idle",
                "-o",
                str(raw_path),
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=duration + 60,
        )
        wrk_proc.wait(timeout=duration + 30)
    finally:
        started.stop()
    if out.returncode != 0 or not raw_path.exists():
        log(f"  profile: py-spy failed: {out.stderr.strip()[-500:]}")
        return {"error": out.stderr.strip()[-500:]}
    return analyse_profile(raw_path.read_text())


def _frame_name(frame: str) -> str:
    # "func (path/to/file.py:123)" -> "func (file.py)"
    match = re.match(r"(.*) \((.*?):\d+\)$", frame)
    if not match:
        return frame
    func, path = match.groups()
    parts = Path(path).parts
    short = "/".join(parts[-2:]) if len(parts) > 1 else path
    return f"{func} ({short})"


def analyse_profile(raw: str, top: int = 25) -> Result:
    """Self and inclusive sample shares per function from py-spy's raw output."""
    self_counts: Counter[str] = Counter()
    incl_counts: Counter[str] = Counter()
    total = 0
    idle = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_name(f) for f in stack.split(";")]
        # py-spy puts "process ..." / "thread ..." pseudo-frames first.
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += count
        leaf = frames[-1]
        if leaf.startswith(("get_events (", "poll (", "select (", "epoll")) or "epoll" in leaf:
            idle += count
        self_counts[leaf] += count
        for name in set(frames):
            incl_counts[name] += count
    if not total:
        return {"error": "no samples"}
    busy = total - idle
    return {
        "samples": total,
        "idle_pct": round(100 * idle / total, 1),
        "self": [(name, round(100 * c / total, 1)) for name, c in self_counts.most_common(top)],
        "inclusive": [
            (name, round(100 * c / total, 1)) for name, c in incl_counts.most_common(top + 15)
        ],
        "busy_samples": busy,
    }


# -- machine --------------------------------------------------------------------------


def machine_info(backends: list[Backend]) -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {}
    for backend in backends:
        if not backend.skip_reason:
            with contextlib.suppress(Exception):
                versions[backend.key] = backend.version()
    versions["wrk"] = command_version(["wrk", "-v"], r"wrk \S+")()
    versions["nginx"] = command_version(["nginx", "-v"], r"nginx/\S+")()
    versions["python"] = platform.python_version()
    versions["trio"] = pip_version("trio")()
    git = ["git", "-C", str(REPO)]
    commit = subprocess.run(
        [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    dirty = subprocess.run(
        [*git, "status", "--porcelain", "--", "trio_fastcgi"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "commit": f"{commit}{' + uncommitted changes in trio_fastcgi/' if dirty else ''}",
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
        "versions": versions,
    }


# -- main -----------------------------------------------------------------------------


def plot_title(info: dict[str, Any], command: str) -> str:
    return (
        f"FastCGI backends behind {info['versions'].get('nginx', 'nginx')}, wrk -t1 -c32 "
        f"({command.removeprefix('python ')}); {info['nproc']} cores ({info['cpu']})"
    )


def replot(source: Path, target: Path) -> int:
    saved = json.loads(source.read_text())
    rounds: Rounds = saved["rounds"]
    backends = make_backends()
    for backend in backends:
        backend.skip_reason = saved.get("skipped", {}).get(backend.key)
    broken: dict[str, dict[str, str]] = saved.get("broken", {})
    log(report(backends, rounds, SCENARIOS, broken))
    log("")
    log(workload_report(backends, rounds, SCENARIOS))
    log("")
    log(targets_report(rounds, saved.get("extras", {}))[0])
    title = saved.get("title") or plot_title(saved["machine"], saved["command"])
    plot_if_possible(target, backends, rounds, SCENARIOS, title)
    return 0


def plot_if_possible(
    path: Path, backends: list[Backend], rounds: Rounds, scenarios: list[Scenario], title: str
) -> None:
    """Draw the plot, or say why not: matplotlib is optional (the bench extra)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        log("\nplot skipped: matplotlib is not installed (pip install 'trio-fastcgi[bench]')")
        return
    plot(path, backends, rounds, scenarios, title)
    log(f"\nplot written to {path}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run")
    parser.add_argument(
        "--only", default=None, help="comma-separated backend keys (default: all available)"
    )
    parser.add_argument(
        "--scenarios", default=None, help="comma-separated scenario keys (default: all)"
    )
    parser.add_argument("--no-extras", action="store_true", help="skip the direct measurements")
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy profile")
    parser.add_argument("--idle-connections", type=int, default=10_000)
    parser.add_argument("--upload-mib", type=int, default=1024, help="size of the upload test")
    parser.add_argument("--plot", type=Path, default=REPO / "docs" / "performance.png")
    parser.add_argument("--json", type=Path, default=None, help="write all results here")
    parser.add_argument(
        "--keep", action="store_true", help="keep the work directory (configs, logs) for debugging"
    )
    parser.add_argument(
        "--replot",
        type=Path,
        default=None,
        metavar="JSON",
        help="measure nothing: redraw the plot and reprint the tables of a --json file",
    )
    args = parser.parse_args()
    if args.replot:
        return replot(args.replot, args.plot)

    started_at = time.monotonic()
    wrk = which("wrk")
    if which("nginx") is None or wrk is None:
        log("nginx and wrk are required (Debian packages nginx, wrk)")
        return 2
    backends = make_backends()
    keys = {b.key for b in backends}
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - keys
        if unknown:
            known = ", ".join(sorted(keys))
            log(f"unknown backend(s): {', '.join(sorted(unknown))}; known: {known}")
            return 2
        backends = [b for b in backends if b.key in wanted]
    scenarios = SCENARIOS
    if args.scenarios:
        wanted = set(args.scenarios.split(","))
        scenarios = [s for s in SCENARIOS if s.key in wanted]
    raise_nofile(20_000)

    workdir: contextlib.AbstractContextManager[str] = (
        contextlib.nullcontext(tempfile.mkdtemp(prefix="trio-fastcgi-bench-"))
        if args.keep
        else tempfile.TemporaryDirectory(prefix="trio-fastcgi-bench-")
    )
    with workdir as tmp:
        root = Path(tmp)
        if args.keep:
            log(f"work directory (kept): {root}")
        # nginx workers (and php-fpm children) may run as another user.
        root.chmod(0o755)
        for backend in backends:
            backend.skip_reason = backend.check()
            if backend.key == "go" and backend.skip_reason is None:
                error = build_go(root)
                if error:
                    backend.skip_reason = error
            if backend.skip_reason:
                log(f"skip {backend.label}: {backend.skip_reason}")
        runnable = [b for b in backends if not b.skip_reason]
        rounds: Rounds = {}
        failed: set[str] = set()
        #: backend -> route -> why its answer was wrong (its scenarios are skipped).
        broken: dict[str, dict[str, str]] = {}
        for round_no in range(1, args.rounds + 1):
            log(f"== round {round_no}/{args.rounds}")
            for backend in runnable:
                if backend.key in failed:
                    continue
                work = root / f"{backend.key}-r{round_no}"
                work.mkdir()
                try:
                    started = start_backend(backend, work)
                except RuntimeError as exc:
                    log(f"skip {backend.label}: failed to start: {exc}")
                    backend.skip_reason = "failed to start"
                    failed.add(backend.key)
                    continue
                try:
                    problems = check_answers(started.keepalive_port)
                    for path, found in check_answers(started.new_conn_port).items():
                        problems.setdefault(path, []).extend(f"(new conn) {p}" for p in found)
                    for path, found in problems.items():
                        reason = f"wrong answer on {path}: {'; '.join(found)}"
                        if broken.setdefault(backend.key, {}).get(path) is None:
                            log(f"  {backend.label}: {reason}; its {path} scenarios are skipped")
                        broken[backend.key][path] = reason
                    # New-connection scenarios first: after a keepalive scenario nginx
                    # holds up to 32 idle connections, and a backend that serves one
                    # connection per process (php-fpm, 4 children) then has no process
                    # left for new connections, which wait in its backlog for ever.
                    for scenario in sorted(scenarios, key=lambda s: s.keepalive):
                        if scenario.path in broken.get(backend.key, {}):
                            continue
                        result = measure(started, scenario, wrk, args.duration, work)
                        rounds.setdefault(backend.key, {}).setdefault(scenario.key, []).append(
                            result
                        )
                        rate = (
                            f"{result['mib_per_s']:,.0f} MiB/s"
                            if scenario.bandwidth
                            else f"{result['req_per_s']:,.0f} req/s"
                        )
                        log(
                            f"  {backend.label:38} {scenario.key:9} {rate:>14}  "
                            f"p99 {fmt_num(result['p99_ms'], 2)} ms  "
                            f"cpu {fmt_num(result['cpu_us_per_req'], 0)} µs/req "
                            f"(sys {fmt_num(result.get('sys_us_per_req'), 0)})  "
                            f"faults {fmt_num(result.get('faults_per_req'), 1)}/req  "
                            f"rss {result['peak_rss_mib']:.1f} MiB"
                            + (f"  errors {result['errors']}" if result["errors"] else "")
                        )
                        if not result["requests"]:
                            log(f"    wrk: {result.get('raw', '')}")
                finally:
                    started.stop()
        table = report(backends, rounds, scenarios, broken)
        log("")
        log(table)

        extras: dict[str, Any] = {}
        by_key = {b.key: b for b in backends}
        if not args.no_extras and "trio-native" in by_key:
            extra_dir = root / "extras"
            extra_dir.mkdir()
            log("")
            log("== direct measurements (no nginx)")
            extras["multiplexed"] = extra_multiplexed(by_key, extra_dir, min(args.duration, 10))
            extras["idle"] = extra_idle(by_key, extra_dir, args.idle_connections)
            extras["idle_count"] = args.idle_connections
            extras["upload"] = extra_upload(by_key, extra_dir, args.upload_mib * 2**20)
        if not args.no_profile and "trio-native" in by_key:
            profile_dir = root / "profile"
            profile_dir.mkdir()
            log("")
            for keepalive in (True, False):
                name = "keepalive" if keepalive else "new connection per request"
                log(f"== py-spy profile of the native backend, hello, {name}")
                profile = extra_profile(
                    by_key, profile_dir, min(args.duration, 10), wrk, keepalive=keepalive
                )
                extras[f"profile ({name})"] = profile
                if "self" in profile:
                    log(f"  {profile['samples']} samples, {profile['idle_pct']}% idle (waiting)")
                    log("  self time:")
                    for func, pct in profile["self"][:20]:
                        log(f"    {pct:5.1f}%  {func}")
                    log("  inclusive time:")
                    for func, pct in profile["inclusive"][:30]:
                        log(f"    {pct:5.1f}%  {func}")

        info = machine_info(backends)
        elapsed = time.monotonic() - started_at
        command = " ".join(["python", "benchmarks/run.py", *sys.argv[1:]])
        title = plot_title(info, command)
        log("")
        log(workload_report(backends, rounds, scenarios))
        targets, tally = targets_report(rounds, extras)
        log("")
        log(targets)
        extras["targets"] = dict(tally)
        if rounds:
            plot_if_possible(args.plot, backends, rounds, scenarios, title)
        log(f"machine: {info}")
        log(f"command: {command}; took {elapsed / 60:.1f} min")
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(
                json.dumps(
                    {
                        "command": command,
                        "machine": info,
                        "rounds": rounds,
                        "skipped": {b.key: b.skip_reason for b in backends if b.skip_reason},
                        "broken": broken,
                        "title": title,
                        "extras": extras,
                        "table": table,
                        "seconds": elapsed,
                    },
                    indent=1,
                    default=str,
                )
            )
            log(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
