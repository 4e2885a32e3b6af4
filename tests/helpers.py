"""Test helpers: a web-server-side FastCGI encoder/decoder written independently of
``trio_fastcgi._wire`` (so a bug there cannot hide itself), and a fake web server
that drives a connection over any trio stream."""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import trio

VERSION = 1
BEGIN, ABORT, END, PARAMS, STDIN, STDOUT, STDERR, DATA = 1, 2, 3, 4, 5, 6, 7, 8
GET_VALUES, GET_VALUES_RESULT, UNKNOWN_TYPE = 9, 10, 11
RESPONDER, AUTHORIZER, FILTER = 1, 2, 3


def record(rtype: int, rid: int, content: bytes = b"", padding: int = 0) -> bytes:
    header = bytes(
        [VERSION, rtype, rid >> 8, rid & 0xFF, len(content) >> 8, len(content) & 0xFF, padding, 0]
    )
    return header + content + b"\0" * padding


def nv_length(n: int, long_form: bool = False) -> bytes:
    if n < 128 and not long_form:
        return bytes([n])
    return struct.pack(">I", n | 0x80000000)


def nv_pairs(pairs: Iterable[tuple[bytes, bytes]], long_form: bool = False) -> bytes:
    out = b""
    for name, value in pairs:
        out += nv_length(len(name), long_form) + nv_length(len(value), long_form) + name + value
    return out


def begin_record(rid: int, role: int = RESPONDER, keep_conn: bool = True) -> bytes:
    return record(BEGIN, rid, struct.pack(">HB5x", role, 1 if keep_conn else 0))


def stream_records(rtype: int, rid: int, data: bytes, chunk: int = 65535) -> bytes:
    out = b"".join(record(rtype, rid, data[i : i + chunk]) for i in range(0, len(data), chunk))
    return out + record(rtype, rid)


def params_records(rid: int, params: Mapping[str, str] | Iterable[tuple[bytes, bytes]]) -> bytes:
    if isinstance(params, Mapping):
        pairs = [(k.encode(), v.encode()) for k, v in params.items()]
    else:
        pairs = list(params)
    return stream_records(PARAMS, rid, nv_pairs(pairs))


def request_bytes(
    rid: int = 1,
    params: Mapping[str, str] | None = None,
    stdin: bytes = b"",
    role: int = RESPONDER,
    keep_conn: bool = True,
    data: bytes | None = None,
) -> bytes:
    out = begin_record(rid, role, keep_conn) + params_records(rid, params or {})
    if role != AUTHORIZER:
        out += stream_records(STDIN, rid, stdin)
    if data is not None:
        out += stream_records(DATA, rid, data)
    return out


@dataclass
class Record:
    type: int
    request_id: int
    content: bytes
    padding: int


def parse_records(buf: bytes) -> tuple[list[Record], bytes]:
    """Complete records in *buf*, and the unparsed rest."""
    records = []
    while len(buf) >= 8:
        version, rtype, rid, length, padding = struct.unpack(">BBHHBx", buf[:8])
        assert version == 1, f"bad version {version}"
        if len(buf) < 8 + length + padding:
            break
        records.append(Record(rtype, rid, buf[8 : 8 + length], padding))
        buf = buf[8 + length + padding :]
    return records, buf


@dataclass
class Response:
    stdout: bytes = b""
    stderr: bytes = b""
    app_status: int | None = None
    protocol_status: int | None = None
    stdout_closed: bool = False
    records: list[Record] = field(default_factory=list)

    @property
    def body(self) -> bytes:
        """The stdout after the CGI head."""
        return self.stdout.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in self.stdout else b""

    @property
    def head(self) -> bytes:
        return self.stdout.split(b"\r\n\r\n", 1)[0]


class FakeWebServer:
    """Plays the web server on one end of a stream."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buffer = b""
        self.responses: dict[int, Response] = {}
        self.management: list[Record] = []
        self.all_records: list[Record] = []
        self.eof = False

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def request(self, rid: int = 1, **kwargs: object) -> None:
        await self.send(request_bytes(rid, **kwargs))  # type: ignore[arg-type]

    async def _read_more(self) -> bool:
        data = await self.stream.receive_some(65536)
        if not data:
            self.eof = True
            return False
        self.buffer += data
        records, self.buffer = parse_records(self.buffer)
        for rec in records:
            self.all_records.append(rec)
            if rec.request_id == 0:
                self.management.append(rec)
                continue
            response = self.responses.setdefault(rec.request_id, Response())
            assert response.app_status is None, f"record after END_REQUEST: {rec}"
            response.records.append(rec)
            if rec.type == STDOUT:
                assert not response.stdout_closed, "STDOUT after its end"
                if rec.content:
                    response.stdout += rec.content
                else:
                    response.stdout_closed = True
            elif rec.type == STDERR:
                response.stderr += rec.content
            elif rec.type == END:
                response.app_status, response.protocol_status = struct.unpack(">IB3x", rec.content)
            else:
                raise AssertionError(f"unexpected record from the app: {rec}")
        return True

    async def read_response(self, rid: int = 1) -> Response:
        """Wait for END_REQUEST of *rid*; return and forget that response."""
        while self.responses.get(rid, Response()).app_status is None:
            if not await self._read_more():
                raise AssertionError(f"EOF before END_REQUEST for {rid}")
        return self.responses.pop(rid)

    async def read_management(self) -> Record:
        while not self.management:
            if not await self._read_more():
                raise AssertionError("EOF before a management record")
        return self.management.pop(0)

    async def read_eof(self) -> None:
        while await self._read_more():
            pass
