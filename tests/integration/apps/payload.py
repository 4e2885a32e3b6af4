"""Deterministic bodies shared by a test app and the test that checks it."""

from __future__ import annotations

import random
from collections.abc import Iterator

CHUNK = 64 * 1024


def stream_bytes(size: int, seed: int) -> Iterator[bytes]:
    """*size* pseudo-random bytes from *seed*, in chunks of at most 64 KiB."""
    rng = random.Random(seed)
    left = size
    while left:
        step = min(CHUNK, left)
        yield rng.randbytes(step)
        left -= step
