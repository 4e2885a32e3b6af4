"""The template loader, and that every deployment template is documented and
run by a test."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.integration.configs import DEPLOY_DIR, placeholders, render, render_text

TEMPLATES = sorted(path.name for path in DEPLOY_DIR.iterdir() if path.name != "README.md")


def test_render_text_fills_every_placeholder() -> None:
    assert render_text("a {{x}} b {{y}} {{x}}", {"x": "1", "y": "2"}) == "a 1 b 2 1"


def test_render_text_refuses_a_missing_value() -> None:
    with pytest.raises(ValueError, match=r"without a value: \['y'\]"):
        render_text("{{x}} {{y}}", {"x": "1"})


def test_render_text_refuses_an_unused_value() -> None:
    with pytest.raises(ValueError, match=r"without a placeholder: \['z'\]"):
        render_text("{{x}}", {"x": "1", "z": "2"})


def test_render_writes_into_the_directory(tmp_path: Path) -> None:
    target = render("nginx-tcp.conf", tmp_path, tmp="/TMP", port=8080, app_port=9000)
    assert target == tmp_path / "nginx-tcp.conf"
    text = target.read_text()
    assert "listen 127.0.0.1:8080;" in text
    assert "fastcgi_pass 127.0.0.1:9000;" in text
    assert "{{" not in text


@pytest.mark.parametrize("template", TEMPLATES)
def test_deploy_template_placeholders_documented(template: str) -> None:
    readme = (DEPLOY_DIR / "README.md").read_text()
    assert f"`{template}`" in readme
    for name in placeholders((DEPLOY_DIR / template).read_text()):
        assert re.search(rf"^\| `\{{\{{{name}\}}\}}` \|", readme, re.MULTILINE), name


@pytest.mark.parametrize("template", TEMPLATES)
def test_deploy_template_run_by_a_test(template: str) -> None:
    here = Path(__file__)
    tests = "".join(path.read_text() for path in here.parent.glob("test_*.py") if path != here)
    assert f'"{template}"' in tests
