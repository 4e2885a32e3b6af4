"""Server options: one place for their names, defaults and validation."""

from __future__ import annotations

import ipaddress
import math
import os
from collections.abc import Collection, Mapping
from typing import Final, TypeAlias, TypedDict

import attrs
import trio

from ._connection import DEFAULT_MAX_CONNS, DEFAULT_MAX_PARAMS_SIZE, DEFAULT_MAX_REQS
from ._wire import Role

#: Unread input a request may have buffered before the connection stops reading
#: (backpressure to the web server). Four full records.
DEFAULT_INPUT_BUFFER_SIZE: Final = 256 * 1024
#: nginx keeps idle upstream connections 60 s by default; staying open longer
#: than the web server avoids racing it on a connection it is about to reuse.
DEFAULT_IDLE_TIMEOUT: Final = 300.0
DEFAULT_READ_TIMEOUT: Final = 60.0
DEFAULT_WRITE_TIMEOUT: Final = 60.0
DEFAULT_GRACE_PERIOD: Final = 30.0
#: A connection in steady use never goes this long without a request; waking
#: one costs about what a new connection costs.
DEFAULT_HIBERNATE_AFTER: Final = 2.0


IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address


class ServerOptions(TypedDict, total=False):
    """Keyword options accepted by every ``serve_*`` function.

    See :class:`Config` for what each one means and its default.
    """

    roles: Collection[Role]
    max_conns: int
    max_reqs: int
    mpxs_conns: bool
    max_params_size: int
    input_buffer_size: int
    idle_timeout: float | None
    read_timeout: float | None
    write_timeout: float | None
    hibernate_after: float | None
    grace_period: float
    shutdown_event: trio.Event | None
    web_server_addrs: Collection[str | IPAddress] | None


