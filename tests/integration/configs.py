"""Render the deployment templates in ``docs/deploy/`` for a test.

The templates are the files the documentation tells users to copy; the tests
run the real servers on exactly that text, so the docs cannot rot. A
placeholder is ``{{name}}``; every placeholder must get a value and every value
must be used, so a template and its test cannot drift apart silently.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

DEPLOY_DIR = Path(__file__).resolve().parents[2] / "docs" / "deploy"
_PLACEHOLDER = re.compile(r"\{\{([a-z_]+)\}\}")


def placeholders(text: str) -> set[str]:
    """The placeholder names used in *text*."""
    return set(_PLACEHOLDER.findall(text))


def render_text(text: str, values: dict[str, str]) -> str:
    """*text* with each ``{{name}}`` replaced by ``values[name]``."""
    needed = placeholders(text)
    missing = needed - set(values)
    unused = set(values) - needed
    if missing or unused:
        raise ValueError(
            f"placeholders without a value: {sorted(missing)}; "
            f"values without a placeholder: {sorted(unused)}"
        )
    return _PLACEHOLDER.sub(lambda match: values[match.group(1)], text)


def render(template: str, directory: Path, **values: object) -> Path:
    """Render ``docs/deploy/<template>`` into *directory*; return its path."""
    text = (DEPLOY_DIR / template).read_text()
    target = directory / template
    target.write_text(render_text(text, {name: str(value) for name, value in values.items()}))
    return target


#: The ``{{app}}`` of the templates whose web server starts the application
#: itself: the ``trio-fastcgi`` command serving tests/integration/apps/spawned_app.py.
SPAWNED_APP = "tests.integration.apps.spawned_app:app"


def spawned_app_values(python: str, *site_dirs: str) -> dict[str, str]:
    """``{{python}}``, ``{{app}}`` and ``{{pythonpath}}`` for those templates:
    *python* runs ``-m trio_fastcgi`` with this checkout (and *site_dirs*, else
    the current ``PYTHONPATH``) on its path."""
    extra = list(site_dirs) or list(filter(None, [os.environ.get("PYTHONPATH")]))
    pythonpath = os.pathsep.join([str(DEPLOY_DIR.parents[1]), *extra])
    return {"python": python, "app": SPAWNED_APP, "pythonpath": pythonpath}
