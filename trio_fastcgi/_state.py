"""Per-request input state: all the rules about which stream comes when.

A request reads its input streams in a fixed order that depends on its role:
``FCGI_PARAMS`` always, then ``FCGI_STDIN`` (Responder, Filter), then
``FCGI_DATA`` (Filter). An Authorizer reads only params; the empty STDIN
record that lighttpd sends it anyway is ignored like any other empty record of
a stream that is not (or no longer) being read.
"""

from __future__ import annotations

import enum
from typing import Final

from ._wire import RecordType, Role


class RequestState(enum.Enum):
    """Where an active request's input is."""

    PARAMS = "reading params"
    STDIN = "reading stdin"
    DATA = "reading data"
    DONE = "input complete"
    ABORTED = "aborted"


#: The input streams each role reads after its params, in order.
ROLE_STREAMS: Final[dict[Role, tuple[RequestState, ...]]] = {
    Role.RESPONDER: (RequestState.STDIN,),
    Role.AUTHORIZER: (),
    Role.FILTER: (RequestState.STDIN, RequestState.DATA),
}

#: The state in which a request accepts records of each input stream type.
STREAM_STATES: Final[dict[int, RequestState]] = {
    RecordType.PARAMS: RequestState.PARAMS,
    RecordType.STDIN: RequestState.STDIN,
    RecordType.DATA: RequestState.DATA,
}


class Action(enum.Enum):
    """What to do with one input-stream record of an active request."""

    DELIVER = "deliver"
    IGNORE = "ignore"
    ERROR = "error"


# Members are compared by identity: hash them so too (Enum's own __hash__ is
# Python code, and these are dict keys on the hot path). Set after the class
# bodies, which a compiled build (mypyc) keeps to plain statements.
RequestState.__hash__ = Action.__hash__ = object.__hash__  # type: ignore[method-assign]


def stream_action(state: RequestState, record_type: int, empty: bool) -> Action:
    """Decide what a PARAMS, STDIN or DATA record does to a request in *state*.

    - An aborted request ignores all its input until it ends.
    - The stream being read takes the record.
    - Any other stream's *empty* record is ignored: a duplicate end marker, or
      the end of a stream this role does not read (lighttpd's empty STDIN to an
      Authorizer).
    - Any other non-empty record breaks the role's stream order: an error.
    """
    if state is RequestState.ABORTED:
        return Action.IGNORE
    if STREAM_STATES[record_type] is state:
        return Action.DELIVER
    return Action.IGNORE if empty else Action.ERROR


def state_after(role: Role, finished: RequestState) -> RequestState:
    """The state that follows the end of the *finished* stream for *role*."""
    streams = ROLE_STREAMS[role]
    if finished is RequestState.PARAMS:
        return streams[0] if streams else RequestState.DONE
    index = streams.index(finished) + 1
    return streams[index] if index < len(streams) else RequestState.DONE


#: :func:`stream_action` for every (state, stream record type, empty) there is:
#: the same rules, looked up in one step on the connection's hot path.
STREAM_ACTIONS: Final[dict[tuple[RequestState, int, bool], Action]] = {
    (state, int(record_type), empty): stream_action(state, record_type, empty)
    for state in RequestState
    for record_type in STREAM_STATES
    for empty in (False, True)
}

#: :func:`state_after` for every role and stream it reads (params included).
NEXT_STATES: Final[dict[tuple[Role, RequestState], RequestState]] = {
    (role, finished): state_after(role, finished)
    for role, streams in ROLE_STREAMS.items()
    for finished in (RequestState.PARAMS, *streams)
}
