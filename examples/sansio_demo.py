"""The sans-IO core on its own: bytes in, events out; events in, bytes out.

No sockets and no Trio: the bytes a web server would send for one Responder
request are built by hand, fed to :class:`trio_fastcgi.FastCGIConnection`,
and the reply is turned back into bytes. ``python examples/sansio_demo.py``
prints the events and the reply; the docs show the middle part.
"""

from __future__ import annotations

import struct

import trio_fastcgi
from trio_fastcgi import RecordType


def record(record_type: int, request_id: int, content: bytes = b"") -> bytes:
    """One FastCGI record, unpadded: version 1, type, id, length, no padding."""
    return struct.pack("!BBHHBx", 1, record_type, request_id, len(content), 0) + content


def web_server_bytes() -> bytes:
    """What a web server sends for ``GET /`` as request 1, role Responder."""
    begin = struct.pack("!HB5x", trio_fastcgi.Role.RESPONDER, 0)  # flags 0: no KEEP_CONN
    params = b"\x0e\x03REQUEST_METHODGET"  # one name-value pair, 1-byte lengths
    return (
        record(RecordType.BEGIN_REQUEST, 1, begin)
        + record(RecordType.PARAMS, 1, params)
        + record(RecordType.PARAMS, 1)  # an empty record ends the params stream
        + record(RecordType.STDIN, 1)  # and an empty stdin: no body
    )


def main() -> tuple[list[trio_fastcgi.Event], bytes]:
    # -- start
    conn = trio_fastcgi.FastCGIConnection()
    conn.receive_data(web_server_bytes())  # whatever the socket gave
    events: list[trio_fastcgi.Event] = []
    while (event := conn.next_event()) is not trio_fastcgi.NEED_DATA:
        events.append(event)
    # events == [BeginRequest(request_id=1, role=<Role.RESPONDER: 1>, keep_conn=False),
    #            Params(request_id=1, params=((b'REQUEST_METHOD', b'GET'),)),
    #            Stdin(request_id=1, data=b'')]
    reply = conn.send(trio_fastcgi.Stdout(1, b"Content-Type: text/plain\r\n\r\nhello\n"))
    reply += conn.send(trio_fastcgi.EndRequest(1, app_status=0))  # ends stdout too
    # Write `reply` to the socket. No FCGI_KEEP_CONN: now close the connection.
    assert conn.should_close
    # -- end
    return events, reply


if __name__ == "__main__":
    events, reply = main()
    for event in events:
        print(event)
    print(reply)
