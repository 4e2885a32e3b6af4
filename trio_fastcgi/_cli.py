"""The ``trio-fastcgi`` command (also ``python -m trio_fastcgi``).

``trio-fastcgi MODULE:APP [options]`` serves a native handler, a WSGI or an
ASGI 3 application over FastCGI; ``trio-fastcgi dev MODULE:APP`` serves it over
plain HTTP for development (see :mod:`trio_fastcgi._dev`).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import socket
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Final

from ._app import (
    AppOptions,
    CLIError,
    add_app_arguments,
    add_logging_options,
    configure_logging,
    whole_number,
)
from ._bind import Bind, BindError, BoundSocket, default_binds, open_binds, parse_bind
from ._compiled import build_description
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
from ._version import __version__
from ._wire import Role
from ._workers import Supervisor, exit_now, run_worker

LOGGER: Final = logging.getLogger("trio_fastcgi.cli")

_ROLE_NAMES: Final = {
    "responder": Role.RESPONDER,
    "authorizer": Role.AUTHORIZER,
    "filter": Role.FILTER,
}


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
        "--version",
        action="version",
        version=f"trio-fastcgi {__version__} ({build_description()})",
    )
    add_app_arguments(parser)

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
        type=whole_number(1),
        default=DEFAULT_BACKLOG,
        metavar="N",
        help=f"listen backlog of the sockets opened here (default {DEFAULT_BACKLOG})",
    )

    group = parser.add_argument_group("processes")
    group.add_argument(
        "-w",
        "--workers",
        type=whole_number(0),
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
        type=whole_number(0),
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
        type=whole_number(1),
        metavar="N",
        help=(
            f"connections served at once per process (FCGI_MAX_CONNS; default {DEFAULT_MAX_CONNS})"
        ),
    )
    group.add_argument(
        "--max-reqs",
        type=whole_number(1),
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
        type=whole_number(1),
        metavar="BYTES",
        help=f"largest FCGI_PARAMS of one request (default {DEFAULT_MAX_PARAMS_SIZE})",
    )
    group.add_argument(
        "--input-buffer-size",
        type=whole_number(1),
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


def serve(args: argparse.Namespace, environ: Mapping[str, str], *, access_log: bool = False) -> int:
    """Run the server the parsed command line describes; the exit status.
    *access_log* wraps the handler in the access log."""
    options = server_options(args, environ)
    binds: list[Bind] = args.bind or default_binds(environ)
    workers = worker_count(args.workers, binds)
    app = app_options(args, workers, access_log=access_log)
    with contextlib.ExitStack() as cleanup:
        if args.pid is not None:
            cleanup.enter_context(pid_file(args.pid))
        if workers == 0:
            status = _serve_in_this_process(args, app, binds, options, cleanup)
        else:
            status = _supervise(args, app, workers, binds, options)
    return status


def app_options(args: argparse.Namespace, workers: int, *, access_log: bool) -> AppOptions:
    """What to serve, for *workers* worker processes (0: this process)."""
    return AppOptions.from_args(args, access_log=access_log, multiprocess=workers > 1)


def _serve_in_this_process(
    args: argparse.Namespace,
    app: AppOptions,
    binds: list[Bind],
    options: ServerOptions,
    cleanup: contextlib.ExitStack,
) -> int:
    loaded = app.load()  # import errors show before anything listens
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


def _supervise(
    args: argparse.Namespace,
    app: AppOptions,
    workers: int,
    binds: list[Bind],
    options: ServerOptions,
) -> int:
    bound = _open(args, binds)
    LOGGER.info(
        "trio-fastcgi %s: %s on %s with %d worker(s)",
        __version__,
        app.spec,
        ", ".join(b.describe() for b in bound),
        workers,
    )

    def worker_main(
        sockets: Sequence[socket.socket], ready: Callable[[], None], life_fd: int
    ) -> int:
        try:
            run_worker(
                app.load,  # in each worker, after the fork
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
        bound, worker_main, workers=workers, graceful_timeout=args.graceful_timeout
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
        access_log = configure_logging(
            args.log_level, config_file=args.log_config, access_log=args.access_log
        )
        return serve(args, os.environ, access_log=access_log)
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
