"""The ``trio-fastcgi`` command (also ``python -m trio_fastcgi``).

``trio-fastcgi MODULE:APP [options]`` serves a native handler, a WSGI or an
ASGI 3 application over FastCGI; ``trio-fastcgi dev MODULE:APP`` serves it over
plain HTTP for development (see :mod:`trio_fastcgi._dev`).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import json
import logging
import logging.config
import logging.handlers
import os
import socket
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import PurePath
from typing import Final, Literal

import trio

from ._access_log import ACCESS_LOGGER, AccessLogHandler
from ._bind import Bind, BindError, BoundSocket, default_binds, open_binds, parse_bind
from ._config import (
    DEFAULT_GRACE_PERIOD,
    DEFAULT_HIBERNATE_AFTER,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_INPUT_BUFFER_SIZE,
    DEFAULT_READ_TIMEOUT,
    DEFAULT_WRITE_TIMEOUT,
    Config,
    ServerOptions,
    environ_web_server_addrs,
)
from ._connection import DEFAULT_MAX_CONNS, DEFAULT_MAX_PARAMS_SIZE, DEFAULT_MAX_REQS
from ._listeners import DEFAULT_BACKLOG, ListenError, protect_std_fds
from ._server import check_handler
from ._version import __version__
from ._wire import Role
from ._workers import LoadedApp, Supervisor, exit_now, run_worker

LOGGER: Final = logging.getLogger("trio_fastcgi.cli")

Interface = Literal["native", "wsgi", "asgi"]
INTERFACES: Final = ("auto", "native", "wsgi", "asgi")
LOG_LEVELS: Final = ("critical", "error", "warning", "info", "debug")
_ROLE_NAMES: Final = {
    "responder": Role.RESPONDER,
    "authorizer": Role.AUTHORIZER,
    "filter": Role.FILTER,
}


class CLIError(Exception):
    """A mistake in the command line or the application reference."""


# -- the application -----------------------------------------------------------


def check_app_spec(spec: str) -> str:
    """*spec* if it has the ``MODULE:ATTR`` form.

    Raises:
      CLIError: it does not, with the form to use (a file name such as
        ``app.py:app`` gets its module name).
    """
    module_name, sep, attr = spec.partition(":")
    if module_name.endswith(".py") or "/" in module_name:
        path = PurePath(module_name)
        module = path.stem if path.suffix == ".py" else path.name
        suggestion = f"{module}:{attr or 'app'}"
        if str(path.parent) != ".":
            suggestion = f"{suggestion} --app-dir {path.parent}"
        raise CLIError(f"{spec!r}: use the module name, not the file name: {suggestion}")
    if not sep or not module_name or not attr:
        raise CLIError(
            f"{spec!r}: expected MODULE:APP, like myapp:app or package.module:handler "
            "(the module, a colon, then the application's name in it)"
        )
    return spec


def _app_spec(text: str) -> str:
    try:
        return check_app_spec(text)
    except CLIError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def load_app(spec: str, app_dir: str = ".") -> object:
    """Import ``MODULE:ATTR`` (ATTR may be dotted) from *app_dir* first."""
    module_name, _, attr = check_app_spec(spec).partition(":")
    directory = os.path.abspath(app_dir)
    if directory not in sys.path:
        sys.path.insert(0, directory)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            raise CLIError(f"cannot import {module_name!r}: {exc}") from exc
        raise
    obj: object = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise CLIError(f"module {module_name!r} has no attribute {attr!r}") from None
    return obj


def _positional_count(obj: object) -> int | None:
    try:
        signature = inspect.signature(obj)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    params = list(signature.parameters.values())
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        return None
    return sum(1 for p in params if p.kind in kinds)


def detect_interface(app: object) -> Interface:
    """What *app* is, from its signature.

    - ``async def handler(request)``: native;
    - ``async def app(scope, receive, send)`` (a function or an object with
      such a ``__call__``): ASGI 3;
    - ``def app(environ, start_response)``: WSGI.

    Raises:
      CLIError: none of these; ``--interface`` must say.
    """
    if not callable(app):
        raise CLIError(f"{app!r} is not callable")
    if inspect.isclass(app):
        raise CLIError(f"{app!r} is a class; pass an instance (or use --interface)")
    call = app if inspect.isroutine(app) else getattr(app, "__call__", None)  # noqa: B004
    is_async = inspect.iscoroutinefunction(app) or inspect.iscoroutinefunction(call)
    count = _positional_count(app)
    if is_async and count == 1:
        return "native"
    if is_async and count == 3:
        return "asgi"
    if not is_async and count == 2:
        return "wsgi"
    if not is_async and count == 1:
        raise CLIError(
            f"{app!r}: a native handler must be `async def` "
            "(write `async def handler(request):`); or use --interface wsgi|asgi"
        )
    raise CLIError(
        f"cannot tell what kind of application {app!r} is "
        f"({'async' if is_async else 'sync'}, {count} positional parameters); "
        "use --interface native|wsgi|asgi"
    )


def make_handler(app: object, interface: Interface, args: argparse.Namespace) -> LoadedApp:
    """The native handler serving *app*, and its lifespan for ASGI."""
    if interface == "wsgi":
        from .wsgi import WSGIHandler

        return (
            WSGIHandler(
                app,  # type: ignore[arg-type]
                limiter=trio.CapacityLimiter(args.threads),
                script_name=args.script_name,
                multiprocess=(args.workers or 0) > 1,
            ),
            None,
        )
    if interface == "asgi":
        from .asgi import ASGIHandler

        handler = ASGIHandler(
            app,  # type: ignore[arg-type]
            script_name=args.script_name,
            lifespan=args.lifespan,
            loop=getattr(args, "asgi_loop", "auto"),
        )
        return handler, handler.lifespan()
    try:
        check_handler(app)
    except TypeError as exc:
        raise CLIError(str(exc)) from None
    return app, None  # type: ignore[return-value]


def loader(args: argparse.Namespace) -> Callable[[], LoadedApp]:
    """Loads the application (in each worker, after the fork)."""

    def load() -> LoadedApp:
        app = load_app(args.app, args.app_dir)
        interface: Interface = detect_interface(app) if args.interface == "auto" else args.interface
        LOGGER.info("serving %s (%s) in process %d", args.app, interface, os.getpid())
        handler, lifespan = make_handler(app, interface, args)
        if getattr(args, "access_log_on", False):
            handler = AccessLogHandler(handler)
        return handler, lifespan

    return load


# -- options -------------------------------------------------------------------


def _roles(text: str) -> frozenset[Role]:
    roles = set()
    for name in text.split(","):
        name = name.strip().lower()
        if name not in _ROLE_NAMES:
            raise argparse.ArgumentTypeError(
                f"unknown role {name!r}; choose from responder, authorizer, filter"
            )
        roles.add(_ROLE_NAMES[name])
    return frozenset(roles)


def _timeout(text: str) -> float | None:
    if text.lower() in ("none", "0", "off"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be positive (or 0/none for no limit)")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be 0 or more")
    return value


def _count(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if not text.isdigit() or int(text) < minimum:
            raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number >= {minimum}")
        return int(text)

    return parse


def _bind(text: str) -> Bind:
    try:
        return parse_bind(text)
    except BindError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _mode(text: str) -> int:
    try:
        value = int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an octal mode like 660") from None
    if not 0 <= value <= 0o7777:
        raise argparse.ArgumentTypeError(f"{text!r} is not a file mode")
    return value


def web_server_addrs(environ: Mapping[str, str]) -> list[str] | None:
    """The addresses in ``FCGI_WEB_SERVER_ADDRS`` (validated), or None if unset
    or empty.

    Raises:
      CLIError: one of them is not an IP address.
    """
    try:
        return environ_web_server_addrs(environ) or None
    except ValueError as exc:
        raise CLIError(str(exc)) from None


def server_options(args: argparse.Namespace, environ: Mapping[str, str]) -> ServerOptions:
    """The ``serve_*`` options the command line asks for."""
    options: ServerOptions = {
        "roles": args.roles,
        "mpxs_conns": args.mpxs_conns,
        "idle_timeout": args.idle_timeout,
        "read_timeout": args.read_timeout,
        "write_timeout": args.write_timeout,
        "hibernate_after": args.hibernate_after,
        "grace_period": args.graceful_timeout,
    }
    if args.max_conns is not None:
        options["max_conns"] = args.max_conns
    if args.max_reqs is not None:
        options["max_reqs"] = args.max_reqs
    if args.max_params_size is not None:
        options["max_params_size"] = args.max_params_size
    if args.input_buffer_size is not None:
        options["input_buffer_size"] = args.input_buffer_size
    addresses = web_server_addrs(environ)
    # Always explicit: an empty list means "every peer", so the core does not
    # read the variable again behind the command's back.
    options["web_server_addrs"] = addresses or []
    try:
        Config.from_options(options)
    except (TypeError, ValueError) as exc:
        raise CLIError(str(exc)) from exc
    return options


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trio-fastcgi",
        description=(
            "Serve a Python web application over FastCGI, behind nginx, Apache, "
            "lighttpd, Caddy or HAProxy. APP is a native trio-fastcgi handler "
            "(async def handler(request)), a WSGI application (Flask, Django) or an "
            "ASGI 3 application (Starlette, FastAPI), found as MODULE:ATTRIBUTE. "
            "For development without a web server: trio-fastcgi dev MODULE:APP "
            "(see trio-fastcgi dev --help)."
        ),
        epilog=(
            "Signals: SIGTERM or SIGINT stop gracefully (stop accepting, finish the "
            "requests in flight within --graceful-timeout, then cancel them); a second "
            "one stops at once. SIGHUP (with --workers >= 1) starts new workers, which "
            "load the application afresh, then gracefully stops the old ones. "
            "FCGI_WEB_SERVER_ADDRS (comma-separated IP addresses), if set, is the list "
            "of web servers allowed to connect over TCP."
        ),
    )
    parser.add_argument(
        "app", metavar="MODULE:APP", type=_app_spec, help="the application, e.g. myapp:app"
    )
    parser.add_argument("--version", action="version", version=f"trio-fastcgi {__version__}")

    group = parser.add_argument_group("application")
    group.add_argument(
        "--interface",
        choices=INTERFACES,
        default="auto",
        help="what APP is; auto (the default) tells from its signature",
    )
    group.add_argument(
        "--app-dir",
        default=".",
        metavar="DIR",
        help="directory searched first for MODULE (default: the current directory)",
    )
    group.add_argument(
        "--script-name",
        metavar="PATH",
        default=None,
        help=(
            "WSGI/ASGI: the path the application is mounted at (SCRIPT_NAME / root_path), "
            "e.g. /app.fcgi under Apache mod_fcgid; default: as the web server sends it"
        ),
    )
    group.add_argument(
        "--threads",
        type=_count(1),
        default=40,
        metavar="N",
        help="WSGI: worker threads running the application at once, per process (default 40)",
    )
    group.add_argument(
        "--lifespan",
        choices=("auto", "on", "off"),
        default="auto",
        help="ASGI: run lifespan startup/shutdown; auto skips it if the app does not support it",
    )
    group.add_argument(
        "--asgi-loop",
        choices=("trio", "asyncio", "auto"),
        default="auto",
        help="ASGI: the event loop the app runs on; auto picks asyncio for Django's ASGIHandler",
    )

    group = parser.add_argument_group("listening")
    group.add_argument(
        "-b",
        "--bind",
        action="append",
        type=_bind,
        metavar="ADDRESS",
        help=(
            "HOST:PORT, [IPV6]:PORT, unix:/path or fd://N; repeat to listen on several. "
            "Default: the sockets of systemd socket activation (LISTEN_FDS), else fd 0 "
            "if it is a listening socket (spawned by a web server), else 127.0.0.1:9000"
        ),
    )
    group.add_argument(
        "--socket-mode",
        type=_mode,
        default=0o660,
        metavar="MODE",
        help="permissions of unix sockets, in octal (default 660)",
    )
    group.add_argument(
        "--backlog",
        type=_count(1),
        default=DEFAULT_BACKLOG,
        metavar="N",
        help=f"listen backlog of the sockets opened here (default {DEFAULT_BACKLOG})",
    )

    group = parser.add_argument_group("processes")
    group.add_argument(
        "-w",
        "--workers",
        type=_count(0),
        default=None,
        metavar="N",
        help=(
            "worker processes, under a supervisor that replaces any that die and "
            "reloads them on SIGHUP (default 1); 0 serves in this single process "
            "(the default when listening on fd 0: a web server spawned this process)"
        ),
    )
    group.add_argument(
        "--max-requests",
        type=_count(0),
        default=0,
        metavar="N",
        help="a worker stops gracefully (and is replaced) after N requests; 0 = never (default)",
    )
    group.add_argument(
        "--graceful-timeout",
        type=_non_negative_float,
        default=DEFAULT_GRACE_PERIOD,
        metavar="SECONDS",
        help=(
            "on a stop or reload, how long requests in flight may take "
            f"(default {DEFAULT_GRACE_PERIOD:g})"
        ),
    )
    group.add_argument(
        "--pid",
        metavar="FILE",
        default=None,
        help="write the PID of the server (the supervisor) to FILE; removed on exit",
    )

    group = parser.add_argument_group("logging")
    add_logging_options(group)

    group = parser.add_argument_group("FastCGI limits")
    group.add_argument(
        "--max-conns",
        type=_count(1),
        metavar="N",
        help=(
            f"connections served at once per process (FCGI_MAX_CONNS; default {DEFAULT_MAX_CONNS})"
        ),
    )
    group.add_argument(
        "--max-reqs",
        type=_count(1),
        metavar="N",
        help=f"concurrent requests per connection (FCGI_MAX_REQS; default {DEFAULT_MAX_REQS})",
    )
    group.add_argument(
        "--mpxs-conns",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="allow several requests at once on one connection (FCGI_MPXS_CONNS; default on)",
    )
    group.add_argument(
        "--no-multiplex",
        dest="mpxs_conns",
        action="store_false",
        help="same as --no-mpxs-conns",
    )
    group.add_argument(
        "--max-params-size",
        type=_count(1),
        metavar="BYTES",
        help=f"largest FCGI_PARAMS of one request (default {DEFAULT_MAX_PARAMS_SIZE})",
    )
    group.add_argument(
        "--input-buffer-size",
        type=_count(1),
        metavar="BYTES",
        help="request body buffered per request before reading pauses "
        f"(default {DEFAULT_INPUT_BUFFER_SIZE})",
    )
    group.add_argument(
        "--idle-timeout",
        type=_timeout,
        default=DEFAULT_IDLE_TIMEOUT,
        metavar="SECONDS",
        help=f"close a connection idle this long; 0 = never (default {DEFAULT_IDLE_TIMEOUT:g})",
    )
    group.add_argument(
        "--read-timeout",
        type=_timeout,
        default=DEFAULT_READ_TIMEOUT,
        metavar="SECONDS",
        help="longest a started record or a request's params may take; 0 = no limit "
        f"(default {DEFAULT_READ_TIMEOUT:g})",
    )
    group.add_argument(
        "--write-timeout",
        type=_timeout,
        default=DEFAULT_WRITE_TIMEOUT,
        metavar="SECONDS",
        help="longest the web server may take none of the output waiting for it; "
        f"0 = no limit (default {DEFAULT_WRITE_TIMEOUT:g})",
    )
    group.add_argument(
        "--hibernate-after",
        type=_timeout,
        default=DEFAULT_HIBERNATE_AFTER,
        metavar="SECONDS",
        help="an idle connection gives up its tasks after this long; 0 = never "
        f"(default {DEFAULT_HIBERNATE_AFTER:g})",
    )
    group.add_argument(
        "--roles",
        type=_roles,
        default=frozenset({Role.RESPONDER}),
        metavar="ROLES",
        help=(
            "comma-separated FastCGI roles to serve: responder, authorizer, filter "
            "(default responder)"
        ),
    )
    return parser


def add_logging_options(group: argparse._ArgumentGroup) -> None:
    """``--log-level``, ``--log-config`` and ``--access-log`` (both commands)."""
    group.add_argument(
        "--log-level",
        type=str.lower,
        choices=LOG_LEVELS,
        default="info",
        help="logging to stderr (default info; not used with --log-config)",
    )
    group.add_argument(
        "--log-config",
        metavar="FILE",
        default=None,
        help=(
            "configure logging with logging.config.dictConfig from FILE, JSON or "
            "(if it ends in .toml) TOML, instead of the default logging to stderr"
        ),
    )
    group.add_argument(
        "--access-log",
        metavar="PATH",
        default=None,
        help=(
            "log one line per request (combined log format, plus request id and "
            "duration) to PATH, or to stdout if PATH is -; off by default. The "
            f"logger is {ACCESS_LOGGER.name}"
        ),
    )


_LOG_FORMAT: Final = "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"


def read_log_config(path: str) -> dict[str, object]:
    """The dictConfig dictionary in the JSON or TOML file at *path*.

    Raises:
      CLIError: it cannot be read or parsed, or is not a table/object.
    """
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as exc:
        raise CLIError(f"--log-config {path}: cannot read it: {exc.strerror or exc}") from None
    config: object
    if path.endswith(".toml"):
        try:
            import tomllib  # type: ignore[import-not-found,unused-ignore]
        except ImportError:  # Python 3.10
            raise CLIError(f"--log-config {path}: TOML needs Python 3.11; use JSON") from None
        try:
            config = tomllib.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise CLIError(f"--log-config {path}: not valid TOML: {exc}") from None
    else:
        try:
            config = json.loads(data)
        except ValueError as exc:
            raise CLIError(f"--log-config {path}: not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise CLIError(f"--log-config {path}: expected an object (a dictConfig dictionary)")
    return config


def configure_logging(
    level: str, *, config_file: str | None = None, access_log: str | None = None
) -> bool:
    """Set up logging as the options say; True if the access log is on (by
    ``--access-log``, or by a ``--log-config`` that configures its logger).

    Raises:
      CLIError: a bad ``--log-config`` file, or an ``--access-log`` that
        cannot be opened.
    """
    access_on = access_log is not None
    if config_file is None:
        logging.basicConfig(level=level.upper(), stream=sys.stderr, format=_LOG_FORMAT)
    else:
        config = read_log_config(config_file)
        # Else the loggers made at import time (this module's among them) go silent.
        config.setdefault("disable_existing_loggers", False)
        loggers = config.get("loggers")
        access_on = access_on or (isinstance(loggers, dict) and ACCESS_LOGGER.name in loggers)
        try:
            logging.config.dictConfig(config)
        except (ValueError, TypeError, AttributeError, ImportError, KeyError) as exc:
            cause = f": {exc.__cause__}" if exc.__cause__ is not None else ""
            raise CLIError(f"--log-config {config_file}: {exc}{cause}") from None
    if access_log is not None:
        open_access_log(access_log)
    return access_on


def open_access_log(target: str) -> None:
    """Send :data:`ACCESS_LOGGER` to the file *target* (or stdout for ``-``),
    and no longer to the root logger's handlers."""
    handler: logging.Handler
    if target == "-":
        handler = logging.StreamHandler(sys.stdout)
    else:
        try:
            # Reopens the file if logrotate moved it.
            handler = logging.handlers.WatchedFileHandler(target, encoding="utf-8")
        except OSError as exc:
            raise CLIError(
                f"--access-log {target}: cannot open it: {exc.strerror or exc}"
            ) from None
    handler.setFormatter(logging.Formatter("%(message)s"))
    ACCESS_LOGGER.addHandler(handler)
    ACCESS_LOGGER.setLevel(logging.INFO)
    ACCESS_LOGGER.propagate = False


