"""Helpers for the package's own classes: objects only the library may build."""

from __future__ import annotations

import abc
from typing import NoReturn, final


@final
class NoPublicConstructor(abc.ABCMeta):
    """Metaclass of a class that only the library instantiates.

    Calling the class raises :exc:`TypeError`. The library builds instances
    with the class's own ``_create`` classmethod instead, which sets the
    attributes on ``object.__new__(cls)`` directly: one call per instance, no
    ``__init__`` behind it. Derived from :class:`abc.ABCMeta` so that it also
    serves subclasses of Trio's stream ABCs.
    """

    def __call__(cls, *args: object, **kwargs: object) -> NoReturn:
        raise TypeError(
            f"{cls.__module__}.{cls.__qualname__} has no public constructor: "
            "the library creates it (in tests, see trio_fastcgi.testing.make_request)"
        )
