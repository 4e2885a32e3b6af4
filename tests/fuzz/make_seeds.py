"""Write the hand-made seed inputs of the fuzz corpora (run once; the output is
committed under tests/fuzz/corpus/). Each seed is a typical or tricky exchange,
so that fuzzing starts from deep protocol states instead of random bytes."""

from __future__ import annotations

import hashlib
import struct
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.fuzz import connection_harness as ch
from tests.fuzz.core_harness import encode_config, out, raw, rec
from tests.helpers import nv_pairs, record
from trio_fastcgi import Role

CORPUS = Path(__file__).resolve().parent / "corpus"


def begin(role: int = 1, keep: int = 1) -> bytes:
    return struct.pack("!HB5x", role, keep)


def core_seeds() -> dict[str, bytes]:
    r = encode_config()
    simple = (
        rec(1, 1, begin())
        + rec(4, 1, b"REQUEST_METHOD=GET&SCRIPT_NAME=/x")
        + rec(4, 1)
        + rec(5, 1, b"hello")
        + rec(5, 1)
        + out(0, 0, 3, 65)
        + out(2, 0, 2, 66)
        + out(4)
    )
    multiplexed = (
        rec(1, 1, begin())
        + rec(1, 2, begin())
        + rec(4, 2, b"A=1")
        + rec(4, 1, b"B=2")
        + rec(4, 1)
        + rec(4, 2)
        + rec(5, 2, b"two")
        + out(0, 1, 1)
        + rec(5, 1, b"one", 5)
        + rec(5, 1)
        + out(4, 0)
        + rec(5, 2)
        + out(1, 0)
        + out(4, 0)
    )
    aborts = (
        rec(1, 1, begin())
        + rec(2, 1)
        + out(4)
        + rec(1, 1, begin())
        + rec(4, 1, b"X=y")
        + rec(4, 1)
        + rec(5, 1, b"body")
        + rec(2, 1)
        + rec(5, 1, b"late")
        + out(0)
        + out(4)
        + rec(5, 1, b"stray")
    )
    management = (
        rec(9, 0, b"FCGI_MAX_CONNS=&FCGI_MAX_REQS=&FCGI_MPXS_CONNS=&OTHER=")
        + out(5, 0, 0, 1)
        + rec(11, 0, b"zzzzzzzz")
        + out(5, 0, 0, 0)
        + rec(3, 1, b"12345678")
        + rec(6, 1, b"out")
    )
    roles = encode_config((Role.RESPONDER, Role.AUTHORIZER, Role.FILTER))
    filter_auth = (
        rec(1, 1, begin(3))
        + rec(4, 1, b"FCGI_DATA_LENGTH=4")
        + rec(4, 1)
        + rec(5, 1)
        + rec(8, 1, b"data")
        + rec(8, 1)
        + rec(1, 2, begin(2, 0))
        + rec(4, 2, b"REMOTE_USER=u")
        + rec(4, 2)
        + rec(5, 2)
        + out(0, 1, 1)
        + out(4, 1)
        + out(4, 0)
    )
    overload = (
        rec(1, 1, begin())
        + rec(1, 2, begin())
        + rec(4, 2, b"A=b")
        + rec(4, 2)
        + out(6, 1)
        + rec(1, 3, begin(7))
        + out(4, 2)
    )
    long_pairs = nv_pairs([(b"HTTP_COOKIE", b"c" * 300), (b"N", b"v")], long_form=True)
    params_raw = (
        rec(1, 1, begin())
        + raw(record(4, 1, long_pairs[:100]))
        + raw(record(4, 1, long_pairs[100:], padding=7))
        + raw(record(4, 1))
        + rec(5, 1)
        + out(0, 0, 255, 0)
        + out(4)
    )
    bad = (
        rec(1, 1, begin())
        + raw(record(4, 1, b"\x80\x00\x00\x32\x80\x00\x00\x32" + b"x" * 10))
        + raw(record(4, 1))
    )
    version = raw(b"\x02\x01\x00\x01\x00\x08\x00\x00" + begin())
    truncated = rec(1, 1, begin()) + raw(b"\x01\x04\x00\x01\x00\x10")
    small = encode_config(max_params_size=64, mpxs_conns=False, max_reqs=1)
    bomb = rec(1, 1, begin()) + raw(record(4, 1, b"\x7f\xff\xff\xff" * 20)) + rec(1, 2, begin())
    return {
        "simple": r + simple,
        "multiplexed": r + multiplexed,
        "aborts": r + aborts,
        "management": r + management,
        "filter-authorizer": roles + filter_auth,
        "overload": encode_config(max_reqs=1) + overload,
        "long-params": r + params_raw,
        "bad-params": r + bad,
        "bad-version": r + version,
        "truncated": r + truncated,
        "small-limits": small + bomb + simple,
    }


def write(kind: str, seeds: dict[str, bytes]) -> None:
    directory = CORPUS / kind
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in seeds.items():
        digest = hashlib.sha1(data).hexdigest()[:12]
        (directory / f"seed-{name}-{digest}").write_bytes(data)


def main() -> None:
    write("core", core_seeds())
    write("connection", ch.seeds())


if __name__ == "__main__":
    main()