@contextlib.contextmanager
def pid_file(path: str) -> Iterator[None]:
    """Write this process's PID to *path*; remove the file on exit, unless
    another process wrote its own PID there since.

    Raises:
      CLIError: it cannot be written.
    """
    pid = str(os.getpid())
    try:
        with open(path, "w", encoding="ascii") as file:
            file.write(pid + "\n")
    except OSError as exc:
        raise CLIError(f"--pid {path}: cannot write the PID file: {exc.strerror or exc}") from None
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            with open(path, encoding="ascii") as file:
                ours = file.read().strip() == pid
            if ours:
                os.remove(path)


def worker_count(requested: int | None, binds: Sequence[Bind]) -> int:
    """``--workers``: by default 1, but 0 on fd 0 (see the warning below)."""
    spawned = any(bind.kind == "fd" and bind.fd == 0 for bind in binds)
    if not spawned:
        return 1 if requested is None else requested
    if requested is None:
        LOGGER.info("listening on fd 0 (spawned by a web server): serving in this process")
        return 0
    if requested > 0:
        LOGGER.warning(
            "listening on fd 0: the web server that spawned this process (mod_fcgid, "
            "spawn-fcgi, lighttpd bin-path, H2O fastcgi.spawn) already manages the "
            "processes; --workers %d adds a supervisor and %d more process(es), each "
            "with its own copy of the application, which doubles the memory at least; "
            "--workers 0 (the default on fd 0) serves in this process",
            requested,
            requested,
        )
    return requested


