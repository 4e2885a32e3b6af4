"""Interpreted Python calls per request in a trio-fastcgi backend, by function.

callgrind (``instructions.py``) counts instructions but shows interpreted
Python only as the interpreter's own C functions. This names them: it runs a
trio-fastcgi backend in this process, drives requests one at a time from a
thread (the client of ``instructions.py``), and counts the Python-level calls
that the server's thread makes per request with :func:`sys.setprofile`, by
function. On the compiled build, what is left is what still runs interpreted:
trio's scheduler and cancel scopes, the handler, and the modules that are not
compiled. A coroutine counts once per resumption (a ``call`` event each time
it is resumed), so a task's outer frames count once per task step.

    python benchmarks/python_calls.py                       # trio-native-mypyc, hello-ka
    python benchmarks/python_calls.py -b trio-native -s hello-new --top 60

Only the main thread is profiled: the WSGI adapter's worker threads are not.
"""

from __future__ import annotations

import argparse
import collections
import importlib
import os
import signal
import sys
import sysconfig
import threading
import time
from pathlib import Path
from types import FrameType

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE / "backends"), str(HERE)]
if "PYTHON_CALLS_PACKAGE" in os.environ:  # see main(): this build, imported first
    sys.path.insert(0, os.environ["PYTHON_CALLS_PACKAGE"])
    import trio_fastcgi  # noqa: F401 (instructions.py puts the checkout first)

import compiled_build  # noqa: E402
from instructions import BACKENDS, MYPYC, REPO, SCENARIOS, drive, free_port  # noqa: E402

#: The backends this can run: those that serve with trio-fastcgi in one process.
TRIO_BACKENDS = sorted(key for key in BACKENDS if key.startswith("trio-"))


STDLIB = sysconfig.get_paths()["stdlib"] + "/"


def where(frame: FrameType) -> str:
    """``path:line qualified.name`` of the function, the path shortened: from
    ``trio_fastcgi/`` (either build), from site-packages, or ``stdlib/``."""
    code = frame.f_code
    path = code.co_filename
    if "/trio_fastcgi/" in path:
        path = "trio_fastcgi/" + path.split("/trio_fastcgi/", 1)[1]
    elif "site-packages/" in path:
        path = path.split("site-packages/", 1)[1]
    elif path.startswith(STDLIB):
        path = "stdlib/" + path.removeprefix(STDLIB)
    elif path.startswith(str(HERE) + "/"):
        path = "benchmarks/" + path.removeprefix(str(HERE) + "/")
    return f"{path}:{code.co_firstlineno} {code.co_qualname}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-b", "--backend", default="trio-native-mypyc", choices=TRIO_BACKENDS)
    parser.add_argument("-s", "--scenario", default="hello-ka", choices=sorted(SCENARIOS))
    parser.add_argument("--count", type=int, default=400, help="requests counted")
    parser.add_argument("--top", type=int, default=40, help="functions listed")
    args = parser.parse_args()

    package = compiled_build.compiled_tree() if args.backend.endswith(MYPYC) else REPO
    if os.environ.get("PYTHON_CALLS_PACKAGE") != str(package):
        # Start again, importing that build before anything else does.
        env = {**os.environ, "PYTHON_CALLS_PACKAGE": str(package)}
        os.execve(sys.executable, [sys.executable, __file__, *sys.argv[1:]], env)
    import trio_fastcgi

    compiled = trio_fastcgi._compiled.compiled_modules()
    script = BACKENDS[args.backend][1]
    backend = importlib.import_module(script.removesuffix(".py"))
    port = free_port()
    sys.argv = [script, "--port", str(port)]

    calls: collections.Counter[str] = collections.Counter()
    counting = False

    def profile(frame: FrameType, event: str, _arg: object) -> None:
        if counting and event == "call":
            calls[where(frame)] += 1

    failure: list[BaseException] = []

    def client() -> None:
        nonlocal counting
        try:
            scenario = SCENARIOS[args.scenario]
            deadline = time.monotonic() + 30
            while True:
                try:
                    drive(port, scenario, 50)  # warm-up, and waits for the server
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            counting = True
            drive(port, scenario, args.count)
            counting = False
        except BaseException as exc:  # reported by the main thread
            failure.append(exc)
        finally:
            os.kill(os.getpid(), signal.SIGINT)  # ends trio.run in the main thread

    threading.Thread(target=client, daemon=True).start()
    sys.setprofile(profile)
    try:
        backend.trio.run(backend.main)
    except KeyboardInterrupt:
        pass
    finally:
        sys.setprofile(None)
    if failure:
        raise failure[0]

    per_request = {name: n / args.count for name, n in calls.items()}
    total = sum(per_request.values())
    print(
        f"{args.backend}, {args.scenario}: {total:.1f} interpreted calls per request "
        f"over {args.count} requests (compiled modules: {len(compiled)})"
    )
    by_package: collections.Counter[str] = collections.Counter()
    for name, n in per_request.items():
        head = name.split(":", 1)[0]
        if head.startswith("<attrs generated methods "):  # attrs' __init__ and so on
            head = head.removeprefix("<attrs generated methods ").replace(".", "/")
        by_package[head.split("/", 1)[0] if "/" in head else head] += n
    print("\nper package (top directory or file):")
    for name, n in by_package.most_common():
        print(f"{n:8.2f}  {name}")
    print(f"\nthe {args.top} functions called most per request:")
    for name, n in sorted(per_request.items(), key=lambda item: -item[1])[: args.top]:
        print(f"{n:8.2f}  {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
