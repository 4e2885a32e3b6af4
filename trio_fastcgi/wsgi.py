"""Serve a WSGI (PEP 3333) application over FastCGI.

``WSGIHandler(app)`` is a native handler: pass it to any ``serve_*`` function.
Each request runs the application in a worker thread (at most ``limiter``'s
tokens at once), so blocking application code never stalls the Trio loop. The
request's Trio task and the thread share one bounded hand-off queue:

- a request body whose announced ``CONTENT_LENGTH`` is at most
  ``preread_limit`` bytes (or that has fully arrived) is read before the
  application starts, so ``wsgi.input`` reads it without waiting on the Trio
  side; a longer body is read chunk by chunk as the application asks;
- each block the application yields (or passes to ``write()``) is handed to the
  request's Trio task, which sends it while the application produces the next
  one (PEP 3333 allows this). The application waits only when more than
  ``OUTPUT_BUFFER`` bytes are still on their way. A list or tuple body is
  already complete, so (up to 64 KiB) it is sent with the end of the request;
- ``wsgi.errors`` writes to the FastCGI stderr stream, which the web server
  logs.

A simple request thus costs one trip to a worker thread and back, and under
load less: the handler's threads take requests from one queue, and a thread
that finishes a request takes the next one queued without sleeping. A request
is queued for the threads already running rather than waking another, unless
none is running or the oldest queued request has waited :data:`QUEUE_DELAY`
(``queue_delay``): behind an application blocked in I/O, a request waits about
that long (at most twice that) before another thread is woken for it.
Threads that finish requests in a row wake the Trio loop once for all of
them. The worker threads are not :func:`trio.to_thread.run_sync`
threads, so :mod:`trio.from_thread` is not available in the application (WSGI
applications are synchronous and have no use for it).

If the web server aborts the request (``FCGI_ABORT_REQUEST`` or a closed
connection), the application's next read or write raises
:class:`ClientDisconnected` (an :class:`OSError`).

Authorizer role: enable it with ``roles={Role.AUTHORIZER, ...}``. The
application's response is the authorizer's answer as is: status 200 allows the
request and each ``Variable-NAME`` header becomes the param ``NAME`` of the
request the web server then serves; any other status denies and goes to the
client with its headers and body. ``environ["FCGI_ROLE"]`` tells the roles apart.
"""

from __future__ import annotations

import contextlib
import contextvars
import socket
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator
from functools import partial
from types import TracebackType
from typing import Any, Final, Protocol, TypeAlias, TypeVar, cast, final

import trio

from ._cgi import format_cgi_head
from ._exceptions import ClientDisconnected as ClientDisconnected
from ._exceptions import InputError
from ._request import Request

T = TypeVar("T")

__all__ = ["ClientDisconnected", "WSGIApp", "WSGIHandler", "build_environ"]

ExcInfo: TypeAlias = tuple[type[BaseException], BaseException, TracebackType]
OptExcInfo: TypeAlias = ExcInfo | tuple[None, None, None]
WriteCallable: TypeAlias = Callable[[bytes], object]


class StartResponse(Protocol):
    def __call__(
        self,
        status: str,
        headers: list[tuple[str, str]],
        exc_info: OptExcInfo | None = ...,
        /,
    ) -> WriteCallable: ...


WSGIEnviron: TypeAlias = dict[str, object]
WSGIApp: TypeAlias = Callable[[WSGIEnviron, StartResponse], Iterable[bytes]]

#: Worker threads running WSGI applications at once, per handler (the
#: ``--threads`` option of the command).
DEFAULT_THREADS: Final = 40
#: Largest announced request body read before the application starts (the
#: core already lets a request buffer this much unread input by default).
DEFAULT_PREREAD_LIMIT: Final = 256 * 1024
#: Output bytes an application may have handed off and not yet queued for the
#: web server; beyond this its next write waits (backpressure).
OUTPUT_BUFFER: Final = 256 * 1024
#: A list or tuple body up to this size goes out with the end of the request.
_HOLD_LIMIT: Final = 64 * 1024
#: Bytes asked from stdin at a time when the application reads without a size.
_READ_CHUNK: Final = 64 * 1024
#: Seconds a request may wait in the queue for a busy worker thread before an
#: idle one is woken for it (``WSGIHandler(queue_delay=...)``). Python's GIL
#: switch interval is 5 ms: a thread ready to run can wait that long anyway.
QUEUE_DELAY: Final = 0.002
#: Empty ticks of the watchdog before it parks until a job is queued.
_WATCHDOG_IDLE_TICKS: Final = 50
#: Seconds a worker thread waits for a job before it exits.
_IDLE_TIMEOUT: Final = 10.0
_TRUE_VALUES: Final = frozenset({"on", "1", "yes", "true"})
_ABORTED: Final = "the web server aborted the request"


