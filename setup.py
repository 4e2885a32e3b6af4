"""Builds trio-fastcgi: pure Python, unless ``TRIO_FASTCGI_COMPILE=1`` asks
for the compiled build, in which mypyc compiles the modules that
``trio_fastcgi/_compiled.py`` names (it needs a C compiler and the Python
headers; the build backend, ``_build_backend.py``, brings mypy)."""

from __future__ import annotations

import os
import runpy
from pathlib import Path

from setuptools import Extension, setup

HERE = Path(__file__).resolve().parent


def compiled_extensions() -> list[Extension]:
    if os.environ.get("TRIO_FASTCGI_COMPILE") != "1":
        return []
    from mypyc.build import mypycify

    names = runpy.run_path(str(HERE / "trio_fastcgi" / "_compiled.py"))["COMPILED_MODULES"]
    return mypycify([f"trio_fastcgi/{name}.py" for name in names], group_name="trio_fastcgi")


setup(ext_modules=compiled_extensions())
