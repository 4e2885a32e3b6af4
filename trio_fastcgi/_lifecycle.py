"""A served connection's phase and timeouts, in one place: pure, no trio, no I/O.

The Trio layer reports what happens (input arrived, a request began or ended,
a graceful shutdown began, the writer half-closed) and asks two questions:
:meth:`Lifecycle.deadline`, by when the reader must hear from the web server,
and, when that time has come without input, :meth:`Lifecycle.expire`, what to
do now. Every timeout rule is here::

    phase          in flight   input partly here   deadline                   when it comes
    SERVING        no          no                  idle_since + idle_timeout  IDLE_TIMEOUT
                                                   idle_since + hibernate     HIBERNATE
    SHUTTING_DOWN  no          no                  idle_since + idle_timeout  IDLE_TIMEOUT
                   (no request began yet)          since + first_request_wait NO_FIRST_REQUEST
    either         yes         no                  none
    either         any         yes                 partial_since + read       READ_TIMEOUT
    CLOSING        -           -                   none (the writer flushes, then half-closes)
    DRAINING       -           -                   since + drain_timeout      DRAIN_TIMEOUT
    CLOSED         -           -                   none

IDLE_TIMEOUT and NO_FIRST_REQUEST move to CLOSING; READ_TIMEOUT and
DRAIN_TIMEOUT to CLOSED. When several deadlines have passed, the one listed
first in the table is what is due. Times are seconds on any one clock (trio's, in the
Trio layer); None for a timeout means it never comes.
"""

from __future__ import annotations

import enum
import math
from typing import Final, final

import attrs

#: On graceful shutdown, how long a connection that has not begun a request yet
#: (accepted just before the shutdown) waits for its first one before closing.
FIRST_REQUEST_WAIT: Final = 2.0
#: After our half-close, how long we read and discard what the web server still
#: sends before closing: closing with unread input makes the kernel send RST,
#: and the web server may then drop the response it has not read yet.
DRAIN_TIMEOUT: Final = 5.0


class Phase(enum.Enum):
    """Where a served connection is in its life."""

    # Members are compared by identity: hash them so too (Enum's own
    # __hash__ is Python code, and these are dict keys on the hot path).
    __hash__ = object.__hash__

    #: Serving requests.
    SERVING = "serving"
    #: Graceful shutdown: finish the requests in flight (and new ones that
    #: come meanwhile), then close.
    SHUTTING_DOWN = "shutting down"
    #: Decided to close: the writer sends what is queued, then half-closes.
    CLOSING = "closing"
    #: Half-closed: input is read and discarded until the web server closes.
    DRAINING = "draining"
    #: Closed, or closing at once.
    CLOSED = "closed"


class Expiry(enum.Enum):
    """What the deadline's coming means."""

    # Members are compared by identity: hash them so too (Enum's own
    # __hash__ is Python code, and these are dict keys on the hot path).
    __hash__ = object.__hash__

    #: Nothing is due (the deadline moved later meanwhile): read on.
    NOTHING = "nothing"
    #: A record or a request's params took longer than read_timeout: close now.
    READ_TIMEOUT = "read timeout"
    #: The web server did not close within DRAIN_TIMEOUT of our half-close.
    DRAIN_TIMEOUT = "drain timeout"
    #: Nothing in flight for idle_timeout: close once the output is flushed.
    IDLE_TIMEOUT = "idle timeout"
    #: Graceful shutdown, and the connection's first request never came.
    NO_FIRST_REQUEST = "no first request"
    #: Idle for hibernate_after: the connection may give up its tasks.
    HIBERNATE = "hibernate"


@attrs.frozen
class TimeoutPolicy:
    """The timeouts of a server's connections (shared by all of them)."""

    idle_timeout: float | None = None
    read_timeout: float | None = None
    hibernate_after: float | None = None
    first_request_wait: float = FIRST_REQUEST_WAIT
    drain_timeout: float = DRAIN_TIMEOUT


_OPEN: Final = frozenset({Phase.SERVING, Phase.SHUTTING_DOWN})
# Module-level names for the members: reading one off its class costs ten
# times a global lookup, and deadline() runs before every receive.
_SERVING, _SHUTTING_DOWN, _CLOSING, _DRAINING, _CLOSED = (
    Phase.SERVING,
    Phase.SHUTTING_DOWN,
    Phase.CLOSING,
    Phase.DRAINING,
    Phase.CLOSED,
)
_NOTHING, _READ_TIMEOUT, _DRAIN_TIMEOUT, _IDLE_TIMEOUT, _NO_FIRST_REQUEST, _HIBERNATE = (
    Expiry.NOTHING,
    Expiry.READ_TIMEOUT,
    Expiry.DRAIN_TIMEOUT,
    Expiry.IDLE_TIMEOUT,
    Expiry.NO_FIRST_REQUEST,
    Expiry.HIBERNATE,
)


