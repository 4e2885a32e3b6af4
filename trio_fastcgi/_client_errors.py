"""The client's own errors (connection problems are trio's, protocol violations
:class:`~trio_fastcgi.client.ServerProtocolError`), and how one error reaches
several waiting tasks."""

from __future__ import annotations

__all__ = ["ClientError", "GetValuesUnsupported", "ResponseTooLarge", "copy_error"]


class ClientError(Exception):
    """Base of this module's own errors (besides :class:`ServerProtocolError`
    and the trio errors it raises for connection problems)."""


class ResponseTooLarge(ClientError):
    """The response (stdout, or stderr) is larger than the limit asked for.
    The request has been aborted."""


class GetValuesUnsupported(ClientError):
    """The application answered ``FCGI_GET_VALUES`` with ``FCGI_UNKNOWN_TYPE``."""


def copy_error(error: BaseException) -> BaseException:
    """A fresh exception like *error* (caused by it), to raise in one more task:
    one object raised from several tasks accumulates their tracebacks."""
    try:
        fresh = type(error)(*error.args)
    except Exception:
        return error
    fresh.__cause__ = error
    return fresh
