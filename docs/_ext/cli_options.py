"""``.. cli-options:: module:function``: document every option of a command.

The function returns the command's :class:`argparse.ArgumentParser`. Each
argument group becomes a rubric and each argument an ``.. option::`` entry
(linkable with ``:option:``), with the help text argparse itself prints, so
the reference lists every option the code has and cannot drift from it.
"""

from __future__ import annotations

import argparse
import importlib
import re
from collections.abc import Callable
from typing import Any, ClassVar

from docutils import nodes
from docutils.parsers.rst import directives
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective

_RST_SPECIAL = re.compile(r"([*`|_\\])")


def _escape(text: str) -> str:
    # reST markup characters, and "--" (smart quotes would make it a dash).
    return _RST_SPECIAL.sub(r"\\\1", text).replace("--", "-\\-")


def load_parser(spec: str) -> argparse.ArgumentParser:
    module_name, _, function_name = spec.partition(":")
    parser = getattr(importlib.import_module(module_name), function_name)()
    assert isinstance(parser, argparse.ArgumentParser), spec
    return parser


def _signature(action: argparse.Action) -> str:
    if not action.option_strings:
        return str(action.metavar or action.dest)
    if action.nargs == 0:
        return ", ".join(action.option_strings)
    metavar = action.metavar or action.dest.upper()
    if isinstance(metavar, tuple):
        metavar = " ".join(metavar)
    if action.choices is not None and action.metavar is None:
        metavar = "{" + ",".join(str(choice) for choice in action.choices) + "}"
    if action.nargs == "*":
        metavar = f"[{metavar} ...]"
    return ", ".join(f"{option} {metavar}" for option in action.option_strings)


def option_lines(parser: argparse.ArgumentParser) -> list[str]:
    """The reST for every documented argument of *parser*, group by group."""
    formatter = parser._get_formatter()
    lines: list[str] = []
    for group in parser._action_groups:
        actions = [
            action
            for action in group._group_actions
            if action.help is not argparse.SUPPRESS and not isinstance(action, argparse._HelpAction)
        ]
        if not actions:
            continue
        title = group.title or "options"
        lines += [f".. rubric:: {title[:1].upper()}{title[1:]}", ""]
        for action in actions:
            help_text = formatter._expand_help(action) if action.help else ""
            lines += [f".. option:: {_signature(action)}", ""]
            lines += [f"   {_escape(help_text)}", ""]
    return lines


class CLIOptions(SphinxDirective):
    required_arguments = 1
    has_content = False
    option_spec: ClassVar[dict[str, Callable[[str], Any]]] = {"epilog": directives.flag}

    def run(self) -> list[nodes.Node]:
        parser = load_parser(self.arguments[0])
        lines = option_lines(parser)
        if "epilog" in self.options and parser.epilog:
            # The epilog (signals, exit statuses, ...) as the command prints it.
            lines += ["::", "", *("   " + line for line in parser.epilog.splitlines()), ""]
        container = nodes.container()
        self.state.nested_parse(
            StringList(lines, source=f"<cli-options {self.arguments[0]}>"),
            self.content_offset,
            container,
        )
        return list(container.children)


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("cli-options", CLIOptions)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
