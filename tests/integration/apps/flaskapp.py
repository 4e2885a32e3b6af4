"""A Flask application, as docs/howto/flask.rst shows it.

The integration tests (tests/integration/test_flask.py) serve this file with
``trio-fastcgi tests.integration.apps.flaskapp:app`` behind a real nginx, at
the root of the site and mounted under a prefix.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

from flask import Flask, Response, request, url_for

app = Flask(__name__)


@app.get("/")
def index() -> str:
    return "Hello from Flask over FastCGI!\n"


@app.get("/hello")
def hello() -> dict[str, str]:
    """A query string, and the absolute URLs Flask builds for this request."""
    name = request.args.get("name", "world")
    return {
        "greeting": f"Hello, {name}!",
        "url": request.url,
        "index_url": url_for("index", _external=True),
        "hello_url": url_for("hello", name=name, _external=True),
    }


@app.post("/upload")
def upload() -> dict[str, object]:
    """A multipart form: its field ``name``, and the size and SHA-256 of ``file``."""
    uploaded = request.files["file"]
    digest = hashlib.sha256()
    size = 0
    while chunk := uploaded.stream.read(64 * 1024):
        digest.update(chunk)
        size += len(chunk)
    return {
        "name": request.form["name"],
        "filename": uploaded.filename,
        "size": size,
        "sha256": digest.hexdigest(),
    }


@app.get("/lines")
def lines() -> Response:
    """``count`` numbered lines, each sent on as soon as it is made."""
    count = request.args.get("count", 10, type=int)

    def numbered() -> Iterator[str]:
        for number in range(count):
            yield f"line {number}\n"

    # X-Accel-Buffering: nginx passes each line on at once instead of buffering.
    return Response(numbered(), mimetype="text/plain", headers={"X-Accel-Buffering": "no"})
