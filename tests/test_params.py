"""Request.params: decoded one value at a time, equal to decoding them all."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_fastcgi._request import Params

pairs = st.lists(st.tuples(st.binary(max_size=8), st.binary(max_size=8)), max_size=12)


def decode_all(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    return {
        k.decode("utf-8", "surrogateescape"): v.decode("utf-8", "surrogateescape") for k, v in raw
    }


@given(pairs)
def test_params_equal_every_param_decoded_at_once(raw: list[tuple[bytes, bytes]]) -> None:
    params = Params(raw)
    expected = decode_all(raw)
    assert dict(params) == expected
    assert params == expected
    assert len(params) == len(expected)
    for name, value in expected.items():
        assert params[name] == value
        assert params.get(name) == value
        assert name in params


def test_params_a_repeated_name_keeps_its_last_value() -> None:
    params = Params([(b"A", b"1"), (b"B", b"x"), (b"A", b"2")])
    assert params["A"] == "2"
    assert list(params) == ["A", "B"]


def test_params_undecodable_bytes_survive_as_surrogates() -> None:
    params = Params([(b"PATH_INFO", b"/caf\xe9")])
    assert params["PATH_INFO"] == "/caf\udce9"
    assert params["PATH_INFO"].encode("utf-8", "surrogateescape") == b"/caf\xe9"
    assert Params([(b"N\xff", b"v")])["N\udcff"] == "v"


def test_params_missing_and_non_str_names() -> None:
    params = Params([(b"A", b"1")])
    assert params.get("B") is None
    assert params.get("B", "default") == "default"
    assert params.get(b"A") is None  # type: ignore[call-overload]
    assert b"A" not in params  # type: ignore[comparison-overlap]
    with pytest.raises(KeyError):
        params["B"]
    with pytest.raises(KeyError):
        params[b"A"]  # type: ignore[index]
