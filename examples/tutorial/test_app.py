# mypy: disable-error-code="import-not-found"
"""Tests of the tutorial's application, in memory: no socket, no nginx.

Run: python3 -m pytest test_app.py
"""

import pytest
from app import app  # the tutorial's app.py, next to this file

from trio_fastcgi.testing import open_test_client


@pytest.mark.trio
async def test_greets_by_name() -> None:
    async with open_test_client(app) as client:
        response = await client.get("/", query={"name": "Trio"})
    assert response.status == 200
    assert response.text == "Hello, Trio!\n"


@pytest.mark.trio
async def test_upper_rejects_large_bodies() -> None:
    async with open_test_client(app) as client:
        ok = await client.post("/upper", body=b"shout")
        too_large = await client.post("/upper", body=b"x" * (1024 * 1024 + 1))
    assert ok.body == b"SHOUT"
    assert too_large.status == 413


@pytest.mark.trio
async def test_unknown_path_is_404() -> None:
    async with open_test_client(app) as client:
        response = await client.get("/nope")
    assert response.status == 404
