"""The building blocks of the `featcache` command: options made from the configs' fields (a default and
its help written once, in the config), the option groups several commands share, and the group that
prints errors as one line."""
from __future__ import annotations

import dataclasses
import functools
import os
import re
from pathlib import Path

import click
from tqdm import tqdm

from . import api
from .api import ConfigError, FeatcacheError, ReportedElsewhere
from .settings import check_value, field_names, field_type

# featcache.api imports torch, scikit-learn and matplotlib inside the functions that use them: finding
# an existing cache (a repeated `featcache extract`) answers in a fraction of a second.


class FriendlyGroup(click.Group):
    """Every error in one line on stderr, never a traceback: a bad option or setting (click's usage errors
    and ConfigError) exits 2 naming the option; FeatcacheError, and the OSErrors of the environment
    (permissions, a full disk), while running exit 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ReportedElsewhere:
            ctx.exit(1)
        except click.UsageError as error:  # a subcommand's options, as click parsed them
            raise click.UsageError(f"{self._where(ctx)}{one_line(error.format_message())}") from None
        except ConfigError as error:  # a setting its config refuses: a usage error too
            command = self.get_command(ctx, ctx.invoked_subcommand) if ctx.invoked_subcommand else None
            raise click.UsageError(f"{self._where(ctx)}{one_line(option_names(str(error), command))}") from None
        except (FeatcacheError, OSError) as error:
            command = self.get_command(ctx, ctx.invoked_subcommand) if ctx.invoked_subcommand else None
            rank = "" if api.is_main_process() else f"rank {os.environ['RANK']}: "  # under torchrun, who failed
            raise click.ClickException(rank + one_line(option_names(str(error), command))) from None

    @staticmethod
    def _where(ctx) -> str:
        return f"featcache {ctx.invoked_subcommand}: " if ctx.invoked_subcommand else ""


def one_line(message: str) -> str:
    return " ".join(message.split())


def option_names(message: str, command: click.Command | None) -> str:
    """The API's `argument` names in a message as this command's --options (unknown ones unquoted)."""
    options = {param.name: param.opts[0] for param in (command.params if command else [])
               if isinstance(param, click.Option)}
    return re.sub(r"`(\w+)`", lambda match: options.get(match.group(1), match.group(1)), message)


def stacked(*options):
    """One decorator applying click options in the order listed (as if written one above the other)."""
    return lambda function: functools.reduce(lambda f, option: option(f), reversed(options), function)


class CommaList(click.ParamType):
    """'a,b,c' as a tuple of `kind` (int, float, or str for names); blanks dropped."""

    def __init__(self, kind=str):
        self.kind, self.name = kind, {int: "whole numbers", float: "numbers"}.get(kind, "names")

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            return tuple(self.kind(part.strip()) for part in str(value).split(",") if part.strip())
        except ValueError:  # a usage error: exit status 2, in one line (FriendlyGroup)
            self.fail(f"must be comma-separated {self.name}, got {value!r}", param, ctx)


class BackboneEntry(click.ParamType):
    """'NAME[,weights=W][,image-size=S][,label=L]': one backbone of `featcache backbones`, as a dict of
    what it sets (backbone, weights, image_size, label)."""

    name = "backbone"
    KEYS = ("weights", "image-size", "label")

    def convert(self, value, param, ctx):
        if isinstance(value, dict):
            return value
        name, *settings = [part.strip() for part in str(value).split(",")]
        entry = {"backbone": name}
        for part in settings:
            key, equals, setting = part.partition("=")
            if not equals or key not in self.KEYS or not setting:
                self.fail(f"{value}: {part!r} is not weights=W, image-size=S or label=L", param, ctx)
            if key == "image-size" and not setting.isdigit():
                self.fail(f"{value}: image-size must be a whole number of pixels", param, ctx)
            entry[key.replace("-", "_")] = int(setting) if key == "image-size" else setting
        return entry


class FieldOption(click.Option):
    """A click option made from a config's field (`option`): it knows the field, and checks every value
    given against the field's constraint (check_value) at parse time."""

    def __init__(self, *args, config_class=None, field=None, **kwargs):
        self.config_class, self.field = config_class, field
        super().__init__(*args, **kwargs)

    def process_value(self, ctx, value):
        value = super().process_value(ctx, value)
        if value is None or (isinstance(value, tuple) and not value and self.default is None):
            return value
        try:
            return check_value(self.config_class, self.field, value)
        except ConfigError as error:
            raise click.BadParameter(re.sub(r"`\w+` ", "", str(error), count=1), ctx=ctx, param=self) from None


def click_type(config_class, name: str):
    """The click type of a config's field, from its annotation and constraint (shown in --help)."""
    meta = config_class.__dataclass_fields__[name].metadata
    kind, _, item_kind = field_type(config_class, name)
    if kind is tuple:
        return CommaList(item_kind if item_kind in (int, float) else str)
    if meta["choices"]:
        return click.Choice(list(meta["choices"]))
    if kind is int and (meta["minimum"] is not None or meta["maximum"] is not None):
        return click.IntRange(min=meta["minimum"], max=meta["maximum"])
    if kind is float and any(meta[bound] is not None for bound in ("minimum", "maximum", "above", "below")):
        low = meta["minimum"] if meta["minimum"] is not None else meta["above"]
        high = meta["maximum"] if meta["maximum"] is not None else meta["below"]
        return click.FloatRange(min=low, max=high, min_open=meta["above"] is not None,
                                max_open=meta["below"] is not None)
    if kind is Path:
        return click.Path(path_type=Path)
    return kind if kind in (int, float) else str


