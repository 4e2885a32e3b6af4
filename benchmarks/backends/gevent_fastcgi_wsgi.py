"""gevent-fastcgi's WSGIServer with its defaults, one process."""

from __future__ import annotations

from gevent import monkey  # type: ignore[import-untyped]

monkey.patch_all()

from common import parse_args, wsgi_app  # noqa: E402
from gevent_fastcgi.wsgi import WSGIServer  # type: ignore[import-untyped]  # noqa: E402

if __name__ == "__main__":
    args = parse_args(__doc__ or "")
    WSGIServer((args.host, args.port), wsgi_app).serve_forever()
