"""config=: every serve_* takes a Config, and keyword options replace its fields."""

from __future__ import annotations

import functools
import ipaddress
import os
import socket
from pathlib import Path

import attrs
import pytest
import trio
import trio.testing

from trio_fastcgi import (
    Config,
    Request,
    Role,
    serve_connection,
    serve_inherited,
    serve_listeners,
    serve_tcp,
    serve_unix,
)
from trio_fastcgi.client import Client, open_client, open_tcp_client, open_unix_client
from trio_fastcgi.testing import open_test_client

BASE = Config(max_conns=7, max_reqs=5, mpxs_conns=False)


async def hello(request: Request) -> None:
    await request.respond("hello")


async def values(client: Client) -> dict[str, str]:
    return await client.get_values()


# -- Config.from_options ---------------------------------------------------------------


def test_from_options_replaces_only_the_fields_given() -> None:
    config = Config.from_options({"max_reqs": 9, "roles": [Role.FILTER]}, base=BASE)
    assert config == attrs.evolve(BASE, max_reqs=9, roles=frozenset({Role.FILTER}))
    assert BASE.max_reqs == 5  # the base is not changed
    assert Config.from_options({}, base=BASE) is BASE


def test_from_options_without_a_base_starts_from_the_defaults() -> None:
    assert Config.from_options({"max_reqs": 9}) == Config(max_reqs=9)


def test_from_options_validates_the_replacements() -> None:
    with pytest.raises(ValueError, match="max_reqs must be at least 1"):
        Config.from_options({"max_reqs": 0}, base=BASE)
    with pytest.raises(TypeError, match="unknown server option"):
        Config.from_options({"max_requests": 1}, base=BASE)  # type: ignore[typeddict-unknown-key]
    with pytest.raises(TypeError, match=r"config must be a trio_fastcgi\.Config"):
        Config.from_options({}, base={"max_reqs": 1})  # type: ignore[arg-type]


def test_from_options_keeps_web_server_addrs_of_the_base() -> None:
    base = Config(web_server_addrs=["10.0.0.1", "::ffff:10.0.0.2"])
    config = Config.from_options({"max_reqs": 3}, base=base)
    assert config.web_server_addrs == {
        ipaddress.ip_address("10.0.0.1"),
        ipaddress.ip_address("10.0.0.2"),
    }
    mapped = Config(web_server_addrs=[ipaddress.ip_address("::ffff:10.0.0.3")])
    assert mapped.web_server_addrs == {ipaddress.ip_address("10.0.0.3")}


# -- each serve_* ------------------------------------------------------------------------


async def test_serve_connection_takes_a_config(nursery: trio.Nursery) -> None:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    nursery.start_soon(functools.partial(serve_connection, hello, server_stream, config=BASE))
    async with open_client(client_stream) as client:
        assert await values(client) == {
            "FCGI_MAX_CONNS": "7",
            "FCGI_MAX_REQS": "5",
            "FCGI_MPXS_CONNS": "0",
        }


async def test_serve_connection_keyword_options_replace_config_fields(
    nursery: trio.Nursery,
) -> None:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    nursery.start_soon(
        functools.partial(
            serve_connection, hello, server_stream, config=BASE, max_reqs=11, mpxs_conns=True
        )
    )
    async with open_client(client_stream) as client:
        assert await values(client) == {
            "FCGI_MAX_CONNS": "7",
            "FCGI_MAX_REQS": "11",
            "FCGI_MPXS_CONNS": "1",
        }


async def test_serve_tcp_takes_a_config(nursery: trio.Nursery) -> None:
    listeners = await nursery.start(
        functools.partial(serve_tcp, hello, 0, host="127.0.0.1", config=BASE, max_reqs=2)
    )
    port = listeners[0].socket.getsockname()[1]
    async with open_tcp_client("127.0.0.1", port) as client:
        got = await values(client)
        assert (got["FCGI_MAX_CONNS"], got["FCGI_MAX_REQS"]) == ("7", "2")
        assert (await client.request({"REQUEST_METHOD": "GET"})).stdout.endswith(b"hello")


async def test_serve_tcp_checks_the_merged_config_before_binding() -> None:
    with pytest.raises(ValueError, match="max_reqs"):
        await serve_tcp(hello, 0, config=BASE, max_reqs=0)
    with pytest.raises(TypeError, match="config must be"):
        await serve_tcp(hello, 0, config=object())  # type: ignore[arg-type]


async def test_serve_unix_takes_a_config(nursery: trio.Nursery, tmp_path: Path) -> None:
    path = tmp_path / "app.sock"
    await nursery.start(functools.partial(serve_unix, hello, path, config=BASE))
    async with open_unix_client(path) as client:
        assert (await values(client))["FCGI_MAX_REQS"] == "5"


async def test_serve_inherited_takes_a_config(nursery: trio.Nursery) -> None:
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen()
    port = listening.getsockname()[1]
    fd = os.dup(listening.fileno())
    listening.close()
    await nursery.start(functools.partial(serve_inherited, hello, fd, config=BASE, max_conns=3))
    async with open_tcp_client("127.0.0.1", port) as client:
        got = await values(client)
        assert (got["FCGI_MAX_CONNS"], got["FCGI_MAX_REQS"]) == ("3", "5")


async def test_serve_listeners_takes_a_config(nursery: trio.Nursery) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    await nursery.start(functools.partial(serve_listeners, hello, listeners, config=BASE))
    port = listeners[0].socket.getsockname()[1]
    async with open_tcp_client("127.0.0.1", port) as client:
        assert (await values(client))["FCGI_MPXS_CONNS"] == "0"


async def test_config_roles_decide_which_requests_reach_the_handler() -> None:
    async def allow(request: Request) -> None:
        await request.authorize({"USER": "ann"})

    authorizers = Config(roles={Role.AUTHORIZER})
    async with open_test_client(allow, config=authorizers) as client:
        assert (await client.authorize("/")).variables == {"USER": "ann"}
        refused = await client.get("/")
    assert refused.protocol_status.name == "UNKNOWN_ROLE"
    # A keyword option replaces the config's roles.
    async with open_test_client(allow, config=authorizers, roles={Role.RESPONDER}) as client:
        refused = await client.authorize("/")
    assert refused.protocol_status.name == "UNKNOWN_ROLE"
