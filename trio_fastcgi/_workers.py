"""Running the server in one process, or pre-forked under a supervisor.

One process (:func:`run_worker`): Trio serves the listening sockets; SIGTERM or
SIGINT starts the core's graceful shutdown (stop accepting, let requests in
flight finish within the grace period, then cancel), after which it returns.

Pre-fork (:class:`Supervisor`): the supervisor opens the listening sockets
once and forks N workers that all accept on them (the model of gunicorn and
php-fpm). It never runs Trio itself; it is a plain loop around ``select`` that

- replaces a worker that dies (a crash, SIGKILL, or ``--max-requests``
  recycling, where the worker stops itself gracefully);
- on SIGHUP starts a new set of workers, and once all of them are serving,
  stops the old ones gracefully (code is re-imported: workers load the
  application after the fork);
- on SIGTERM or SIGINT closes its copies of the listening sockets and stops
  every worker gracefully, killing those still running after the grace period
  (plus a margin); a second SIGTERM/SIGINT kills them at once.

A worker tells the supervisor it is serving by writing one byte to a pipe; one
that exits before that failed to boot (an import error, say), and the
supervisor then gives up rather than restarting it in a loop.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import logging
import os
import select
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from functools import partial
from typing import Final, Protocol, final, runtime_checkable

import attrs
import trio

from ._bind import BoundSocket
from ._config import DEFAULT_GRACE_PERIOD, ServerOptions
from ._request import Request
from ._served_connection import Handler
from ._server import serve_listeners

LOGGER: Final = logging.getLogger("trio_fastcgi.workers")

#: Seconds the supervisor waits past the grace period before it kills a worker
#: that is still stopping.
KILL_MARGIN: Final = 5.0
#: Exit status of the supervisor when a worker failed to boot.
EXIT_BOOT_FAILURE: Final = 3
#: Seconds past the grace period (when requests are cancelled) that WSGI
#: threads get to return before they are abandoned: a thread blocked on a read
#: or a write returns at once and runs its ``finally`` blocks. Well below
#: :data:`KILL_MARGIN`, so a worker exits before the supervisor kills it.
ABANDON_DELAY: Final = 1.0


@runtime_checkable
class Abandoning(Protocol):
    """A handler that can stop waiting for threads stuck in the application
    (:meth:`trio_fastcgi.wsgi.WSGIHandler.abandon`)."""

    def abandon(self) -> list[Request]: ...


def describe_request(request: Request) -> str:
    params = request.params
    return (
        f"request {request.request_id} {params.get('REQUEST_METHOD', '?')} "
        f"{params.get('REQUEST_URI') or params.get('SCRIPT_NAME', '?')}"
    )


@final
class _Abandonment:
    """Gives up on the requests a handler cannot stop (once), and counts them."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler if isinstance(handler, Abandoning) else None
        self.count = 0

    def __call__(self, why: str) -> None:
        if self._handler is None:
            return
        requests = self._handler.abandon()
        if requests:
            self.count += len(requests)
            LOGGER.warning(
                "%s: abandoning %d request(s) still in the application, whose threads "
                "are left running: %s",
                why,
                len(requests),
                "; ".join(describe_request(r) for r in requests),
            )

    async def after(self, stop: trio.Event, delay: float) -> None:
        await stop.wait()
        await trio.sleep(delay)
        self(f"graceful timeout ({delay - ABANDON_DELAY:g} s) is up")


def exit_now(status: int) -> None:
    """End the process at once, after flushing the logs.

    For a process that abandoned threads still in the application: a normal
    interpreter exit would run atexit handlers and join non-daemon threads
    while they still run application code (and could wait on them forever);
    ``os._exit`` does neither, as a worker forked by the supervisor already
    does. Callers remove their unix socket files first.
    """
    with contextlib.suppress(Exception):
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(status)


#: What a worker serves: the handler and, for ASGI, its lifespan.
LoadedApp = tuple[Handler, "AbstractAsyncContextManager[None] | None"]


def _counting(handler: Handler, limit: int, stop: trio.Event) -> Handler:
    """*handler*, setting *stop* once it was called *limit* times."""
    count = 0

    async def counted(request: Request) -> int | None:
        nonlocal count
        count += 1
        if count == limit:
            LOGGER.info("served %d requests (--max-requests): recycling this worker", limit)
            stop.set()
        return await handler(request)

    return counted


