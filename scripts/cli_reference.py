"""Writes docs/cli.md, the command-line reference: every command's --help, as click prints it at a fixed
width (each option's help and default come from its config field). tests/test_cli_reference.py fails when
the file is not what this writes. Usage: python scripts/cli_reference.py [OUT=docs/cli.md]"""
import sys
from pathlib import Path

import click

from featcache.cli import main

WIDTH = 100
HEADER = """# Command-line reference

Every option of every command, as `featcache COMMAND --help` prints it. Generated from the commands
(whose options are built from the configs' fields) by `python scripts/cli_reference.py`; a test fails
when this page is out of date. The Python API takes the same settings by the same names
([api.md](api.md)); [usage.md](usage.md) explains them by task.
"""


def root() -> click.Context:
    """The group's context as the command line makes it (its help options -h and --help), at WIDTH."""
    return click.Context(main, info_name="featcache", max_content_width=WIDTH, terminal_width=WIDTH,
                         **main.context_settings)


def command_help(name: str, command: click.Command) -> str:
    with root() as parent:
        with click.Context(command, info_name=name, parent=parent, max_content_width=WIDTH,
                           terminal_width=WIDTH) as context:
            return command.get_help(context)


def reference_markdown() -> str:
    sections = [HEADER]
    with root() as context:
        sections.append(f"## featcache\n\n```text\n{main.get_help(context)}\n```\n")
    for name, command in main.commands.items():
        sections.append(f"## featcache {name}\n\n```text\n{command_help(name, command)}\n```\n")
    return "\n".join(sections)


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "docs" / "cli.md"
    out.write_text(reference_markdown())
    print(f"wrote {out}")
