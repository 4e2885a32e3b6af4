"""Sphinx configuration of the trio-fastcgi documentation.

Built by ``nox -s docs``: ``sphinx-build -W -n --keep-going -b html docs
docs/_build/html``. Nitpicky mode is on, so every cross-reference to this
project's API must resolve; references into Trio and the standard library
cannot (no intersphinx: the build runs without network) and are listed in
``nitpick_ignore_regex`` below.
"""

from __future__ import annotations

import contextlib
import inspect
import re
import sys
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS / "_ext"))
sys.path.insert(0, str(DOCS.parent))

import trio_fastcgi  # noqa: E402

project = "trio-fastcgi"
author = "the trio-fastcgi contributors"
copyright = "2026, the trio-fastcgi contributors"
version = release = trio_fastcgi.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinxcontrib_trio",
    "myst_parser",
    "cli_options",
]

# Most pages are reST; the reliability and performance reports are Markdown
# (MyST), written beside the tests and benchmarks that produce their figures.
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
# "## A heading" in Markdown gets an anchor, so [text](#a-heading) works.
myst_heading_anchors = 3

root_doc = "index"
exclude_patterns = ["_build", "deploy/README*"]
templates_path: list[str] = []
html_static_path: list[str] = []
html_theme = "alabaster"
html_theme_options = {
    "description": "FastCGI for Trio",
    "fixed_sidebar": True,
}
html_title = f"trio-fastcgi {release}"
pygments_style = "sphinx"

nitpicky = True
default_role = "py:obj"

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_typehints_format = "short"
# Defaults are shown as values (16777216), not as the names of private
# constants the reader cannot look up; see _readable_defaults for the rest.
autodoc_preserve_defaults = False
autodoc_default_options = {"members": True}
# sphinxcontrib-trio marks async context managers ("async with") only through
# the class-based autodoc; Sphinx 9's default renders them as plain functions.
autodoc_use_legacy_class_based = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False
# Attributes listed in an "Attributes:" section become ``.. attribute::``
# entries, which ``:attr:`` references can point to.
napoleon_use_ivar = False

# Targets outside this project. Without intersphinx they cannot resolve; they
# are ignored by pattern so that a broken reference to trio_fastcgi's own API
# still fails the build.
_EXTERNAL = [
    r"(trio|h11|typing|typing_extensions|collections\.abc|enum|os|socket|ipaddress|"
    r"logging|attrs?|types|argparse|contextlib|signal|http|gc)(\..*)?",
    r"(builtins\.)?(int|str|bytes|bytearray|memoryview|bool|float|object|None|type|tuple|"
    r"list|dict|set|frozenset|Exception|BaseException|BaseExceptionGroup|OSError|"
    r"ValueError|TypeError|RuntimeError|FileExistsError|FileNotFoundError|KeyboardInterrupt|NotImplemented|Ellipsis)",
    r"(Any|Final|Literal|TypeAlias|Unpack|NoReturn|Self|Protocol)",
    r"(Mapping|Sequence|Iterable|Iterator|AsyncIterable|AsyncIterator|Collection|"
    r"Callable|Awaitable|MutableMapping)",
    r"(TracebackType|PathLike)",
]
nitpick_ignore_regex = [(r"py:.*", pattern) for pattern in _EXTERNAL]
nitpick_ignore = [
    # Type variables and private aliases that appear in signatures.
    ("py:class", "ListenerT"),
    ("py:class", "trio_fastcgi._server.ListenerT"),
    ("py:class", "IPAddress"),
    ("py:class", "trio_fastcgi._record_protocol.EventT"),
]

# Classes whose instances the library creates for you: their constructor is
# not public API, so the docs show no constructor signature for them.
INTERNAL_CONSTRUCTORS = frozenset(
    {
        "trio_fastcgi.Request",
        "trio_fastcgi.InputStream",
        "trio_fastcgi.OutputStream",
        "trio_fastcgi.client.ActiveRequest",
        "trio_fastcgi.client.ResponseStream",
    }
)


def _hide_internal_constructors(
    app: object,
    what: str,
    name: str,
    obj: object,
    options: object,
    signature: str | None,
    return_annotation: str | None,
) -> tuple[str, str | None] | None:
    if what in ("class", "exception") and name in INTERNAL_CONSTRUCTORS:
        return "", None
    if signature is None:
        return None
    readable = _readable_defaults(name, signature)
    context_manager = _as_context_manager(obj, return_annotation)
    if readable == signature and context_manager == return_annotation:
        return None
    return readable, context_manager


def _as_context_manager(obj: object, return_annotation: str | None) -> str | None:
    """An ``@asynccontextmanager`` function returns an async context manager,
    not the ``AsyncIterator`` its generator is annotated with (sphinxcontrib-trio
    adds the "async with" in front)."""
    function = getattr(obj, "__func__", obj)
    wrapped = getattr(function, "__wrapped__", None)
    if (
        return_annotation is None
        or getattr(function, "__code__", None) is not _ASYNC_CONTEXT_MANAGER_CODE
        or not inspect.isasyncgenfunction(wrapped)
    ):
        return return_annotation
    match = re.fullmatch(r"(~?[\w.]*)AsyncIterator\[(.*)\]", return_annotation)
    if match is None:
        return return_annotation
    return f"~contextlib.AbstractAsyncContextManager[{match[2]}]"


_ASYNC_CONTEXT_MANAGER_CODE = contextlib.asynccontextmanager(None).__code__  # type: ignore[arg-type]


_ENUM_REPR = re.compile(r"<(\w+)\.(\w+): [^<>]+>")
# Defaults that are clearer in the base they are written in.
_OCTAL_DEFAULTS = {"trio_fastcgi.serve_unix": ("mode", 0o660)}


def _readable_defaults(name: str, signature: str) -> str:
    """``Role.RESPONDER`` instead of ``<Role.RESPONDER: 1>``; file modes in
    octal."""
    signature = _ENUM_REPR.sub(r"\1.\2", signature)
    if name in _OCTAL_DEFAULTS:
        parameter, value = _OCTAL_DEFAULTS[name]
        prefix = f"{parameter}: int | None = "
        signature = signature.replace(f"{prefix}{value}", f"{prefix}{value:#o}")
    return signature


def _undo_inline_types(
    app: object, what: str, name: str, obj: object, options: object, lines: list[str]
) -> None:
    # Napoleon reads the first line of a property's or attribute's docstring
    # as "type: description" when it contains a colon, so "Filter role: the
    # file's mtime" became the type "Filter role" (and a broken reference).
    # Runs after napoleon: put such a "type" back in front of the text. Real
    # types come from annotations (autodoc's :type: option), not docstrings.
    if what not in ("property", "attribute", "data"):
        return
    for index, line in enumerate(lines):
        if line.startswith(":type: ") and " " in line[len(":type: ") :].strip():
            prefix = line[len(":type: ") :].strip()
            del lines[index]
            first = next(i for i, text in enumerate(lines) if text.strip())
            lines[first] = f"{prefix}: {lines[first].lstrip()}"
            while lines and not lines[-1].strip():
                lines.pop()
            return


def setup(app: Any) -> None:
    app.connect("autodoc-process-signature", _hide_internal_constructors)
    # After napoleon's own handler (priority 500).
    app.connect("autodoc-process-docstring", _undo_inline_types, priority=600)
