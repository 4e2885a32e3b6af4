"""The optional compiled build (mypyc) and the pure-Python one.

CI runs the whole suite twice: on a pure-Python install, and on a compiled
one (``TRIO_FASTCGI_COMPILE=1``) with ``TRIO_FASTCGI_EXPECT_COMPILED=1`` set,
so that each run checks it tests the build it claims to.
"""

from __future__ import annotations

import importlib
import os
import runpy
import subprocess
import sys
from pathlib import Path

import trio_fastcgi
from trio_fastcgi._compiled import COMPILED_MODULES, build_description, compiled_modules

REPO = Path(__file__).resolve().parent.parent
EXPECT_COMPILED = os.environ.get("TRIO_FASTCGI_EXPECT_COMPILED") == "1"


def test_this_run_tests_the_build_it_expects() -> None:
    compiled = compiled_modules()
    if EXPECT_COMPILED:
        assert compiled == list(COMPILED_MODULES)
    else:
        assert compiled == [], (
            "compiled modules found in a pure-Python run: remove the checkout's "
            "trio_fastcgi/*.so (left by TRIO_FASTCGI_COMPILE=1 pip install -e .) "
            "or set TRIO_FASTCGI_EXPECT_COMPILED=1"
        )


def test_every_module_to_compile_is_a_module_of_the_package() -> None:
    for name in COMPILED_MODULES:
        module = importlib.import_module(f"trio_fastcgi.{name}")
        assert module.__name__ == f"trio_fastcgi.{name}"


def test_setup_reads_the_list_without_importing_the_package() -> None:
    # setup.py runs the module by path, in a build environment without trio.
    names = runpy.run_path(str(REPO / "trio_fastcgi" / "_compiled.py"))["COMPILED_MODULES"]
    assert names == COMPILED_MODULES


def test_version_says_which_build_runs() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "trio_fastcgi", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    expected = "compiled with mypyc" if EXPECT_COMPILED else "pure Python"
    assert result.stdout.strip() == f"trio-fastcgi {trio_fastcgi.__version__} ({expected})"
    assert build_description() == expected
