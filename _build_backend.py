"""setuptools' build backend, plus what the compiled build needs to build
when ``TRIO_FASTCGI_COMPILE=1`` (see ``setup.py``): mypyc, and the packages
it type-checks the compiled modules against."""

from __future__ import annotations

import os

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F403

#: mypy as pinned for the lint and test extras; trio and attrs for its checks.
COMPILE_REQUIRES = ["mypy==2.4.1", "trio>=0.25", "attrs>=23.1"]


def _compiling() -> bool:
    return os.environ.get("TRIO_FASTCGI_COMPILE") == "1"


# setuptools finds its requirements by running setup.py, which for the compiled
# build needs mypyc already; this project asks for none of its own (no
# setup_requires), so the compiled build's are the whole answer.


def get_requires_for_build_wheel(config_settings: dict[str, object] | None = None) -> list[str]:
    if _compiling():
        return list(COMPILE_REQUIRES)
    return _setuptools.get_requires_for_build_wheel(config_settings)


def get_requires_for_build_editable(
    config_settings: dict[str, object] | None = None,
) -> list[str]:
    if _compiling():
        return list(COMPILE_REQUIRES)
    return _setuptools.get_requires_for_build_editable(config_settings)
