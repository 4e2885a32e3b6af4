"""Reading a CGI response (RFC 3875 section 6): the status, headers and body a
Responder writes to ``FCGI_STDOUT``. Pure parsing: no I/O, no Trio."""

from __future__ import annotations

import attrs

__all__ = ["CGIResponse", "CGIResponseError", "parse_cgi_response"]


class CGIResponseError(ValueError):
    """Stdout that is not a CGI response (headers, blank line, body)."""


@attrs.frozen
class CGIResponse:
    """A CGI response, as :func:`parse_cgi_response` reads it from stdout.

    Attributes:
      status: from the ``Status:`` header; 302 if there is only a
        ``Location:``; else 200.
      headers: the other headers, in order, names as sent.
      body: what follows the blank line.
    """

    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str, default: str | None = None) -> str | None:
        """The first header called *name* (case-insensitive), or *default*."""
        wanted = name.lower()
        for key, value in self.headers:
            if key.lower() == wanted:
                return value
        return default

    def header_values(self, name: str) -> list[str]:
        """Every value of the header *name* (case-insensitive), in order."""
        wanted = name.lower()
        return [value for key, value in self.headers if key.lower() == wanted]


def parse_cgi_response(stdout: bytes) -> CGIResponse:
    """Split a CGI response into status, headers and body (RFC 3875 section 6).

    Lines may end in CRLF or LF; the head ends at the first empty line. Header
    bytes are decoded as latin-1. ``Status: 404 Not Found`` sets the status and
    is not kept in :attr:`CGIResponse.headers`.

    Raises:
      CGIResponseError: no blank line ends the head, a header line has no
        colon, or the Status header is not a 3-digit code.
    """
    lines: list[bytes] = []
    pos = 0
    while True:
        newline = stdout.find(b"\n", pos)
        if newline == -1:
            raise CGIResponseError(
                f"no blank line ends the CGI headers (stdout starts {stdout[:60]!r})"
            )
        raw_line = stdout[pos:newline]
        pos = newline + 1
        if raw_line.endswith(b"\r"):
            raw_line = raw_line[:-1]
        if not raw_line:
            break
        lines.append(raw_line)
    body = stdout[pos:]
    status: int | None = None
    location = False
    headers: list[tuple[str, str]] = []
    for raw_line in lines:
        line = raw_line.decode("latin-1")
        name, colon, value = line.partition(":")
        name = name.strip()
        if not colon or not name:
            raise CGIResponseError(f"CGI header line without a name and colon: {line!r}")
        value = value.strip()
        lowered = name.lower()
        if lowered == "status":
            code = value.split(None, 1)[0] if value else ""
            if len(code) != 3 or not code.isdigit() or code[0] == "0":
                raise CGIResponseError(f"bad CGI Status header: {line!r}")
            status = int(code)
            continue
        if lowered == "location":
            location = True
        headers.append((name, value))
    if status is None:
        status = 302 if location else 200
    return CGIResponse(status, headers, body)
