from __future__ import annotations

import pytest

from tests.integration.apps.echo import EchoApp


@pytest.fixture
def app() -> EchoApp:
    """The test application (tests/integration/apps/echo.py), fresh per test."""
    return EchoApp()
