"""The record and name-value codecs, against byte vectors and an independent encoder."""

from __future__ import annotations

import pathlib
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests import helpers
from trio_fastcgi import ProtocolStatus, RecordType
from trio_fastcgi._wire import (
    RecordReader,
    WireError,
    decode_pairs,
    encode_end_request,
    encode_length,
    encode_pairs,
    encode_record,
    encode_stream,
    stream_records,
)


@pytest.mark.parametrize(
    ("length", "encoded"),
    [
        (0, "00"),
        (127, "7f"),
        (128, "80000080"),
        (1000, "800003e8"),
        (33554431, "81ffffff"),
        (0x7FFFFFFF, "ffffffff"),
    ],
)
def test_encode_length_vectors(length: int, encoded: str) -> None:
    assert encode_length(length).hex() == encoded


def test_encode_length_rejects_more_than_31_bits() -> None:
    with pytest.raises(ValueError, match="exceeds"):
        encode_length(0x80000000)


def test_encode_record_empty_stdout_vector() -> None:
    assert encode_record(RecordType.STDOUT, 1).hex() == "0106000100000000"


def test_encode_end_request_vector() -> None:
    record = encode_end_request(1, 0xDEADBEEF, ProtocolStatus.REQUEST_COMPLETE)
    assert record.hex() == "0103000100080000" + "deadbeef00000000"


def test_encode_get_values_result_vector() -> None:
    body = encode_pairs([(b"FCGI_MPXS_CONNS", b"1")])
    record = encode_record(RecordType.GET_VALUES_RESULT, 0, body)
    assert record[:8].hex() == "010a000000120600"
    assert record[8:] == b"\x0f\x01FCGI_MPXS_CONNS1" + bytes(6)


def test_encode_record_rejects_oversized_content() -> None:
    with pytest.raises(ValueError, match="exceeds"):
        encode_record(RecordType.STDOUT, 1, bytes(65536))


@pytest.mark.parametrize("size", [0, 1, 7, 8, 65527, 65528, 65529, 65535, 65536, 200_001])
def test_encode_stream_splits_into_aligned_records(size: int) -> None:
    data = bytes(i % 251 for i in range(size))
    records, rest = helpers.parse_records(encode_stream(RecordType.STDOUT, 300, data))
    assert rest == b""
    assert b"".join(r.content for r in records) == data
    for r in records:
        assert r.type == helpers.STDOUT
        assert r.request_id == 300
        assert len(r.content) <= 65535
        assert (len(r.content) + r.padding) % 8 == 0
    # Empty data is the end-of-stream record; non-empty data never includes one.
    assert [len(r.content) == 0 for r in records] == (
        [True] if size == 0 else [False] * len(records)
    )


@pytest.mark.parametrize("size", [0, 5, 65528, 200_001])
def test_stream_records_are_the_stream_in_pieces_without_copying_the_data(size: int) -> None:
    data = bytes(i % 251 for i in range(size))
    parts = stream_records(RecordType.STDOUT, 300, data)
    assert b"".join(parts) == encode_stream(RecordType.STDOUT, 300, data)
    # The data travels as the caller's object or views of it, never a copy.
    content = [p for p in parts if len(p) > 8]
    assert all(p is data or (isinstance(p, memoryview) and p.obj is data) for p in content)


pairs_strategy = st.lists(st.tuples(st.binary(max_size=300), st.binary(max_size=300)), max_size=8)


@given(pairs=pairs_strategy)
def test_pairs_round_trip(pairs: list[tuple[bytes, bytes]]) -> None:
    assert decode_pairs(encode_pairs(pairs)) == pairs


@given(pairs=pairs_strategy, long_form=st.booleans())
def test_decode_pairs_accepts_independent_encoder(
    pairs: list[tuple[bytes, bytes]], long_form: bool
) -> None:
    # h2o uses the 4-byte form from 127 up; any length may use it.
    assert decode_pairs(helpers.nv_pairs(pairs, long_form=long_form)) == pairs


