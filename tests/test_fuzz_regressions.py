"""Replay the fuzz corpora in every test run.

``tests/fuzz/corpus/core/`` holds inputs for the sans-IO core harness and
``tests/fuzz/corpus/connection/`` inputs for the Trio connection harness: the
hand-made seeds (``seed-*``, written by ``tests/fuzz/make_seeds.py``), the
inputs libFuzzer kept because they reached new code (``found-*``, copied from a
fuzzing run's corpus directory), and any input a fuzzing run found that broke a
property (``crash-*`` from atheris's artifact directory, kept after the fix). Each one must now
pass all the properties its harness checks (see the harness docstrings).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fuzz.connection_harness import decode_program, run_connection_program
from tests.fuzz.core_harness import run_core_case

CORPUS = Path(__file__).parent / "fuzz" / "corpus"


def _inputs(kind: str) -> list[Path]:
    paths = sorted((CORPUS / kind).iterdir())
    assert paths, f"the {kind} corpus is empty"
    return paths


@pytest.mark.parametrize("path", _inputs("core"), ids=lambda p: p.name)
def test_fuzz_regressions_core(path: Path) -> None:
    run_core_case(path.read_bytes())


@pytest.mark.parametrize("path", _inputs("connection"), ids=lambda p: p.name)
def test_fuzz_regressions_connection(path: Path) -> None:
    run_connection_program(decode_program(path.read_bytes()))
