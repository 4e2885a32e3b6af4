"""The connection's phase and timeout rules, without trio: a table, then properties."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_fastcgi._lifecycle import Expiry, Lifecycle, Phase, TimeoutPolicy

POLICY = TimeoutPolicy(
    idle_timeout=300, read_timeout=60, hibernate_after=2, first_request_wait=2, drain_timeout=5
)
T0 = 1000.0  # when each lifecycle starts


def new(policy: TimeoutPolicy = POLICY, *, hibernates: bool = True) -> Lifecycle:
    return Lifecycle(policy, T0, hibernates=hibernates)


# Each case: how to get there (steps on a fresh lifecycle), then the expected
# deadline and what expire() says at that deadline, and the phase after.
Step = Callable[[Lifecycle], None]


def busy(life: Lifecycle) -> None:
    life.request_began()


def partial_at(t: float) -> Step:
    return lambda life: life.received(t, partial=True, progressed=False)


def whole_at(t: float) -> Step:
    return lambda life: life.received(t, partial=False, progressed=True)


def ended_at(t: float) -> Step:
    return lambda life: life.request_ended(t)


def shutdown_at(t: float) -> Step:
    return lambda life: life.begin_shutdown(t)


def half_closed_at(t: float) -> Step:
    return lambda life: life.half_closed(t)


def expired_at(t: float) -> Step:
    def step(life: Lifecycle) -> None:
        life.expire(t)

    return step


CASES: list[tuple[str, list[Step], bool, float, Expiry, Phase]] = [
    # name, steps, hibernates, deadline, due at the deadline, phase after
    ("fresh: hibernates first", [], True, T0 + 2, Expiry.HIBERNATE, Phase.SERVING),
    ("fresh, no hibernation: idle", [], False, T0 + 300, Expiry.IDLE_TIMEOUT, Phase.CLOSING),
    (
        "input resets the idle clock",
        [whole_at(T0 + 50)],
        False,
        T0 + 350,
        Expiry.IDLE_TIMEOUT,
        Phase.CLOSING,
    ),
    (
        "partial record: read timeout",
        [partial_at(T0 + 10)],
        True,
        T0 + 70,
        Expiry.READ_TIMEOUT,
        Phase.CLOSED,
    ),
    (
        "partial stays from its start",
        [partial_at(T0 + 10), partial_at(T0 + 40)],
        True,
        T0 + 70,
        Expiry.READ_TIMEOUT,
        Phase.CLOSED,
    ),
    (
        "a completed record restarts it",
        [partial_at(T0 + 10), lambda life: life.received(T0 + 40, partial=True, progressed=True)],
        True,
        T0 + 100,
        Expiry.READ_TIMEOUT,
        Phase.CLOSED,
    ),
    (
        "whole again: back to idle",
        [partial_at(T0 + 10), whole_at(T0 + 20)],
        False,
        T0 + 320,
        Expiry.IDLE_TIMEOUT,
        Phase.CLOSING,
    ),
    ("in flight: no deadline", [busy], True, math.inf, Expiry.NOTHING, Phase.SERVING),
    (
        "in flight, partial: read timeout",
        [busy, partial_at(T0 + 5)],
        True,
        T0 + 65,
        Expiry.READ_TIMEOUT,
        Phase.CLOSED,
    ),
    (
        "ended: idle from its end",
        [busy, ended_at(T0 + 100)],
        False,
        T0 + 400,
        Expiry.IDLE_TIMEOUT,
        Phase.CLOSING,
    ),
    (
        "ended: hibernates from its end",
        [busy, ended_at(T0 + 100)],
        True,
        T0 + 102,
        Expiry.HIBERNATE,
        Phase.SERVING,
    ),
    (
        "one of two ended: still in flight",
        [busy, busy, ended_at(T0 + 100)],
        True,
        math.inf,
        Expiry.NOTHING,
        Phase.SERVING,
    ),
    (
        "shutdown, nothing began: first-request wait",
        [shutdown_at(T0 + 1)],
        True,
        T0 + 3,
        Expiry.NO_FIRST_REQUEST,
        Phase.CLOSING,
    ),
    (
        "shutdown never hibernates",
        [busy, ended_at(T0 + 1), shutdown_at(T0 + 1)],
        True,
        T0 + 301,
        Expiry.IDLE_TIMEOUT,
        Phase.CLOSING,
    ),
    (
        "shutdown in flight: no deadline",
        [busy, shutdown_at(T0 + 1)],
        True,
        math.inf,
        Expiry.NOTHING,
        Phase.SHUTTING_DOWN,
    ),
    (
        "draining: drain timeout",
        [half_closed_at(T0 + 7)],
        True,
        T0 + 12,
        Expiry.DRAIN_TIMEOUT,
        Phase.CLOSED,
    ),
    (
        "closing: waits for the writer",
        [expired_at(T0 + 300)],
        False,
        math.inf,
        Expiry.NOTHING,
        Phase.CLOSING,
    ),
    (
        "closed: nothing more",
        [lambda life: life.close(T0)],
        True,
        math.inf,
        Expiry.NOTHING,
        Phase.CLOSED,
    ),
]


@pytest.mark.parametrize(
    ("steps", "hibernates", "deadline", "due", "phase_after"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_lifecycle_table(
    steps: list[Step], hibernates: bool, deadline: float, due: Expiry, phase_after: Phase
) -> None:
    life = new(hibernates=hibernates)
    for step in steps:
        step(life)
    assert life.deadline() == deadline
    if math.isfinite(deadline):
        assert life.expire(deadline - 0.001) is Expiry.NOTHING
        assert life.expire(deadline) is due
    else:
        assert life.expire(T0 + 10**6) is Expiry.NOTHING
    assert life.phase is phase_after


def test_lifecycle_the_most_important_passed_deadline_wins() -> None:
    # Woken from hibernation by the idle deadline: both it and the hibernation
    # deadline have passed, and the idle timeout is what is due.
    life = new()
    assert life.wake_deadline() == T0 + 300
    assert life.expire(T0 + 300) is Expiry.IDLE_TIMEOUT
    life = new()
    life.begin_shutdown(T0)
    assert life.expire(T0 + 500) is Expiry.IDLE_TIMEOUT  # listed before NO_FIRST_REQUEST


def test_lifecycle_no_timeouts_no_deadlines() -> None:
    life = new(TimeoutPolicy(), hibernates=True)
    assert not life.hibernates  # hibernate_after None
    life.received(T0, partial=True, progressed=True)
    assert life.deadline() == math.inf
    life.received(T0, partial=False, progressed=True)
    assert life.deadline() == math.inf


def test_lifecycle_closes_when_idle() -> None:
    life = new()
    assert not life.closes_when_idle
    life.begin_shutdown(T0)
    assert not life.closes_when_idle  # its first request is awaited
    life.request_began()
    assert not life.closes_when_idle
    life.request_ended(T0 + 1)
    assert life.closes_when_idle  # served what it was opened for
    life = new(hibernates=False)
    assert life.expire(T0 + 300) is Expiry.IDLE_TIMEOUT
    assert life.closes_when_idle
    life.request_began()  # a request that came as the connection decided to close
    assert not life.closes_when_idle


def test_lifecycle_half_close_after_close_stays_closed() -> None:
    life = new()
    life.close(T0)
    life.half_closed(T0)
    assert life.phase is Phase.CLOSED
    life.begin_shutdown(T0)
    assert life.phase is Phase.CLOSED


@st.composite
def histories(draw: st.DrawFn) -> tuple[Lifecycle, float]:
    """A lifecycle after random events at increasing times, and the time now."""
    policy = TimeoutPolicy(
        idle_timeout=draw(st.none() | st.floats(0.5, 400)),
        read_timeout=draw(st.none() | st.floats(0.5, 100)),
        hibernate_after=draw(st.none() | st.floats(0.5, 10)),
    )
    life = Lifecycle(policy, T0, hibernates=draw(st.booleans()))
    now = T0
    for _ in range(draw(st.integers(0, 12))):
        now += draw(st.floats(0, 50))
        match draw(st.sampled_from(["in", "partial", "begin", "end", "shutdown", "expire"])):
            case "in":
                life.received(now, partial=False, progressed=True)
            case "partial":
                life.received(now, partial=True, progressed=draw(st.booleans()))
            case "begin":
                life.request_began()
            case "end" if life.in_flight:
                life.request_ended(now)
            case "shutdown":
                life.begin_shutdown(now)
            case "expire":
                if life.expire(now) is Expiry.HIBERNATE:
                    life.postpone(now)
    return life, now


@given(histories(), st.floats(0, 1000))
def test_lifecycle_expire_always_makes_progress(
    history: tuple[Lifecycle, float], wait: float
) -> None:
    # Whatever happened, expiring at the deadline either ends the wait
    # (close, hibernate) or leaves a deadline in the future: the reader can
    # never spin on a deadline that has passed.
    life, now = history
    deadline = life.deadline()
    if not math.isfinite(deadline):
        assert life.expire(now + wait) is Expiry.NOTHING
        return
    at = max(deadline, now)
    expiry = life.expire(at)
    assert expiry is not Expiry.NOTHING
    if expiry is Expiry.HIBERNATE:
        assert life.wake_deadline() > at
        life.postpone(at)
    if life.phase is not Phase.CLOSED:
        assert life.deadline() > at
    assert life.expire(at) is Expiry.NOTHING or life.phase is Phase.CLOSED


@given(histories())
def test_lifecycle_deadline_is_the_earliest_and_never_early(
    history: tuple[Lifecycle, float],
) -> None:
    life, _ = history
    deadline = life.deadline()
    assert deadline <= life.wake_deadline()
    if math.isfinite(deadline):
        assert life.expire(deadline - 1e-6) is Expiry.NOTHING


@given(histories())
def test_lifecycle_deadline_is_the_tables_earliest_row(history: tuple[Lifecycle, float]) -> None:
    # deadline() answers the common rows without building the table; it must
    # agree with the table (its candidates' earliest) whatever happened.
    life, _ = history
    rows = life._candidates(hibernating=False)
    assert life.deadline() == min((when for when, _ in rows), default=math.inf)
