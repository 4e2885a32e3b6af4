"""Developer sessions: ``nox -s lint typecheck tests docs`` (and fuzz, soak, bench)."""

from __future__ import annotations

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


@nox.session(python="3.11")
def bench(session: nox.Session) -> None:
    """Benchmarks against peers behind nginx + wrk (see benchmarks/README.md).

    Needs Debian's nginx and wrk (golang-go and php-fpm for those peers); a
    missing peer is skipped with a line saying why.
    """
    session.install("-e", ".", "flup", "fcgisgi", "gevent-fastcgi", "matplotlib", "py-spy")
    session.run(
        "python", "benchmarks/run.py", *(session.posargs or ["--rounds", "3", "--duration", "10"])
    )
