"""atheris (libFuzzer) target: the Trio connection layer, see ``connection_harness.py``.

Run from the repository root, bounded in time, for example::

    python tests/fuzz/fuzz_connection.py -max_total_time=60 \\
        -artifact_prefix=/tmp/ "$(mktemp -d)" tests/fuzz/corpus/connection

libFuzzer writes the new inputs it finds to the *first* corpus directory, so
name a scratch directory first and the kept corpus second. A failing input is
written to ``<artifact_prefix>crash-<sha1>``; copy it to tests/fuzz/corpus/connection/
to keep it as a regression case (``tests/test_fuzz_regressions.py`` replays it).
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris  # type: ignore[import-untyped, import-not-found, unused-ignore]

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import trio  # noqa: F401  (not instrumented)

with atheris.instrument_imports(include=["trio_fastcgi"]):
    import trio_fastcgi  # noqa: F401

from tests.fuzz.connection_harness import decode_program, run_connection_program


def test_one_input(data: bytes) -> None:
    run_connection_program(decode_program(data))


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
