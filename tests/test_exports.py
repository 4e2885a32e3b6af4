"""The public namespaces: what they export, under which name, with which types."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import sys
import types
import typing
from collections.abc import Callable, Iterator

import pytest

if sys.version_info >= (3, 11):
    from typing import Unpack
else:
    from typing_extensions import Unpack

import trio_fastcgi

PUBLIC_MODULES = [
    "trio_fastcgi",
    "trio_fastcgi.asgi",
    "trio_fastcgi.client",
    "trio_fastcgi.testing",
    "trio_fastcgi.wsgi",
]


def public_names(module_name: str) -> list[str]:
    module = importlib.import_module(module_name)
    names = getattr(module, "__all__", None)
    if names is None:
        names = [
            name
            for name, value in vars(module).items()
            if not name.startswith("_") and not isinstance(value, types.ModuleType)
        ]
    return sorted(names)


def own_objects() -> Iterator[tuple[str, type | types.FunctionType]]:
    """``(public path, object)`` for each public class and function of the package."""
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for name in public_names(module_name):
            value = getattr(module, name)
            if not (inspect.isclass(value) or inspect.isfunction(value)):
                continue
            if value.__module__.partition(".")[0] == "trio_fastcgi":
                yield f"{module_name}.{name}", value


def annotated_callables() -> Iterator[tuple[str, Callable[..., object]]]:
    """Each public function, and each public method (and ``__init__``,
    ``__call__``, property getters) of each public class."""
    for path, value in own_objects():
        if inspect.isfunction(value):
            yield path, value
            continue
        for name, member in vars(value).items():
            if name.startswith("_") and name not in ("__init__", "__call__"):
                continue
            if isinstance(member, (classmethod, staticmethod)):
                member = member.__func__
            elif isinstance(member, property):
                member = member.fget
            if inspect.isfunction(member):
                yield f"{path}.{name}", member


def test_every_public_module_is_listed() -> None:
    submodules = {
        f"trio_fastcgi.{info.name}"
        for info in pkgutil.iter_modules(trio_fastcgi.__path__)
        if not info.name.startswith("_")
    }
    assert submodules | {"trio_fastcgi"} == set(PUBLIC_MODULES)


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_public_names_exist(module_name: str) -> None:
    module = importlib.import_module(module_name)
    names = public_names(module_name)
    assert names
    assert [name for name in names if not hasattr(module, name)] == []


def test_public_objects_name_a_public_module() -> None:
    """Reprs, tracebacks and the docs show ``trio_fastcgi.Request``, not the
    private module it is defined in."""
    private = {
        path: value.__module__
        for path, value in own_objects()
        if any(part.startswith("_") for part in value.__module__.split("."))
    }
    assert private == {}


def test_names_are_exported_once_from_the_package() -> None:
    top = {id(getattr(trio_fastcgi, name)): name for name in public_names("trio_fastcgi")}
    assert len(top) == len(public_names("trio_fastcgi"))


def test_get_type_hints_works_on_every_public_callable() -> None:
    failures = {}
    checked = 0
    for path, function in annotated_callables():
        checked += 1
        try:
            typing.get_type_hints(function)
        except Exception as exc:
            failures[path] = f"{type(exc).__name__}: {exc}"
    assert checked > 100
    assert failures == {}


def test_get_type_hints_of_serve_tcp() -> None:
    hints = typing.get_type_hints(trio_fastcgi.serve_tcp)
    assert hints["config"] == trio_fastcgi.Config | None
    assert hints["options"] == Unpack[trio_fastcgi.ServerOptions]
    assert typing.get_type_hints(trio_fastcgi.ServerOptions)["max_reqs"] is int


def test_need_data_repr() -> None:
    assert repr(trio_fastcgi.NEED_DATA) == "NEED_DATA"
    assert repr([trio_fastcgi.NEED_DATA]) == "[NEED_DATA]"


@pytest.mark.parametrize(
    "cls", [trio_fastcgi.Request, trio_fastcgi.InputStream, trio_fastcgi.OutputStream]
)
def test_classes_the_library_makes_have_no_public_constructor(cls: type[object]) -> None:
    with pytest.raises(TypeError, match="has no public constructor"):
        cls()
