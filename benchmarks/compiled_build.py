"""A compiled (mypyc) copy of this checkout's trio_fastcgi, for the ``-mypyc``
benchmark rows, so that the pure-Python and the compiled build run side by
side in one interleaved run.

The copy is built once per version of the sources, with the project's own
``setup.py`` (``TRIO_FASTCGI_COMPILE=1 setup.py build_ext --inplace``), in
``benchmarks/results/compiled/<hash>``; a backend run with that directory first
on its PYTHONPATH imports the compiled build. Needs mypy (which brings mypyc)
and setuptools in this interpreter's environment, and a C compiler.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CACHE = HERE / "results" / "compiled"


def _sources() -> list[Path]:
    return [REPO / "setup.py", *sorted((REPO / "trio_fastcgi").glob("*.py"))]


def _digest() -> str:
    digest = hashlib.sha256(sys.version.encode())
    for path in _sources():
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def missing() -> str | None:
    """Why the compiled copy cannot be built here, or None if it can."""
    for module in ("mypyc", "setuptools"):
        if importlib.util.find_spec(module) is None:
            return f"the compiled build needs {module} (pip install mypy setuptools)"
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        return "the compiled build needs a C compiler"
    return None


def compiled_tree() -> Path:
    """The directory holding the compiled copy, built first if need be."""
    target = CACHE / _digest()
    if (target / "built").exists():
        return target
    shutil.rmtree(target, ignore_errors=True)
    (target / "trio_fastcgi").mkdir(parents=True)
    for path in _sources():
        shutil.copy2(path, target / path.relative_to(REPO))
    print(f"building the compiled copy in {target} (a minute or two)", flush=True)
    subprocess.run(
        [sys.executable, "setup.py", "-q", "build_ext", "--inplace"],
        cwd=target,
        env={**os.environ, "TRIO_FASTCGI_COMPILE": "1"},
        check=True,
        stdout=subprocess.DEVNULL,
    )
    (target / "built").touch()
    return target
