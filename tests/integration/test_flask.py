"""Flask behind a real nginx, through ``trio-fastcgi``.

The application is the file docs/howto/flask.rst shows
(tests/integration/apps/flaskapp.py), run as ``trio-fastcgi
tests.integration.apps.flaskapp:app`` behind nginx from the docs' templates
on a random (so non-default) port. Flask under a prefix is checked with the
other frameworks in test_frameworks_prefix.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.integration.configs import DEPLOY_DIR
from tests.integration.harness import upload_2mb
from tests.integration.test_frameworks_prefix import (
    FLASK,
    ROOT_TEMPLATE,
    behind_nginx,
    index_answers,
    lines_stream,
    urls_carry_port_and_prefix,
)

pytestmark = pytest.mark.integration

MiB = 1024 * 1024


async def test_flask_behind_nginx(tmp_path: Path) -> None:
    async with behind_nginx(tmp_path, ROOT_TEMPLATE, {"app_port": (FLASK,)}) as site:
        await index_answers(site, "", FLASK)
        await urls_carry_port_and_prefix(site, "")
        await upload_2mb(site.client)
        await lines_stream(site, "")
        missing = await site.client.get("/missing")
    assert missing.status_code == 404
    assert "Not Found" in missing.text


async def test_flask_two_workers_kept_alive(tmp_path: Path) -> None:
    """``--workers 2`` behind nginx's kept-alive upstream connections."""
    template = DEPLOY_DIR / "nginx-keepalive.conf"
    async with behind_nginx(tmp_path, template, {"app_port": (FLASK, "--workers=2")}) as site:
        for _ in range(3):
            await urls_carry_port_and_prefix(site, "")
            await upload_2mb(site.client)
            await lines_stream(site, "")
    (app,) = site.apps
    assert len(re.findall(r"is serving", app.log())) == 2, app.log()