def _split_path(environ: dict[str, str], script_name: str | None) -> tuple[str, str]:
    """SCRIPT_NAME and PATH_INFO for the application.

    - With *script_name* (the application's mount point, e.g. ``/app.fcgi``
      under mod_fcgid), the full path is split at it.
    - If the web server sent PATH_INFO, its split is kept.
    - Otherwise (nginx's stock ``fastcgi_params`` send the whole path as
      SCRIPT_NAME and no PATH_INFO) the whole path is PATH_INFO, mounted at "".
    """
    sent_script = environ.get("SCRIPT_NAME", "")
    sent_path = environ.get("PATH_INFO")
    if script_name is not None:
        root = script_name.rstrip("/")
        full = sent_script + (sent_path or "")
        if full == root or full.startswith(root + "/"):
            return root, full[len(root) :]
        return root, full
    if sent_path is not None:
        return sent_script, sent_path
    return "", sent_script


#: Param names seen so far, decoded: the same few dozen come with every request.
_NAMES: dict[bytes, str] = {}
_MAX_NAMES: Final = 1024


def _name(raw: bytes) -> str:
    name = raw.decode("latin-1")
    if len(_NAMES) < _MAX_NAMES:
        _NAMES[raw] = name
    return name


def build_environ(
    request: Request,
    *,
    script_name: str | None = None,
) -> dict[str, str]:
    """The CGI part of a WSGI environ for *request*: every param as a native
    string (latin-1 of the raw bytes, as PEP 3333 requires), with SCRIPT_NAME and
    PATH_INFO split (see the module docs) and the keys PEP 3333 requires
    present. The ``wsgi.*`` keys are added by :class:`WSGIHandler`."""
    names = _NAMES
    environ = {
        names.get(name) or _name(name): value.decode("latin-1")
        for name, value in request.raw_params
    }
    environ["SCRIPT_NAME"], environ["PATH_INFO"] = _split_path(environ, script_name)
    environ.setdefault("REQUEST_METHOD", "GET")
    environ.setdefault("QUERY_STRING", "")
    environ.setdefault("SERVER_NAME", "localhost")
    environ.setdefault("SERVER_PORT", "80")
    environ.setdefault("SERVER_PROTOCOL", "HTTP/1.0")
    # nginx sends CONTENT_LENGTH="" and CONTENT_TYPE="" without a body; PEP 3333
    # allows both absent, and int(environ.get("CONTENT_LENGTH", 0)) then works.
    if environ.get("CONTENT_LENGTH") == "":
        del environ["CONTENT_LENGTH"]
    if environ.get("CONTENT_TYPE") == "":
        del environ["CONTENT_TYPE"]
    return environ


def _url_scheme(environ: dict[str, str]) -> str:
    https = environ.get("HTTPS")
    if https and https.lower() in _TRUE_VALUES:
        return "https"
    scheme = environ.get("REQUEST_SCHEME")
    if scheme is None or scheme == "http":
        return "http"
    scheme = scheme.lower()
    return scheme if scheme in ("http", "https") else "http"


