"""Step 2 of the tutorial: a FastCGI application that says hello.

Run: python3 hello.py [PORT]   (PORT defaults to 9000)
"""

import functools
import sys

import trio

import trio_fastcgi


async def hello(request: trio_fastcgi.Request) -> None:
    await request.respond("Hello, world!\n")


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 9000
    print(f"serving FastCGI on 127.0.0.1:{port}; Ctrl+C stops")
    try:
        trio.run(functools.partial(trio_fastcgi.serve_tcp, hello, port, host="127.0.0.1"))
    except KeyboardInterrupt:  # Ctrl+C
        print("stopped")
