"""A Flask (WSGI) application served over FastCGI by the ``trio-fastcgi`` command.

Behind a web server (see docs/deploy/ for nginx)::

    trio-fastcgi examples.flask_app:app --bind 127.0.0.1:9000 --workers 2

Or in a browser with no web server (development only)::

    trio-fastcgi dev examples.flask_app:app

Flask runs in worker threads; the Trio loop keeps serving FastCGI meanwhile.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from flask import Flask, Response, request, stream_with_context

app = Flask(__name__)


@app.get("/")
def index() -> str:
    return "Hello from Flask over FastCGI!\n"


@app.post("/echo")
def echo() -> Response:
    """The request body back, with its length in a header."""
    body = request.get_data()
    return Response(body, mimetype="application/octet-stream", headers={"X-Length": str(len(body))})


@app.get("/headers")
def headers() -> dict[str, object]:
    """What the application saw of the request."""
    return {
        "path": request.path,
        "script_root": request.script_root,
        "args": request.args.to_dict(),
        "user_agent": request.headers.get("User-Agent", ""),
        "scheme": request.scheme,
    }


@app.get("/stream")
def stream() -> Response:
    """A streamed response: each line is sent as it is produced."""
    count = request.args.get("n", 5, type=int)
    delay = request.args.get("delay", 0.0, type=float)

    def lines() -> Iterator[str]:
        for i in range(count):
            if delay:
                time.sleep(delay)
            yield f"line {i}\n"

    # X-Accel-Buffering: nginx passes each line on at once instead of buffering.
    return Response(
        stream_with_context(lines()), mimetype="text/plain", headers={"X-Accel-Buffering": "no"}
    )


@app.get("/slow")
def slow() -> str:
    """Takes a while (for graceful-stop demos)."""
    time.sleep(request.args.get("seconds", 0.5, type=float))
    return "done\n"


@app.get("/fail")
def fail() -> str:
    raise RuntimeError("this view fails on purpose")