def _positive(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 1:
        raise ValueError(f"{attribute.name} must be at least 1, not {value!r}")


def _timeout(instance: object, attribute: attrs.Attribute[float], value: float | None) -> None:
    if value is not None and not (value > 0 and not math.isnan(value)):
        raise ValueError(f"{attribute.name} must be a positive number or None, not {value!r}")


def parse_ip_address(text: str | IPAddress) -> IPAddress:
    """An IP address, with IPv4-mapped IPv6 (``::ffff:a.b.c.d``) folded to IPv4."""
    address = (
        text if not isinstance(text, str) else ipaddress.ip_address(text.strip().split("%", 1)[0])
    )
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def environ_web_server_addrs(environ: Mapping[str, str]) -> list[str]:
    """The addresses listed in ``FCGI_WEB_SERVER_ADDRS`` (comma-separated,
    blanks ignored); empty if it is unset or empty.

    Raises:
      ValueError: one of them is not an IP address (the message names it).
    """
    addresses = [a.strip() for a in environ.get("FCGI_WEB_SERVER_ADDRS", "").split(",")]
    addresses = [a for a in addresses if a]
    for address in addresses:
        try:
            parse_ip_address(address)
        except ValueError:
            raise ValueError(f"FCGI_WEB_SERVER_ADDRS: {address!r} is not an IP address") from None
    return addresses


def _web_server_addrs(value: Collection[str | IPAddress] | None) -> frozenset[IPAddress]:
    if value is None:
        value = environ_web_server_addrs(os.environ)
    return frozenset(parse_ip_address(address) for address in value)


def _roles(value: Collection[Role | int]) -> frozenset[Role]:
    roles = frozenset(Role(role) for role in value)
    if not roles:
        raise ValueError("roles must name at least one role")
    return roles


@attrs.frozen(kw_only=True)
class Config:
    """The validated options of a server.

    Pass one as ``config=`` to any ``serve_*`` function, instead of (or as
    well as) the same options as keywords: a keyword option given too
    replaces that field of the config, so ``serve_tcp(handler, 9000,
    config=base, max_reqs=10)`` serves with *base*'s options but
    ``max_reqs=10``. The config itself is never changed (it is frozen).

    Attributes:
      roles: roles whose requests reach the handler; the others are answered
        with ``FCGI_UNKNOWN_ROLE`` without calling it. Default: Responder only,
        so that a handler written as a Responder is never asked to authorize.
      max_conns: connections served at once; the server stops accepting beyond
        it. Reported as ``FCGI_MAX_CONNS``. Default 1024.
      max_reqs: requests active at once on one connection; more are refused with
        ``FCGI_OVERLOADED``. Reported as ``FCGI_MAX_REQS``. Default 100.
      mpxs_conns: accept several concurrent requests on one connection
        (multiplexing). If false, a second one gets ``FCGI_CANT_MPX_CONN``.
        Reported as ``FCGI_MPXS_CONNS``. Default true.
      max_params_size: bytes of ``FCGI_PARAMS`` one request may send, and
        (divided by 32) name-value pairs; more closes the connection as a
        protocol error. Default 128 KiB (4,096 pairs).
      input_buffer_size: unread stdin/data bytes buffered per request before the
        connection stops reading (backpressure to the web server). Default
        256 KiB.
      idle_timeout: seconds a connection with no request in flight may stay
        silent before it is closed; None waits forever. Default 300.
      read_timeout: seconds a record (or a request's params) may take to arrive
        once it has started; stops slow-loris peers. None waits forever.
        Default 60.
      write_timeout: seconds the web server may go without taking any of the
        output while it is waiting to be sent (it stopped reading): then the
        connection is closed and its requests cancelled. None waits forever.
        Default 60.
      hibernate_after: seconds a connection with nothing in flight, no partial
        input and nothing left to send waits before it *hibernates*: its
        tasks end, and one watcher per server wakes it when the web server
        sends more or a timeout is due, so idle keep-alive connections cost a
        few KB each. Only connections on sockets accepted by a ``serve_*``
        listener hibernate (not :func:`serve_connection`'s). None: never.
        Default 2.
      grace_period: on graceful shutdown, seconds in-flight requests get to
        finish before they are cancelled. Default 30.
      shutdown_event: setting this :class:`trio.Event` starts a graceful
        shutdown: stop accepting, close idle connections, let requests finish
        within ``grace_period``, then cancel the rest and return.
      web_server_addrs: IP addresses of the web servers allowed to connect over
        TCP; others are closed at once with a log line. None (the default)
        reads the comma-separated ``FCGI_WEB_SERVER_ADDRS`` environment
        variable, as the FastCGI spec asks; unset or empty there, or an empty
        collection here, allows every peer. Unix-socket peers are not checked.
        Given as strings or :mod:`ipaddress` objects; kept as the latter.
    """

    roles: frozenset[Role] = attrs.field(default=frozenset({Role.RESPONDER}), converter=_roles)
    max_conns: int = attrs.field(default=DEFAULT_MAX_CONNS, validator=_positive)
    max_reqs: int = attrs.field(default=DEFAULT_MAX_REQS, validator=_positive)
    mpxs_conns: bool = True
    max_params_size: int = attrs.field(default=DEFAULT_MAX_PARAMS_SIZE, validator=_positive)
    input_buffer_size: int = attrs.field(default=DEFAULT_INPUT_BUFFER_SIZE, validator=_positive)
    idle_timeout: float | None = attrs.field(default=DEFAULT_IDLE_TIMEOUT, validator=_timeout)
    read_timeout: float | None = attrs.field(default=DEFAULT_READ_TIMEOUT, validator=_timeout)
    write_timeout: float | None = attrs.field(default=DEFAULT_WRITE_TIMEOUT, validator=_timeout)
    hibernate_after: float | None = attrs.field(default=DEFAULT_HIBERNATE_AFTER, validator=_timeout)
    grace_period: float = attrs.field(default=DEFAULT_GRACE_PERIOD)
    shutdown_event: trio.Event | None = None
    web_server_addrs: frozenset[IPAddress] = attrs.field(default=None, converter=_web_server_addrs)

    @grace_period.validator
    def _check_grace_period(self, attribute: attrs.Attribute[float], value: float) -> None:
        if not value >= 0:
            raise ValueError(f"grace_period must be >= 0, not {value!r}")

    @classmethod
    def from_options(cls, options: ServerOptions, *, base: Config | None = None) -> Config:
        """Validate keyword options; unknown names raise :class:`TypeError`.

        With *base*, the result is *base* with the fields *options* name
        replaced (and validated); without it, the defaults are the base.
        """
        unknown = set(options) - set(attrs.fields_dict(cls))
        if unknown:
            raise TypeError(f"unknown server option(s): {', '.join(sorted(unknown))}")
        if base is None:
            return cls(**options)
        if not isinstance(base, Config):
            raise TypeError(f"config must be a trio_fastcgi.Config, not {base!r}")
        return attrs.evolve(base, **options) if options else base