async def _stop_on_signals(
    stop: trio.Event,
    hard_stop: trio.CancelScope | None,
    abandon: Callable[[str], None],
    *,
    task_status: trio.TaskStatus[None],
) -> None:
    # SIGHUP too: in a single process a reload is not possible, and its default
    # action (terminate at once) would drop the requests in flight. Workers
    # under the supervisor ignore it anyway.
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        task_status.started()
        async for signum in signals:
            name = signal.Signals(signum).name
            if signum == signal.SIGHUP:
                LOGGER.warning("SIGHUP ignored: reloading needs --workers 1 or more")
            elif not stop.is_set():
                LOGGER.info("%s: graceful stop (finishing requests in flight)", name)
                stop.set()
            elif hard_stop is not None:
                LOGGER.warning("%s again: stopping now, cancelling requests in flight", name)
                hard_stop.cancel()
                abandon(f"{name} again")


async def _stop_when_orphaned(stop: trio.Event, life_fd: int) -> None:
    """Stop gracefully once the supervisor is gone (killed with SIGKILL, say),
    so that workers do not serve on unsupervised: *life_fd* is the read end of
    a pipe whose write end only the supervisor holds, so it turns readable
    (EOF) when the supervisor exits."""
    await trio.lowlevel.wait_readable(life_fd)
    if not stop.is_set():
        LOGGER.warning("the supervisor is gone: graceful stop")
    stop.set()


async def serve_worker(
    loaded: LoadedApp,
    sockets: Sequence[socket.socket],
    options: ServerOptions,
    *,
    max_requests: int = 0,
    on_ready: Callable[[], None] | None = None,
    life_fd: int | None = None,
) -> int:
    """Serve *sockets* with the loaded application until SIGTERM/SIGINT (or
    *max_requests*), then stop gracefully and return the number of requests
    abandoned (threads left in a WSGI application past the grace period).

    *options* are ``serve_*`` options; ``grace_period`` among them is the
    ``--graceful-timeout``. *on_ready* is called once the application's
    lifespan started and the sockets are being served. With *life_fd* (see
    :class:`Supervisor`), the worker also stops once its supervisor is gone.
    """
    handler, lifespan = loaded
    stop = trio.Event()
    # Before the counting wrapper, which has no abandon() to find.
    abandonment = _Abandonment(handler)
    if max_requests > 0:
        handler = _counting(handler, max_requests, stop)
    listeners = [trio.SocketListener(trio.socket.from_stdlib_socket(sock)) for sock in sockets]
    # A second SIGTERM/SIGINT stops at once, but only when no supervisor is
    # there: a worker gets Ctrl+C's SIGINT and the supervisor's SIGTERM.
    hard_stop = trio.CancelScope()
    with hard_stop:
        await _serve_until_stopped(
            abandonment,
            handler,
            lifespan,
            listeners,
            options,
            stop,
            on_ready,
            life_fd,
            None if life_fd is not None else hard_stop,
        )
    LOGGER.info("stopped")
    return abandonment.count


async def _serve_until_stopped(
    abandonment: _Abandonment,
    handler: Handler,
    lifespan: AbstractAsyncContextManager[None] | None,
    listeners: list[trio.SocketListener],
    options: ServerOptions,
    stop: trio.Event,
    on_ready: Callable[[], None] | None,
    life_fd: int | None,
    hard_stop: trio.CancelScope | None,
) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(_stop_on_signals, stop, hard_stop, abandonment)
        grace = options.get("grace_period", DEFAULT_GRACE_PERIOD)
        nursery.start_soon(abandonment.after, stop, grace + ABANDON_DELAY)
        if life_fd is not None:
            nursery.start_soon(_stop_when_orphaned, stop, life_fd)
        async with (
            lifespan if lifespan is not None else contextlib.nullcontext(),
            trio.open_nursery() as serving,
        ):
            serve_options = options.copy()
            serve_options["shutdown_event"] = stop
            serve = partial(serve_listeners, handler, listeners, **serve_options)
            await serving.start(serve)
            if on_ready is not None:
                on_ready()
        nursery.cancel_scope.cancel()


def freeze_what_is_loaded() -> None:
    """Move every object alive now (the application, every module loaded) out
    of the cycle collector's way, for the life of the process.

    The collector's full collections walk every tracked object; without this,
    a worker under load ran one every few hundred milliseconds, each walking
    the 25,000 objects of the modules and the application (7.5 ms: the
    server's slowest responses). Garbage from loading is collected first, so
    that none of it is kept for ever.
    """
    gc.collect()
    gc.freeze()