def option(config_class, name: str, *, default=dataclasses.MISSING, help: str | None = None, **click_settings):
    """The click option of a config's field: its default, help, type and constraint come from the field
    (written once, in the config); `default` and `help` only where a command means something else by it."""
    item = config_class.__dataclass_fields__[name]
    meta = item.metadata
    assert meta["cli"], f"{config_class.__name__}.{name} is not a command-line setting"
    value = item.default if default is dataclasses.MISSING else default
    settings = {"default": value, "help": help or meta["help"], "show_default": value is not None and value is not False,
                "cls": FieldOption, "config_class": config_class, "field": name}
    if field_type(config_class, name)[0] is bool:
        settings.update(is_flag=True, show_default=False)
        if "/" in (meta["option"] or ""):  # --x/--no-x: a setting that is on by default
            settings.update(show_default=True)
    else:
        settings["type"] = click_type(config_class, name)
    if isinstance(value, tuple):
        settings["default"] = ",".join(map(str, value))
    if meta["metavar"]:
        settings["metavar"] = meta["metavar"]
    return click.option(meta["option"] or "--" + name.replace("_", "-"), name, **{**settings, **click_settings})


def data_options(function=None, *, per_class=dataclasses.MISSING, test_per_class=dataclasses.MISSING):
    """Options that pick the dataset (DataSpec's fields), shared by every command that reads images."""
    if function is None:
        return functools.partial(data_options, per_class=per_class, test_per_class=test_per_class)
    test_help = None if test_per_class is dataclasses.MISSING else "Keep the first N test images of each class."
    return stacked(
        option(api.DataSpec, "data"),
        option(api.DataSpec, "classes"),
        option(api.DataSpec, "per_class", default=per_class),
        option(api.DataSpec, "test_per_class", default=test_per_class, help=test_help),
        option(api.DataSpec, "download"),
        option(api.DataSpec, "data_root"),
        option(api.DataSpec, "test_fraction"),
        option(api.DataSpec, "split_seed"),
        option(api.DataSpec, "exclude"),
    )(function)


weights_options = stacked(option(api.CacheSpec, "weights"), option(api.CacheSpec, "image_size"))


def run_options(batch_size: int, batch_help: str, seed_help: str):
    """Seed, device, batch size and decoding workers; the batch size's default differs per command."""
    return stacked(
        option(api.CacheSpec, "seed", help=seed_help),
        option(api.ExtractConfig, "device"),
        option(api.ExtractConfig, "batch_size", default=batch_size, help=batch_help),
        option(api.ExtractConfig, "num_workers"),
    )


cache_options = stacked(option(api.CacheSpec, "views"), option(api.CacheSpec, "cache_dir"),
                        option(api.CacheSpec, "precision"))


def data_spec(options: dict) -> api.DataSpec:
    return api.DataSpec(options["data"], options["classes"] or None, options["per_class"], options["test_per_class"],
                        options["download"], options["data_root"], options["test_fraction"], options["split_seed"],
                        options["exclude"])


def cache_spec(options: dict, views: int | None = None) -> api.CacheSpec:
    return api.CacheSpec(data_spec(options), options["weights"], options["image_size"], views or options["views"],
                         options["seed"], options["precision"], options["cache_dir"],
                         options.get("backbone", api.CacheSpec.backbone))


def settings_of(config_class, options: dict) -> dict:
    """The options that are fields of `config_class`: what the API builds the config from."""
    return {name: options[name] for name in field_names(config_class) if name in options}


def run_dir(options: dict, approach: str) -> Path:
    """--out, or runs/<approach>-<time>: a command always writes its run."""
    return options["out"] or api.default_run_dir(approach)


def epoch_printer(options: dict):
    """Per-epoch lines above any progress bar, unless --quiet."""
    return None if options["quiet"] else tqdm.write


SEED_HELP = "Seeds the augmented views, random weights, head init and shuffling."


out_options = stacked(
    click.option("--out", type=click.Path(path_type=Path), default=None,
                 help="Run directory for history.json, weights.pt and predictions.npz (the last epoch's test "
                      "predictions). Default: runs/<approach>-<time>."),
    click.option("--overwrite", is_flag=True, help="Replace a run already in --out."),
    click.option("--quiet", is_flag=True, help="No per-epoch lines or progress bars."),
)


def seeds_option(varies: str):
    return click.option(
        "--seeds", default=None,
        help=f"Train once per training seed: 'A-B', a list '0,3,7' or a count N (seeds 0..N-1). A seed varies {varies}, "
             "never the views (--seed picks those). Writes --out/seed-<k>/ per seed and --out/seeds.json, and "
             "prints the mean, standard deviation and 95% t-interval of the final test accuracy.")


def finetune_options(config_class):
    """The fine-tuning settings, of fine-tuning itself or of the experiment."""
    return stacked(*(option(config_class, name) for name in ("lr_head", "lr_backbone", "unfreeze", "frozen_bn")))

end_to_end_options = stacked(
    option(api.FinetuneConfig, "max_memory"),
    click.option("--resume", is_flag=True,
                 help="Continue the killed run in --out from its last checkpoint (saved after every epoch), "
                      "with the same options; any number of ranks. With --seeds: finished seeds are kept (their "
                      "options checked), the unfinished one resumes from its checkpoint, the rest start."),
)
