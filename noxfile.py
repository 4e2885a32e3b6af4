"""Developer sessions: ``nox -s lint typecheck tests docs`` (and fuzz, soak, bench)."""

from __future__ import annotations

import tempfile

import nox

nox.options.sessions = ["lint", "typecheck", "tests", "docs"]
nox.options.error_on_missing_interpreters = True


@nox.session
def lint(session: nox.Session) -> None:
    """ruff: lint and formatting."""
    session.install("-e", ".[lint]")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the package, tests, examples and this file."""
    session.install("-e", ".[lint]")
    session.run("mypy")


@nox.session
def tests(session: nox.Session) -> None:
    """The whole suite; integration tests skip when a server binary is missing
    (and fail under CI=true)."""
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session
def docs(session: nox.Session) -> None:
    """Build the Sphinx site; warnings (broken references included) are errors."""
    session.install("-e", ".[docs]")
    session.run(
        "sphinx-build", "-W", "-n", "--keep-going", "-b", "html", "docs", "docs/_build/html"
    )


@nox.session
def fuzz(session: nox.Session) -> None:
    """Coverage-guided fuzzing of both targets (seconds each: first posarg, default
    60), then the stateful connection test with the large hypothesis profile."""
    session.install("-e", ".[test,fuzz]")
    seconds = session.posargs[0] if session.posargs else "60"
    artifacts = session.create_tmp()
    for target in ("core", "connection"):
        session.run(
            "python",
            f"tests/fuzz/fuzz_{target}.py",
            f"-max_total_time={seconds}",
            f"-artifact_prefix={artifacts}/",
            tempfile.mkdtemp(),
            f"tests/fuzz/corpus/{target}",
        )
    session.run("pytest", "tests/test_hardening_stateful.py", env={"HYPOTHESIS_PROFILE": "fuzz"})


@nox.session
def soak(session: nox.Session) -> None:
    """The soak through nginx and the multiplexing client (seconds: posarg, default 300)."""
    session.install("-e", ".[test]")
    seconds = session.posargs[0] if session.posargs else "300"
    session.run("pytest", "-s", "tests/integration/test_soak.py", env={"SOAK_SECONDS": seconds})


@nox.session(python="3.11")
def bench(session: nox.Session) -> None:
    """Benchmarks against peers behind nginx + wrk (see benchmarks/README.md).

    Needs Debian's nginx and wrk (golang-go and php-fpm for those peers); a
    missing peer is skipped with a line saying why.
    """
    session.install("-e", ".[bench]", "flup", "gevent-fastcgi", "py-spy")
    session.run(
        "python", "benchmarks/run.py", *(session.posargs or ["--rounds", "3", "--duration", "10"])
    )
