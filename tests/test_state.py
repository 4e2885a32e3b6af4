"""The per-request stream order rules, written out as the spec's table."""

from __future__ import annotations

import itertools

import pytest

from trio_fastcgi import RecordType, Role
from trio_fastcgi._state import (
    NEXT_STATES,
    STREAM_ACTIONS,
    Action,
    RequestState,
    state_after,
    stream_action,
)

PARAMS, STDIN, DATA = RecordType.PARAMS, RecordType.STDIN, RecordType.DATA
DELIVER, IGNORE, ERROR = Action.DELIVER, Action.IGNORE, Action.ERROR

#: (state, record type, empty record) -> action, for every combination there is.
STREAM_TABLE: dict[tuple[RequestState, RecordType, bool], Action] = {
    # Reading params: params records are delivered (the empty one ends them);
    # a stream that has not started yet may only send a stray empty record.
    (RequestState.PARAMS, PARAMS, False): DELIVER,
    (RequestState.PARAMS, PARAMS, True): DELIVER,
    (RequestState.PARAMS, STDIN, False): ERROR,
    (RequestState.PARAMS, STDIN, True): IGNORE,
    (RequestState.PARAMS, DATA, False): ERROR,
    (RequestState.PARAMS, DATA, True): IGNORE,
    # Reading stdin: params are over (a repeated end marker is ignored).
    (RequestState.STDIN, PARAMS, False): ERROR,
    (RequestState.STDIN, PARAMS, True): IGNORE,
    (RequestState.STDIN, STDIN, False): DELIVER,
    (RequestState.STDIN, STDIN, True): DELIVER,
    (RequestState.STDIN, DATA, False): ERROR,
    (RequestState.STDIN, DATA, True): IGNORE,
    # Reading data (Filter): params and stdin are over.
    (RequestState.DATA, PARAMS, False): ERROR,
    (RequestState.DATA, PARAMS, True): IGNORE,
    (RequestState.DATA, STDIN, False): ERROR,
    (RequestState.DATA, STDIN, True): IGNORE,
    (RequestState.DATA, DATA, False): DELIVER,
    (RequestState.DATA, DATA, True): DELIVER,
    # Input complete: only end markers may still come (lighttpd's empty STDIN
    # to an Authorizer, say); anything with content is an error.
    (RequestState.DONE, PARAMS, False): ERROR,
    (RequestState.DONE, PARAMS, True): IGNORE,
    (RequestState.DONE, STDIN, False): ERROR,
    (RequestState.DONE, STDIN, True): IGNORE,
    (RequestState.DONE, DATA, False): ERROR,
    (RequestState.DONE, DATA, True): IGNORE,
    # Aborted: everything is ignored until the request ends.
    (RequestState.ABORTED, PARAMS, False): IGNORE,
    (RequestState.ABORTED, PARAMS, True): IGNORE,
    (RequestState.ABORTED, STDIN, False): IGNORE,
    (RequestState.ABORTED, STDIN, True): IGNORE,
    (RequestState.ABORTED, DATA, False): IGNORE,
    (RequestState.ABORTED, DATA, True): IGNORE,
}


def test_stream_table_covers_every_case() -> None:
    assert set(STREAM_TABLE) == set(
        itertools.product(RequestState, [PARAMS, STDIN, DATA], [False, True])
    )


@pytest.mark.parametrize(
    ("state", "record_type", "empty", "expected"),
    [(*key, action) for key, action in STREAM_TABLE.items()],
)
def test_stream_action_matrix(
    state: RequestState, record_type: RecordType, empty: bool, expected: Action
) -> None:
    assert stream_action(state, record_type, empty) is expected


def test_stream_actions_lookup_table_is_the_spec_table() -> None:
    expected = {
        (state, int(record_type), empty): action
        for (state, record_type, empty), action in STREAM_TABLE.items()
    }
    assert expected == STREAM_ACTIONS


@pytest.mark.parametrize(
    ("role", "sequence"),
    [
        (Role.RESPONDER, [RequestState.PARAMS, RequestState.STDIN, RequestState.DONE]),
        (Role.AUTHORIZER, [RequestState.PARAMS, RequestState.DONE]),
        (
            Role.FILTER,
            [RequestState.PARAMS, RequestState.STDIN, RequestState.DATA, RequestState.DONE],
        ),
    ],
)
def test_state_after_follows_role_order(role: Role, sequence: list[RequestState]) -> None:
    for finished, following in itertools.pairwise(sequence):
        assert state_after(role, finished) is following


def test_next_states_lookup_table() -> None:
    assert NEXT_STATES == {
        (Role.RESPONDER, RequestState.PARAMS): RequestState.STDIN,
        (Role.RESPONDER, RequestState.STDIN): RequestState.DONE,
        (Role.AUTHORIZER, RequestState.PARAMS): RequestState.DONE,
        (Role.FILTER, RequestState.PARAMS): RequestState.STDIN,
        (Role.FILTER, RequestState.STDIN): RequestState.DATA,
        (Role.FILTER, RequestState.DATA): RequestState.DONE,
    }
