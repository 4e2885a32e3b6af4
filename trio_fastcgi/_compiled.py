"""The optional compiled build: which modules mypyc compiles, and which are.

``TRIO_FASTCGI_COMPILE=1 pip install trio-fastcgi --no-binary trio-fastcgi``
(or ``TRIO_FASTCGI_COMPILE=1 pip install -e .`` in a checkout) compiles the
modules named in :data:`COMPILED_MODULES` with mypyc; every other install is
pure Python, and both behave the same (CI runs the test suite on each). The
list is read by ``setup.py`` without importing the package, so this module
imports nothing but the standard library.
"""

from __future__ import annotations

import importlib.util
from importlib.machinery import EXTENSION_SUFFIXES
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from mypy_extensions import mypyc_attr as mypyc_attr
else:

    def mypyc_attr(**_attrs: object) -> object:
        """mypy_extensions' class decorator, which only mypyc reads; at run
        time it leaves the class as it is (and needs no mypy_extensions)."""
        return lambda cls: cls


#: The per-request path: the sans-IO core and the connection's Trio layer.
#: Not here: the modules whose classes mypyc cannot compile (attrs events,
#: classes with a metaclass, async generators) or that run once per process.
COMPILED_MODULES: Final = (
    "_alarm",
    "_buffer",
    "_cgi",
    "_client_connection",
    "_connection",
    "_event_builders",
    "_lifecycle",
    "_record_protocol",
    "_sender",
    "_served_connection",
    "_state",
    "_transport",
    "_wire",
    "_writer",
)


def compiled_modules() -> list[str]:
    """The modules of :data:`COMPILED_MODULES` that this install runs compiled
    (all of them in a compiled build, none in a pure-Python one)."""
    compiled = []
    for name in COMPILED_MODULES:
        # Where the import system finds it (without importing it).
        spec = importlib.util.find_spec(f"trio_fastcgi.{name}")
        if spec is not None and (spec.origin or "").endswith(tuple(EXTENSION_SUFFIXES)):
            compiled.append(name)
    return compiled


def build_description() -> str:
    """How this install runs, for ``trio-fastcgi --version``."""
    compiled = compiled_modules()
    if not compiled:
        return "pure Python"
    if len(compiled) == len(COMPILED_MODULES):
        return "compiled with mypyc"
    return f"partly compiled with mypyc: {', '.join(compiled)}"
