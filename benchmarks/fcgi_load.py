"""Direct FastCGI load (no web server in between) for the runner's extra measurements.

A minimal web-server side written on trio with the project's own codecs
(``trio_fastcgi._wire``): multiplexed throughput on one connection, many idle
kept-alive connections, and one huge streamed upload. Every function is bounded
in time and returns plain numbers.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import trio

from trio_fastcgi._wire import (
    HEADER,
    HEADER_LEN,
    KEEP_CONN_FLAG,
    MAX_ALIGNED_CONTENT_LEN,
    RecordType,
    Role,
    encode_begin_request_body,
    encode_pairs,
    encode_record,
    encode_stream,
)

_RECEIVE_SIZE = 256 * 1024


def encode_request(
    request_id: int,
    path: str,
    *,
    keep_conn: bool = True,
    method: str = "GET",
    body: bytes = b"",
    content_length: int | None = None,
    end_stdin: bool = True,
) -> bytes:
    """BEGIN_REQUEST, PARAMS (as nginx would send them) and STDIN of one request."""
    length = len(body) if content_length is None else content_length
    params = [
        (b"REQUEST_METHOD", method.encode()),
        (b"SCRIPT_NAME", b""),
        (b"PATH_INFO", path.encode()),
        (b"DOCUMENT_URI", path.encode()),
        (b"REQUEST_URI", path.encode()),
        (b"QUERY_STRING", b""),
        (b"CONTENT_TYPE", b"application/octet-stream" if length else b""),
        (b"CONTENT_LENGTH", str(length).encode() if length else b""),
        (b"SERVER_PROTOCOL", b"HTTP/1.1"),
        (b"GATEWAY_INTERFACE", b"CGI/1.1"),
        (b"SERVER_NAME", b"localhost"),
        (b"SERVER_PORT", b"80"),
        (b"REMOTE_ADDR", b"127.0.0.1"),
        (b"HTTP_HOST", b"localhost"),
    ]
    parts = [
        encode_record(
            RecordType.BEGIN_REQUEST,
            request_id,
            encode_begin_request_body(Role.RESPONDER, KEEP_CONN_FLAG if keep_conn else 0),
        ),
        encode_stream(RecordType.PARAMS, request_id, encode_pairs(params)),
        encode_stream(RecordType.PARAMS, request_id, b""),
    ]
    if body:
        parts.append(encode_stream(RecordType.STDIN, request_id, body))
    if end_stdin:
        parts.append(encode_stream(RecordType.STDIN, request_id, b""))
    return b"".join(parts)


class RecordReader:
    """Splits received bytes into records; collects STDOUT per request id."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.stdout: dict[int, list[bytes]] = {}

    def feed(self, data: bytes) -> list[int]:
        """Add bytes; return the ids whose END_REQUEST arrived in them."""
        buffer = self._buffer
        buffer += data
        ended: list[int] = []
        pos = 0
        end = len(buffer)
        while end - pos >= HEADER_LEN:
            _version, record_type, request_id, length, padding = HEADER.unpack_from(buffer, pos)
            record_end = pos + HEADER_LEN + length + padding
            if record_end > end:
                break
            if record_type == RecordType.STDOUT and length:
                self.stdout.setdefault(request_id, []).append(
                    bytes(buffer[pos + HEADER_LEN : pos + HEADER_LEN + length])
                )
            elif record_type == RecordType.END_REQUEST:
                ended.append(request_id)
            pos = record_end
        del buffer[:pos]
        return ended

    def take_stdout(self, request_id: int) -> bytes:
        return b"".join(self.stdout.pop(request_id, ()))


def body_of(stdout: bytes) -> bytes:
    """The body of a CGI response (what follows the blank line)."""
    _head, sep, body = stdout.partition(b"\r\n\r\n")
    return body if sep else b""


# -- multiplexing ---------------------------------------------------------------


async def multiplexed_throughput(
    port: int, *, concurrency: int, duration: float, path: str, expect: bytes
) -> dict[str, Any]:
    """Keep *concurrency* requests in flight on one connection for *duration* s.

    Every answer's body is compared with *expect*. Returns completed requests,
    req/s and mismatches.
    """
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    requests = {i: encode_request(i, path) for i in range(1, concurrency + 1)}
    reader = RecordReader()
    done = 0
    bad = 0
    async with stream:
        start = time.perf_counter()
        deadline = start + duration
        await stream.send_all(b"".join(requests.values()))
        in_flight = concurrency
        while in_flight:
            data = await stream.receive_some(_RECEIVE_SIZE)
            if not data:
                raise ConnectionError("backend closed the multiplexed connection")
            ended = reader.feed(data)
            resend = []
            for request_id in ended:
                done += 1
                if body_of(reader.take_stdout(request_id)) != expect:
                    bad += 1
                if time.perf_counter() < deadline:
                    resend.append(requests[request_id])
                else:
                    in_flight -= 1
            if resend:
                await stream.send_all(b"".join(resend))
        elapsed = time.perf_counter() - start
    return {
        "concurrency": concurrency,
        "requests": done,
        "seconds": elapsed,
        "req_per_s": done / elapsed,
        "mismatches": bad,
    }


