"""An outbox for Requests built by hand in adapter tests."""

from __future__ import annotations

import trio

from trio_fastcgi._events import OutputEvent
from trio_fastcgi._streams import Outbox


class RecordingOutbox(Outbox):
    """Keeps the output events a Request sends, in order."""

    def __init__(self) -> None:
        self.events: list[OutputEvent] = []

    async def send(self, event: OutputEvent) -> None:
        await trio.lowlevel.checkpoint()
        self.events.append(event)
