"""docs/cli.md is the command-line reference: what scripts/cli_reference.py writes from the commands,
listing every option of every command."""
import importlib.util
import re
from pathlib import Path

import click

from featcache.cli import main

ROOT = Path(__file__).resolve().parents[1]


def generator():
    spec = importlib.util.spec_from_file_location("cli_reference", ROOT / "scripts" / "cli_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_reference_is_current():
    assert (ROOT / "docs" / "cli.md").read_text() == generator().reference_markdown(), \
        "docs/cli.md is out of date: python scripts/cli_reference.py"


def test_the_reference_lists_every_option_of_every_command():
    text = (ROOT / "docs" / "cli.md").read_text()
    sections = dict(re.findall(r"^## featcache (\S+)\n(.*?)(?=^## |\Z)", text, flags=re.S | re.M))
    assert set(sections) == set(main.commands), sorted(set(main.commands) ^ set(sections))
    for name, command in main.commands.items():
        for param in command.params:
            names = param.opts + param.secondary_opts if isinstance(param, click.Option) else [param.name.upper()]
            for option in names:  # whole words: --seed is not found inside --seeds
                assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", sections[name]), \
                    f"featcache {name}: {option} is missing from docs/cli.md"