@pytest.mark.parametrize("size", [126, 127, 128, 129, 65535, 65536])
def test_pairs_round_trip_at_length_boundaries(size: int) -> None:
    pairs = [(b"N" * size, b"v" * size), (b"", b"")]
    assert decode_pairs(encode_pairs(pairs)) == pairs


@pytest.mark.parametrize(
    "buffer",
    [
        b"\x05",  # no value length
        b"\x80\x00",  # truncated 4-byte length
        b"\x05\x05abc",  # runs past the end
        b"\xff\xff\xff\xff\x00",  # 2**31-1 declared, nothing there
        b"\x01\xff\xff\xff\xffA",  # value of 2**31-1 declared
        helpers.nv_pairs([(b"a", b"b")]) + b"\x03",  # good pair, then garbage
    ],
)
def test_decode_pairs_rejects_truncated_input(buffer: bytes) -> None:
    with pytest.raises(WireError, match=r"truncated|declares"):
        decode_pairs(buffer)


@given(st.binary(max_size=64))
def test_decode_pairs_only_raises_wire_error(buffer: bytes) -> None:
    try:
        pairs = decode_pairs(buffer)
    except WireError:
        return
    assert sum(len(n) + len(v) for n, v in pairs) <= len(buffer)


def test_helpers_encoder_is_independent() -> None:
    # tests/helpers.py must not import the library's codec: a shared bug would hide.
    source = pathlib.Path(helpers.__file__).read_text()
    assert "trio_fastcgi" not in source.split('"""', 2)[2]


def test_record_reader_splits_records_fed_in_pieces() -> None:
    stream = helpers.record(helpers.STDIN, 3, b"abc", padding=5) + helpers.record(helpers.STDIN, 3)
    reader = RecordReader()
    seen = []
    for i in range(len(stream)):
        reader.feed(stream[i : i + 1])
        while (rec := reader.next_record()) is not None:
            seen.append(rec)
    assert seen == [(helpers.STDIN, 3, b"abc"), (helpers.STDIN, 3, b"")]
    assert not reader.has_partial_record
    assert not reader.eof
    reader.feed(b"")
    assert reader.eof
    assert reader.next_record() is None
    with pytest.raises(ValueError, match="after end of file"):
        reader.feed(b"x")


def test_record_reader_lets_go_of_a_chunk_once_it_is_read() -> None:
    # An idle connection must not keep the last chunk the kernel gave it: a
    # chunk from a large recv() can hold a whole page of memory.
    first = helpers.record(helpers.STDIN, 3, b"abc")
    chunk = first + helpers.record(helpers.STDIN, 3)
    held = sys.getrefcount(chunk)
    reader = RecordReader()
    reader.feed(chunk)
    assert sys.getrefcount(chunk) == held + 1
    while reader.next_record() is not None:
        pass
    assert sys.getrefcount(chunk) == held
    assert not reader.has_partial_record
    # A partial record is kept until it is complete.
    cut = len(first) + 4
    reader.feed(chunk[:cut])
    assert reader.next_record() == (helpers.STDIN, 3, b"abc")
    assert reader.next_record() is None
    assert reader.has_partial_record
    reader.feed(chunk[cut:])
    assert reader.next_record() == (helpers.STDIN, 3, b"")
    assert reader.next_record() is None
    assert not reader.has_partial_record


def test_record_reader_errors() -> None:
    reader = RecordReader()
    reader.feed(b"\x02" + bytes(7))
    with pytest.raises(WireError, match="unsupported FastCGI version 2"):
        reader.next_record()
    reader = RecordReader()
    reader.feed(helpers.record(helpers.STDIN, 1, b"abcdef")[:10])
    assert reader.next_record() is None
    assert reader.has_partial_record
    reader.feed(b"")
    with pytest.raises(WireError, match=r"middle of a record \(10 bytes"):
        reader.next_record()