@final
class _Rescheduler:
    """Wakes Trio tasks from other threads, through the handler's own socket
    pair rather than :meth:`trio.lowlevel.TrioToken.run_sync_soon` (a thread's
    wake-up is one ``send`` of a byte, the loop's one ``recv``; the entry queue
    pays for a lock, a queue, a callback and a drain to ``EWOULDBLOCK``).

    One Trio task at a time, the *reader*, waits for the pair to be readable.
    A request's task that has to wait while no task reads becomes the reader
    itself (:meth:`wait_woken`): its thread's wake-up then reaches it straight
    from the loop's I/O poll, with no task in between. The others wait to be
    rescheduled (:meth:`wait_rescheduled`) by whichever task reads when their
    wake-up comes, all of those queued at once; while any waits so, a system
    task (the dispatcher) reads if no request's task does.
    """

    __slots__ = (
        "_dispatcher",
        "_lock",
        "_parked",
        "_pending",
        "_receive",
        "_send",
        "_sleepers",
        "_tasks",
        "reader",
        "token",
    )

    def __init__(self, token: trio.lowlevel.TrioToken) -> None:
        self.token: trio.lowlevel.TrioToken = token
        self._lock = threading.Lock()
        #: Tasks to reschedule at the next read (they wait in wait_rescheduled).
        self._tasks: list[trio.lowlevel.Task] = []
        #: A byte was sent and not read yet: the next wake-up needs none.
        self._pending = False
        receive, send = socket.socketpair()
        receive.setblocking(False)
        send.setblocking(False)
        self._receive = receive
        #: None once the run is over (the pair is closed).
        self._send: socket.socket | None = send
        # The rest is only used in the Trio thread.
        #: The task waiting for the pair to be readable, if any.
        self.reader: trio.lowlevel.Task | None = None
        #: Tasks in wait_rescheduled and not rescheduled yet.
        self._sleepers = 0
        #: Set while the dispatcher waits to be needed.
        self._parked = False
        self._dispatcher = trio.lowlevel.spawn_system_task(
            self._dispatch, name="trio-fastcgi WSGI wake-ups"
        )

    def wake_soon(self, task: trio.lowlevel.Task | None) -> None:
        """Reschedule *task*, waiting in :meth:`wait_rescheduled`, or with
        None wake the reader (call it in another thread).

        Raises:
          trio.RunFinishedError: the run is over.
        """
        with self._lock:
            send = self._send
            if send is None:
                raise trio.RunFinishedError("the Trio run is over")
            if task is not None:
                self._tasks.append(task)
            if not self._pending:
                # The first wake-up since the last read sends the byte; the
                # others join it. Sent with the lock held, so the pair is
                # never closed under it. At most one byte is ever unread, so
                # this cannot block; if it could, the unread bytes wake the loop.
                self._pending = True
                try:
                    send.send(b"\0")
                except BlockingIOError:
                    return

    def _take(self) -> None:
        """The pair is readable: reschedule the tasks queued (Trio thread)."""
        self._receive.recv(4096)
        with self._lock:
            self._pending = False
            tasks, self._tasks = self._tasks, []
        if tasks:
            self._sleepers -= len(tasks)
            for task in tasks:
                trio.lowlevel.reschedule(task)

    async def wait_woken(self) -> None:
        """Wait as the reader (there is none) until a byte comes, then
        reschedule the tasks queued. Cancellable."""
        self.reader = trio.lowlevel.current_task()
        try:
            await trio.lowlevel.wait_readable(self._receive)
            self._take()
        finally:
            self.reader = None
            if self._sleepers:
                self._unpark()

    async def wait_rescheduled(self, abort_fn: Callable[[object], trio.lowlevel.Abort]) -> None:
        """``wait_task_rescheduled(abort_fn)``, for a task that a thread wakes
        with :meth:`wake_soon`."""
        self._sleepers += 1
        if self.reader is None:
            self._unpark()
        await trio.lowlevel.wait_task_rescheduled(abort_fn)

    def rescheduled(self) -> None:
        """A task in :meth:`wait_rescheduled` was rescheduled directly."""
        self._sleepers -= 1

    def _unpark(self) -> None:
        if self._parked:
            self._parked = False
            trio.lowlevel.reschedule(self._dispatcher)

    def _abort_parked(self, _raise_cancel: object) -> trio.lowlevel.Abort:
        self._parked = False
        return trio.lowlevel.Abort.SUCCEEDED

    async def _dispatch(self) -> None:
        receive = self._receive
        me = trio.lowlevel.current_task()
        try:
            while True:
                if self.reader is None and self._sleepers:
                    self.reader = me
                    try:
                        await trio.lowlevel.wait_readable(receive)
                    finally:
                        self.reader = None
                    self._take()
                else:
                    # Not needed: a request's task reads, or no task waits.
                    self._parked = True
                    await trio.lowlevel.wait_task_rescheduled(self._abort_parked)
        finally:
            with self._lock:
                send, self._send = self._send, None
            if send is not None:
                send.close()
            receive.close()


_Job: TypeAlias = "tuple[Callable[[], Any], Callable[[Any, BaseException | None], object], float]"


