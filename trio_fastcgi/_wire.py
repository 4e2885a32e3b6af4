"""The FastCGI 1.0 wire format: record headers, name-value pairs, constants.

Everything here is pure and synchronous. Decoders work on ``bytes`` (or
``memoryview``) and never allocate more than the input they are given, whatever
lengths the input declares.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterable
from typing import Final, final

FCGI_VERSION_1: Final = 1
HEADER_LEN: Final = 8
MAX_CONTENT_LEN: Final = 0xFFFF
#: Largest content length that needs no padding to reach an 8-byte boundary. Every
#: record we write is aligned, as the spec recommends; splitting large output at
#: this size keeps that true without a padding byte per record.
MAX_ALIGNED_CONTENT_LEN: Final = 0xFFF8
NULL_REQUEST_ID: Final = 0
KEEP_CONN_FLAG: Final = 1


class RecordType(enum.IntEnum):
    """FastCGI record types (``FCGI_BEGIN_REQUEST`` ... ``FCGI_UNKNOWN_TYPE``)."""

    BEGIN_REQUEST = 1
    ABORT_REQUEST = 2
    END_REQUEST = 3
    PARAMS = 4
    STDIN = 5
    STDOUT = 6
    STDERR = 7
    DATA = 8
    GET_VALUES = 9
    GET_VALUES_RESULT = 10
    UNKNOWN_TYPE = 11


class Role(enum.IntEnum):
    """The role a web server asks the application to play for one request."""

    RESPONDER = 1
    AUTHORIZER = 2
    FILTER = 3


class ProtocolStatus(enum.IntEnum):
    """The ``protocolStatus`` field of ``FCGI_END_REQUEST``."""

    REQUEST_COMPLETE = 0
    CANT_MPX_CONN = 1
    OVERLOADED = 2
    UNKNOWN_ROLE = 3


# version, type, request id, content length, padding length, reserved
HEADER: Final = struct.Struct("!BBHHBx")
BEGIN_REQUEST_BODY: Final = struct.Struct("!HB5x")
END_REQUEST_BODY: Final = struct.Struct("!LB3x")
UNKNOWN_TYPE_BODY: Final = struct.Struct("!B7x")
_LONG_LENGTH: Final = struct.Struct("!L")
_END_REQUEST_RECORD: Final = struct.Struct(HEADER.format + END_REQUEST_BODY.format[1:])
_END_REQUEST: Final = int(RecordType.END_REQUEST)
_PADDING: Final = bytes(8)


class WireError(ValueError):
    """Bytes that cannot be decoded as FastCGI. Internal: the connection turns it
    into :class:`~trio_fastcgi.RemoteProtocolError`."""


def encode_record(record_type: int, request_id: int, content: bytes = b"") -> bytes:
    """One record, padded to a multiple of 8 bytes. *content* must fit in one."""
    length = len(content)
    if length > MAX_CONTENT_LEN:
        raise ValueError(f"record content of {length} bytes exceeds {MAX_CONTENT_LEN}")
    padding = -length & 7
    header = HEADER.pack(FCGI_VERSION_1, record_type, request_id, length, padding)
    return b"".join((header, content, _PADDING[:padding]))


def stream_records(
    record_type: int, request_id: int, data: bytes | memoryview
) -> list[bytes | memoryview]:
    """*data* as as many records as it takes, each aligned and at most 65,528
    bytes, as pieces to send in order: headers, views of *data* (not copies)
    and padding.

    Empty *data* gives one empty record, which ends the stream.
    """
    length = len(data)
    if length <= MAX_ALIGNED_CONTENT_LEN:
        padding = -length & 7
        header = HEADER.pack(FCGI_VERSION_1, record_type, request_id, length, padding)
        return [header, data, _PADDING[:padding]] if padding else [header, data]
    view = memoryview(data)
    parts: list[bytes | memoryview] = []
    full_header = HEADER.pack(FCGI_VERSION_1, record_type, request_id, MAX_ALIGNED_CONTENT_LEN, 0)
    start = 0
    while length - start > MAX_ALIGNED_CONTENT_LEN:
        parts.append(full_header)
        parts.append(view[start : start + MAX_ALIGNED_CONTENT_LEN])
        start += MAX_ALIGNED_CONTENT_LEN
    rest = length - start
    padding = -rest & 7
    parts.append(HEADER.pack(FCGI_VERSION_1, record_type, request_id, rest, padding))
    parts.append(view[start:])
    if padding:
        parts.append(_PADDING[:padding])
    return parts


def encode_stream(record_type: int, request_id: int, data: bytes | memoryview) -> bytes:
    """:func:`stream_records` joined into bytes."""
    return b"".join(stream_records(record_type, request_id, data))


def encode_begin_request_body(role: int, flags: int) -> bytes:
    return BEGIN_REQUEST_BODY.pack(role, flags)


def encode_end_request(request_id: int, app_status: int, protocol_status: ProtocolStatus) -> bytes:
    # One pack for header and body: the body is 8 bytes, so never padded.
    return _END_REQUEST_RECORD.pack(
        FCGI_VERSION_1,
        _END_REQUEST,
        request_id,
        END_REQUEST_BODY.size,
        0,
        app_status,
        protocol_status,
    )


def encode_length(length: int) -> bytes:
    """A name-value length: one byte up to 127, else four with the high bit set."""
    if length < 0x80:
        return bytes((length,))
    if length > 0x7FFFFFFF:
        raise ValueError(f"name-value length {length} exceeds 2**31 - 1")
    return _LONG_LENGTH.pack(length | 0x80000000)


def encode_pairs(pairs: Iterable[tuple[bytes, bytes]]) -> bytes:
    """Encode ``(name, value)`` byte strings as a name-value pair stream."""
    parts: list[bytes] = []
    for name, value in pairs:
        parts.append(encode_length(len(name)))
        parts.append(encode_length(len(value)))
        parts.append(name)
        parts.append(value)
    return b"".join(parts)


def decode_pairs(buffer: bytes, max_pairs: int | None = None) -> list[tuple[bytes, bytes]]:
    """Decode a whole name-value pair stream.

    Both length forms are accepted for any length. A pair whose declared
    lengths run past the end of *buffer*, or a pair beyond *max_pairs*, raises
    :class:`WireError`; nothing larger than *buffer* is ever allocated.
    """
    pairs: list[tuple[bytes, bytes]] = []
    append = pairs.append
    end = len(buffer)
    pos = 0
    unpack_long = _LONG_LENGTH.unpack_from
    # A pair takes at least 2 bytes, so without max_pairs the loop is bounded
    # by the buffer; counting iterations saves a len(pairs) call per pair.
    limit = end if max_pairs is None else max(max_pairs, 0)
    name_len = value_len = 0
    try:
        for _ in range(limit + 1):
            if pos >= end:
                break
            name_len = buffer[pos]
            value_len = buffer[pos + 1]
            if (name_len | value_len) < 0x80:
                # Both lengths in one byte (nearly every pair): one test.
                pos += 2
            else:
                if name_len & 0x80:
                    name_len = unpack_long(buffer, pos)[0] & 0x7FFFFFFF
                    pos += 4
                else:
                    pos += 1
                value_len = buffer[pos]
                if value_len & 0x80:
                    value_len = unpack_long(buffer, pos)[0] & 0x7FFFFFFF
                    pos += 4
                else:
                    pos += 1
            name_end = pos + name_len
            pos = name_end + value_len
            # A pair that runs past the end is cut short by the slices (nothing
            # larger than *buffer*) and ends the loop; it is reported below.
            append((buffer[name_end - name_len : name_end], buffer[name_end:pos]))
        else:
            if pos <= end:
                raise WireError(f"more than {max_pairs} name-value pairs")
    except (IndexError, struct.error):
        raise WireError("name-value pair truncated inside a length") from None
    if pos > end:
        raise WireError(
            f"name-value pair declares {name_len} + {value_len} bytes "
            f"but only {end - pos + name_len + value_len} remain"
        )
    return pairs


@final
class RecordReader:
    """Splits the bytes of a connection into records; shared by both sides.

    :meth:`feed` what the socket gave (``b""`` at end of file) and call
    :meth:`next_record` until it returns None. The buffer holds at most the
    last chunk fed and one incomplete record (65,535 bytes of content plus 255
    of padding) before it. A chunk fed when nothing is left over is kept as it
    is, and each record's content is one slice of it.
    """

    __slots__ = ("_buffer", "_eof", "_pos")

    def __init__(self) -> None:
        self._buffer: bytes | bytearray = b""
        self._pos = 0
        self._eof = False

    @property
    def eof(self) -> bool:
        """True once end of file was fed and every complete record returned."""
        return self._eof and self._pos == len(self._buffer)

    @property
    def has_partial_record(self) -> bool:
        """True while part of a record has been fed but not all of it."""
        return len(self._buffer) > self._pos

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Add bytes; ``b""`` means end of file. Feeding after that is a ValueError."""
        if self._eof:
            raise ValueError("data fed after end of file")
        if not data:
            self._eof = True
            return
        buffer = self._buffer
        pos = self._pos
        if pos == len(buffer):
            # Nothing left over (the common case): keep the chunk itself.
            self._buffer = data if type(data) is bytes else bytes(data)
            self._pos = 0
        elif type(buffer) is bytearray and pos < len(buffer) // 2:
            buffer += data
        else:
            # Keep only the incomplete record, in a buffer that can grow.
            rest = bytearray(memoryview(buffer)[pos:])
            rest += data
            self._buffer = rest
            self._pos = 0

    def next_record(self) -> tuple[int, int, bytes] | None:
        """The next ``(record_type, request_id, content)``, or None if none is
        complete yet (or, once :attr:`eof`, none is left).

        Raises:
          WireError: a header with a version other than 1, or end of file in
            the middle of a record.
        """
        buffer = self._buffer
        pos = self._pos
        size = len(buffer)
        start = pos + HEADER_LEN
        if size >= start:
            version, record_type, request_id, length, padding = HEADER.unpack_from(buffer, pos)
            if version != FCGI_VERSION_1:
                raise WireError(
                    f"unsupported FastCGI version {version} in record header "
                    f"(expected {FCGI_VERSION_1})"
                )
            end = start + length
            if size >= end + padding:
                self._pos = end + padding
                if type(buffer) is bytes:
                    return record_type, request_id, buffer[start:end]
                # One copy: slicing the bytearray itself would make two.
                with memoryview(buffer) as view:
                    return record_type, request_id, bytes(view[start:end])
        if size > pos:
            if self._eof:
                raise WireError(
                    "connection closed in the middle of a record "
                    f"({size - pos} bytes of it received)"
                )
        elif size:
            # All of it was read: let the chunk go, or an idle connection keeps
            # its last one (a page of memory, for a chunk the kernel gave us).
            self._buffer = b""
            self._pos = 0
        return None
