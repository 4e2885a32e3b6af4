"""Loading the application that both commands serve, and their shared options.

``trio-fastcgi MODULE:APP`` (:mod:`trio_fastcgi._cli`) and ``trio-fastcgi dev
MODULE:APP`` (:mod:`trio_fastcgi._dev`) take the same application options
(:func:`add_app_arguments`) and logging options (:func:`add_logging_options`),
check them the same way (:class:`AppOptions`), and load the application the
same way: import ``MODULE:APP`` from ``--app-dir`` (:func:`load_app`), tell
whether it is a native handler, WSGI or ASGI (:func:`detect_interface`), and
wrap it in the native handler that serves it (:func:`make_handler`).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import logging
import logging.config
import logging.handlers
import os
import sys
from collections.abc import Callable
from pathlib import PurePath
from typing import Final, Literal

import attrs
import trio

from ._access_log import ACCESS_LOGGER, AccessLogHandler
from ._server import check_handler
from ._workers import LoadedApp

LOGGER: Final = logging.getLogger("trio_fastcgi.cli")

Interface = Literal["native", "wsgi", "asgi"]
InterfaceChoice = Literal["auto", "native", "wsgi", "asgi"]
LifespanMode = Literal["auto", "on", "off"]
AsgiLoop = Literal["trio", "asyncio", "auto"]
INTERFACES: Final = ("auto", "native", "wsgi", "asgi")
LIFESPAN_MODES: Final = ("auto", "on", "off")
ASGI_LOOPS: Final = ("trio", "asyncio", "auto")
LOG_LEVELS: Final = ("critical", "error", "warning", "info", "debug")
#: ``--threads`` by default: WSGI application threads at once, per process.
DEFAULT_THREADS: Final = 40


class CLIError(Exception):
    """A mistake in the command line or the application reference."""


# -- the application reference ---------------------------------------------------


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


def _check_threads(threads: int) -> None:
    if threads < 1:
        # CapacityLimiter(0) would make every WSGI request wait for ever.
        raise CLIError(f"--threads {threads}: a WSGI application needs at least 1 thread")


def make_handler(
    app: object,
    interface: Interface,
    *,
    threads: int = DEFAULT_THREADS,
    script_name: str | None = None,
    multiprocess: bool = False,
    lifespan: LifespanMode = "auto",
    asgi_loop: AsgiLoop = "auto",
) -> LoadedApp:
    """The native handler serving *app* as *interface*, and its lifespan for
    ASGI. *threads* and *multiprocess* are for WSGI, *lifespan* and
    *asgi_loop* for ASGI, *script_name* for both.

    Raises:
      CLIError: *threads* is below 1, or *app* is not a native handler.
    """
    if interface == "wsgi":
        from .wsgi import WSGIHandler

        _check_threads(threads)
        wsgi = WSGIHandler(
            app,  # type: ignore[arg-type]
            limiter=trio.CapacityLimiter(threads),
            script_name=script_name,
            multiprocess=multiprocess,
        )
        return wsgi, None
    if interface == "asgi":
        from .asgi import ASGIHandler

        asgi = ASGIHandler(
            app,  # type: ignore[arg-type]
            script_name=script_name,
            lifespan=lifespan,
            loop=asgi_loop,
        )
        return asgi, asgi.lifespan()
    try:
        check_handler(app)
    except TypeError as exc:
        raise CLIError(str(exc)) from None
    return app, None  # type: ignore[return-value]


@attrs.frozen(kw_only=True)
class AppOptions:
    """What to serve and how: the application options of both commands.

    Raises:
      CLIError: when made, if an option is out of range (the same check for
        both commands, whatever parsed them).
    """

    spec: str
    app_dir: str = "."
    interface: InterfaceChoice = "auto"
    script_name: str | None = None
    threads: int = DEFAULT_THREADS
    lifespan: LifespanMode = "auto"
    asgi_loop: AsgiLoop = "auto"
    #: Wrap the handler in :class:`AccessLogHandler`.
    access_log: bool = False
    #: WSGI's ``wsgi.multiprocess``: several worker processes serve the app.
    multiprocess: bool = False

    def __attrs_post_init__(self) -> None:
        check_app_spec(self.spec)
        _check_threads(self.threads)

    @classmethod
    def from_args(
        cls, args: argparse.Namespace, *, access_log: bool, multiprocess: bool = False
    ) -> AppOptions:
        """The options :func:`add_app_arguments` added to a parser, as parsed."""
        return cls(
            spec=args.app,
            app_dir=args.app_dir,
            interface=args.interface,
            script_name=args.script_name,
            threads=args.threads,
            lifespan=args.lifespan,
            asgi_loop=args.asgi_loop,
            access_log=access_log,
            multiprocess=multiprocess,
        )

    def load(self) -> LoadedApp:
        """Import the application and build its handler (and lifespan).

        Raises:
          CLIError: it cannot be imported, or is not what ``--interface`` says.
        """
        app = load_app(self.spec, self.app_dir)
        interface = detect_interface(app) if self.interface == "auto" else self.interface
        LOGGER.info("serving %s (%s) in process %d", self.spec, interface, os.getpid())
        handler, lifespan = make_handler(
            app,
            interface,
            threads=self.threads,
            script_name=self.script_name,
            multiprocess=self.multiprocess,
            lifespan=self.lifespan,
            asgi_loop=self.asgi_loop,
        )
        if self.access_log:
            handler = AccessLogHandler(handler)
        return handler, lifespan


# -- the options both commands take ---------------------------------------------


def whole_number(minimum: int) -> Callable[[str], int]:
    """An argparse ``type``: a whole number of at least *minimum*."""

    def parse(text: str) -> int:
        if not text.isdigit() or int(text) < minimum:
            raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number >= {minimum}")
        return int(text)

    return parse


def _app_spec(text: str) -> str:
    try:
        return check_app_spec(text)
    except CLIError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_app_arguments(parser: argparse.ArgumentParser) -> None:
    """``MODULE:APP`` and the "application" group: ``--interface``,
    ``--app-dir``, ``--script-name``, ``--threads``, ``--lifespan`` and
    ``--asgi-loop``."""
    parser.add_argument(
        "app", metavar="MODULE:APP", type=_app_spec, help="the application, e.g. myapp:app"
    )
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
        type=whole_number(1),
        default=DEFAULT_THREADS,
        metavar="N",
        help=(
            "WSGI: worker threads running the application at once, per process "
            f"(default {DEFAULT_THREADS})"
        ),
    )
    group.add_argument(
        "--lifespan",
        choices=LIFESPAN_MODES,
        default="auto",
        help="ASGI: run lifespan startup/shutdown; auto skips it if the app does not support it",
    )
    group.add_argument(
        "--asgi-loop",
        choices=ASGI_LOOPS,
        default="auto",
        help=(
            "ASGI: the event loop the app runs on: trio, or asyncio (in a thread of its "
            "own, for Django and other asyncio apps); auto picks asyncio for Django's "
            "ASGIHandler and apps marked as needing it"
        ),
    )


def add_logging_options(group: argparse._ArgumentGroup) -> None:
    """``--log-level``, ``--log-config`` and ``--access-log``."""
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


# -- logging -------------------------------------------------------------------

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