async def multiplexed_with_project_client(
    port: int, *, concurrency: int, duration: float, path: str, expect: bytes
) -> dict[str, Any]:
    """Like :func:`multiplexed_throughput`, with ``trio_fastcgi.client``: one
    connection, *concurrency* tasks each sending requests back to back."""
    from trio_fastcgi import client as fastcgi_client

    params = {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "DOCUMENT_URI": path,
        "REQUEST_URI": path,
        "QUERY_STRING": "",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "GATEWAY_INTERFACE": "CGI/1.1",
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "localhost",
    }
    done = 0
    bad = 0
    async with fastcgi_client.open_tcp_client(
        "127.0.0.1", port, max_concurrent=concurrency
    ) as client:
        start = time.perf_counter()
        deadline = start + duration

        async def worker() -> None:
            nonlocal done, bad
            while time.perf_counter() < deadline:
                response = await client.request(params)
                done += 1
                if body_of(response.stdout) != expect:
                    bad += 1

        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(worker)
        elapsed = time.perf_counter() - start
    return {
        "concurrency": concurrency,
        "requests": done,
        "seconds": elapsed,
        "req_per_s": done / elapsed,
        "mismatches": bad,
    }


# -- idle connections ---------------------------------------------------------------


async def hold_idle_connections(
    port: int,
    *,
    count: int,
    expect: bytes,
    measure: Callable[[], dict[str, Any]],
    time_limit: float,
    parallel: int = 256,
    settle: float = 1.0,
) -> dict[str, Any]:
    """Open *count* connections, serve one keep-alive request on each, hold them
    all idle for *settle* seconds and call *measure* (which samples the
    server); then close all."""
    request = encode_request(1, "/hello", keep_conn=True)
    streams: list[trio.SocketStream] = []
    failures = 0
    limiter = trio.CapacityLimiter(parallel)

    async def one() -> None:
        nonlocal failures
        async with limiter:
            try:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
            except OSError:
                failures += 1
                return
            streams.append(stream)
            reader = RecordReader()
            await stream.send_all(request)
            while not reader.feed(await stream.receive_some(65536)):
                pass
            if body_of(reader.take_stdout(1)) != expect:
                failures += 1

    opened_at = time.perf_counter()
    result: dict[str, Any] = {"count": count}
    try:
        with trio.move_on_after(time_limit) as scope:
            async with trio.open_nursery() as nursery:
                for _ in range(count):
                    nursery.start_soon(one)
        result["open_seconds"] = time.perf_counter() - opened_at
        result["timed_out"] = scope.cancelled_caught
        result["open"] = len(streams)
        result["failures"] = failures
        await trio.sleep(settle)  # no request is in flight any more
        result.update(measure())
    finally:
        for stream in streams:
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)
    return result


# -- huge upload ----------------------------------------------------------------------


async def streamed_upload(
    port: int,
    *,
    size: int,
    sample: Callable[[], int],
    interval: float,
    time_limit: float,
) -> dict[str, Any]:
    """Upload *size* bytes to ``/upload`` as STDIN records, sampling the server's
    RSS (with *sample*) every *interval* s meanwhile."""
    record = encode_stream(RecordType.STDIN, 1, os.urandom(MAX_ALIGNED_CONTENT_LEN))
    batch_records = 16
    batch = record * batch_records
    batch_bytes = MAX_ALIGNED_CONTENT_LEN * batch_records
    samples: list[tuple[float, int]] = []
    reader = RecordReader()
    start = time.perf_counter()

    async def sampler(cancel: trio.CancelScope) -> None:
        with cancel:
            while True:
                samples.append((time.perf_counter() - start, sample()))
                await trio.sleep(interval)

    sent = 0
    with trio.fail_after(time_limit):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream, trio.open_nursery() as nursery:
            sampling = trio.CancelScope()
            nursery.start_soon(sampler, sampling)
            await stream.send_all(
                encode_request(1, "/upload", method="POST", content_length=size, end_stdin=False)
            )
            while size - sent >= batch_bytes:
                await stream.send_all(batch)
                sent += batch_bytes
            while size - sent >= MAX_ALIGNED_CONTENT_LEN:
                await stream.send_all(record)
                sent += MAX_ALIGNED_CONTENT_LEN
            rest = size - sent
            tail = encode_stream(RecordType.STDIN, 1, bytes(rest)) if rest else b""
            await stream.send_all(tail + encode_stream(RecordType.STDIN, 1, b""))
            sent += rest
            while not reader.feed(await stream.receive_some(65536)):
                pass
            elapsed = time.perf_counter() - start
            samples.append((elapsed, sample()))
            sampling.cancel()
    answer = body_of(reader.take_stdout(1))
    rss = [value for _, value in samples]
    return {
        "bytes": sent,
        "answer": answer.decode(errors="replace"),
        "seconds": elapsed,
        "mib_per_s": sent / elapsed / 2**20,
        "rss_min": min(rss),
        "rss_max": max(rss),
        "rss_first": rss[0],
        "rss_last": rss[-1],
        "samples": samples,
    }
