"""The exceptions shared by the package's modules: one class each, wherever it
is imported from."""

from __future__ import annotations

import pytest

import trio_fastcgi
import trio_fastcgi.asgi
import trio_fastcgi.wsgi


def test_client_disconnected_is_one_class() -> None:
    assert trio_fastcgi.wsgi.ClientDisconnected is trio_fastcgi.asgi.ClientDisconnected
    assert trio_fastcgi.ClientDisconnected is trio_fastcgi.wsgi.ClientDisconnected
    assert "ClientDisconnected" in trio_fastcgi.wsgi.__all__
    assert "ClientDisconnected" in trio_fastcgi.asgi.__all__


def test_client_disconnected_from_one_adapter_is_caught_as_the_others() -> None:
    # Code shared between a WSGI and an ASGI app catches either adapter's error.
    with pytest.raises(trio_fastcgi.asgi.ClientDisconnected):
        raise trio_fastcgi.wsgi.ClientDisconnected("gone")
    with pytest.raises(trio_fastcgi.wsgi.ClientDisconnected):
        raise trio_fastcgi.asgi.ClientDisconnected("gone")
    assert issubclass(trio_fastcgi.ClientDisconnected, OSError)
