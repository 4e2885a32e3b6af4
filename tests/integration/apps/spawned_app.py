"""The test application as a program that a web server starts itself, with the
listening socket as fd 0 (lighttpd's ``bin-path``, spawn-fcgi, mod_fcgid,
H2O's ``fastcgi.spawn``): run as a script, or as
``trio-fastcgi tests.integration.apps.spawned_app:app``.

Besides the routes of :class:`~tests.integration.apps.echo.EchoApp` it answers
``whoami`` with its pid, its parent's pid and fd 0's socket family, so a test
can tell that the web server started it and handed it the socket.
"""

from __future__ import annotations

import json
import os
import socket
import urllib.parse

import trio

import trio_fastcgi
from tests.integration.apps.echo import EchoApp


class SpawnedApp:
    def __init__(self) -> None:
        self._app = EchoApp()

    async def __call__(self, request: trio_fastcgi.Request) -> int:
        path = urllib.parse.urlsplit(request.params.get("REQUEST_URI", "")).path
        if path.rsplit("/", 1)[-1] != "whoami":
            return await self._app(request)
        with socket.socket(fileno=os.dup(0)) as listening:
            family = listening.family.name
        info = {"pid": os.getpid(), "ppid": os.getppid(), "fd0_family": family}
        await request.respond(json.dumps(info), content_type="application/json")
        return 0


#: For the ``trio-fastcgi`` command: ``tests.integration.apps.spawned_app:app``.
app = SpawnedApp()


def main() -> None:
    trio.run(trio_fastcgi.serve_inherited, SpawnedApp())


if __name__ == "__main__":
    main()