@final
class _AppThreads:
    """The threads that run a handler's applications, fed from one queue.

    A thread that finishes a job takes the next one queued without sleeping.
    A submitted job wakes (or starts) a thread only if no thread is free to
    take it and either none is awake or the oldest queued job has waited
    *queue_delay*; otherwise it waits for a thread to finish its job,
    so under load one thread runs requests back to back with no thread
    switches between them. A watchdog (a Trio system task, so it costs no
    thread switches) ticks every *queue_delay* while jobs come and wakes
    threads for jobs that waited that long when no new job comes to notice
    (the threads in applications are blocked). How many jobs run at once is
    bounded by the handler's limiter, not here. Threads idle for
    :data:`_IDLE_TIMEOUT` seconds exit.
    """

    def __init__(self, queue_delay: float) -> None:
        self._queue_delay = queue_delay
        self._lock = threading.Lock()
        self._jobs: deque[_Job] = deque()
        self._threads = 0
        #: The wake-up locks of the threads waiting for work and not yet woken
        #: (each is held; releasing it wakes its thread), most recent last.
        self._idle: list[threading.Lock] = []
        #: Threads in an application (the rest of the awake ones are free).
        self._running = 0
        #: The run whose watchdog task watches the queue.
        self._watched: trio.lowlevel.TrioToken | None = None
        #: Set when a job is queued while the watchdog is parked.
        self._queued: trio.Event | None = None

    @property
    def threads(self) -> int:
        """Threads alive (running jobs or idle)."""
        return self._threads

    def submit(
        self, fn: Callable[[], T], deliver: Callable[[T | None, BaseException | None], object]
    ) -> None:
        """Run *fn* in a thread, then ``deliver(value, None)`` in that thread, or
        ``deliver(None, exception)`` if it raised.

        Call it in the Trio thread."""
        now = time.monotonic()
        with self._lock:
            jobs = self._jobs
            jobs.append((fn, deliver, now))
            awake = self._threads - len(self._idle)
            unserved = len(jobs) - (awake - self._running)
            if unserved <= 0:
                return  # a free thread takes it
            waits = awake and jobs[0][2] > now - self._queue_delay
            # Either it waits for a thread to finish its job, or wakes one.
            new_threads = 0 if waits else self._wake(unserved)
        if waits:
            self._watch_queue()
        for _ in range(new_threads):
            self._start()

    def _watch_queue(self) -> None:
        queued = self._queued
        if queued is not None:
            queued.set()
        token = trio.lowlevel.current_trio_token()
        if self._watched is not token:
            self._watched = token
            trio.lowlevel.spawn_system_task(self._watchdog, name="trio-fastcgi WSGI watchdog")

    def _wake(self, wanted: int) -> int:
        """Wake up to *wanted* waiting threads (lock held); how many to start."""
        if wanted <= 0:
            return 0
        idle = self._idle
        woken = min(wanted, len(idle))
        for _ in range(woken):
            # The thread idle last: its stack and caches are the warmest.
            idle.pop().release()
        self._threads += wanted - woken
        return wanted - woken

    def _start(self) -> None:
        threading.Thread(target=self._work, name="trio-fastcgi WSGI worker", daemon=True).start()

    def _work(self) -> None:
        lock = self._lock
        jobs = self._jobs
        idle = self._idle
        # Held while the thread runs; released by whoever wakes it. A plain
        # lock: waking and waiting cost no Python code (a Condition's do).
        wake = threading.Lock()
        wake.acquire()
        counted = True  # in self._threads
        try:
            while True:
                with lock:
                    while not jobs:
                        idle.append(wake)
                        lock.release()
                        try:
                            woken = wake.acquire(timeout=_IDLE_TIMEOUT)
                        finally:
                            lock.acquire()
                        if woken:
                            continue  # by submit() or the watchdog, which took it off idle
                        if wake in idle:
                            # Idle too long: gone in the same breath, so
                            # submit() never counts on this thread.
                            idle.remove(wake)
                            self._threads -= 1
                            counted = False
                            return
                        # Woken as the wait timed out: take the wake-up.
                        wake.acquire()
                    fn, deliver, _queued = jobs.popleft()
                    self._running += 1
                try:
                    value = fn()
                    failure = None
                except BaseException as exc:  # for the Trio side to raise
                    value = None
                    failure = exc
                with lock:
                    self._running -= 1
                deliver(value, failure)
                del fn, deliver, value, failure
        finally:
            if counted:  # deliver() failed: the thread is lost
                with lock:
                    self._threads -= 1

    async def _watchdog(self) -> None:
        jobs = self._jobs
        idle_ticks = 0
        while True:
            await trio.sleep(self._queue_delay)
            with self._lock:
                if not jobs:
                    idle_ticks += 1
                    new_threads = 0
                else:
                    idle_ticks = 0
                    free = self._threads - len(self._idle) - self._running
                    stalled = jobs[0][2] <= time.monotonic() - self._queue_delay
                    # The threads in applications hold the queue up: wake more.
                    new_threads = self._wake(len(jobs) - free) if stalled else 0
            for _ in range(new_threads):
                self._start()
            if idle_ticks >= _WATCHDOG_IDLE_TICKS:
                # Nothing queued for a while: park until a job is.
                idle_ticks = 0
                self._queued = queued = trio.Event()
                await queued.wait()
                self._queued = None