def _open(args: argparse.Namespace, binds: list[Bind]) -> list[BoundSocket]:
    try:
        return open_binds(binds, socket_mode=args.socket_mode, backlog=args.backlog)
    except ListenError as exc:
        raise CLIError(str(exc)) from exc
    except (OSError, BindError) as exc:
        raise CLIError(f"cannot listen: {exc}") from exc


def serve(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    """Run the server the parsed command line describes; the exit status."""
    options = server_options(args, environ)
    binds: list[Bind] = args.bind or default_binds(environ)
    args.workers = worker_count(args.workers, binds)
    with contextlib.ExitStack() as cleanup:
        if args.pid is not None:
            cleanup.enter_context(pid_file(args.pid))
        if args.workers == 0:
            status = _serve_in_this_process(args, binds, options, cleanup)
        else:
            status = _supervise(args, binds, options)
    return status


def _serve_in_this_process(
    args: argparse.Namespace,
    binds: list[Bind],
    options: ServerOptions,
    cleanup: contextlib.ExitStack,
) -> int:
    loaded = loader(args)()  # import errors show before anything listens
    bound = _open(args, binds)
    LOGGER.info("listening on %s", ", ".join(b.describe() for b in bound))
    try:
        abandoned = run_worker(
            lambda: loaded,
            [b.sock for b in bound],
            options,
            max_requests=args.max_requests,
        )
    finally:
        for b in bound:
            b.close()
            b.remove_file()
    if abandoned:
        cleanup.close()  # the PID file: exit_now skips every finally
        exit_now(0)  # threads still in the application must not hold the exit
    return 0


def _supervise(args: argparse.Namespace, binds: list[Bind], options: ServerOptions) -> int:
    load = loader(args)
    bound = _open(args, binds)
    LOGGER.info(
        "trio-fastcgi %s: %s on %s with %d worker(s)",
        __version__,
        args.app,
        ", ".join(b.describe() for b in bound),
        args.workers,
    )

    def worker_main(
        sockets: Sequence[socket.socket], ready: Callable[[], None], life_fd: int
    ) -> int:
        try:
            run_worker(
                load,
                sockets,
                options,
                max_requests=args.max_requests,
                on_ready=ready,
                life_fd=life_fd,
            )
        except CLIError as exc:
            LOGGER.error("%s", exc)
            return 2
        return 0

    supervisor = Supervisor(
        bound, worker_main, workers=args.workers, graceful_timeout=args.graceful_timeout
    )
    return supervisor.run()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``trio-fastcgi`` command."""
    # Web servers spawn FastCGI applications with fds 1 and 2 closed; the
    # supervisor's pipes must not land there (logging writes to fd 2).
    protect_std_fds()
    # Python leaves sys.stdout/sys.stderr None when it started with them closed.
    if sys.stdout is None:
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
    if sys.stderr is None:
        sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["dev"]:
        try:
            from ._dev import main as dev_main
        except ImportError as exc:  # h11 is a dependency: only a broken install lacks it
            sys.exit(f"trio-fastcgi dev: error: {exc}; install it with: pip install h11")
        return dev_main(arguments[1:])
    parser = build_parser()
    habit = foreign_option_hint(arguments)
    if habit is not None:
        parser.error(habit)
    args = parser.parse_args(arguments)
    try:
        args.access_log_on = configure_logging(
            args.log_level, config_file=args.log_config, access_log=args.access_log
        )
        return serve(args, os.environ)
    except CLIError as exc:
        parser.exit(2, f"trio-fastcgi: error: {exc}\n")
    except KeyboardInterrupt:
        return 130


#: Options of other servers (uvicorn, hypercorn) that --bind replaces.
_BIND_HABITS: Final = ("--host", "--port", "--uds", "--fd")


def foreign_option_hint(arguments: Sequence[str]) -> str | None:
    """What to say if *arguments* use another server's option that this
    command spells differently (``--port 9000``: use ``--bind``), else None."""
    found: dict[str, str] = {}
    for index, argument in enumerate(arguments):
        if argument == "--":
            break
        name, equals, value = argument.partition("=")
        if name == "--reload":
            return (
                "--reload is an option of `trio-fastcgi dev`; in production, SIGHUP "
                "reloads the application (with --workers 1 or more)"
            )
        if name not in _BIND_HABITS:
            continue
        if not equals:
            following = arguments[index + 1] if index + 1 < len(arguments) else ""
            value = "" if following.startswith("-") else following
        found[name] = value
    if not found:
        return None
    if "--uds" in found:
        bind = f"unix:{found['--uds'] or '/run/app.sock'}"
    elif "--fd" in found:
        bind = f"fd://{found['--fd'] or '0'}"
    else:
        host = found.get("--host") or "127.0.0.1"
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        bind = f"{host}:{found.get('--port') or '9000'}"
    names = " and ".join(found)
    verb = "is not an option" if len(found) == 1 else "are not options"
    return f"{names} {verb}: use --bind {bind}"
