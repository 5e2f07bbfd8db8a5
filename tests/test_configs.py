"""Each constraint is written once, in its config field, and enforced from there both by the config
(__post_init__: one FeatcacheError line naming the argument) and by the command line (exit status 2,
one line naming the option). API arguments of the wrong type are one line too."""
from __future__ import annotations

import dataclasses

import click
import pytest
from click.testing import CliRunner

import featcache
from featcache.cli import main
from featcache.cli_options import FieldOption
from featcache.settings import field_type

CONFIGS = (featcache.DataSpec, featcache.CacheSpec, featcache.ExtractConfig, featcache.EpochConfig,
           featcache.HeadConfig, featcache.FinetuneConfig, featcache.ScratchConfig, featcache.ExperimentConfig,
           featcache.BackbonesConfig, featcache.FewshotConfig, featcache.ExportConfig, featcache.PredictConfig,
           featcache.InspectConfig, featcache.BenchConfig)
BOUNDS = ("minimum", "maximum", "above", "below")


def constrained_fields():
    return [(config, item.name) for config in CONFIGS for item in dataclasses.fields(config)
            if item.metadata.get("choices") or any(item.metadata.get(bound) is not None for bound in BOUNDS)]


def violating(config, name) -> list:
    """Values the field's constraint refuses, one past each of its bounds (or no choice), each as the API
    takes it and as the command line spells it."""
    meta = config.__dataclass_fields__[name].metadata
    kind, _, item_kind = field_type(config, name)
    step = 1 if (item_kind if kind is tuple else kind) is int else 0.5
    values = (["nonsense"] if meta["choices"] else []) + \
        ([meta["minimum"] - step] if meta["minimum"] is not None else []) + \
        ([meta["maximum"] + step] if meta["maximum"] is not None else []) + \
        ([meta["above"]] if meta["above"] is not None else []) + ([meta["below"]] if meta["below"] is not None else [])
    return [((value,) if kind is tuple else value, str(value)) for value in values]


def cases():
    return [(config, name, value, text) for config, name in constrained_fields()
            for value, text in violating(config, name)]


def field_options():
    """(command name, FieldOption) for every option of every command made from a config's field."""
    return [(name, param) for name, command in main.commands.items() for param in command.params
            if isinstance(param, FieldOption)]


def constraint(config, name) -> dict:
    meta = config.__dataclass_fields__[name].metadata
    return {key: meta[key] for key in ("choices", *BOUNDS)}


def cli_for(config, name):
    """The commands' options of this setting: a field of this name with the same constraint (a command's
    --batch-size is fine-tuning's and extraction's alike)."""
    return [(command, param) for command, param in field_options() if param.field == name
            and constraint(param.config_class, name) == constraint(config, name)]


def placeholders(command: click.Command) -> list[str]:
    """Values for a command's required arguments and options, so that only the bad option fails."""
    args = []
    for param in command.params:
        if isinstance(param, click.Argument) and param.required:
            args.append("placeholder")
        elif isinstance(param, click.Option) and param.required:
            args += [param.opts[0], "resnet18" if param.name == "entries" else "placeholder"]
    return args


@pytest.mark.parametrize("config,name,value,text", cases(), ids=lambda x: getattr(x, "__name__", str(x)))
def test_a_violating_value_is_refused_by_the_api_and_the_cli(config, name, value, text):
    with pytest.raises(featcache.FeatcacheError) as refused:
        config(**{name: value})
    message = str(refused.value)
    assert f"`{name}`" in message and "\n" not in message, message

    reachable = cli_for(config, name)
    if not config.__dataclass_fields__[name].metadata["cli"]:
        return
    assert reachable, f"{config.__name__}.{name} is offered by no command"
    for command, param in reachable:
        result = CliRunner().invoke(main, [command, *placeholders(main.commands[command]), param.opts[0], text])
        lines = result.stderr.strip().splitlines()
        assert result.exit_code == 2, (command, param.opts[0], result.output)
        assert len(lines) == 1 and param.opts[0] in lines[0] and "Traceback" not in result.output, result.output


def test_every_constraint_is_enforced_somewhere():
    assert len(constrained_fields()) >= 30 and len(cases()) > len(constrained_fields())  # val_fraction, count: both ends


def test_what_was_accepted_before_still_is():
    """Paths and devices as objects, and unfreeze=() (the head alone), as at 0.3."""
    from pathlib import Path

    import torch

    assert featcache.CacheSpec(featcache.DataSpec("x"), weights=Path("w.pth")).weights == "w.pth"
    assert featcache.FinetuneConfig(weights=Path("w.pth"), device=torch.device("cpu")).device == "cpu"
    assert featcache.FinetuneConfig(unfreeze=()).unfreeze == ()
    assert featcache.HeadConfig(sweep_lrs=[1e-3, 1e-2]).sweep_lrs == (1e-3, 1e-2)  # a list, held as a tuple


def test_dataspec_is_checked_when_built_and_api_arguments_of_the_wrong_type_are_one_line(tmp_path):
    with pytest.raises(featcache.FeatcacheError, match="`per_class` must be a whole number of at least 1 or .all., got 0"):
        featcache.DataSpec("somewhere", per_class=0)
    with pytest.raises(featcache.FeatcacheError, match="`classes` must be a list or tuple"):
        featcache.DataSpec("somewhere", classes="cat,dog")
    calls = {"data": lambda: featcache.bench(data="nowhere", out=tmp_path),
             "spec": lambda: featcache.extract("nowhere"),
             "inputs": lambda: featcache.predict("model.pt2", "photos", tmp_path / "p.csv"),
             "run_dirs": lambda: featcache.compare("runs/x", tmp_path),
             "images": lambda: featcache.finetune("nowhere", weights="random"),
             "max_memory": lambda: featcache.HeadConfig(max_memory="1.2.3"),
             "seeds": lambda: featcache.ExperimentConfig(seeds="0-100000000000")}
    for name, call in calls.items():
        with pytest.raises(featcache.ConfigError) as refused:
            call()
        assert f"`{name}`" in str(refused.value) and "\n" not in str(refused.value), str(refused.value)
    with pytest.raises(featcache.ConfigError, match="`max_memory`"):
        featcache.HeadConfig(max_memory="1e400")


@pytest.mark.parametrize("args,option", [
    (["train-head", "x", "--max-memory", "1.2.3"], "--max-memory"),
    (["train-head", "x", "--max-memory", "1e400"], "--max-memory"),
    (["train-head", "x", "--sweep-lrs", "0.1,fast"], "--sweep-lrs"),
    (["experiment", "--seeds", "1-2-3"], "--seeds"),
    (["train-head", "x", "--head", "logreg", "--sweep"], "--sweep"),  # a rule between two options: exit 2 too
])
def test_malformed_options_exit_2_in_one_line(args, option):
    result = CliRunner().invoke(main, args)
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and option in lines[0], result.output


def test_an_error_while_running_stays_exit_1(tmp_path):
    result = CliRunner().invoke(main, ["train-head", str(tmp_path / "missing.h5"), "--out", str(tmp_path / "r")])
    assert result.exit_code == 1 and len(result.stderr.strip().splitlines()) == 1, result.output