@final
class Lifecycle:
    """The phase and the times of one connection, and its timeout rules."""

    __slots__ = (
        "_begun_any",
        "_idle_since",
        "_in_flight",
        "_partial_since",
        "_phase",
        "_phase_since",
        "_policy",
        "hibernates",
    )

    def __init__(self, policy: TimeoutPolicy, now: float, *, hibernates: bool = False) -> None:
        self._policy = policy
        self._phase = _SERVING
        self._phase_since = now
        self._idle_since = now
        self._partial_since: float | None = None
        self._in_flight = 0
        self._begun_any = False
        #: Whether this connection may hibernate (it needs a socket and a
        #: watcher); the policy's hibernate_after says when.
        self.hibernates = hibernates and policy.hibernate_after is not None

    def __repr__(self) -> str:
        return f"<Lifecycle {self._phase.value}, {self._in_flight} in flight>"

    # -- what the connection reports ---------------------------------------------

    @property
    def phase(self) -> Phase:
        """The current phase."""
        return self._phase

    @property
    def in_flight(self) -> int:
        """Requests begun and not ended yet."""
        return self._in_flight

    def received(self, now: float, *, partial: bool, progressed: bool) -> None:
        """Input arrived. *partial*: a record, or a request's params, is still
        incomplete; *progressed*: the input completed at least one record.
        read_timeout runs from the last completed record while input is partial."""
        self._idle_since = now
        if not partial:
            self._partial_since = None
        elif progressed or self._partial_since is None:
            self._partial_since = now

    def request_began(self) -> None:
        """A request began (its BEGIN_REQUEST was accepted)."""
        self._in_flight += 1
        self._begun_any = True

    def request_ended(self, now: float) -> None:
        """A request ended: its END_REQUEST is queued."""
        self._in_flight -= 1
        if not self._in_flight:
            self._idle_since = now

    def postpone(self, now: float) -> None:
        """Count *now* as activity (output still on its way out, say)."""
        self._idle_since = now

    def begin_shutdown(self, now: float) -> None:
        """Graceful shutdown: finish what is in flight, then close."""
        if self._phase is _SERVING:
            self._set_phase(_SHUTTING_DOWN, now)

    def half_closed(self, now: float) -> None:
        """The writer has half-closed the connection: drain until EOF."""
        if self._phase is not _CLOSED:
            self._set_phase(_DRAINING, now)

    def close(self, now: float) -> None:
        """The connection closes now."""
        self._set_phase(_CLOSED, now)

    def _set_phase(self, phase: Phase, now: float) -> None:
        self._phase = phase
        self._phase_since = now

    # -- what the connection asks ------------------------------------------------

    @property
    def closes_when_idle(self) -> bool:
        """Whether the writer should half-close once nothing is in flight and
        everything queued was sent: the connection is closing, or it is
        shutting down and has served what it was opened for."""
        if self._in_flight:
            return False
        phase = self._phase
        return phase is _CLOSING or (phase is _SHUTTING_DOWN and self._begun_any)

    def deadline(self) -> float:
        """When the reader must stop waiting for input and call :meth:`expire`."""
        if self._partial_since is None and self._phase is _SERVING:
            # The common cases, asked before every wait: a request in flight,
            # or an idle connection (the table's first two rows).
            if self._in_flight:
                return math.inf
            policy = self._policy
            idle = policy.idle_timeout
            hibernate = policy.hibernate_after if self.hibernates else None
            if hibernate is None:
                return math.inf if idle is None else self._idle_since + idle
            if idle is None or hibernate < idle:
                return self._idle_since + hibernate
            return self._idle_since + idle
        if self._in_flight and self._partial_since is None and self._phase in _OPEN:
            return math.inf
        return self._next()

    def wake_deadline(self) -> float:
        """:meth:`deadline` for a connection that is hibernating already."""
        return self._next(hibernating=True)

    def expire(self, now: float) -> Expiry:
        """The deadline came with no input: what is due at *now*, with the
        phase moved accordingly. After anything but READ_TIMEOUT,
        DRAIN_TIMEOUT or HIBERNATE, :meth:`deadline` is later than *now*;
        after HIBERNATE, call :meth:`postpone` if the connection cannot."""
        expiry = self._due(now)
        if expiry is _READ_TIMEOUT or expiry is _DRAIN_TIMEOUT:
            self._set_phase(_CLOSED, now)
        elif expiry is _IDLE_TIMEOUT or expiry is _NO_FIRST_REQUEST:
            self._set_phase(_CLOSING, now)
        return expiry

    def _candidates(self, hibernating: bool) -> list[tuple[float, Expiry]]:
        """The deadlines that apply now, most important first."""
        phase = self._phase
        policy = self._policy
        if phase not in _OPEN:
            if phase is _DRAINING:
                return [(self._phase_since + policy.drain_timeout, _DRAIN_TIMEOUT)]
            return []
        if self._partial_since is not None:
            if policy.read_timeout is None:
                return []
            return [(self._partial_since + policy.read_timeout, _READ_TIMEOUT)]
        if self._in_flight:
            return []
        candidates = []
        if policy.idle_timeout is not None:
            candidates.append((self._idle_since + policy.idle_timeout, _IDLE_TIMEOUT))
        if phase is _SHUTTING_DOWN:
            if not self._begun_any:
                first = self._phase_since + policy.first_request_wait
                candidates.append((first, _NO_FIRST_REQUEST))
        elif self.hibernates and not hibernating:
            assert policy.hibernate_after is not None
            candidates.append((self._idle_since + policy.hibernate_after, _HIBERNATE))
        return candidates

    def _next(self, *, hibernating: bool = False) -> float:
        return min((when for when, _ in self._candidates(hibernating)), default=math.inf)

    def _due(self, now: float) -> Expiry:
        """The most important of the deadlines that have passed at *now*."""
        for when, expiry in self._candidates(hibernating=False):
            if now >= when:
                return expiry
        return _NOTHING
