"""The per-request stream order rules, checked exhaustively."""

from __future__ import annotations

import itertools

import pytest

from trio_fastcgi import RecordType, Role
from trio_fastcgi._state import Action, RequestState, state_after, stream_action

STREAM_RECORDS = [RecordType.PARAMS, RecordType.STDIN, RecordType.DATA]
OWN_STATE = {
    RecordType.PARAMS: RequestState.PARAMS,
    RecordType.STDIN: RequestState.STDIN,
    RecordType.DATA: RequestState.DATA,
}


@pytest.mark.parametrize(
    ("state", "record_type", "empty"),
    list(itertools.product(RequestState, STREAM_RECORDS, [True, False])),
)
def test_stream_action_matrix(state: RequestState, record_type: RecordType, empty: bool) -> None:
    action = stream_action(state, record_type, empty)
    if state is RequestState.ABORTED:
        assert action is Action.IGNORE
    elif OWN_STATE[record_type] is state:
        assert action is Action.DELIVER
    elif empty:
        assert action is Action.IGNORE
    else:
        assert action is Action.ERROR


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
