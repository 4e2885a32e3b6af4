"""Run an asyncio ASGI application from the Trio server.

One asyncio event loop per process runs in a daemon thread, started on first
use. Each ASGI call is a task on that loop. The application's ``receive()`` and
``send()`` are forwarded to the calling Trio task: each call becomes a Trio task
in that call's nursery (``TrioToken.run_sync_soon``), and the asyncio side waits
on a future until the Trio side has done it. So ``await send(...)`` returns only
once the Trio side has queued the data: backpressure is the Trio side's, and
nothing is buffered here. Calls made once the Trio side is gone fail at once
with :class:`RuntimeError`, which the application sees.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final, TypeAlias, TypeVar, final

import trio

LOGGER: Final = logging.getLogger("trio_fastcgi.asgi")

Message: TypeAlias = MutableMapping[str, Any]
Scope: TypeAlias = MutableMapping[str, Any]
Receive: TypeAlias = Callable[[], Awaitable[Message]]
Send: TypeAlias = Callable[[Message], Awaitable[None]]
ASGIApp: TypeAlias = Callable[[Scope, Receive, Send], Awaitable[None]]

T = TypeVar("T")

#: Seconds a cancelled asyncio task gets to finish before it is left behind.
CANCEL_TIMEOUT: Final = 5.0
#: Seconds to wait for the loop's thread to end when the loop is stopped.
STOP_TIMEOUT: Final = 5.0


@final
class _LoopThread:
    """The process's asyncio loop and its thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._pid = 0

    def loop(self) -> asyncio.AbstractEventLoop:
        """The running loop, started if needed (again in a forked child)."""
        with self._lock:
            if self._loop is None or self._pid != os.getpid():
                loop = asyncio.new_event_loop()
                ready = threading.Event()

                def run() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    try:
                        loop.run_forever()
                    finally:
                        loop.run_until_complete(loop.shutdown_asyncgens())
                        loop.close()

                thread = threading.Thread(target=run, name="trio_fastcgi asyncio", daemon=True)
                thread.start()
                ready.wait()
                self._loop, self._thread, self._pid = loop, thread, os.getpid()
            return self._loop

    def stop(self) -> None:
        """Stop the loop and wait (bounded) for its thread; blocking."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None or self._pid != os.getpid():
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(STOP_TIMEOUT)
        if thread.is_alive():
            LOGGER.warning("the asyncio loop did not stop within %s s", STOP_TIMEOUT)


_LOOP: Final = _LoopThread()


async def stop_loop() -> None:
    """Stop the process's asyncio loop, if it runs (a later call starts a new one)."""
    await trio.to_thread.run_sync(_LOOP.stop)


def _resolve(future: asyncio.Future[T], result: T | None, error: BaseException | None) -> None:
    if future.done():
        return  # the application stopped waiting (its task was cancelled)
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)  # type: ignore[arg-type]


@final
class AsyncioApp:
    """An asyncio ASGI application, callable from Trio with the same contract.

    Args:
      app: the ASGI 3 application that needs an asyncio loop.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        loop = _LOOP.loop()
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()

        async with trio.open_nursery() as nursery:

            async def perform(
                call: Callable[[], Awaitable[Any]], future: asyncio.Future[Any]
            ) -> None:
                try:
                    result = await call()
                except trio.Cancelled:
                    error = RuntimeError("the request was cancelled")
                    loop.call_soon_threadsafe(_resolve, future, None, error)
                    raise
                except BaseException as exc:  # handed to the application
                    loop.call_soon_threadsafe(_resolve, future, None, exc)
                else:
                    loop.call_soon_threadsafe(_resolve, future, result, None)

            async def forward(call: Callable[[], Awaitable[T]]) -> T:
                # Runs on the asyncio loop: the call runs in the Trio task's nursery.
                future: asyncio.Future[T] = loop.create_future()

                def start() -> None:
                    try:
                        nursery.start_soon(perform, call, future)
                    except RuntimeError as exc:  # the request's nursery is closed
                        loop.call_soon_threadsafe(_resolve, future, None, exc)

                try:
                    token.run_sync_soon(start)
                except trio.RunFinishedError as exc:
                    raise RuntimeError("the Trio server has stopped") from exc
                return await future

            async def app_receive() -> Message:
                return await forward(receive)

            async def app_send(message: Message) -> None:
                await forward(lambda: send(message))

            def finished(_: asyncio.Task[None]) -> None:
                with contextlib.suppress(trio.RunFinishedError):  # nobody waits any more
                    token.run_sync_soon(done.set)

            tasks: list[asyncio.Task[None]] = []

            def create() -> None:
                task: asyncio.Task[None] = loop.create_task(
                    self.app(scope, app_receive, app_send)  # type: ignore[arg-type]
                )
                tasks.append(task)
                task.add_done_callback(finished)

            def cancel() -> None:
                for task in tasks:
                    task.cancel()

            loop.call_soon_threadsafe(create)
            try:
                await done.wait()
            except trio.Cancelled:
                loop.call_soon_threadsafe(cancel)  # after create(): same loop, in order
                with trio.CancelScope(shield=True):
                    with trio.move_on_after(CANCEL_TIMEOUT):
                        await done.wait()
                if not done.is_set():
                    LOGGER.warning(
                        "an asyncio ASGI task did not end within %s s of its cancellation",
                        CANCEL_TIMEOUT,
                    )
                raise
            nursery.cancel_scope.cancel()  # calls the application left waiting
        (task,) = tasks
        if task.cancelled():
            raise RuntimeError("the asyncio ASGI task was cancelled")
        error = task.exception()
        if error is not None:
            raise error


def needs_asyncio(app: object) -> bool:
    """Whether *app* is known to need an asyncio loop (Django's ASGIHandler, or marked)."""
    if getattr(app, "trio_fastcgi_loop", None) == "asyncio":
        return True
    return any(
        f"{cls.__module__}.{cls.__qualname__}" == "django.core.handlers.asgi.ASGIHandler"
        for cls in type(app).__mro__
    )