def run_worker(
    load: Callable[[], LoadedApp],
    sockets: Sequence[socket.socket],
    options: ServerOptions,
    *,
    max_requests: int = 0,
    on_ready: Callable[[], None] | None = None,
    life_fd: int | None = None,
) -> int:
    """Load the application and serve *sockets* with it in this process; the
    number of requests abandoned (see :func:`serve_worker`)."""
    loaded = load()
    freeze_what_is_loaded()
    serve = partial(
        serve_worker,
        loaded,
        sockets,
        options,
        max_requests=max_requests,
        on_ready=on_ready,
        life_fd=life_fd,
    )
    return trio.run(serve)


@attrs.define(eq=False)
class _Worker:
    pid: int
    ready_fd: int | None
    generation: int
    ready: bool = False
    stopping: bool = False
    kill_at: float | None = None


@final
class Supervisor:
    """Keeps *workers* worker processes serving *sockets* (see the module docs).

    Args:
      sockets: the listening sockets, opened before.
      worker_main: runs in each forked worker with the sockets, a callback to
        call once it serves, and the "life" fd, which turns readable when the
        supervisor exits; its return is the worker's exit status.
      workers: how many workers to keep.
      graceful_timeout: the workers' grace period on a graceful stop.
    """

    def __init__(
        self,
        sockets: Sequence[BoundSocket],
        worker_main: Callable[[Sequence[socket.socket], Callable[[], None], int], int],
        *,
        workers: int,
        graceful_timeout: float,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self._sockets = list(sockets)
        self._worker_main = worker_main
        self._count = workers
        self._graceful_timeout = graceful_timeout
        self._workers: dict[int, _Worker] = {}
        self._generation = 0
        self._signals: list[int] = []
        self._stopping = False
        self._exit_status = 0
        self._wakeup_r = -1
        self._wakeup_w = -1
        self._life_r = -1
        self._life_w = -1

    @property
    def pids(self) -> list[int]:
        """The worker processes alive now."""
        return list(self._workers)

    # -- the loop ----------------------------------------------------------------

    def run(self) -> int:
        """Supervise until stopped; returns the exit status for the command."""
        self._wakeup_r, self._wakeup_w = os.pipe()
        self._life_r, self._life_w = os.pipe()
        os.set_blocking(self._wakeup_r, False)
        os.set_blocking(self._wakeup_w, False)
        previous_wakeup = signal.set_wakeup_fd(self._wakeup_w)
        handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in handled}
        try:
            LOGGER.info("supervisor %d: starting %d worker(s)", os.getpid(), self._count)
            self._start_generation()
            while self._workers or not self._stopping:
                self._wait()
                self._handle_signals()
                self._reap()
                self._kill_overdue()
        finally:
            signal.set_wakeup_fd(previous_wakeup)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            for fd in (self._wakeup_r, self._wakeup_w, self._life_r, self._life_w):
                os.close(fd)
            self._close_sockets()
            for bound in self._sockets:
                bound.remove_file()
        LOGGER.info("supervisor %d: stopped", os.getpid())
        return self._exit_status

    def _on_signal(self, signum: int, frame: object) -> None:
        self._signals.append(signum)

    def _wait(self) -> None:
        booting = {w.ready_fd: w for w in self._workers.values() if w.ready_fd is not None}
        timeout = None
        deadlines = [w.kill_at for w in self._workers.values() if w.kill_at is not None]
        if deadlines:
            timeout = max(0.0, min(deadlines) - time.monotonic())
        if self._signals:
            timeout = 0.0
        readable, _, _ = select.select([self._wakeup_r, *booting], [], [], timeout)
        for fd in readable:
            if fd == self._wakeup_r:
                with contextlib.suppress(BlockingIOError):
                    while os.read(fd, 512):
                        pass
            else:
                self._on_ready_pipe(booting[fd])

    def _on_ready_pipe(self, worker: _Worker) -> None:
        assert worker.ready_fd is not None
        data = b""
        with contextlib.suppress(OSError):
            data = os.read(worker.ready_fd, 1)
        os.close(worker.ready_fd)
        worker.ready_fd = None
        if not data:
            return  # it exits without serving; _reap deals with it
        worker.ready = True
        LOGGER.info("worker %d (generation %d) is serving", worker.pid, worker.generation)
        generation = worker.generation
        same = [w for w in self._workers.values() if w.generation == generation and not w.stopping]
        if all(w.ready for w in same):
            # A new generation is complete: retire every older one.
            for old in list(self._workers.values()):
                if old.generation < generation and not old.stopping:
                    self._stop_worker(old)

    def _handle_signals(self) -> None:
        while self._signals:
            signum = self._signals.pop(0)
            if signum in (signal.SIGTERM, signal.SIGINT):
                if self._stopping:
                    LOGGER.warning("second stop signal: killing the workers")
                    for worker in self._workers.values():
                        _kill(worker.pid, signal.SIGKILL)
                else:
                    LOGGER.info(
                        "%s: graceful stop of %d worker(s)",
                        signal.Signals(signum).name,
                        len(self._workers),
                    )
                    self._stopping = True
                    self._close_sockets()
                    for worker in list(self._workers.values()):
                        self._stop_worker(worker)
            elif signum == signal.SIGHUP and not self._stopping:
                LOGGER.info("SIGHUP: starting new workers, then stopping the old ones")
                self._start_generation()

    def _reap(self) -> None:
        while self._workers:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = self._workers.pop(pid, None)
            if worker is None:
                continue
            if worker.ready_fd is not None:
                os.close(worker.ready_fd)
                worker.ready_fd = None
            how = _describe_status(status)
            if worker.stopping or self._stopping:
                LOGGER.info("worker %d %s", pid, how)
                continue
            if not worker.ready:
                self._boot_failed(worker, how)
                continue
            if os.waitstatus_to_exitcode(status) == 0:
                LOGGER.info("worker %d retired (%s); starting a new one", pid, how)
            else:
                LOGGER.warning("worker %d %s; starting a new one", pid, how)
            self._spawn(worker.generation)

    def _boot_failed(self, worker: _Worker, how: str) -> None:
        older_serving = any(
            w.generation < worker.generation and w.ready for w in self._workers.values()
        )
        if older_serving:
            LOGGER.error(
                "worker %d of the new generation failed to boot (%s); keeping the old workers",
                worker.pid,
                how,
            )
            for other in list(self._workers.values()):
                if other.generation >= worker.generation and not other.stopping:
                    self._stop_worker(other)
            return
        LOGGER.error("worker %d failed to boot (%s); stopping", worker.pid, how)
        self._exit_status = EXIT_BOOT_FAILURE
        self._stopping = True
        self._close_sockets()
        for other in list(self._workers.values()):
            self._stop_worker(other)

    def _kill_overdue(self) -> None:
        now = time.monotonic()
        for worker in self._workers.values():
            if worker.kill_at is not None and now >= worker.kill_at:
                LOGGER.warning(
                    "worker %d still running after the grace period: killing", worker.pid
                )
                _kill(worker.pid, signal.SIGKILL)
                worker.kill_at = None

    # -- workers -----------------------------------------------------------------

    def _start_generation(self) -> None:
        self._generation += 1
        for _ in range(self._count):
            self._spawn(self._generation)

    def _stop_worker(self, worker: _Worker) -> None:
        worker.stopping = True
        worker.kill_at = time.monotonic() + self._graceful_timeout + KILL_MARGIN
        _kill(worker.pid, signal.SIGTERM)

    def _close_sockets(self) -> None:
        for bound in self._sockets:
            bound.close()

    def _spawn(self, generation: int) -> None:
        ready_r, ready_w = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child; tests see its effects
            self._in_child(ready_r, ready_w)
        os.close(ready_w)
        self._workers[pid] = _Worker(pid, ready_r, generation)
        LOGGER.debug("started worker %d (generation %d)", pid, generation)

    def _in_child(self, ready_r: int, ready_w: int) -> None:  # pragma: no cover
        status = 1
        try:
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
                signal.signal(sig, signal.SIG_DFL)
            # Reloads are the supervisor's business, not the workers'.
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            os.close(ready_r)
            for fd in (self._wakeup_r, self._wakeup_w, self._life_w):
                os.close(fd)
            for other in self._workers.values():
                if other.ready_fd is not None:
                    os.close(other.ready_fd)

            def ready() -> None:
                with contextlib.suppress(OSError):
                    os.write(ready_w, b"1")
                    os.close(ready_w)

            sockets = [bound.sock for bound in self._sockets]
            status = self._worker_main(sockets, ready, self._life_r)
        except SystemExit as exc:
            status = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            traceback.print_exc()
            status = 1
        finally:
            with contextlib.suppress(Exception):
                logging.shutdown()
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(status)


def _kill(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except OSError as exc:
        if exc.errno != errno.ESRCH:
            raise


def _describe_status(status: int) -> str:
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"
