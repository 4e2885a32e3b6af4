"""A FastCGI Filter: the web server's text files, served as HTML pages.

In the Filter role the web server sends the request (params and body) and
then the file the URL names, as a second stream (``request.data``), with its
size and modification time in the params. This filter escapes the text and
wraps it in an HTML page, streaming: it never holds the whole file.

No mainstream web server sends Filter requests today; send them with
``python -m trio_fastcgi.client 127.0.0.1:9002 /notes.txt --role filter
--filter-data notes.txt`` or from code with ``trio_fastcgi.client``.
"""

from __future__ import annotations

import codecs
import email.utils
import functools
import html

import trio

import trio_fastcgi


async def text_to_html(request: trio_fastcgi.Request) -> None:
    # A Filter must read all of stdin before it writes output (FastCGI spec).
    await request.stdin.receive_all(max_size=64 * 1024)
    title = html.escape(request.params.get("SCRIPT_NAME", "document"))
    headers = ["Status: 200 OK", "Content-Type: text/html; charset=utf-8"]
    if request.data_last_mod is not None:
        modified = email.utils.formatdate(request.data_last_mod, usegmt=True)
        headers.append(f"Last-Modified: {modified}")
    head = "\r\n".join(headers) + "\r\n\r\n"
    await request.stdout.send_all(f"{head}<!doctype html>\n<title>{title}</title>\n<pre>".encode())
    decoder = _utf8_decoder()
    # Raises IncompleteInput if the file is shorter than FCGI_DATA_LENGTH.
    async for chunk in request.data:
        await request.stdout.send_all(html.escape(decoder.decode(chunk)).encode())
    rest = html.escape(decoder.decode(b"", final=True))
    await request.stdout.send_all(f"{rest}</pre>\n".encode())


def _utf8_decoder() -> codecs.IncrementalDecoder:
    # Incremental: a character split between two chunks decodes correctly.
    return codecs.getincrementaldecoder("utf-8")("replace")


if __name__ == "__main__":
    trio.run(
        functools.partial(
            trio_fastcgi.serve_tcp,
            text_to_html,
            9002,
            host="127.0.0.1",
            roles={trio_fastcgi.Role.FILTER},
        )
    )