@final
class _Stderr:
    """A block for the FastCGI stderr stream, in the hand-off queue."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


@final
class _Call:
    """A coroutine the application thread needs run on the Trio side (a read)."""

    __slots__ = ("done", "error", "fn", "value")

    def __init__(self, fn: Callable[[], Awaitable[object]]) -> None:
        self.fn = fn
        self.done = False
        self.value: object = None
        self.error: BaseException | None = None


_Item: TypeAlias = "bytes | _Stderr | _Call"


@final
class _Pipe:
    """The hand-off between a request's Trio task and its application thread.

    The thread queues stdout blocks, stderr blocks and calls; the Trio task
    (:meth:`serve`) takes them in order until the thread has returned. Output
    is not waited for, only bounded: a block waits while :data:`OUTPUT_BUFFER`
    bytes or more are queued here and not yet on stdout. The Trio task is
    woken (by the handler's :class:`_Rescheduler`) only when it sleeps for
    want of work.
    """

    __slots__ = (
        "_changed",
        "_items",
        "_lock",
        "_pending",
        "_reader_waits",
        "_reason",
        "_rescheduler",
        "_returned",
        "_sleeping",
        "abandoned",
        "cancelled",
        "disconnected",
        "failure",
        "on_late_return",
        "request",
        "rest",
    )

    def __init__(self, request: Request, rescheduler: _Rescheduler) -> None:
        self.request: Request = request
        self._rescheduler = rescheduler
        self._lock = threading.Lock()
        # Made when the thread first has to wait (most requests never do).
        self._changed: threading.Condition | None = None
        self._items: deque[_Item] = deque()
        self._pending = 0
        #: The Trio task when it waits to be rescheduled (wait_rescheduled).
        self._sleeping: trio.lowlevel.Task | None = None
        #: Set when the Trio task waits as the rescheduler's reader instead.
        self._reader_waits = False
        self._returned = False
        #: What the application thread returned (the output not handed off
        #: yet), or the exception it raised.
        self.rest: bytes | None = None
        self.failure: BaseException | None = None
        #: Set once the request was aborted or its connection is gone.
        self.disconnected: bool = False
        self._reason = _ABORTED
        #: Set once the Trio side was cancelled (an abort) while serving.
        self.cancelled: bool = False
        #: Set by :meth:`abandon`: the Trio side no longer waits for the thread.
        self.abandoned: bool = False
        #: Called (in the Trio thread) once an abandoned thread has returned.
        self.on_late_return: Callable[[], None] | None = None

    # -- the application thread's side --------------------------------------------

    def _push(self, item: _Item, size: int) -> None:
        with self._lock:
            while self._pending >= OUTPUT_BUFFER and not self.disconnected:
                self._wait()
            if self.disconnected:
                raise ClientDisconnected(self._reason)
            self._items.append(item)
            self._pending += size
            task, self._sleeping = self._sleeping, None
            woken, self._reader_waits = self._reader_waits, False
        if task is not None or woken:
            self._rescheduler.wake_soon(task)

    def send(self, data: bytes) -> None:
        """Hand *data* to stdout; waits only while the output buffer is full."""
        self._push(data, len(data))

    def send_stderr(self, data: bytes) -> None:
        self._push(_Stderr(data), len(data))

    def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run *fn* in the request's Trio task and return its result."""
        job = _Call(fn)
        self._push(job, 0)
        with self._lock:
            while not job.done:
                self._wait()
        if job.error is not None:
            raise job.error
        return cast("T", job.value)

    def _wait(self) -> None:
        """Wait (holding the lock) until the Trio side changes something."""
        if self._changed is None:
            self._changed = threading.Condition(self._lock)
        self._changed.wait()

    def finish(self, rest: bytes | None, failure: BaseException | None) -> None:
        """The thread's ``deliver``: the application's outcome (runs in the thread)."""
        with self._lock:
            self.rest = rest
            self.failure = failure
            self._returned = True
            task, self._sleeping = self._sleeping, None
            woken, self._reader_waits = self._reader_waits, False
            late = self.on_late_return if self.abandoned else None
        if task is not None or woken:
            self._rescheduler.wake_soon(task)
        if late is not None:
            with contextlib.suppress(trio.RunFinishedError):
                self._rescheduler.token.run_sync_soon(late)

    # -- the Trio side ---------------------------------------------------------------

    def _disconnect(self, reason: str) -> None:
        with self._lock:
            if not self.disconnected:
                self.disconnected = True
                self._reason = reason
            if self._changed is not None:
                self._changed.notify_all()

    def _abort(self, _raise_cancel: object) -> trio.lowlevel.Abort:
        # Cancelled while asleep: tell the thread, keep waiting for it to return.
        self.cancelled = True
        self._disconnect(_ABORTED)
        return trio.lowlevel.Abort.FAILED

    def abandon(self) -> bool:
        """Stop waiting for the thread (Trio side); False if it has returned."""
        with self._lock:
            if self._returned:
                return False
            self.abandoned = True
            if not self.disconnected:
                self.disconnected = True
                self._reason = "abandoned: the server is stopping"
            for item in self._items:
                if type(item) is _Call and not item.done:
                    item.error = ClientDisconnected(self._reason)
                    item.done = True
            if self._changed is not None:
                self._changed.notify_all()
            # (A task waiting as the reader is woken by the cancellation.)
            task, self._sleeping = self._sleeping, None
        if task is not None:
            self._rescheduler.rescheduled()
            trio.lowlevel.reschedule(task)
        return True

    def when_returned(self, fn: Callable[[], None]) -> bool:
        """Have *fn* run in Trio once the abandoned thread returns; False if it has."""
        with self._lock:
            if self._returned:
                return False
            self.on_late_return = fn
            return True

    async def serve(self) -> bool:
        """Send what the thread hands off until it returns (True; its outcome is
        in :attr:`rest` or :attr:`failure`) or is abandoned (False).

        Cancellation (an abort) does not stop this early: the thread is told
        (its next read or write raises :class:`ClientDisconnected`) and waited
        for, then the cancellation is raised.
        """
        self.cancelled = False
        failure: Exception | None = None
        request = self.request
        rescheduler = self._rescheduler
        lock = self._lock
        items = self._items
        while True:
            direct = False
            with lock:
                if self.abandoned:
                    return False
                if items:
                    item: _Item | None = items.popleft()
                elif self._returned:
                    break
                else:
                    item = None
                    # The reader's wait is cancellable, so not once cancelled.
                    direct = rescheduler.reader is None and not self.cancelled
                    if direct:
                        self._reader_waits = True
                    else:
                        self._sleeping = trio.lowlevel.current_task()
            if item is None:
                if not direct:
                    await rescheduler.wait_rescheduled(self._abort)
                    continue
                try:
                    await rescheduler.wait_woken()
                except trio.Cancelled:
                    # The request was aborted: finish the thread first.
                    self.cancelled = True
                    self._disconnect(_ABORTED)
                    with lock:
                        self._reader_waits = False
                continue
            size = 0
            succeeded = False
            try:
                if type(item) is bytes:
                    size = len(item)
                    if not self.disconnected:
                        await request.stdout.send_all(item)
                elif type(item) is _Stderr:
                    size = len(item.data)
                    if not self.disconnected:
                        await request.stderr.send_all(item.data)
                elif type(item) is _Call and not self.disconnected:
                    item.value = await item.fn()
                    succeeded = True
            except trio.Cancelled:
                # The request was aborted: finish the thread first (see above).
                self.cancelled = True
                self._disconnect(_ABORTED)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self._disconnect(f"the connection is gone: {exc}")
            except Exception as exc:
                if type(item) is _Call:
                    item.error = exc  # for the application (an incomplete body)
                else:
                    failure = failure or exc
                    self._disconnect(f"the request's output failed: {exc!r}")
            with lock:
                self._pending -= size
                if type(item) is _Call:
                    if not succeeded and item.error is None:
                        item.error = ClientDisconnected(self._reason)
                    item.done = True
                if self._changed is not None:
                    self._changed.notify_all()
        if failure is not None:
            raise failure
        return True


@final
class WSGIInput:
    """``wsgi.input``: a blocking, read-only file over the request's stdin.

    A body read before the application started is served from memory. Beyond
    it, reads ask the Trio side for at most what is needed, so a long body
    streams in with the FastCGI flow control; ``read()`` with no size reads to
    the end.
    """

    __slots__ = ("_buffer", "_eof", "_error", "_pipe")

    def __init__(
        self,
        pipe: _Pipe,
        body: bytes = b"",
        *,
        complete: bool = False,
        error: OSError | None = None,
    ) -> None:
        self._pipe = pipe
        self._buffer = body
        self._eof = complete
        self._error = error

    def _fill(self, size: int) -> bool:
        """Receive one more chunk of at most *size* bytes; False at the end."""
        if self._eof:
            error, self._error = self._error, None
            if error is not None:
                raise error
            return False
        stdin = self._pipe.request.stdin
        try:
            chunk = self._pipe.call(partial(stdin.receive_some, size))
        except InputError as exc:
            # The body was cut short: that is an I/O error for the reader.
            self._eof = True
            raise OSError(f"request body incomplete: {exc}") from exc
        if not chunk:
            self._eof = True
            return False
        self._buffer += chunk
        return True

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            parts = [self._buffer]
            self._buffer = b""
            while self._fill(_READ_CHUNK):
                parts.append(self._buffer)  # just the new chunk: the buffer was empty
                self._buffer = b""
            return b"".join(parts)
        # Like a buffered file: size bytes, fewer only at the end of the body.
        while len(self._buffer) < size and self._fill(size - len(self._buffer)):
            pass
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data

    def readline(self, size: int | None = -1) -> bytes:
        limit = -1 if size is None else size
        if limit == 0:
            return b""
        while True:
            end = self._buffer.find(b"\n") + 1
            if end == 0 and 0 <= limit <= len(self._buffer):
                end = limit
            if end == 0 and self._fill(_READ_CHUNK):
                continue
            if end == 0:
                end = len(self._buffer)
            if 0 <= limit < end:
                end = limit
            line, self._buffer = self._buffer[:end], self._buffer[end:]
            return line

    def readlines(self, hint: int = -1) -> list[bytes]:
        lines: list[bytes] = []
        total = 0
        while line := self.readline():
            lines.append(line)
            total += len(line)
            if 0 < hint <= total:
                break
        return lines

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line


@final
class WSGIErrors:
    """``wsgi.errors``: text written here goes to the FastCGI stderr stream."""

    __slots__ = ("_pipe",)

    def __init__(self, pipe: _Pipe) -> None:
        self._pipe = pipe

    def write(self, text: str) -> int:
        if text and not self._pipe.disconnected:
            self._pipe.send_stderr(text.encode("utf-8", "replace"))
        return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        pass


#: Heads made so far, by status and headers: most applications answer with a
#: few. Only checked, well-formed heads are kept (an exact ``str`` equal to
#: one checked formats the same).
_HEADS: dict[tuple[object, ...], bytes] = {}
_MAX_HEADS: Final = 512


def _cgi_head(status: object, headers: object) -> bytes:
    """The CGI head for a WSGI status and header list, checked as PEP 3333 asks."""
    if type(status) is not str:
        raise TypeError(f"WSGI status must be a str, not {type(status).__name__}")
    code = status[:3]
    if (
        not code.isdigit()
        or len(code) != 3
        or status[3:4] not in ("", " ")
        or "\r" in status
        or "\n" in status
    ):
        raise ValueError(f"bad WSGI status {status!r}: expected like '200 OK'")
    if type(headers) is not list:
        raise TypeError(f"WSGI headers must be a list, not {type(headers).__name__}")
    for item in headers:
        if type(item) is not tuple or len(item) != 2:
            raise TypeError(f"WSGI header {item!r} is not a (name, value) tuple")
        if type(item[0]) is not str or type(item[1]) is not str:
            raise TypeError(f"WSGI header {item!r} must be native strings")
    key = (status, *headers)
    head = _HEADS.get(key)
    if head is None:
        head = format_cgi_head(status, headers)
        if len(_HEADS) < _MAX_HEADS:
            _HEADS[key] = head
    return head


@final
class _Response:
    """start_response, write() and the body's blocks, in the application thread."""

    __slots__ = ("_head", "_held", "_held_size", "_pipe", "head_sent")

    def __init__(self, pipe: _Pipe) -> None:
        self._pipe = pipe
        self._head: bytes | None = None
        self.head_sent = False
        self._held: list[bytes] = []
        self._held_size = 0

    def start_response(
        self,
        status: str,
        headers: list[tuple[str, str]],
        exc_info: OptExcInfo | None = None,
    ) -> WriteCallable:
        if exc_info is not None and exc_info[1] is not None:
            try:
                if self.head_sent:
                    # Too late to change the response: PEP 3333 says re-raise.
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None  # no reference cycle through the traceback
        elif self._head is not None:
            raise AssertionError("start_response called twice without exc_info")
        self._head = _cgi_head(status, headers)
        return self.write

    def write(self, data: bytes, *, hold: bool = False) -> None:
        """Hand *data* off to be sent (the ``write()`` callable).

        With *hold* (a block of a list or tuple body, which is already
        complete), it is kept to go out with the end of the request unless the
        blocks kept would pass :data:`_HOLD_LIMIT`.
        """
        if type(data) is not bytes:
            raise TypeError(f"WSGI body chunks must be bytes, not {type(data).__name__}")
        if self._head is None:
            raise AssertionError("write() before start_response()")
        if not self.head_sent:
            self.head_sent = True
            data = self._head + data
        elif not data:
            return
        if self._held and (not hold or self._held_size + len(data) > _HOLD_LIMIT):
            self._pipe.send(self._take_held())
        if hold and len(data) <= _HOLD_LIMIT:
            self._held.append(data)
            self._held_size += len(data)
        else:
            self._pipe.send(data)

    def whole(self, blocks: list[bytes] | tuple[bytes, ...]) -> bytes | None:
        """The head and all of *blocks* (a list or tuple body) to go out with
        the end of the request, if nothing was written yet and they are small;
        otherwise None and nothing done."""
        if self._head is None or self.head_sent:
            return None
        for block in blocks:
            if type(block) is not bytes:
                return None  # write() raises the error
        body = b"".join(blocks)
        if len(body) > _HOLD_LIMIT:
            return None
        self.head_sent = True
        return self._head + body

    def _take_held(self) -> bytes:
        held = self._held[0] if len(self._held) == 1 else b"".join(self._held)
        self._held = []
        self._held_size = 0
        return held

    def finish(self) -> bytes:
        """The response is complete: the output still held back (may be empty)."""
        if self._head is None:
            raise RuntimeError("the WSGI application returned without calling start_response()")
        if not self.head_sent:
            self.write(b"", hold=True)
        return self._take_held()


@final
class WSGIHandler:
    """A native handler that serves the WSGI application *app*.

    Args:
      app: the WSGI callable.
      limiter: bounds the worker threads running applications at once; a new
        ``trio.CapacityLimiter(DEFAULT_THREADS)`` by default.
      script_name: the path the application is mounted at, overriding how the
        web server split SCRIPT_NAME and PATH_INFO (``/app.fcgi`` for
        ``https://host/app.fcgi/page`` under mod_fcgid).
      multiprocess: the value of ``wsgi.multiprocess`` (true under ``--workers``).
      preread_limit: a request body announced (``CONTENT_LENGTH``) at most this
        long is read whole before the application starts; 0 turns this off.
      queue_delay: seconds a request may wait for a busy worker thread before
        an idle one is woken for it (see the module docs); 0 wakes one for
        every request, as if each had its own thread.
    """

    def __init__(
        self,
        app: WSGIApp,
        *,
        limiter: trio.CapacityLimiter | None = None,
        script_name: str | None = None,
        multiprocess: bool = False,
        preread_limit: int = DEFAULT_PREREAD_LIMIT,
        queue_delay: float = QUEUE_DELAY,
    ) -> None:
        if preread_limit < 0:
            raise ValueError("preread_limit must not be negative")
        if not queue_delay >= 0:
            raise ValueError("queue_delay must not be negative")
        self.app = app
        self.limiter: trio.CapacityLimiter = (
            limiter if limiter is not None else trio.CapacityLimiter(DEFAULT_THREADS)
        )
        self.script_name = script_name
        self.preread_limit = preread_limit
        self._pipes: set[_Pipe] = set()
        self._threads = _AppThreads(queue_delay)
        #: The environ keys that are the same for every request.
        self._constant_environ: dict[str, object] = {
            "wsgi.version": (1, 0),
            "wsgi.multithread": True,
            "wsgi.multiprocess": multiprocess,
            "wsgi.run_once": False,
            # reads return b"" at the end of the body, even without
            # CONTENT_LENGTH (chunked uploads through nginx)
            "wsgi.input_terminated": True,
        }
        self._rescheduler: _Rescheduler | None = None

    @property
    def multiprocess(self) -> bool:
        """The value of ``wsgi.multiprocess``."""
        return cast("bool", self._constant_environ["wsgi.multiprocess"])

    @multiprocess.setter
    def multiprocess(self, value: bool) -> None:
        self._constant_environ["wsgi.multiprocess"] = value

    def abandon(self) -> list[Request]:
        """Stop waiting for the application threads still running: their
        requests are cancelled at once, the threads run on (their next read or
        write raises :class:`ClientDisconnected`), each keeping its limiter
        token until it returns. For a process about to exit (the command does
        this when ``--graceful-timeout`` is up). Call it in the Trio thread;
        returns the requests abandoned."""
        abandoned = []
        for pipe in list(self._pipes):
            pipe.request.cancel_scope.cancel()
            if pipe.abandon():
                abandoned.append(pipe.request)
        return abandoned

    async def _preread(self, request: Request, pipe: _Pipe) -> WSGIInput:
        """``wsgi.input``, with the body read first if it is short (or all here)."""
        stdin = request.stdin
        expected = stdin.expected_length
        if not stdin.at_eof and (expected is None or expected > self.preread_limit):
            return WSGIInput(pipe)
        if stdin.at_eof and not stdin.received and not expected:
            return WSGIInput(pipe, complete=True)  # no body at all
        parts: list[bytes] = []
        size = 0
        try:
            while size <= self.preread_limit:
                chunk = await stdin.receive_some()
                if not chunk:
                    return WSGIInput(pipe, b"".join(parts), complete=True)
                parts.append(chunk)
                size += len(chunk)
        except InputError as exc:
            # Cut short: the application's read gets what came, then the error.
            error = OSError(f"request body incomplete: {exc}")
            error.__cause__ = exc
            return WSGIInput(pipe, b"".join(parts), complete=True, error=error)
        # More came than announced: the rest is read as the application asks.
        return WSGIInput(pipe, b"".join(parts))

    async def __call__(self, request: Request) -> None:
        rescheduler = self._rescheduler
        token = trio.lowlevel.current_trio_token()
        if rescheduler is None or rescheduler.token is not token:
            rescheduler = self._rescheduler = _Rescheduler(token)
        pipe = _Pipe(request, rescheduler)
        cgi_environ = build_environ(request, script_name=self.script_name)
        stdin = request.stdin
        if stdin.at_eof and not stdin.received and not stdin.expected_length:
            wsgi_input = WSGIInput(pipe, complete=True)  # no body: most requests
        else:
            try:
                wsgi_input = await self._preread(request, pipe)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                await trio.lowlevel.checkpoint()
                return  # the connection is gone before the application started
        environ = cast("dict[str, object]", cgi_environ)
        environ["wsgi.url_scheme"] = _url_scheme(cgi_environ)
        environ.update(self._constant_environ)
        environ["wsgi.input"] = wsgi_input
        environ["wsgi.errors"] = WSGIErrors(pipe)
        environ["trio_fastcgi.request"] = request
        limiter = self.limiter
        try:
            # serve() below is the checkpoint; a free thread needs no wait here.
            limiter.acquire_on_behalf_of_nowait(pipe)
        except trio.WouldBlock:
            await limiter.acquire_on_behalf_of(pipe)
        self._pipes.add(pipe)
        try:
            run = partial(contextvars.copy_context().run, self._run_app, environ, pipe)
            self._threads.submit(run, pipe.finish)
            returned = await pipe.serve()
        finally:
            self._pipes.discard(pipe)
            # An abandoned thread still in the application keeps its token.
            if not (
                pipe.abandoned and pipe.when_returned(partial(limiter.release_on_behalf_of, pipe))
            ):
                limiter.release_on_behalf_of(pipe)
        if not returned:
            # Abandoned: the request was cancelled (see abandon()).
            await trio.lowlevel.checkpoint()
            return
        if pipe.cancelled:
            # Aborted: the application has returned; now raise the Cancelled.
            await trio.lowlevel.checkpoint()
        failure, pipe.failure = pipe.failure, None
        if failure is not None:
            try:
                if not (pipe.disconnected and isinstance(failure, Exception)):
                    raise failure
            finally:
                del failure  # no reference cycle through the traceback
            # The web server gave up on the request: not the application's failure.
            await trio.lowlevel.checkpoint()
            return
        rest = pipe.rest
        assert rest is not None
        if pipe.disconnected:
            await trio.lowlevel.checkpoint()
            return
        try:
            # The rest and the end of stdout in one write.
            await request.stdout._send_last(rest)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            # The connection is gone (or the application closed stdout itself).
            await trio.lowlevel.checkpoint()

    def _run_app(self, environ: dict[str, object], pipe: _Pipe) -> bytes:
        """The application thread: returns the output not handed off yet."""
        if pipe.abandoned:
            return b""  # abandoned while queued for a thread: not started at all
        response = _Response(pipe)
        result = self.app(environ, response.start_response)
        try:
            # A list or tuple body is complete: no application code runs between
            # its blocks, so they may be sent together.
            hold = type(result) is list or type(result) is tuple
            if hold:
                whole = response.whole(cast("list[bytes]", result))
                if whole is not None:
                    return whole
            for chunk in result:
                if chunk:
                    response.write(chunk, hold=hold)
            return response.finish()
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
