"""Run an asyncio ASGI application from the Trio server.

Each :class:`AsyncioApp` has one asyncio event loop, run by a daemon thread
started on first use (so one per worker process: the one application it
serves). Each ASGI call, lifespan included, is a task on that loop, so what
lifespan startup makes on the loop (a connection pool, a client) is there for
the requests. The application's ``receive()`` and ``send()`` are forwarded to
the calling Trio task: each call becomes a Trio task in that call's nursery
(``TrioToken.run_sync_soon``), and the asyncio side waits on a future until
the Trio side has done it. So ``await send(...)`` returns only once the Trio
side has queued the data: the hand-off holds at most the one message being
passed, and backpressure is the Trio side's. Calls made once the Trio side is
gone fail at once with :class:`RuntimeError`, which the application sees.

The loop stops (its remaining tasks cancelled, its thread ended) when
:meth:`AsyncioApp.aclose` is called, which ``ASGIHandler.lifespan()`` does on
exit, or else when the Trio run that used it ends.
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
STOP_TIMEOUT: Final = 10.0
#: The name of the loop's thread.
THREAD_NAME: Final = "trio_fastcgi asyncio"


def _run_loop(loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
    """The loop thread: run *loop* until stopped, then end what is left on it
    as ``asyncio.run`` does (tasks cancelled, async generators and the default
    executor shut down) and close it."""
    asyncio.set_event_loop(loop)
    loop.call_soon(ready.set)
    try:
        loop.run_forever()
        tasks = asyncio.all_tasks(loop)
        for task in tasks:
            task.cancel()
        if tasks:
            _, pending = loop.run_until_complete(asyncio.wait(tasks, timeout=CANCEL_TIMEOUT))
            if pending:
                LOGGER.warning(
                    "%d asyncio task(s) did not end within %s s of their cancellation "
                    "when the loop stopped",
                    len(pending),
                    CANCEL_TIMEOUT,
                )
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
    finally:
        asyncio.set_event_loop(None)
        loop.close()


@final
class _LoopThread:
    """An asyncio loop and the thread that runs it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._pid = 0

    @property
    def thread(self) -> threading.Thread | None:
        """The thread running the loop, if one runs in this process."""
        return self._thread if self._pid == os.getpid() else None

    def loop(self) -> asyncio.AbstractEventLoop:
        """The running loop, started if needed (again in a forked child)."""
        with self._lock:
            if self._loop is None or self._pid != os.getpid():
                loop = asyncio.new_event_loop()
                ready = threading.Event()
                thread = threading.Thread(
                    target=_run_loop, args=(loop, ready), name=THREAD_NAME, daemon=True
                )
                thread.start()
                ready.wait()
                self._loop, self._thread, self._pid = loop, thread, os.getpid()
            return self._loop

    def stop(self) -> None:
        """Stop the loop and wait (bounded) for its thread; blocking."""
        with self._lock:
            loop, thread, pid = self._loop, self._thread, self._pid
            self._loop = self._thread = None
        if loop is None or thread is None or pid != os.getpid():
            return  # none, or the parent's (a fork copies no threads)
        with contextlib.suppress(RuntimeError):  # the loop is closed already
            loop.call_soon_threadsafe(loop.stop)
        thread.join(STOP_TIMEOUT)
        if thread.is_alive():
            LOGGER.warning("the asyncio loop's thread did not end within %s s", STOP_TIMEOUT)


def _resolve(future: asyncio.Future[T], result: T | None, error: BaseException | None) -> None:
    if future.done():
        return  # the application stopped waiting (its task was cancelled)
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)  # type: ignore[arg-type]


def _cancel(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.cancel()


@final
class AsyncioApp:
    """An asyncio ASGI application, callable from Trio with the same contract.

    Args:
      app: the ASGI 3 application that needs an asyncio loop.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._runner = _LoopThread()
        #: The Trio run whose end stops the loop (see _stop_at_run_end).
        self._watched_run: trio.lowlevel.TrioToken | None = None

    @property
    def thread(self) -> threading.Thread | None:
        """The thread running the application's asyncio loop, if one runs."""
        return self._runner.thread

    async def aclose(self) -> None:
        """Stop the loop: its remaining tasks are cancelled and its thread
        ends (bounded waits). A later call of the application starts a new one."""
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self._runner.stop)

    async def _stop_at_run_end(self) -> None:
        # A system task: cancelled when the Trio run's main task is done, so
        # the loop does not outlive the run even without lifespan.
        try:
            await trio.sleep_forever()
        finally:
            await self.aclose()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        loop = self._runner.loop()
        token = trio.lowlevel.current_trio_token()
        if self._watched_run is not token:
            self._watched_run = token
            trio.lowlevel.spawn_system_task(
                self._stop_at_run_end, name="trio_fastcgi asyncio loop keeper"
            )
        done = trio.Event()

        async with trio.open_nursery() as nursery:

            async def perform(
                call: Callable[[], Awaitable[Any]], future: asyncio.Future[Any]
            ) -> None:
                try:
                    result = await call()
                except trio.Cancelled:
                    # Only when the whole call is cancelled: so is the asyncio
                    # task, and this is its CancelledError a moment early.
                    loop.call_soon_threadsafe(_cancel, future)
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
